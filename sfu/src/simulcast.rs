//! Simulcast: which layer of each published video each subscriber receives.
//!
//! A publisher may send one video in several **layers** (RTP streams named by `rid`, lowest
//! first, e.g. `q`, `h`, `f` at a quarter, half and full resolution). For each subscriber the
//! router gives [`allocate`] its bandwidth estimate and, per forwarded track, the layers with
//! their bitrates and sizes, how large the subscriber shows it, whether it pinned it, and the
//! layer it receives now; `allocate` returns a [`Choice`] per track. Audio is served first,
//! then a pinned video, then every other video from its lowest layer upwards. Everything here
//! is arithmetic on values passed in (time included), tested without sockets or clocks.
//!
//! The router switches a subscription to its chosen layer only at a keyframe of that layer
//! ([`is_keyframe_start`]), so the picture never breaks up.

use std::time::{Duration, Instant};

/// An upgrade must fit the budget with this headroom (the estimate wobbles; oscillating
/// between two layers costs a keyframe each time).
const UPGRADE_HEADROOM: f64 = 1.15;
/// A subscriber keeps the layer it receives while that layer costs up to this much more
/// than the budget leaves for it: congestion control cuts its estimate to a little under
/// what arrived, which must not drop a layer that the path carries.
const KEEP_TOLERANCE: f64 = 1.2;

/// Why a subscriber receives no video of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// Not even the lowest layer fits the subscriber's estimated bandwidth.
    Bandwidth,
    /// The subscriber does not show the track (its tile is hidden or zero-sized).
    NotVisible,
    /// The publisher sends no layer at the moment.
    PublisherPaused,
}

impl PauseReason {
    /// The reason's wire name (signaling and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Bandwidth => "bandwidth",
            PauseReason::NotVisible => "not_visible",
            PauseReason::PublisherPaused => "publisher_paused",
        }
    }
}

/// What a subscriber receives of one track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// This layer (an index into the track's layers, lowest first).
    Layer(usize),
    /// Nothing, for this reason.
    Paused(PauseReason),
}

/// One layer as the allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerView {
    /// Its bitrate: measured, or a nominal one before it was ever seen.
    pub bitrate_bps: u64,
    /// Its picture height when known (from its last keyframe).
    pub height: Option<u32>,
    /// Whether it can be chosen: the publisher sends it, or would at once if asked.
    pub available: bool,
}

/// One forwarded track of one subscriber, as the allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand<'a> {
    /// Audio is always forwarded and paid for first.
    pub audio: bool,
    /// Pinned by the subscriber: served before other video, at the best layer that fits.
    pub pinned: bool,
    /// The height the subscriber shows it at, in device pixels: `None` unknown (no cap),
    /// `Some(0)` not shown.
    pub shown_height: Option<u32>,
    /// The publisher's layers, lowest first (one for a track without simulcast).
    pub layers: &'a [LayerView],
    /// What it receives now.
    pub current: Option<Choice>,
}

