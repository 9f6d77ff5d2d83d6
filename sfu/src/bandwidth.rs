//! Bandwidth estimation towards each subscriber.
//!
//! A subscriber connection runs the `rtc` crate's send-side congestion control: every
//! forwarded packet gets a transport-wide sequence number, the browser reports arrivals
//! (transport-cc feedback), and Google Congestion Control turns them into a target bitrate.
//! The estimator lives inside the connection's interceptor chain, so it publishes its target
//! into an [`Estimate`] the router reads when it allocates layers. A subscriber that offers
//! only REMB (`goog-remb`) has its REMB value used instead.
//!
//! GCC alone reacts slowly when the estimate is far above what is sent (the router sends
//! only the layers it chose, so the estimate is rarely tested): its loss half steps down from
//! the top a few per cent at a time, and a full tail-drop queue stops its delay half from
//! seeing a slope (measured on a 500 kbit/s link: 3.5 to 22 s to come down). The estimate
//! is therefore GCC's delay half capped by a [`DeliveryBound`]: on a standing queue or heavy
//! loss it drops at once to a little under the rate that actually arrives, and climbs back
//! slowly, more slowly still just above the capacity it last saw, and no further than most
//! of the narrowest link's rate that packet pairs measure ([`PairCapacity`]).

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, Gcc, PacketReport};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// Written by the inbound-RTCP interceptor, read by the estimator, both in the
    /// connection's interceptor chain.
    coverage: Mutex<FeedbackCoverage>,
}

impl Estimate {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Cell {
            bps: AtomicU64::new(INITIAL_BPS),
            fed: AtomicBool::new(false),
            coverage: Mutex::new(FeedbackCoverage::default()),
        }))
    }

    /// Notes that a transport-cc feedback packet arrived covering `count` transport-wide
    /// sequence numbers from `base` (called before the estimator sees it).
    pub(crate) fn feedback_covered(&self, base: u16, count: u16) {
        self.coverage().record(base, count);
    }

    /// Whether recent feedback covered transport-wide sequence number `seq`.
    #[cfg(test)]
    pub(crate) fn covered(&self, seq: u16) -> bool {
        self.coverage().covers(seq)
    }

    fn coverage(&self) -> std::sync::MutexGuard<'_, FeedbackCoverage> {
        self.0
            .coverage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
            bound: DeliveryBound::default(),
            estimate: self.clone(),
        }
    }
}

/// Google Congestion Control, capped by a [`DeliveryBound`], publishing its target into an
/// [`Estimate`].
pub(crate) struct SharedGcc {
    gcc: Gcc,
    bound: DeliveryBound,
    estimate: Estimate,
}

impl SharedGcc {
    fn publish(&self) {
        let bps = self.target_bitrate().max(0.0) as u64;
        self.estimate.0.bps.store(bps, Ordering::Relaxed);
    }
}

impl BandwidthEstimator for SharedGcc {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        self.gcc.on_reports(now, reports);
        if !reports.is_empty() {
            let current = self.target_bitrate();
            let reported = self.estimate.coverage().reported(reports);
            if let Some(cause) = self.bound.on_reports(now, &reported, current) {
                tracing::debug!(
                    ?cause,
                    bound = self.bound.bps().map(|b| b as u64),
                    capacity = self.bound.capacity as u64,
                    bottleneck = self.bound.pairs.bps().map(|b| b as u64),
                    delay_based = self.gcc.delay_based_bitrate() as u64,
                    "estimate cut to the delivered rate"
                );
            }
            self.estimate.0.fed.store(true, Ordering::Relaxed);
        }
        self.publish();
    }

    /// GCC's delay-based half, capped by the delivery bound. GCC's loss half is left out:
    /// it steps down from wherever the estimate stood (the top, for a subscriber that never
    /// filled its path) for as long as loss stays high, which after a full queue is seconds
    /// more than the path needs, and then holds that low rate for as long as a radio link
    /// loses a few per cent. The bound reacts to heavy loss from the delivered rate instead.
    fn target_bitrate(&self) -> f64 {
        let delay = self.gcc.delay_based_bitrate();
        self.bound
            .bps()
            .map_or(delay, |bound| delay.min(bound))
            .clamp(MIN_BPS as f64, MAX_BPS as f64)
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

/// Transport-cc feedback packets whose coverage is remembered (a few seconds' worth).
const COVERAGE_KEPT: usize = 128;

/// The transport-wide sequence numbers that recent transport-cc feedback packets covered.
///
/// The `rtc` crate reports a packet that no feedback named as lost once a later one has
/// arrived. A browser reports each packet once, though, so a feedback packet lost on its way
/// back leaves every packet it covered unreported, not lost: on a link that loses 3 % each
/// way, two lost feedback packets in one second read as a quarter of the video lost, and
/// the estimate was cut to a fifth of the link.
#[derive(Debug, Default)]
pub(crate) struct FeedbackCoverage {
    /// (base sequence number, count) of the last [`COVERAGE_KEPT`] feedback packets.
    ranges: VecDeque<(u16, u16)>,
}

impl FeedbackCoverage {
    /// Notes a feedback packet covering `count` sequence numbers from `base`.
    pub(crate) fn record(&mut self, base: u16, count: u16) {
        if self.ranges.len() == COVERAGE_KEPT {
            self.ranges.pop_front();
        }
        self.ranges.push_back((base, count));
    }

    /// Whether some recent feedback packet covered `sequence_number`.
    pub(crate) fn covers(&self, sequence_number: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(base, count)| sequence_number.wrapping_sub(base) < count)
    }

    /// `reports` without the transport-wide packets that no feedback covered (neither
    /// arrived nor lost as far as anyone knows); borrowed when there are none such.
    pub(crate) fn reported<'a>(&self, reports: &'a [PacketReport]) -> Cow<'a, [PacketReport]> {
        let known =
            |r: &PacketReport| r.arrived || !r.is_twcc || self.covers(r.twcc_sequence_number);
        if reports.iter().all(known) {
            Cow::Borrowed(reports)
        } else {
            Cow::Owned(reports.iter().filter(|r| known(r)).cloned().collect())
        }
    }
}

