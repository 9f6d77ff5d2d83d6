//! Bandwidth estimation towards each subscriber.
//!
//! A subscriber connection runs the `rtc` crate's send-side congestion control: every
//! forwarded packet gets a transport-wide sequence number, the browser reports arrivals
//! (transport-cc feedback), and Google Congestion Control turns them into a target bitrate.
//! The estimator lives inside the connection's interceptor chain, so it publishes its target
//! into an [`Estimate`] the router reads when it allocates layers. A subscriber that offers
//! only REMB (`goog-remb`) has its REMB value used instead.

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, Gcc, PacketReport};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The highest estimate, in bits per second.
pub const MAX_BPS: u64 = 10_000_000;
/// Where a subscriber's estimate starts: at the top. There is no probing to climb from a low
/// guess, and GCC's first decrease is to the rate that actually arrives, so a thin link is
/// found within seconds while a clean one never starts below what it can carry.
pub const INITIAL_BPS: u64 = MAX_BPS;
/// The lowest estimate, in bits per second.
pub const MIN_BPS: u64 = 50_000;

/// A subscriber's current estimate, shared between its connection's estimator and the
/// router.
#[derive(Debug, Clone)]
pub(crate) struct Estimate(Arc<Cell>);

#[derive(Debug)]
struct Cell {
    bps: AtomicU64,
    fed: AtomicBool,
}

impl Estimate {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Cell {
            bps: AtomicU64::new(INITIAL_BPS),
            fed: AtomicBool::new(false),
        }))
    }

    /// The congestion controller's target, in bits per second.
    pub(crate) fn bps(&self) -> u64 {
        self.0.bps.load(Ordering::Relaxed)
    }

    /// Whether transport-cc feedback has ever arrived (otherwise the target is still the
    /// initial guess).
    pub(crate) fn fed(&self) -> bool {
        self.0.fed.load(Ordering::Relaxed)
    }

    /// The estimator to put into the subscriber connection's interceptor chain.
    pub(crate) fn estimator(&self) -> SharedGcc {
        SharedGcc {
            gcc: Gcc::new(INITIAL_BPS as f64, MIN_BPS as f64, MAX_BPS as f64),
            estimate: self.clone(),
        }
    }
}

/// Google Congestion Control publishing its target into an [`Estimate`].
pub(crate) struct SharedGcc {
    gcc: Gcc,
    estimate: Estimate,
}

impl SharedGcc {
    fn publish(&self) {
        let bps = self.gcc.target_bitrate().max(0.0) as u64;
        self.estimate.0.bps.store(bps, Ordering::Relaxed);
    }
}

impl BandwidthEstimator for SharedGcc {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        self.gcc.on_reports(now, reports);
        if !reports.is_empty() {
            self.estimate.0.fed.store(true, Ordering::Relaxed);
        }
        self.publish();
    }

    fn target_bitrate(&self) -> f64 {
        self.gcc.target_bitrate()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.gcc.handle_timeout(now);
        self.publish();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.gcc.poll_timeout()
    }

    fn stats(&self) -> EstimatorStats {
        self.gcc.stats()
    }
}
