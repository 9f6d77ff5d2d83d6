//! Resuming a participant after its signaling socket was lost: the sans-IO state machine of
//! which socket (an *epoch*) a participant is attached to, or until when it is suspended,
//! and the resume token that proves a new socket is the same participant.
//!
//! A socket that ends without `leave` (closed abnormally or silent) suspends its
//! participant for the resume window: the others are not told, and a new socket may take
//! the participant over with `resume`. A new socket may also take over a socket that is
//! still open (a network change the server has not noticed). At the window's end the
//! participant is removed as if it had disconnected. Time is passed in; nothing here sleeps
//! or touches a socket.

use sfu::ParticipantId;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Default resume window.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(30);

/// An opaque secret (128 random bits, hex) that lets a new socket resume a participant.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeToken(String);

impl ResumeToken {
    /// A fresh random token.
    pub fn random() -> Self {
        Self(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// The token as sent to the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeToken(…)")
    }
}

/// Which socket a session is: each join or resume attaches a new epoch.
pub type Epoch = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    Attached { epoch: Epoch },
    Suspended { epoch: Epoch, until: Instant },
}

/// What happens when a session's socket is gone without `leave`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// The participant is suspended until then; the session waits for that instant and then
    /// calls [`Suspensions::expire`].
    Suspended {
        /// End of the resume window.
        until: Instant,
    },
    /// Resume is off (a zero window): remove the participant now.
    Remove,
    /// Another socket has taken the participant over (or it is gone): nothing to do.
    Stale,
}

/// Why a resume was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefused {
    /// No such participant (never joined, left, or removed at the window's end).
    #[error("no such participant to resume (it left, or its resume window ended)")]
    Unknown,
    /// The resume window has ended (its removal is under way).
    #[error("the resume window has ended")]
    Expired,
}

/// The attachment or suspension of every joined participant.
#[derive(Debug)]
pub struct Suspensions {
    window: Duration,
    presence: HashMap<ParticipantId, Presence>,
    next_epoch: Epoch,
}