/// Chooses what each track's subscriber receives within `budget_bps`. See the
/// [module docs](self).
pub fn allocate(budget_bps: u64, demands: &[Demand<'_>]) -> Vec<Choice> {
    let mut left = budget_bps as f64;
    let mut choices: Vec<Option<Choice>> = vec![None; demands.len()];
    // Audio first: it keeps its bitrate whatever happens to video.
    for (i, d) in demands.iter().enumerate().filter(|(_, d)| d.audio) {
        choices[i] = Some(Choice::Layer(0));
        left -= d.layers.first().map_or(0.0, |l| l.bitrate_bps as f64);
    }
    let video: Vec<usize> = (0..demands.len()).filter(|&i| !demands[i].audio).collect();
    let mut caps = vec![None; demands.len()];
    for &i in &video {
        let d = &demands[i];
        if d.shown_height == Some(0) {
            choices[i] = Some(Choice::Paused(PauseReason::NotVisible));
        } else if !d.layers.iter().any(|l| l.available) {
            choices[i] = Some(Choice::Paused(PauseReason::PublisherPaused));
        } else {
            caps[i] = size_cap(d);
        }
    }
    // A pinned track: the best layer that fits, or its lowest one even if none does.
    for &i in video.iter().filter(|&&i| demands[i].pinned) {
        let Some(cap) = caps[i] else { continue };
        let d = &demands[i];
        let fitting = (0..=cap)
            .rev()
            .filter(|&l| d.layers[l].available)
            .find(|&l| cost(d, l) <= left);
        let layer = fitting.unwrap_or_else(|| lowest_available(d));
        left -= d.layers[layer].bitrate_bps as f64;
        choices[i] = Some(Choice::Layer(layer));
    }
    // Every other video: its lowest layer if it fits, then upgrades one step at a time,
    // round-robin, while the budget allows.
    let others: Vec<usize> = video
        .iter()
        .copied()
        .filter(|&i| !demands[i].pinned && caps[i].is_some())
        .collect();
    let mut chosen: Vec<Option<usize>> = vec![None; demands.len()];
    for &i in &others {
        let d = &demands[i];
        let lowest = lowest_available(d);
        if cost(d, lowest) <= left {
            left -= d.layers[lowest].bitrate_bps as f64;
            chosen[i] = Some(lowest);
        } else {
            choices[i] = Some(Choice::Paused(PauseReason::Bandwidth));
        }
    }
    loop {
        let mut upgraded = false;
        for &i in &others {
            let (Some(now), Some(cap)) = (chosen[i], caps[i]) else {
                continue;
            };
            let d = &demands[i];
            let Some(next) = (now + 1..=cap).find(|&l| d.layers[l].available) else {
                continue;
            };
            let extra = cost(d, next) - d.layers[now].bitrate_bps as f64;
            if extra <= left {
                left -= extra;
                chosen[i] = Some(next);
                upgraded = true;
            }
        }
        if !upgraded {
            break;
        }
    }
    for &i in &others {
        if let Some(layer) = chosen[i] {
            choices[i] = Some(Choice::Layer(layer));
        }
    }
    choices
        .into_iter()
        .map(|c| c.unwrap_or(Choice::Paused(PauseReason::PublisherPaused)))
        .collect()
}

/// What layer `l` costs against the budget: its bitrate, with headroom when it would be an
/// upgrade on what the subscriber receives now, and with tolerance when it is that layer.
fn cost(d: &Demand<'_>, l: usize) -> f64 {
    let bitrate = d.layers[l].bitrate_bps as f64;
    match d.current {
        Some(Choice::Layer(now)) if l == now => bitrate / KEEP_TOLERANCE,
        Some(Choice::Layer(now)) if l < now => bitrate,
        _ => bitrate * UPGRADE_HEADROOM,
    }
}

fn lowest_available(d: &Demand<'_>) -> usize {
    d.layers.iter().position(|l| l.available).unwrap_or(0)
}

/// The highest layer worth sending for the size the track is shown at: the lowest available
/// layer at least that tall (a layer of unknown height counts as tall enough only if it is
/// the top one), or the top available layer when none is.
fn size_cap(d: &Demand<'_>) -> Option<usize> {
    let top = d.layers.iter().rposition(|l| l.available)?;
    let Some(shown) = d.shown_height else {
        return Some(top);
    };
    Some(
        (0..=top)
            .filter(|&l| d.layers[l].available)
            .find(|&l| d.layers[l].height.is_some_and(|h| h >= shown))
            .unwrap_or(top),
    )
}

/// A bitrate measured over windows of about a second.
#[derive(Debug, Clone)]
pub struct BitrateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    last_bps: Option<u64>,
    last_packet: Option<Instant>,
}

/// Length of one measuring window.
const METER_WINDOW: Duration = Duration::from_secs(1);

impl Default for BitrateMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl BitrateMeter {
    /// A meter that has measured nothing yet.
    pub fn new() -> Self {
        Self {
            window_start: None,
            bytes: 0,
            last_bps: None,
            last_packet: None,
        }
    }

    /// Counts a packet of `bytes` at `now`.
    pub fn record(&mut self, now: Instant, bytes: usize) {
        self.last_packet = Some(now);
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= METER_WINDOW {
            self.last_bps = Some((self.bytes * 8 * 1_000_000) / elapsed.as_micros().max(1) as u64);
            self.window_start = Some(now);
            self.bytes = 0;
        }
        self.bytes += bytes as u64;
    }

    /// The last full window's bitrate, if one has been measured.
    pub fn bitrate_bps(&self) -> Option<u64> {
        self.last_bps
    }

    /// When the last packet came.
    pub fn last_packet(&self) -> Option<Instant> {
        self.last_packet
    }
}

/// Codecs whose keyframes [`is_keyframe_start`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8 (RFC 7741).
    Vp8,
    /// VP9 (RFC 9628).
    Vp9,
    /// H.264 (RFC 6184).
    H264,
}

impl VideoCodec {
    /// The codec of a MIME type such as `video/VP8`, if it is one of these.
    pub fn from_mime(mime: &str) -> Option<Self> {
        let sub = mime.rsplit('/').next()?.to_ascii_uppercase();
        match sub.as_str() {
            "VP8" => Some(VideoCodec::Vp8),
            "VP9" => Some(VideoCodec::Vp9),
            "H264" => Some(VideoCodec::H264),
            _ => None,
        }
    }
}

