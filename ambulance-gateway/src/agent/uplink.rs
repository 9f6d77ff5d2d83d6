//! The uplink's sans-IO core: which frames go on the wire when, acknowledgements, the
//! connection's life (welcome, liveness, reconnect backoff) and the clock offset estimate.
//!
//! [`Uplink`] does no I/O and reads no clock: the shell feeds it events with the current
//! [`Instant`] and carries out its [`Output`]s. After each (re)connection it sends live frames
//! as they are produced and the backlog (every unacknowledged frame older than the
//! connection) behind them, oldest first, flagged [`FLAG_LATE`], at a bounded rate and with a
//! bounded number of unacknowledged bytes in flight.

use crate::wire::{AgentControl, FLAG_LATE, GatewayControl, StreamId};
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// The agent's clock: microseconds since the Unix epoch, derived from a monotonic instant
/// and one reading of the system clock, so it never jumps while the agent runs.
#[derive(Debug, Clone, Copy)]
pub struct AgentClock {
    anchor: Instant,
    anchor_us: i64,
}

impl AgentClock {
    /// A clock reading `anchor_us` at `anchor`.
    pub fn new(anchor: Instant, anchor_us: i64) -> Self {
        Self { anchor, anchor_us }
    }

    /// A clock anchored on the system clock now.
    pub fn system() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        Self::new(Instant::now(), i64::try_from(wall).unwrap_or(i64::MAX))
    }

    /// The time at `at`, µs since the Unix epoch.
    pub fn micros(&self, at: Instant) -> i64 {
        let after = at.saturating_duration_since(self.anchor).as_micros() as i64;
        let before = self.anchor.saturating_duration_since(at).as_micros() as i64;
        self.anchor_us + after - before
    }
}

/// Tuning of an [`Uplink`].
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Backlog frames sent per second at most (the live frame rate times the catch-up factor).
    pub backlog_frames_per_sec: f64,
    /// Bytes of backlog sent but not yet acknowledged, at most.
    pub max_backlog_in_flight: usize,
    /// Interval of WebSocket pings.
    pub ping_every: Duration,
    /// A connection that received nothing for this long is dead.
    pub dead_after: Duration,
    /// Interval of clock probes once the first quick ones are done.
    pub probe_every: Duration,
    /// Clock probes sent quickly after each connection (the first one at once).
    pub quick_probes: u32,
    /// Interval of the quick clock probes.
    pub quick_probe_every: Duration,
    /// Before the first clock offset is known, frames wait at most this long after the
    /// welcome for it (then go with the uncorrected agent clock).
    pub offset_wait: Duration,
    /// First reconnection delay.
    pub backoff_min: Duration,
    /// Longest reconnection delay (before jitter).
    pub backoff_max: Duration,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            backlog_frames_per_sec: 4.0 * 26.0,
            max_backlog_in_flight: 2 << 20,
            ping_every: Duration::from_secs(1),
            dead_after: Duration::from_secs(4),
            probe_every: Duration::from_secs(2),
            quick_probes: 3,
            quick_probe_every: Duration::from_millis(200),
            offset_wait: Duration::from_secs(1),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// What the shell is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open a connection to the gateway; answer with [`Uplink::connected`] or
    /// [`Uplink::disconnected`].
    Connect,
    /// Drop the current connection (dead, or the gateway reported an error).
    Close,
    /// Send a binary message (a frame, flags and capture time already adjusted).
    Send(Vec<u8>),
    /// Send a text message (control JSON).
    SendText(String),
    /// Send a WebSocket ping.
    Ping,
    /// Every frame up to this sequence number is durable at the gateway: the spool may drop it.
    Forget(u64),
    /// The gateway greeted this connection; it holds the stream durably through this number.
    Welcomed {
        /// The welcome's `durable_through`.
        durable_through: u64,
    },
    /// The ER opened a consult; the crew should open `crew_url` (relative to the gateway).
    Consult {
        /// The consult room.
        room: String,
        /// Path (and fragment) of the crew's consult page.
        crew_url: String,
    },
    /// An error that retrying cannot fix (the token does not grant the stream).
    Fatal {
        /// The gateway's error code.
        code: String,
        /// The gateway's explanation.
        message: String,
    },
}