/// A queue standing longer than this, above the path's smallest delay, is congestion.
const QUEUE_DELAY: Duration = Duration::from_millis(80);
/// How long the queue must stand: a keyframe's burst queues briefly and drains.
const QUEUE_STANDING: Duration = Duration::from_millis(300);
/// A queue whose delay fell by this much since the last batch is draining, not standing.
const DRAINING: Duration = Duration::from_millis(20);
/// A standing queue is congestion while the one-way delay of the packets sent since it
/// appeared grows by more than this (it still grows) ...
const QUEUE_GROWTH: Duration = Duration::from_millis(15);
/// ... or while more than this share of them is lost (it is full and drops its tail; a radio
/// link loses a few per cent without a queue).
const QUEUE_LOSS: f64 = 0.10;
/// ... and a longer path once their delay has held for this long.
const LONGER_PATH_SPAN: Duration = Duration::from_millis(800);
/// Loss above this share of the last second's packets is congestion: a link sent a third
/// more than it carries drops that much from its full queue. Smaller overloads show as a
/// standing queue first. The share is high because a radio link loses a few per cent
/// without being full, and because a lost feedback packet reports every packet it covered
/// as lost (the `rtc` crate counts what no feedback named as lost).
const HEAVY_LOSS: f64 = 0.25;
/// Packets the loss share needs before it means anything.
const LOSS_MIN_PACKETS: usize = 40;
/// Packets sent since a queue appeared that are needed to tell an overload from a longer
/// path.
const QUEUE_MIN_PACKETS: usize = 20;
/// Packets a stream needs in the window for its own loss share to count.
const LOSS_MIN_STREAM_PACKETS: usize = 10;
/// The window the loss share is measured over (by departure).
const LOSS_WINDOW: Duration = Duration::from_secs(1);
/// The window the delivered rate is measured over (by arrival): short, so that when a queue
/// has stood for [`QUEUE_STANDING`] it holds mostly packets that left the full bottleneck.
const RATE_WINDOW: Duration = Duration::from_millis(500);
/// The smallest span of arrivals the delivered rate is computed from.
const MIN_RATE_SPAN: Duration = Duration::from_millis(250);
/// How long the path's smallest delay is remembered.
const BASE_DELAY_WINDOW: Duration = Duration::from_secs(10);
/// On congestion the bound is set to this share of the delivered rate.
const BACK_OFF: f64 = 0.85;
/// After a cut the bound is not cut again for this long (the lower rate must take effect).
const CUT_INTERVAL: Duration = Duration::from_millis(600);
/// How fast the bound climbs below the capacity last seen, per second.
const GROWTH: f64 = 0.08;
/// How fast it climbs above that capacity, per second: any upgrade tried there is a guess.
const GROWTH_ABOVE_CAPACITY: f64 = 0.01;
/// Past this multiple of the capacity last seen, that capacity says nothing any more and
/// the bound climbs at [`GROWTH`] again.
const CAPACITY_FORGOTTEN: f64 = 1.5;

/// Two packets sent at most this far apart whose arrivals spread further apart by at least
/// [`PAIR_SPREAD`] measure the bottleneck: the second waited behind the first, so the gap
/// between their arrivals is the time the narrowest link took to carry the second.
const PAIR_MAX_SEND_GAP: Duration = Duration::from_millis(20);
/// How much further apart a pair must arrive than it left to count as spread by a queue
/// (arrival times come in 250 µs steps).
const PAIR_SPREAD: Duration = Duration::from_millis(1);
/// A pair that left at most this far apart and arrived no further apart shows the path is
/// faster than the pair.
const PAIR_TIGHT_SEND_GAP: Duration = Duration::from_millis(2);
/// The second packet of a pair must be at least this large for its gap to mean anything.
const PAIR_MIN_BYTES: usize = 200;
/// How long pair measurements are kept.
const PAIR_WINDOW: Duration = Duration::from_secs(5);
/// The latest measurements the bottleneck rate is the median of (a second or so of video
/// frames), so that a path that got faster shows within about half as many.
const PAIR_SAMPLES: usize = 32;
/// Measurements needed before the bottleneck rate is believed.
const PAIR_MIN_SAMPLES: usize = 8;
/// The bound does not climb past this share of the bottleneck rate the pairs measure: the
/// rest is left for audio, parity and retransmissions, and an upgrade to a layer the path
/// cannot carry (it fills the queue, the picture freezes for 2-3 s while the layer comes
/// down again) is never tried.
const PAIR_SHARE: f64 = 0.9;