/// Whether an RTP payload is the first packet of a keyframe, where a subscriber can start
/// decoding a new layer.
pub fn is_keyframe_start(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => vp8_keyframe(payload).is_some(),
        VideoCodec::Vp9 => {
            // I|P|L|F|B|E|V|Z: not inter-predicted (P = 0) and the start of a frame (B = 1).
            payload
                .first()
                .is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0)
        }
        VideoCodec::H264 => h264_keyframe_start(payload),
    }
}

/// The picture height of a VP8 keyframe's first packet, if `payload` is one.
pub fn keyframe_height(codec: VideoCodec, payload: &[u8]) -> Option<u32> {
    match codec {
        VideoCodec::Vp8 => vp8_keyframe(payload).map(|(_, h)| h),
        _ => None,
    }
}

/// `(width, height)` when `payload` starts a VP8 keyframe (RFC 7741 §4.2, RFC 6386 §9.1).
fn vp8_keyframe(payload: &[u8]) -> Option<(u32, u32)> {
    let first = *payload.first()?;
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let partition = first & 0x07;
    if !start || partition != 0 {
        return None;
    }
    let mut at = 1;
    if extended {
        let x = *payload.get(at)?;
        at += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            at += if payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID / KEYIDX
        }
    }
    let frame = payload.get(at..)?;
    // Frame tag bit 0 is the inverse keyframe flag; a keyframe then has its start code and size.
    if frame.len() < 10 || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    Some((width as u32, height as u32))
}