/// A frame not yet acknowledged, as stored in the spool (agent clock, no flags).
struct Pending {
    seq: u64,
    bytes: Vec<u8>,
}

/// One clock probe's result.
#[derive(Debug, Clone, Copy)]
struct ClockSample {
    rtt_us: i64,
    offset_us: i64,
}

/// Clock samples kept for the offset estimate.
const CLOCK_SAMPLES: usize = 8;

/// State of an established connection.
struct Up {
    /// The gateway's welcome arrived.
    welcomed: bool,
    /// First sequence number produced during this connection: older ones are backlog.
    first_live: u64,
    /// Next live sequence number to send.
    live_next: u64,
    /// Next backlog sequence number to send.
    backlog_next: u64,
    last_heard: Instant,
    next_ping: Instant,
    next_probe: Instant,
    quick_probes_left: u32,
    /// Sending waits for a first clock offset until this instant (set by the welcome).
    hold_until: Option<Instant>,
    /// Backlog sending allowance, in frames.
    tokens: f64,
    tokens_at: Instant,
    /// Backlog bytes sent on this connection and not yet acknowledged.
    in_flight: usize,
}

enum Link {
    Down { retry_at: Instant },
    Connecting,
    Up(Box<Up>),
}

/// The uplink state machine (see the [module documentation](self)).
pub struct Uplink {
    cfg: UplinkConfig,
    clock: AgentClock,
    stream: StreamId,
    pending: VecDeque<Pending>,
    acked_through: u64,
    last_seq: u64,
    link: Link,
    failures: u32,
    rng: u64,
    samples: VecDeque<ClockSample>,
    offset_us: Option<i64>,
    out: VecDeque<Output>,
}

impl Uplink {
    /// A core for `stream`, disconnected, that asks to connect at once. `seed` drives the
    /// backoff jitter.
    pub fn new(
        cfg: UplinkConfig,
        clock: AgentClock,
        stream: StreamId,
        now: Instant,
        seed: u64,
    ) -> Self {
        Self {
            cfg,
            clock,
            stream,
            pending: VecDeque::new(),
            acked_through: 0,
            last_seq: 0,
            link: Link::Down { retry_at: now },
            failures: 0,
            rng: seed | 1,
            samples: VecDeque::new(),
            offset_us: None,
            out: VecDeque::new(),
        }
    }

    /// A frame was produced and is in the spool. Sequence numbers must increase.
    pub fn frame_produced(&mut self, seq: u64, bytes: Vec<u8>, now: Instant) {
        debug_assert!(seq > self.last_seq, "sequence numbers must increase");
        self.last_seq = self.last_seq.max(seq);
        if seq > self.acked_through {
            self.pending.push_back(Pending { seq, bytes });
        }
        self.drive(now);
    }

    /// The connection the last [`Output::Connect`] asked for is established.
    pub fn connected(&mut self, now: Instant) {
        let first_live = self.last_seq + 1;
        self.link = Link::Up(Box::new(Up {
            welcomed: false,
            first_live,
            live_next: first_live,
            backlog_next: self.acked_through + 1,
            last_heard: now,
            next_ping: now + self.cfg.ping_every,
            next_probe: now,
            quick_probes_left: self.cfg.quick_probes,
            hold_until: None,
            tokens: 1.0,
            tokens_at: now,
            in_flight: 0,
        }));
        self.drive(now);
    }

    /// The connection failed to open, or closed.
    pub fn disconnected(&mut self, now: Instant) {
        if !matches!(self.link, Link::Down { .. }) {
            self.go_down(now);
        }
    }

    /// Something (a pong, any message) arrived on the connection.
    pub fn heard(&mut self, now: Instant) {
        if let Link::Up(up) = &mut self.link {
            up.last_heard = now;
        }
    }