/// The narrowest link's rate, read from packet pairs (sans-IO: reports in, bits per second
/// out).
///
/// Two packets that leave close together and reach a link slower than their own spacing
/// queue there: the second leaves that link (and so arrives) one of its transmission times
/// after the first. Its size over that arrival gap is the link's rate, whatever else the
/// path does. The video's own frames make such pairs (a frame's packets leave together, as
/// the publisher paced them, and parity follows a frame at once), so nothing extra is sent.
/// A tight pair that arrives no further apart than it left shows only that the path is
/// faster than the pair; when most recent pairs do, the path has widened (a limit lifted).
#[derive(Debug, Default)]
struct PairCapacity {
    /// The last packet reported, if it arrived: (departure, arrival).
    last: Option<(Instant, Duration)>,
    /// (feedback time, the rate a spread pair measured, or `None` for a tight pair that did
    /// not spread), oldest first.
    samples: VecDeque<(Instant, Option<f64>)>,
}

impl PairCapacity {
    /// Folds in one reported packet (in send order); `now` is the feedback's time.
    fn on_report(&mut self, now: Instant, report: &PacketReport) {
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > PAIR_WINDOW)
        {
            self.samples.pop_front();
        }
        let arrival = report.arrival.filter(|_| report.arrived);
        let previous = std::mem::replace(&mut self.last, arrival.map(|a| (report.departure, a)));
        let (Some((sent_before, arrived_before)), Some(arrived)) = (previous, arrival) else {
            return;
        };
        if report.size < PAIR_MIN_BYTES {
            return;
        }
        let send_gap = report.departure.saturating_duration_since(sent_before);
        let arrival_gap = arrived.saturating_sub(arrived_before);
        let sample = if send_gap <= PAIR_MAX_SEND_GAP && arrival_gap >= send_gap + PAIR_SPREAD {
            Some(report.size as f64 * 8.0 / arrival_gap.as_secs_f64())
        } else if send_gap <= PAIR_TIGHT_SEND_GAP {
            None
        } else {
            return;
        };
        if self.samples.len() == PAIR_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now, sample));
    }

    /// The latest [`PAIR_SAMPLES`] pairs of the last [`PAIR_WINDOW`], once there are
    /// [`PAIR_MIN_SAMPLES`] of them, and how many of them spread.
    fn recent(&self) -> Option<usize> {
        (self.samples.len() >= PAIR_MIN_SAMPLES)
            .then(|| self.samples.iter().filter(|(_, s)| s.is_some()).count())
    }

    /// The bottleneck's rate: the median of the spread pairs, when most recent pairs spread.
    fn bps(&self) -> Option<f64> {
        let spread = self.recent()?;
        if spread * 2 <= self.samples.len() {
            return None;
        }
        let mut rates: Vec<f64> = self.samples.iter().filter_map(|(_, s)| *s).collect();
        let mid = rates.len() / 2;
        let (_, median, _) = rates.select_nth_unstable_by(mid, f64::total_cmp);
        Some(*median)
    }

    /// Whether most recent pairs arrived as close as they left: the path is faster than
    /// they test.
    fn widened(&self) -> bool {
        self.recent()
            .is_some_and(|spread| spread * 2 <= self.samples.len())
    }
}

/// One reported packet, as the loss share and the sent rate need it.
#[derive(Debug, Clone, Copy)]
struct Fate {
    departure: Instant,
    /// Receiver time, if it arrived.
    arrival: Option<Duration>,
    bytes: usize,
    ssrc: u32,
}

/// What a queue that stood says of the path.
enum QueueSign {
    /// More is sent than the path carries; it delivers this many bits per second.
    Overload { delivered: f64 },
    /// The path carries what is sent; its delay grew (a handover, a new route).
    LongerPath,
}

/// Why a [`DeliveryBound`] was cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Congestion {
    /// A queue stood on the path, this much above its smallest delay in the last batch,
    /// and still grew or dropped its tail.
    StandingQueue(Duration),
    /// This share of the last second's packets was lost; `longest_run` lost in a row.
    HeavyLoss { share: f64, longest_run: usize },
}