/// Whether an H.264 payload starts an IDR picture or the parameter sets before one.
fn h264_keyframe_start(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1f {
        IDR | SPS => true,
        // STAP-A: 16-bit size, then each NAL unit.
        24 => {
            let mut at = 1;
            while let Some(size) = payload.get(at..at + 2) {
                let size = u16::from_be_bytes([size[0], size[1]]) as usize;
                if payload
                    .get(at + 2)
                    .is_some_and(|n| matches!(n & 0x1f, IDR | SPS))
                {
                    return true;
                }
                at += 2 + size;
            }
            false
        }
        // FU-A: the start fragment of an IDR.
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == IDR),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(bitrates: &[u64], heights: &[u32]) -> Vec<LayerView> {
        bitrates
            .iter()
            .zip(heights)
            .map(|(&b, &h)| LayerView {
                bitrate_bps: b,
                height: Some(h),
                available: true,
            })
            .collect()
    }

    fn video<'a>(layers: &'a [LayerView]) -> Demand<'a> {
        Demand {
            audio: false,
            pinned: false,
            shown_height: None,
            layers,
            current: None,
        }
    }

    const AUDIO: [LayerView; 1] = [LayerView {
        bitrate_bps: 40_000,
        height: None,
        available: true,
    }];

    #[test]
    fn the_budget_buys_the_highest_layers_it_can() {
        let cam = layers(&[150_000, 500_000, 1_500_000], &[180, 360, 720]);
        let audio = Demand {
            audio: true,
            ..video(&AUDIO)
        };
        let budget = |b| allocate(b, &[audio, video(&cam)]);
        assert_eq!(budget(3_000_000)[1], Choice::Layer(2));
        assert_eq!(budget(1_000_000)[1], Choice::Layer(1));
        assert_eq!(budget(400_000)[1], Choice::Layer(0));
        assert_eq!(
            budget(150_000),
            vec![Choice::Layer(0), Choice::Paused(PauseReason::Bandwidth)],
            "audio keeps its bitrate; video pauses"
        );
    }

    #[test]
    fn the_shown_size_caps_the_layer() {
        let cam = layers(&[150_000, 500_000, 1_500_000], &[180, 360, 720]);
        let shown = |h| {
            allocate(
                10_000_000,
                &[Demand {
                    shown_height: h,
                    ..video(&cam)
                }],
            )[0]
        };
        assert_eq!(shown(Some(300)), Choice::Layer(1));
        assert_eq!(shown(Some(360)), Choice::Layer(1));
        assert_eq!(shown(Some(100)), Choice::Layer(0));
        assert_eq!(shown(Some(1080)), Choice::Layer(2));
        assert_eq!(shown(None), Choice::Layer(2));
        assert_eq!(shown(Some(0)), Choice::Paused(PauseReason::NotVisible));
    }

    #[test]
    fn a_pinned_track_is_served_first_at_the_cost_of_others() {
        let cam = layers(&[150_000, 500_000, 1_500_000], &[180, 360, 720]);
        let screen = layers(&[200_000, 600_000, 1_200_000], &[270, 540, 1080]);
        let pinned = Demand {
            pinned: true,
            ..video(&screen)
        };
        let got = allocate(1_500_000, &[video(&cam), pinned]);
        assert_eq!(got, vec![Choice::Layer(0), Choice::Layer(2)]);
        // Without the pin the two share the budget evenly, one step at a time.
        let got = allocate(1_500_000, &[video(&cam), video(&screen)]);
        assert_eq!(got, vec![Choice::Layer(1), Choice::Layer(1)]);
        // Even below its lowest layer's bitrate the pinned track keeps that layer.
        let got = allocate(100_000, &[video(&cam), pinned]);
        assert_eq!(
            got,
            vec![Choice::Paused(PauseReason::Bandwidth), Choice::Layer(0)]
        );
    }

    #[test]
    fn upgrades_need_headroom_but_keeping_a_layer_does_not() {
        let cam = layers(&[150_000, 500_000, 1_500_000], &[180, 360, 720]);
        let at = |current| {
            allocate(
                520_000,
                &[Demand {
                    current,
                    ..video(&cam)
                }],
            )[0]
        };
        assert_eq!(at(Some(Choice::Layer(1))), Choice::Layer(1));
        assert_eq!(at(Some(Choice::Layer(0))), Choice::Layer(0));
        assert_eq!(at(None), Choice::Layer(0));
    }

    #[test]
    fn a_layer_received_is_kept_a_little_over_the_budget() {
        let cam = layers(&[150_000, 500_000, 1_500_000], &[180, 360, 720]);
        let at = |budget, current| {
            allocate(
                budget,
                &[Demand {
                    current,
                    ..video(&cam)
                }],
            )[0]
        };
        // A cut to 0.85 of what arrives keeps the layer that arrived.
        assert_eq!(at(425_000, Some(Choice::Layer(1))), Choice::Layer(1));
        assert_eq!(at(130_000, Some(Choice::Layer(0))), Choice::Layer(0));
        // Further below, it goes down; and nobody new gets it that far over.
        assert_eq!(at(400_000, Some(Choice::Layer(1))), Choice::Layer(0));
        assert_eq!(
            at(120_000, Some(Choice::Layer(0))),
            Choice::Paused(PauseReason::Bandwidth)
        );
        assert_eq!(at(425_000, None), Choice::Layer(0));
    }

    #[test]
    fn unavailable_layers_are_skipped() {
        let mut cam = layers(&[150_000, 500_000, 1_500_000], &[180, 360, 720]);
        cam[2].available = false;
        assert_eq!(allocate(10_000_000, &[video(&cam)])[0], Choice::Layer(1));
        cam[0].available = false;
        cam[1].available = false;
        assert_eq!(
            allocate(10_000_000, &[video(&cam)])[0],
            Choice::Paused(PauseReason::PublisherPaused)
        );
    }

    #[test]
    fn the_meter_measures_whole_windows() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::new();
        assert_eq!(m.bitrate_bps(), None);
        for i in 0..=100u64 {
            m.record(t0 + Duration::from_millis(i * 10), 1250);
        }
        // 100 packets of 10 000 bits in one second.
        assert_eq!(m.bitrate_bps(), Some(1_000_000));
        assert_eq!(m.last_packet(), Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn vp8_keyframes_and_their_size_are_recognised() {
        // Descriptor with X, I (15-bit picture id), then a keyframe tag, start code, 640x360.
        let key = [
            0x90, 0x80, 0x81, 0x23, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
        ];
        assert!(is_keyframe_start(VideoCodec::Vp8, &key));
        assert_eq!(keyframe_height(VideoCodec::Vp8, &key), Some(360));
        let mut delta = key;
        delta[4] |= 0x01;
        assert!(!is_keyframe_start(VideoCodec::Vp8, &delta));
        let mut continuation = key;
        continuation[0] &= !0x10;
        assert!(!is_keyframe_start(VideoCodec::Vp8, &continuation));
        assert!(!is_keyframe_start(VideoCodec::Vp8, &key[..6]));
        assert!(!is_keyframe_start(VideoCodec::Vp8, &[]));
    }

    #[test]
    fn h264_and_vp9_keyframes_are_recognised() {
        assert!(is_keyframe_start(VideoCodec::H264, &[0x65, 0x88]));
        assert!(is_keyframe_start(VideoCodec::H264, &[0x67, 0x42]));
        assert!(!is_keyframe_start(VideoCodec::H264, &[0x41, 0x9a]));
        // STAP-A with an SPS, and FU-A start of an IDR; a middle fragment is not a start.
        assert!(is_keyframe_start(
            VideoCodec::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42]
        ));
        assert!(is_keyframe_start(VideoCodec::H264, &[0x7c, 0x85]));
        assert!(!is_keyframe_start(VideoCodec::H264, &[0x7c, 0x05]));
        assert!(is_keyframe_start(VideoCodec::Vp9, &[0x08]));
        assert!(!is_keyframe_start(VideoCodec::Vp9, &[0x48]));
        assert_eq!(VideoCodec::from_mime("video/vp8"), Some(VideoCodec::Vp8));
        assert_eq!(VideoCodec::from_mime("video/AV1"), None);
    }
}
