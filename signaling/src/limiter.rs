//! A per-address join rate limit, so a flood of joins from one client cannot exhaust the
//! server (each join builds a peer connection).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Joins allowed per address in one window.
pub const JOINS_PER_WINDOW: u32 = 30;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Addresses remembered at most; beyond this, the oldest windows are forgotten.
const MAX_ADDRESSES: usize = 10_000;

/// Fixed-window join counter per client address.
#[derive(Default)]
pub struct JoinLimiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl JoinLimiter {
    /// Counts a join attempt from `ip` at `now`; false when over the limit.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut windows = self.windows.lock().expect("limiter lock");
        if windows.len() >= MAX_ADDRESSES {
            windows.retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
        }
        let entry = windows.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= JOINS_PER_WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_joins_is_cut_and_the_next_window_allows_again() {
        let limiter = JoinLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..JOINS_PER_WINDOW {
            assert!(limiter.allow(ip, t0));
        }
        assert!(!limiter.allow(ip, t0));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(limiter.allow(other, t0), "limits are per address");
        assert!(limiter.allow(ip, t0 + WINDOW));
    }
}