/// A cap on the estimate from what the path delivers (sans-IO: feedback and time in, a
/// bitrate out).
///
/// It watches two signs of a full path in transport-cc feedback. One is a queue that
/// stands: the smallest one-way delay of a feedback batch stays [`QUEUE_DELAY`] above the
/// smallest seen for [`QUEUE_STANDING`], without draining, and the packets sent since it
/// appeared show an overload (their delay grows by over [`QUEUE_GROWTH`], or over
/// [`QUEUE_LOSS`] of them are lost). A queue whose delay holds for [`LONGER_PATH_SPAN`]
/// instead is a longer path (a handover, a link shaped mid-call): its delay becomes the new
/// base and a real queue behind it is measured from there. The other is heavy loss (over
/// [`HEAVY_LOSS`] of the last second's packets, in every stream). Only packets sent since
/// the last cut count, so one congestion is not cut for twice. On either it sets the bound
/// to [`BACK_OFF`] times the rate that arrived (of the packets sent since the queue
/// appeared, or over the last [`RATE_WINDOW`] of arrivals), and remembers that rate as the
/// capacity. Without them it climbs by [`GROWTH`] a second, but by [`GROWTH_ABOVE_CAPACITY`]
/// just above the capacity (up to [`CAPACITY_FORGOTTEN`] times it), where an upgrade would
/// likely fill the path again, and never past [`PAIR_SHARE`] of the narrowest link's rate
/// that packet pairs measure ([`PairCapacity`]); pairs that show a path faster than the
/// capacity (a limit lifted) make it climb at [`GROWTH`] again.
#[derive(Debug, Default)]
pub(crate) struct DeliveryBound {
    bound: Option<f64>,
    capacity: f64,
    /// Arrived packets by receiver time: (arrival, bytes).
    arrivals: VecDeque<(Duration, usize)>,
    /// Reported packets since the last cut, in send order.
    fates: VecDeque<Fate>,
    /// The smallest one-way delay (receiver clock minus departure, an arbitrary offset) of
    /// each batch, for the base delay over [`BASE_DELAY_WINDOW`].
    batch_delays: VecDeque<(Instant, f64)>,
    epoch: Option<Instant>,
    /// Since when (feedback time) the queue has stood.
    queue_since: Option<Instant>,
    /// The first departure of the batch that first showed it: the packets it covers all
    /// left after any step in the path's delay.
    queue_from: Option<Instant>,
    /// The last batch's smallest delay above the base.
    queue_delay: Duration,
    last_cut: Option<Instant>,
    last_growth: Option<Instant>,
    /// The bottleneck's rate from packet pairs: the bound climbs no higher than most of it.
    pairs: PairCapacity,
}

impl DeliveryBound {
    /// The cap, once congestion was seen.
    pub(crate) fn bps(&self) -> Option<f64> {
        self.bound
    }

    /// Folds in one feedback batch received at `now`; `current` is the estimate in force.
    /// Returns why the bound was cut, if it was.
    pub(crate) fn on_reports(
        &mut self,
        now: Instant,
        reports: &[PacketReport],
        current: f64,
    ) -> Option<Congestion> {
        let first = reports.first()?;
        // Departures are measured from the first one reported (reports come in send order).
        let epoch = *self.epoch.get_or_insert(first.departure);
        let mut batch_min: Option<f64> = None;
        let mut batch_from: Option<Instant> = None;
        for r in reports {
            self.pairs.on_report(now, r);
            // What was sent before the last cut shows the old rate's queue and loss.
            let fresh = self.after_last_cut(r);
            if fresh {
                self.fates.push_back(Fate {
                    departure: r.departure,
                    arrival: r.arrival.filter(|_| r.arrived),
                    bytes: r.size,
                    ssrc: r.ssrc,
                });
            }
            let Some(arrival) = r.arrival.filter(|_| r.arrived) else {
                continue;
            };
            self.arrivals.push_back((arrival, r.size));
            if fresh {
                batch_from.get_or_insert(r.departure);
                let sent = r.departure.saturating_duration_since(epoch).as_secs_f64();
                let delay = arrival.as_secs_f64() - sent;
                batch_min = Some(batch_min.map_or(delay, |m: f64| m.min(delay)));
            }
        }
        self.trim(now);
        let previous = self.batch_delays.back().map(|(_, d)| *d);
        let queued = batch_min.is_some_and(|delay| {
            self.batch_delays.push_back((now, delay));
            let base = self
                .batch_delays
                .iter()
                .map(|(_, d)| *d)
                .fold(f64::INFINITY, f64::min);
            let draining = previous.is_some_and(|p| delay < p - DRAINING.as_secs_f64());
            self.queue_delay = Duration::from_secs_f64((delay - base).max(0.0));
            self.queue_delay > QUEUE_DELAY && !draining
        });
        if queued {
            if self.queue_since.is_none() {
                tracing::trace!(queue_ms = self.queue_delay.as_millis() as u64, "a queue");
                self.queue_since = Some(now);
                self.queue_from = batch_from;
            }
        } else if batch_min.is_some() && self.queue_since.take().is_some() {
            tracing::trace!(queue_ms = self.queue_delay.as_millis() as u64, "no queue");
        }
        let stood = self
            .queue_since
            .is_some_and(|since| now.saturating_duration_since(since) >= QUEUE_STANDING);
        let mut shortfall = None;
        if stood {
            match self.queue_sign() {
                Some(QueueSign::Overload { delivered }) => shortfall = Some(delivered),
                Some(QueueSign::LongerPath) => {
                    // The path delivers what is sent: it got longer (a handover, a new route,
                    // a link shaped mid-call), or the receiver stalled. Cutting would not
                    // drain it; its delay is the new base.
                    tracing::debug!(
                        queue_ms = self.queue_delay.as_millis() as u64,
                        "a longer path, not a queue"
                    );
                    self.batch_delays.clear();
                    self.queue_since = None;
                }
                None => {}
            }
        }
        let standing = shortfall.is_some();
        let congestion = match self.loss_share() {
            _ if standing => Some(Congestion::StandingQueue(self.queue_delay)),
            Some(share) if share > HEAVY_LOSS => Some(Congestion::HeavyLoss {
                share,
                longest_run: self.longest_loss_run(),
            }),
            _ => None,
        };
        if let Some(congestion) = congestion {
            let may_cut = self
                .last_cut
                .is_none_or(|t| now.saturating_duration_since(t) >= CUT_INTERVAL);
            if let (true, Some(delivered)) = (may_cut, shortfall.or_else(|| self.delivered_bps())) {
                self.capacity = delivered;
                self.bound = Some((BACK_OFF * delivered).min(current).max(MIN_BPS as f64));
                self.last_cut = Some(now);
                self.fates.clear();
                self.queue_since = None;
                if standing {
                    // The delay measured from here on is the new base: the queue drains below
                    // it as the lower rate takes effect, while the part of it that was a
                    // longer path stays and must not read as a queue that never drains.
                    self.batch_delays.clear();
                }
                self.last_growth = Some(now);
                return Some(congestion);
            }
            self.last_growth = Some(now);
        } else if self.queue_since.is_none() {
            self.grow(now);
        } else {
            // A queue that may yet stand: hold.
            self.last_growth = Some(now);
        }
        None
    }