    /// A control message arrived from the gateway.
    pub fn received_control(&mut self, msg: GatewayControl, now: Instant) {
        self.heard(now);
        match msg {
            GatewayControl::Welcome {
                stream,
                durable_through,
            } => self.welcome(stream, durable_through, now),
            GatewayControl::Ack { stream, through } => {
                if stream == self.stream {
                    self.ack(through);
                } else {
                    warn!(%stream, "ignoring an acknowledgement for another stream");
                }
            }
            GatewayControl::Time { t0, t1 } => self.clock_reply(t0, t1, now),
            GatewayControl::Consult { room, crew_url } => {
                self.out.push_back(Output::Consult { room, crew_url });
            }
            GatewayControl::Error { code, message } => {
                warn!(%code, %message, "the gateway reported an error");
                if code == "stream_not_granted" {
                    self.out.push_back(Output::Fatal { code, message });
                } else {
                    self.out.push_back(Output::Close);
                    self.go_down(now);
                }
            }
        }
        self.drive(now);
    }

    /// Time passed: runs what is due (connect, ping, probe, liveness, backlog pacing).
    pub fn tick(&mut self, now: Instant) {
        self.drive(now);
    }

    /// The next thing for the shell to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Uplink::tick`] should be called next, if something is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.link {
            Link::Down { retry_at } => Some(*retry_at),
            Link::Connecting => None,
            Link::Up(up) => {
                let mut t = (up.last_heard + self.cfg.dead_after)
                    .min(up.next_ping)
                    .min(up.next_probe);
                if up.welcomed {
                    if let Some(hold) = up.hold_until {
                        t = t.min(hold);
                    } else if let Some(at) = self.backlog_ready_at(up) {
                        t = t.min(at);
                    }
                }
                Some(t)
            }
        }
    }

    /// Frames not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.pending.len()
    }

    /// Highest sequence number the gateway has acknowledged.
    pub fn acked_through(&self) -> u64 {
        self.acked_through
    }

    /// The connection is up and welcomed.
    pub fn is_up(&self) -> bool {
        matches!(&self.link, Link::Up(up) if up.welcomed)
    }

    /// The estimated offset of the gateway's clock from the agent's, µs.
    pub fn offset_us(&self) -> Option<i64> {
        self.offset_us
    }

    fn welcome(&mut self, stream: StreamId, durable_through: u64, now: Instant) {
        if stream != self.stream {
            self.out.push_back(Output::Fatal {
                code: "stream_not_granted".into(),
                message: format!(
                    "the gateway grants stream {stream}, but this agent sends {}",
                    self.stream
                ),
            });
            return;
        }
        let Link::Up(up) = &mut self.link else {
            return;
        };
        info!(durable_through, "welcomed by the gateway");
        up.welcomed = true;
        up.hold_until = self.offset_us.is_none().then(|| now + self.cfg.offset_wait);
        up.tokens = 1.0;
        up.tokens_at = now;
        self.failures = 0;
        if durable_through > self.last_seq {
            warn!(
                durable_through,
                last_seq = self.last_seq,
                "the gateway holds more of this stream than this spool produced"
            );
        }
        self.ack(durable_through);
        self.out.push_back(Output::Welcomed { durable_through });
    }

    fn ack(&mut self, through: u64) {
        if through <= self.acked_through {
            return;
        }
        let up = match &mut self.link {
            Link::Up(up) => Some(up),
            _ => None,
        };
        let mut freed = 0;
        while let Some(front) = self.pending.front() {
            if front.seq > through {
                break;
            }
            if let Some(up) = &up
                && front.seq < up.backlog_next
                && front.seq < up.first_live
            {
                freed += front.bytes.len();
            }
            self.pending.pop_front();
        }
        if let Some(up) = up {
            up.in_flight = up.in_flight.saturating_sub(freed);
            up.backlog_next = up.backlog_next.max(through + 1);
            up.live_next = up.live_next.max(through + 1);
        }
        self.acked_through = through;
        self.out.push_back(Output::Forget(through));
    }

    fn clock_reply(&mut self, t0: i64, t1: i64, now: Instant) {
        let t3 = self.clock.micros(now);
        let rtt_us = t3 - t0;
        if rtt_us < 0 {
            debug!("ignoring a clock reply from the future");
            return;
        }
        let offset_us = t1 - (t0 + t3) / 2;
        if self.samples.len() == CLOCK_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(ClockSample { rtt_us, offset_us });
        self.offset_us = self
            .samples
            .iter()
            .min_by_key(|s| s.rtt_us)
            .map(|s| s.offset_us);
        if let Link::Up(up) = &mut self.link {
            up.hold_until = None;
        }
    }

    fn go_down(&mut self, now: Instant) {
        let base = self
            .cfg
            .backoff_min
            .saturating_mul(1 << self.failures.min(16))
            .min(self.cfg.backoff_max);
        let jitter = base.mul_f64(0.2 * self.random());
        self.failures = self.failures.saturating_add(1);
        self.link = Link::Down {
            retry_at: now + base + jitter,
        };
    }

    /// A number in [0, 1) (xorshift64*).
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn probe(&mut self, now: Instant) {
        let t0 = self.clock.micros(now);
        let json =
            serde_json::to_string(&AgentControl::Time { t0 }).expect("a time probe serializes");
        self.out.push_back(Output::SendText(json));
    }

    fn drive(&mut self, now: Instant) {
        match &mut self.link {
            Link::Down { retry_at } => {
                if now >= *retry_at {
                    self.link = Link::Connecting;
                    self.out.push_back(Output::Connect);
                }
            }
            Link::Connecting => {}
            Link::Up(up) => {
                if now.saturating_duration_since(up.last_heard) >= self.cfg.dead_after {
                    warn!("nothing heard from the gateway for too long: reconnecting");
                    self.out.push_back(Output::Close);
                    self.go_down(now);
                    return;
                }
                if now >= up.next_ping {
                    up.next_ping = now + self.cfg.ping_every;
                    self.out.push_back(Output::Ping);
                }
                if now >= up.next_probe {
                    up.next_probe = if up.quick_probes_left > 1 {
                        up.quick_probes_left -= 1;
                        now + self.cfg.quick_probe_every
                    } else {
                        up.quick_probes_left = 0;
                        now + self.cfg.probe_every
                    };
                    self.probe(now);
                }
                self.send_due(now);
            }
        }
    }

    /// Sends the live frames not sent yet, then as much backlog as pacing allows.
    fn send_due(&mut self, now: Instant) {
        let Link::Up(up) = &mut self.link else {
            return;
        };
        if !up.welcomed {
            return;
        }
        if let Some(hold) = up.hold_until {
            if now < hold {
                return;
            }
            up.hold_until = None;
        }
        let offset = self.offset_us.unwrap_or(0);
        let start = self.pending.partition_point(|p| p.seq < up.live_next);
        for p in self.pending.range(start..) {
            self.out
                .push_back(Output::Send(outgoing(&p.bytes, 0, offset)));
            up.live_next = p.seq + 1;
        }
        let rate = self.cfg.backlog_frames_per_sec;
        let burst = (rate / 10.0).max(1.0);
        let elapsed = now.saturating_duration_since(up.tokens_at).as_secs_f64();
        up.tokens = (up.tokens + elapsed * rate).min(burst);
        up.tokens_at = now;
        loop {
            let i = self.pending.partition_point(|p| p.seq < up.backlog_next);
            let Some(p) = self.pending.get(i) else { break };
            if p.seq >= up.first_live || up.tokens < 1.0 {
                break;
            }
            if up.in_flight > 0 && up.in_flight + p.bytes.len() > self.cfg.max_backlog_in_flight {
                break;
            }
            self.out
                .push_back(Output::Send(outgoing(&p.bytes, FLAG_LATE, offset)));
            up.in_flight += p.bytes.len();
            up.tokens -= 1.0;
            up.backlog_next = p.seq + 1;
        }
    }

    /// When the next backlog frame may go, if one is waiting and not blocked by the
    /// in-flight bound.
    fn backlog_ready_at(&self, up: &Up) -> Option<Instant> {
        let i = self.pending.partition_point(|p| p.seq < up.backlog_next);
        let p = self.pending.get(i)?;
        if p.seq >= up.first_live
            || (up.in_flight > 0 && up.in_flight + p.bytes.len() > self.cfg.max_backlog_in_flight)
        {
            return None;
        }
        let missing = (1.0 - up.tokens).max(0.0);
        Some(up.tokens_at + Duration::from_secs_f64(missing / self.cfg.backlog_frames_per_sec))
    }
}