impl Suspensions {
    /// Suspends for `window` (zero: never suspend, remove at once).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            presence: HashMap::new(),
            next_epoch: 0,
        }
    }

    /// The resume window.
    pub fn window(&self) -> Duration {
        self.window
    }

    fn epoch(&mut self) -> Epoch {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// A participant joined on a new socket; returns that socket's epoch.
    pub fn attach(&mut self, id: ParticipantId) -> Epoch {
        let epoch = self.epoch();
        self.presence.insert(id, Presence::Attached { epoch });
        epoch
    }

    /// The socket of `epoch` ended without `leave` at `now`.
    pub fn detach(&mut self, id: ParticipantId, epoch: Epoch, now: Instant) -> Detached {
        match self.presence.get(&id) {
            Some(Presence::Attached { epoch: current }) if *current == epoch => {
                if self.window.is_zero() {
                    return Detached::Remove;
                }
                let until = now + self.window;
                self.presence
                    .insert(id, Presence::Suspended { epoch, until });
                Detached::Suspended { until }
            }
            _ => Detached::Stale,
        }
    }

    /// A new socket takes `id` over at `now` (suspended, or attached to an older socket
    /// that is to be closed); returns the new socket's epoch.
    pub fn resume(&mut self, id: ParticipantId, now: Instant) -> Result<Epoch, ResumeRefused> {
        match self.presence.get(&id) {
            None => Err(ResumeRefused::Unknown),
            Some(Presence::Suspended { until, .. }) if now >= *until => Err(ResumeRefused::Expired),
            Some(_) => Ok(self.attach(id)),
        }
    }

    /// Whether `id` is suspended (no socket).
    pub fn is_suspended(&self, id: ParticipantId) -> bool {
        matches!(self.presence.get(&id), Some(Presence::Suspended { .. }))
    }

    /// Whether `epoch` is still the participant's socket (attached or suspended with it).
    pub fn is_current(&self, id: ParticipantId, epoch: Epoch) -> bool {
        matches!(
            self.presence.get(&id),
            Some(Presence::Attached { epoch: e } | Presence::Suspended { epoch: e, .. }) if *e == epoch
        )
    }

    /// Whether the suspension of `epoch` has run out at `now`; if so the participant is
    /// forgotten here and the caller removes it.
    pub fn expire(&mut self, id: ParticipantId, epoch: Epoch, now: Instant) -> bool {
        match self.presence.get(&id) {
            Some(Presence::Suspended { epoch: e, until }) if *e == epoch && now >= *until => {
                self.presence.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// The participant is gone (left, removed); forget it.
    pub fn forget(&mut self, id: ParticipantId) {
        self.presence.remove(&id);
    }

    /// Participants suspended now (for metrics).
    pub fn suspended_count(&self) -> usize {
        self.presence
            .values()
            .filter(|p| matches!(p, Presence::Suspended { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(30);
    const P: ParticipantId = ParticipantId(7);

    #[test]
    fn a_lost_socket_suspends_and_a_resume_within_the_window_reattaches() {
        let t0 = Instant::now();
        let mut s = Suspensions::new(WINDOW);
        let first = s.attach(P);
        assert!(!s.is_suspended(P));
        assert_eq!(
            s.detach(P, first, t0),
            Detached::Suspended { until: t0 + WINDOW }
        );
        assert!(s.is_suspended(P));
        assert_eq!(s.suspended_count(), 1);
        let second = s.resume(P, t0 + Duration::from_secs(10)).unwrap();
        assert_ne!(first, second);
        assert!(!s.is_suspended(P));
        assert!(s.is_current(P, second) && !s.is_current(P, first));
        // The old suspension's deadline passes: it no longer removes anyone.
        assert!(!s.expire(P, first, t0 + WINDOW));
        assert!(s.is_current(P, second));
    }

    #[test]
    fn the_window_ends_in_removal_and_a_late_resume_is_refused() {
        let t0 = Instant::now();
        let mut s = Suspensions::new(WINDOW);
        let epoch = s.attach(P);
        s.detach(P, epoch, t0);
        assert!(
            !s.expire(P, epoch, t0 + WINDOW - Duration::from_millis(1)),
            "not before the window's end"
        );
        assert_eq!(s.resume(P, t0 + WINDOW), Err(ResumeRefused::Expired));
        assert!(s.expire(P, epoch, t0 + WINDOW));
        assert_eq!(s.resume(P, t0 + WINDOW), Err(ResumeRefused::Unknown));
        assert!(!s.is_suspended(P));
    }

    #[test]
    fn a_new_socket_takes_over_an_open_one_whose_end_is_then_stale() {
        let t0 = Instant::now();
        let mut s = Suspensions::new(WINDOW);
        let old = s.attach(P);
        let new = s.resume(P, t0).unwrap();
        assert_eq!(s.detach(P, old, t0), Detached::Stale);
        assert!(!s.is_suspended(P));
        assert!(s.is_current(P, new));
    }

    #[test]
    fn a_zero_window_removes_at_once_and_unknown_participants_cannot_resume() {
        let t0 = Instant::now();
        let mut s = Suspensions::new(Duration::ZERO);
        let epoch = s.attach(P);
        assert_eq!(s.detach(P, epoch, t0), Detached::Remove);
        s.forget(P);
        assert_eq!(s.resume(P, t0), Err(ResumeRefused::Unknown));
        assert_eq!(s.resume(ParticipantId(8), t0), Err(ResumeRefused::Unknown));
    }

    #[test]
    fn resume_tokens_are_random_and_compared_whole() {
        let a = ResumeToken::random();
        let b = ResumeToken::random();
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str().len(), 32, "128 bits in hex");
        assert!(a.matches(a.as_str()));
        assert!(!a.matches(b.as_str()));
        assert!(!a.matches(&a.as_str()[..31]));
        assert!(!a.matches(""));
        assert!(!format!("{a:?}").contains(a.as_str()), "never logged");
    }
}