    fn after_last_cut(&self, report: &PacketReport) -> bool {
        self.last_cut.is_none_or(|cut| report.departure > cut)
    }

    fn grow(&mut self, now: Instant) {
        let elapsed = self
            .last_growth
            .replace(now)
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        if let Some(bound) = self.bound {
            let bottleneck = self.pairs.bps();
            // Pairs that show a path faster than the capacity last seen (a limit lifted)
            // make that capacity say nothing any more.
            let capacity_known = !self.pairs.widened()
                && bottleneck.is_none_or(|b| b < self.capacity * CAPACITY_FORGOTTEN);
            let near_capacity = capacity_known
                && (self.capacity..self.capacity * CAPACITY_FORGOTTEN).contains(&bound);
            let rate = if near_capacity {
                GROWTH_ABOVE_CAPACITY
            } else {
                GROWTH
            };
            let ceiling = bottleneck.map_or(f64::INFINITY, |b| b * PAIR_SHARE);
            let grown = (bound * (1.0 + rate * elapsed)).min(ceiling.max(bound));
            self.bound = (grown < MAX_BPS as f64).then_some(grown);
        }
    }

    fn trim(&mut self, now: Instant) {
        if let Some(&(last, _)) = self.arrivals.back() {
            while self
                .arrivals
                .front()
                .is_some_and(|(a, _)| last.saturating_sub(*a) > RATE_WINDOW)
            {
                self.arrivals.pop_front();
            }
        }
        if let Some(newest) = self.fates.back().map(|f| f.departure) {
            while self
                .fates
                .front()
                .is_some_and(|f| newest.saturating_duration_since(f.departure) > LOSS_WINDOW)
            {
                self.fates.pop_front();
            }
        }
        while self
            .batch_delays
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > BASE_DELAY_WINDOW)
        {
            self.batch_delays.pop_front();
        }
    }

    /// The share of the last second's reported packets that did not arrive, once there are
    /// [`LOSS_MIN_PACKETS`] of them.
    fn loss_share(&self) -> Option<f64> {
        (self.fates.len() >= LOSS_MIN_PACKETS)
            .then(|| loss_share(self.fates.iter()))
            .flatten()
    }

    fn longest_loss_run(&self) -> usize {
        let (mut run, mut longest) = (0, 0);
        for f in &self.fates {
            run = if f.arrival.is_some() { 0 } else { run + 1 };
            longest = longest.max(run);
        }
        longest
    }

    /// What the packets sent since the queue appeared say of it, once there are
    /// [`QUEUE_MIN_PACKETS`] of them. Only those count, so the gap in arrivals that a step in
    /// the path's delay leaves is not read as a slow path.
    ///
    /// It is an overload when their one-way delay grew by over [`QUEUE_GROWTH`] (the queue
    /// still grows: more is sent than the path carries) or when over [`QUEUE_LOSS`] of them
    /// were lost (it is full and drops its tail). It is a longer path when the delay held
    /// for [`LONGER_PATH_SPAN`]; until then, nothing is known yet.
    fn queue_sign(&self) -> Option<QueueSign> {
        let from = self.queue_from?;
        let queued: Vec<&Fate> = self.fates.iter().filter(|f| f.departure >= from).collect();
        if queued.len() < QUEUE_MIN_PACKETS {
            return None;
        }
        let delivered = rate(queued.iter().filter_map(|f| Some((f.arrival?, f.bytes))))?;
        // (departure, one-way delay with an arbitrary offset) of each packet that arrived.
        let delays: Vec<(Duration, f64)> = queued
            .iter()
            .filter_map(|f| {
                let sent = f.departure - from;
                Some((sent, f.arrival?.as_secs_f64() - sent.as_secs_f64()))
            })
            .collect();
        let span = delays.last()?.0;
        // The smallest delay in the first and in the last quarter of the span: one packet's
        // jitter does not count.
        let smallest = |range: std::ops::RangeInclusive<Duration>| {
            delays
                .iter()
                .filter(|(sent, _)| range.contains(sent))
                .map(|(_, delay)| *delay)
                .fold(f64::INFINITY, f64::min)
        };
        let growth = smallest(span * 3 / 4..=span) - smallest(Duration::ZERO..=span / 4);
        let tail_drop = loss_share(queued.into_iter()).is_some_and(|share| share > QUEUE_LOSS);
        if tail_drop || growth > QUEUE_GROWTH.as_secs_f64() {
            Some(QueueSign::Overload { delivered })
        } else {
            (span >= LONGER_PATH_SPAN).then_some(QueueSign::LongerPath)
        }
    }

    /// The rate that arrived over the last [`RATE_WINDOW`] of arrivals, in bits per second.
    fn delivered_bps(&self) -> Option<f64> {
        rate(self.arrivals.iter().copied())
    }
}