/// A stored frame as sent: `flags` set, capture time moved to the gateway clock.
fn outgoing(stored: &[u8], flags: u8, offset_us: i64) -> Vec<u8> {
    let mut bytes = stored.to_vec();
    if let Some(f) = bytes.get_mut(2) {
        *f |= flags;
    }
    let at = 12 + bytes.get(3).copied().unwrap_or(0) as usize;
    if let Some(field) = bytes.get_mut(at..at + 8) {
        let t = i64::from_le_bytes(field.try_into().expect("8 bytes"));
        field.copy_from_slice(&t.saturating_add(offset_us).to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Frame, Header, Numeric, Payload, decode, encode};

    const STREAM: &str = "AMB-7";

    fn frame(seq: u64, capture_us: i64) -> Vec<u8> {
        encode(&Frame {
            header: Header {
                kind: crate::wire::Kind::Numerics,
                flags: 0,
                stream: STREAM.parse().unwrap(),
                seq,
                capture_us,
            },
            payload: Payload::Numerics(vec![Numeric {
                code: 147_842,
                value: 72.0,
            }]),
        })
        .unwrap()
    }

    struct Harness {
        up: Uplink,
        t0: Instant,
        clock: AgentClock,
    }

    impl Harness {
        fn new(cfg: UplinkConfig) -> Self {
            let t0 = Instant::now();
            let clock = AgentClock::new(t0, 1_000_000_000_000);
            Self {
                up: Uplink::new(cfg, clock, STREAM.parse().unwrap(), t0, 7),
                t0,
                clock,
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        fn drain(&mut self) -> Vec<Output> {
            std::iter::from_fn(|| self.up.poll_output()).collect()
        }

        /// Connects, welcomes and answers the first clock probe with a zero offset.
        fn connect(&mut self, ms: u64, durable_through: u64) -> Vec<Output> {
            self.up.tick(self.at(ms));
            let mut out = self.drain();
            self.up.connected(self.at(ms));
            self.up.received_control(
                GatewayControl::Welcome {
                    stream: STREAM.parse().unwrap(),
                    durable_through,
                },
                self.at(ms),
            );
            let t = self.clock.micros(self.at(ms));
            self.up
                .received_control(GatewayControl::Time { t0: t, t1: t }, self.at(ms));
            out.extend(self.drain());
            out
        }
    }

    fn sent(out: &[Output]) -> Vec<(u64, bool)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(b) => {
                    let f = decode(b).unwrap();
                    Some((f.header.seq, f.header.flags & FLAG_LATE != 0))
                }
                _ => None,
            })
            .collect()
    }

    fn cfg() -> UplinkConfig {
        UplinkConfig {
            backlog_frames_per_sec: 100.0,
            ..UplinkConfig::default()
        }
    }

    #[test]
    fn backlog_goes_behind_live_and_is_flagged_late() {
        let mut h = Harness::new(cfg());
        for seq in 1..=5 {
            h.up.frame_produced(seq, frame(seq, 0), h.at(0));
        }
        let _ = h.drain();
        let out = h.connect(0, 0);
        // The first backlog frame may go at once; the rest are paced.
        assert_eq!(sent(&out), vec![(1, true)]);
        h.up.frame_produced(6, frame(6, 0), h.at(1));
        let out = h.drain();
        assert_eq!(sent(&out), vec![(6, false)], "live goes at once");
        let mut all = Vec::new();
        for ms in 2..200 {
            h.up.tick(h.at(ms));
            all.extend(sent(&h.drain()));
        }
        assert_eq!(all, vec![(2, true), (3, true), (4, true), (5, true)]);
    }

    #[test]
    fn nothing_is_sent_before_the_welcome() {
        let mut h = Harness::new(cfg());
        h.up.frame_produced(1, frame(1, 0), h.at(0));
        h.up.tick(h.at(0));
        h.up.connected(h.at(0));
        h.up.frame_produced(2, frame(2, 0), h.at(1));
        assert!(sent(&h.drain()).is_empty());
        h.up.received_control(
            GatewayControl::Welcome {
                stream: STREAM.parse().unwrap(),
                durable_through: 0,
            },
            h.at(2),
        );
        // No clock offset yet: sending waits up to `offset_wait`.
        assert!(sent(&h.drain()).is_empty());
        h.up.tick(h.at(1002));
        assert_eq!(sent(&h.drain()), vec![(2, false), (1, true)]);
    }

    #[test]
    fn backlog_pacing_is_bounded() {
        let mut h = Harness::new(UplinkConfig {
            backlog_frames_per_sec: 50.0,
            ..cfg()
        });
        for seq in 1..=1000 {
            h.up.frame_produced(seq, frame(seq, 0), h.at(0));
        }
        let _ = h.drain();
        let mut n = sent(&h.connect(0, 0)).len();
        let mut now = 0;
        // Drive it the way the shell does: wake at poll_timeout.
        while now < 2000 {
            let next = h.up.poll_timeout().unwrap();
            now = (next.duration_since(h.t0).as_millis() as u64).max(now + 1);
            h.up.tick(h.at(now));
            // Keep the link alive.
            h.up.heard(h.at(now));
            n += sent(&h.drain()).len();
        }
        // 2 s at 50 frames/s, plus a burst of at most 5.
        assert!((95..=106).contains(&n), "{n} backlog frames sent in 2 s");
    }

    #[test]
    fn backlog_in_flight_bytes_are_bounded_until_acked() {
        let len = frame(1, 0).len();
        let mut h = Harness::new(UplinkConfig {
            max_backlog_in_flight: 3 * len,
            backlog_frames_per_sec: 1000.0,
            ..cfg()
        });
        for seq in 1..=10 {
            h.up.frame_produced(seq, frame(seq, 0), h.at(0));
        }
        let _ = h.drain();
        let mut all = sent(&h.connect(0, 0));
        for ms in 1..100 {
            h.up.tick(h.at(ms));
            all.extend(sent(&h.drain()));
        }
        assert_eq!(all.len(), 3);
        h.up.received_control(
            GatewayControl::Ack {
                stream: STREAM.parse().unwrap(),
                through: 2,
            },
            h.at(100),
        );
        let out = h.drain();
        assert!(out.contains(&Output::Forget(2)));
        all.extend(sent(&out));
        for ms in 101..200 {
            h.up.tick(h.at(ms));
            all.extend(sent(&h.drain()));
        }
        assert_eq!(
            all.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(h.up.unacked(), 8);
    }

    #[test]
    fn acks_forget_and_welcome_skips_what_is_durable() {
        let mut h = Harness::new(cfg());
        for seq in 1..=10 {
            h.up.frame_produced(seq, frame(seq, 0), h.at(0));
        }
        let out = h.connect(0, 6);
        assert!(out.contains(&Output::Forget(6)));
        assert!(out.contains(&Output::Welcomed { durable_through: 6 }));
        assert_eq!(h.up.unacked(), 4);
        let mut all = sent(&out);
        for ms in 1..200 {
            h.up.tick(h.at(ms));
            all.extend(sent(&h.drain()));
        }
        assert_eq!(all, vec![(7, true), (8, true), (9, true), (10, true)]);
        h.up.received_control(
            GatewayControl::Ack {
                stream: STREAM.parse().unwrap(),
                through: 10,
            },
            h.at(200),
        );
        let forgets: Vec<Output> = h
            .drain()
            .into_iter()
            .filter(|o| matches!(o, Output::Forget(_)))
            .collect();
        assert_eq!(forgets, vec![Output::Forget(10)]);
        assert_eq!(h.up.unacked(), 0);
        assert_eq!(h.up.acked_through(), 10);
        // A stale or repeated ack changes nothing.
        h.up.received_control(
            GatewayControl::Ack {
                stream: STREAM.parse().unwrap(),
                through: 9,
            },
            h.at(201),
        );
        assert!(h.drain().is_empty());
    }

    #[test]
    fn unacked_frames_are_resent_after_a_reconnect() {
        let mut h = Harness::new(cfg());
        let _ = h.connect(0, 0);
        for seq in 1..=3 {
            h.up.frame_produced(seq, frame(seq, 0), h.at(1));
        }
        assert_eq!(sent(&h.drain()), vec![(1, false), (2, false), (3, false)]);
        h.up.disconnected(h.at(2));
        h.up.frame_produced(4, frame(4, 0), h.at(3));
        assert!(sent(&h.drain()).is_empty());
        // Backoff: the first retry comes 0.5–0.6 s later.
        h.up.tick(h.at(400));
        assert!(h.drain().is_empty());
        let retry = h.up.poll_timeout().unwrap().duration_since(h.t0);
        assert!(
            (Duration::from_millis(502)..=Duration::from_millis(602)).contains(&retry),
            "{retry:?}"
        );
        let mut all = sent(&h.connect(700, 1));
        for ms in 701..800 {
            h.up.tick(h.at(ms));
            all.extend(sent(&h.drain()));
        }
        assert_eq!(all, vec![(2, true), (3, true), (4, true)]);
    }

    #[test]
    fn clock_offset_uses_the_shortest_round_trip() {
        let mut h = Harness::new(cfg());
        h.up.tick(h.at(0));
        h.up.connected(h.at(0));
        let _ = h.drain();
        // The gateway's clock is 5 s ahead; the uplink is slower than the downlink.
        let true_offset: i64 = 5_000_000;
        let delays_ms: [(u64, u64); 4] = [(80, 20), (30, 10), (200, 5), (50, 50)];
        let mut now = 0;
        for (up_ms, down_ms) in delays_ms {
            now += 500;
            h.up.heard(h.at(now));
            let t0 = h.clock.micros(h.at(now));
            let t1 = t0 + (up_ms as i64) * 1000 + true_offset;
            let arrive = now + up_ms + down_ms;
            h.up.received_control(GatewayControl::Time { t0, t1 }, h.at(arrive));
        }
        // The sample with the 40 ms round trip wins: its error is (30 - 10) / 2 ms.
        assert_eq!(h.up.offset_us(), Some(true_offset + 10_000));
    }

    #[test]
    fn capture_time_is_corrected_when_sent() {
        let mut h = Harness::new(cfg());
        // The gateway's clock is 3 s ahead (a probe answered with a zero round trip).
        h.up.tick(h.at(0));
        h.up.connected(h.at(0));
        let t = h.clock.micros(h.at(0));
        h.up.received_control(
            GatewayControl::Time {
                t0: t,
                t1: t + 3_000_000,
            },
            h.at(0),
        );
        h.up.received_control(
            GatewayControl::Welcome {
                stream: STREAM.parse().unwrap(),
                durable_through: 0,
            },
            h.at(0),
        );
        h.up.frame_produced(1, frame(1, 1_000), h.at(1));
        let bytes = h
            .drain()
            .into_iter()
            .find_map(|o| match o {
                Output::Send(b) => Some(b),
                _ => None,
            })
            .unwrap();
        assert_eq!(decode(&bytes).unwrap().header.capture_us, 3_001_000);
    }

    #[test]
    fn a_silent_link_is_closed_and_retried() {
        let mut h = Harness::new(cfg());
        let _ = h.connect(0, 0);
        let mut pings = 0;
        for ms in (100..=3900).step_by(100) {
            h.up.tick(h.at(ms));
            pings += h.drain().iter().filter(|o| **o == Output::Ping).count();
        }
        assert_eq!(pings, 3);
        h.up.tick(h.at(4000));
        assert!(h.drain().contains(&Output::Close));
        assert!(!h.up.is_up());
        h.up.tick(h.at(4700));
        assert_eq!(h.drain(), vec![Output::Connect]);
    }

    #[test]
    fn stream_not_granted_is_fatal_other_errors_reconnect() {
        let mut h = Harness::new(cfg());
        let _ = h.connect(0, 0);
        h.up.received_control(
            GatewayControl::Error {
                code: "bad_frame".into(),
                message: "x".into(),
            },
            h.at(1),
        );
        assert_eq!(h.drain(), vec![Output::Close]);
        let _ = h.connect(2000, 0);
        h.up.received_control(
            GatewayControl::Error {
                code: "stream_not_granted".into(),
                message: "no".into(),
            },
            h.at(2001),
        );
        assert!(matches!(h.drain()[..], [Output::Fatal { .. }]));
    }
}