/// The share of `fates` that did not arrive: the lowest share among the streams with
/// [`LOSS_MIN_STREAM_PACKETS`] (None without one). A full queue drops from every stream
/// alike, while one stream can lose packets where the path is not full (seen in the
/// end-to-end tests: a forwarded video reported a quarter of its packets lost on a clean
/// link while the audio beside it lost none).
fn loss_share<'a>(fates: impl Iterator<Item = &'a Fate>) -> Option<f64> {
    let mut streams: Vec<(u32, usize, usize)> = Vec::new(); // (ssrc, lost, total)
    for f in fates {
        let i = match streams.iter().position(|s| s.0 == f.ssrc) {
            Some(i) => i,
            None => {
                streams.push((f.ssrc, 0, 0));
                streams.len() - 1
            }
        };
        streams[i].1 += usize::from(f.arrival.is_none());
        streams[i].2 += 1;
    }
    streams
        .iter()
        .filter(|(_, _, total)| *total >= LOSS_MIN_STREAM_PACKETS)
        .map(|&(_, lost, total)| lost as f64 / total as f64)
        .min_by(f64::total_cmp)
}

/// The rate of packets given as (time, bytes), in bits per second, once they span
/// [`MIN_RATE_SPAN`]. The first packet's bytes went before the span began.
fn rate(mut packets: impl Iterator<Item = (Duration, usize)>) -> Option<f64> {
    let (first, _) = packets.next()?;
    let (mut earliest, mut latest, mut bytes) = (first, first, 0);
    for (at, size) in packets {
        earliest = earliest.min(at);
        latest = latest.max(at);
        bytes += size;
    }
    let span = latest - earliest;
    (span >= MIN_RATE_SPAN).then(|| bytes as f64 * 8.0 / span.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

    const PACKET: usize = 1200;

    /// A bottleneck: a rate, a tail-drop queue of `queue` worth of sending, a one-way delay
    /// each way, and every `lose_every`-th packet lost on the wire.
    struct Link {
        rate_bps: f64,
        queue: Duration,
        delay: Duration,
        lose_every: Option<u64>,
        busy_until: Instant,
        sent: u64,
    }

    /// Drives a [`DeliveryBound`] with a sender, a [`Link`] and feedback every 100 ms.
    struct Call {
        epoch: Instant,
        now: Instant,
        link: Link,
        bound: DeliveryBound,
        in_flight: Vec<PacketReport>,
        next_id: u64,
        next_feedback: Instant,
        /// Every n-th feedback packet is lost on its way back.
        lose_feedback_every: Option<u64>,
        feedbacks: u64,
        /// Packets whose feedback was lost: the `rtc` crate reports them as lost with the
        /// next feedback that arrives.
        unreported: Vec<PacketReport>,
        /// What feedback covered, when the estimator is told (as in the connection).
        coverage: Option<FeedbackCoverage>,
    }

    impl Call {
        fn new(rate_bps: f64, lose_every: Option<u64>) -> Self {
            let epoch = Instant::now();
            Self {
                epoch,
                now: epoch,
                link: Link {
                    rate_bps,
                    queue: Duration::from_millis(500),
                    delay: Duration::from_millis(150),
                    lose_every,
                    busy_until: epoch,
                    sent: 0,
                },
                bound: DeliveryBound::default(),
                in_flight: Vec::new(),
                next_id: 0,
                next_feedback: epoch,
                lose_feedback_every: None,
                feedbacks: 0,
                unreported: Vec::new(),
                coverage: None,
            }
        }

        fn send(&mut self, size: usize) {
            let link = &mut self.link;
            link.sent += 1;
            let start = link.busy_until.max(self.now);
            let dropped_in_queue = start.saturating_duration_since(self.now) > link.queue;
            let lost_on_wire = link.lose_every.is_some_and(|n| link.sent.is_multiple_of(n));
            let mut arrival = None;
            if !dropped_in_queue {
                let done = start + Duration::from_secs_f64(size as f64 * 8.0 / link.rate_bps);
                link.busy_until = done;
                if !lost_on_wire {
                    arrival = Some(done + link.delay - self.epoch);
                }
            }
            self.next_id += 1;
            self.in_flight.push(PacketReport {
                ssrc: 1,
                id: self.next_id,
                rtp_sequence_number: self.next_id as u16,
                is_twcc: true,
                twcc_sequence_number: self.next_id as u16,
                size,
                arrived: arrival.is_some(),
                departure: self.now,
                arrival,
                ecn: Ecn::NotEct,
            });
        }

        /// Runs for `span`, sending `bps` in packets of [`PACKET`] bytes, plus `burst` bytes
        /// at the start (a keyframe). Feedback reports, every 100 ms, what reached the
        /// receiver one link delay earlier (packets lost count once a later one arrived).
        fn run(&mut self, span: Duration, bps: f64, burst: usize) {
            for _ in 0..burst.div_ceil(PACKET) {
                self.send(PACKET);
            }
            let gap = Duration::from_secs_f64(PACKET as f64 * 8.0 / bps);
            let end = self.now + span;
            let mut next_send = self.now;
            while self.now < end {
                if next_send <= self.now {
                    self.send(PACKET);
                    next_send += gap;
                }
                if self.next_feedback <= self.now {
                    self.next_feedback += Duration::from_millis(100);
                    self.feedback();
                }
                self.now += Duration::from_millis(1);
            }
        }

        /// Runs for `span` sending a frame every 33 ms: `packets` packets of `size` bytes that
        /// leave together, as a publisher's paced frame or a frame and its parity do.
        fn run_frames(&mut self, span: Duration, packets: usize, size: usize) {
            let end = self.now + span;
            let mut next_frame = self.now;
            while self.now < end {
                if next_frame <= self.now {
                    for _ in 0..packets {
                        self.send(size);
                    }
                    next_frame += Duration::from_millis(33);
                }
                if self.next_feedback <= self.now {
                    self.next_feedback += Duration::from_millis(100);
                    self.feedback();
                }
                self.now += Duration::from_millis(1);
            }
        }

        fn feedback(&mut self) {
            let seen = self
                .now
                .saturating_duration_since(self.epoch + self.link.delay);
            let Some(last_arrived) = self
                .in_flight
                .iter()
                .rposition(|r| r.arrival.is_some_and(|a| a <= seen))
            else {
                return;
            };
            let covered: Vec<PacketReport> = self.in_flight.drain(..=last_arrived).collect();
            self.feedbacks += 1;
            if self
                .lose_feedback_every
                .is_some_and(|n| self.feedbacks.is_multiple_of(n))
            {
                self.unreported
                    .extend(covered.into_iter().map(|r| PacketReport {
                        arrived: false,
                        arrival: None,
                        ..r
                    }));
                return;
            }
            if let Some(coverage) = &mut self.coverage {
                coverage.record(covered[0].twcc_sequence_number, covered.len() as u16);
            }
            let mut reports = std::mem::take(&mut self.unreported);
            reports.extend(covered);
            if let Some(coverage) = &self.coverage {
                reports = coverage.reported(&reports).into_owned();
            }
            let current = self.bound.bps().unwrap_or(MAX_BPS as f64);
            self.bound.on_reports(self.now, &reports, current);
        }
    }

    #[test]
    fn a_full_link_is_found_within_a_second() {
        let mut call = Call::new(500_000.0, Some(33));
        call.run(Duration::from_secs(3), 200_000.0, 0);
        assert_eq!(call.bound.bps(), None, "no congestion below the link rate");
        call.run(Duration::from_millis(1000), 1_500_000.0, 0);
        let bound = call.bound.bps().expect("a full link is congestion");
        assert!((350_000.0..=500_000.0).contains(&bound), "{bound}");
    }

    #[test]
    fn random_loss_and_keyframe_bursts_are_not_congestion() {
        let mut call = Call::new(500_000.0, Some(33));
        for _ in 0..10 {
            call.run(Duration::from_secs(2), 300_000.0, 20_000);
        }
        assert_eq!(call.bound.bps(), None);
    }

    /// The sender keeps to the bound (wanting at most `want_bps`) for `span`, in 100 ms steps.
    fn follow_bound(call: &mut Call, want_bps: f64, span: Duration) {
        for _ in 0..span.as_millis() / 100 {
            let bps = call.bound.bps().unwrap_or(f64::INFINITY).min(want_bps);
            call.run(Duration::from_millis(100), bps, 0);
        }
    }

    #[test]
    fn a_lost_feedback_packet_is_not_loss() {
        // 3 % lost each way; every third feedback packet lost too (a burst on the way back).
        let run = |coverage: Option<FeedbackCoverage>| {
            let mut call = Call::new(2_000_000.0, Some(33));
            call.lose_feedback_every = Some(3);
            call.coverage = coverage;
            call.run(Duration::from_secs(10), 800_000.0, 0);
            call.bound.bps()
        };
        assert!(
            run(None).is_some(),
            "read as lost, a third of the packets is heavy loss"
        );
        assert_eq!(run(Some(FeedbackCoverage::default())), None);
    }

    #[test]
    fn feedback_coverage_wraps_and_forgets() {
        let mut coverage = FeedbackCoverage::default();
        coverage.record(65_530, 10);
        assert!(coverage.covers(65_535) && coverage.covers(0) && coverage.covers(3));
        assert!(!coverage.covers(4) && !coverage.covers(65_529));
        for i in 0..COVERAGE_KEPT as u16 {
            coverage.record(i * 10, 10);
        }
        assert!(!coverage.covers(65_531), "the oldest range is forgotten");
        assert!(coverage.covers(0) && coverage.covers(1_279));
    }

    #[test]
    fn an_upgrade_a_little_over_the_link_is_cut() {
        // A layer switch up, to 6 % over what the link carries: the new layer's keyframe
        // queues, and the queue keeps growing slowly behind it (it must not pass for a
        // longer path).
        let mut call = Call::new(500_000.0, Some(33));
        follow_bound(&mut call, 250_000.0, Duration::from_secs(5));
        assert_eq!(call.bound.bps(), None);
        call.run(Duration::from_millis(100), 530_000.0, 30_000);
        let mut waited = Duration::from_millis(100);
        while call.bound.bps().is_none() {
            assert!(waited < Duration::from_secs(2), "not cut within 2 s");
            call.run(Duration::from_millis(100), 530_000.0, 0);
            waited += Duration::from_millis(100);
        }
        let cut = call.bound.bps().expect("cut");
        assert!((350_000.0..=500_000.0).contains(&cut), "cut to {cut}");
    }

    #[test]
    fn a_longer_path_is_not_a_queue() {
        // A handover or a route change: the delay steps up 150 ms and stays; the path still
        // carries everything sent (3 % lost on the wire, as on a radio link).
        let mut call = Call::new(2_000_000.0, Some(33));
        call.link.delay = Duration::from_millis(50);
        call.run(Duration::from_secs(3), 300_000.0, 0);
        call.link.delay = Duration::from_millis(200);
        for _ in 0..10 {
            call.run(Duration::from_secs(1), 300_000.0, 0);
            assert_eq!(call.bound.bps(), None, "a delay step is not congestion");
        }
    }

    #[test]
    fn a_longer_path_with_a_queue_is_cut_to_what_it_carries() {
        // A link shaped mid-call (the end-to-end test's phase 2): the delay steps up 150 ms
        // while the rate falls under what is sent, so a real queue forms behind the step.
        let mut call = Call::new(10_000_000.0, None);
        call.link.delay = Duration::from_millis(50);
        follow_bound(&mut call, 1_500_000.0, Duration::from_secs(3));
        assert_eq!(call.bound.bps(), None);
        call.link = Link {
            rate_bps: 500_000.0,
            delay: Duration::from_millis(200),
            lose_every: Some(33),
            ..call.link
        };
        follow_bound(&mut call, 1_500_000.0, Duration::from_secs(2));
        let cut = call
            .bound
            .bps()
            .expect("a queue behind the step is congestion");
        assert!((350_000.0..=500_000.0).contains(&cut), "cut to {cut}");
        // The cut holds: the delay stays up by the step after the queue has drained.
        for _ in 0..10 {
            follow_bound(&mut call, 1_500_000.0, Duration::from_secs(1));
            let bound = call.bound.bps().expect("still bound");
            assert!((300_000.0..=560_000.0).contains(&bound), "{cut} -> {bound}");
        }
    }

    #[test]
    fn after_a_cut_it_climbs_slowly_past_the_capacity() {
        let mut call = Call::new(500_000.0, None);
        // The sender wants 1.5 Mbit/s and keeps to the bound once there is one.
        for _ in 0..50 {
            let bps = call.bound.bps().unwrap_or(f64::INFINITY).min(1_500_000.0);
            call.run(Duration::from_millis(100), bps, 0);
        }
        let cut = call.bound.bps().expect("cut");
        // The limit is lifted; the sender keeps to the bound.
        call.link.rate_bps = 10_000_000.0;
        let mut at = Vec::new();
        for _ in 0..20 {
            let bps = call.bound.bps().expect("still bound");
            call.run(Duration::from_secs(1), bps, 0);
            at.push(call.bound.bps().unwrap_or(f64::INFINITY));
        }
        let capacity = call.bound.capacity;
        // The pairs of the congested seconds (every packet spread by the queue) hold it
        // under the bottleneck until they are [`PAIR_WINDOW`] old: this evenly paced sender
        // makes no new ones.
        assert!(
            at[3] <= PAIR_SHARE * capacity * 1.01,
            "held by the pairs: {at:?}"
        );
        assert!(
            at[7] > capacity,
            "back to the capacity within 8 s: {cut} → {at:?}"
        );
        assert!(at[12] < capacity * 1.25, "then slowly: {at:?}");
        assert!(at[19] > capacity * 1.1, "but it goes on: {at:?}");
    }

    #[test]
    fn packet_pairs_keep_the_bound_under_the_bottleneck_until_it_widens() {
        let mut call = Call::new(500_000.0, None);
        follow_bound(&mut call, 1_500_000.0, Duration::from_secs(5));
        assert!(call.bound.bps().is_some(), "cut");
        // Frames of two packets (576 kbit/s of bursts, 290 kbit/s on average): each pair
        // arrives spread by the link's rate.
        call.run_frames(Duration::from_secs(2), 2, 600);
        let bottleneck = call.bound.pairs.bps().expect("pairs measured");
        assert!(
            (450_000.0..=510_000.0).contains(&bottleneck),
            "the link's rate: {bottleneck}"
        );
        call.run_frames(Duration::from_secs(60), 2, 600);
        let held = call.bound.bps().unwrap();
        assert!(
            held <= PAIR_SHARE * 510_000.0,
            "a minute on, still under the bottleneck: {held}"
        );
        // The limit is lifted: the pairs arrive as they left, the capacity last seen says
        // nothing any more, and the bound climbs at the full rate.
        call.link.rate_bps = 10_000_000.0;
        call.run_frames(Duration::from_secs(6), 2, 600);
        assert!(call.bound.pairs.widened(), "the pairs no longer spread");
        assert_eq!(call.bound.pairs.bps(), None, "and set no ceiling");
        let lifted = call.bound.bps().unwrap_or(f64::INFINITY);
        assert!(
            lifted > 650_000.0,
            "a middle layer's rate within 6 s: {held} → {lifted}"
        );
        // The pairs (about 10 Mbit/s apart) never cap what a fast path may carry.
        call.run_frames(Duration::from_secs(20), 2, 600);
        let later = call.bound.bps().unwrap_or(f64::INFINITY);
        assert!(later > 2_000_000.0, "{later}");
    }
}
