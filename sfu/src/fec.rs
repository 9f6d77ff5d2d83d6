//! Forward error correction for subscribers whose link loses packets: ULPFEC (RFC 5109)
//! carried in RED (RFC 2198), which browsers decode for VP8 and VP9 without flags.
//!
//! A lost packet repaired by retransmission costs the receiver a round trip; on a 300 ms
//! path every lost video packet holds its frame that long, and the browser counts a freeze.
//! With FEC, each small group of forwarded packets is followed by one parity packet, the XOR
//! of the group, from which the receiver rebuilds any one packet of the group it lost, a few
//! tens of milliseconds after the loss instead of a round trip.
//!
//! - [`LossMeter`] measures the share of a subscriber's video packets it asks to be resent
//!   and chooses a group size from it (none while the link loses little);
//! - [`ParityGroup`] builds the parity of one forwarded stream's packets;
//! - [`red`] wraps a payload in a one-block RED header (media and parity alike travel in RED,
//!   as RFC 5109 section 9 and browsers expect).
//!
//! The parity covers each packet as the receiver will see it once it removes the RED header,
//! with the values of mutable header extensions zeroed: libwebrtc's receiver zeroes
//! transport-wide sequence numbers (written after protection) before it recovers, so the
//! caller adds that extension with a zero value before protecting the packet.

use bytes::{BufMut, Bytes, BytesMut};
use rtc::rtp::header::Header;
use rtc::shared::marshal::{Marshal, MarshalSize};
use std::time::{Duration, Instant};

/// Size of the fixed RTP header, which the parity covers only field by field.
const FIXED_HEADER: usize = 12;
/// Packets a short (16-bit) mask spans; a wider group sets `L` for the 48-bit mask.
const SHORT_SPAN: u16 = 16;
/// Packets one parity may span at most (the 48-bit mask).
const MAX_SPAN: u16 = 48;
/// A group is closed at the end of a frame once its first packet is this old, so a loss
/// early in the group waits at most about this long for its repair.
const MAX_GROUP_AGE: Duration = Duration::from_millis(60);

/// Wraps `payload` in a RED header with one block of payload type `block_pt` (RFC 2198: the
/// primary block needs only its one-byte header).
pub fn red(block_pt: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + payload.len());
    out.put_u8(block_pt & 0x7f);
    out.put_slice(payload);
    out.freeze()
}

/// The parity being built over a run of one stream's packets (ULPFEC, one level, the 16- or
/// 48-bit mask as the group's span needs).
///
/// Feed each outgoing media packet to [`ParityGroup::protect`] in sending order; when a
/// packet closes the group it returns the FEC payload to send (in RED, with the next
/// sequence number of the stream) right after that packet.
#[derive(Debug, Default)]
pub struct ParityGroup {
    /// The marshalled header of the packet being added (kept to reuse its allocation).
    scratch: Vec<u8>,
    /// XOR of every packet's bytes after the fixed header (extensions and payload).
    parity: Vec<u8>,
    /// Longest run of bytes after the fixed header among the group's packets.
    protection_len: usize,
    /// XOR of the first two header bytes (P, X, CC; M, PT).
    head: [u8; 2],
    /// XOR of the timestamps.
    ts: u32,
    /// XOR of the lengths after the fixed header.
    length: u16,
    sn_base: u16,
    /// The last packet protected (in this group or an earlier one).
    last_seq: Option<u16>,
    /// Bit `47 - i` protects `sn_base + i`.
    mask: u64,
    count: usize,
    started: Option<Instant>,
}

impl ParityGroup {
    /// A group with nothing in it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one packet about to be sent (its header as sent, with the media payload type and
    /// mutable extensions zeroed; its payload without padding). Returns the ULPFEC payload
    /// when this packet closes the group: it ends a frame (the marker bit) and the group has
    /// `group_size` packets or is [`MAX_GROUP_AGE`] old. Parity goes only between frames: a
    /// receiver assembles a frame from consecutive sequence numbers, and a parity packet
    /// numbered inside a frame would leave it incomplete. A packet older than the last one
    /// protected is not added (it goes unprotected).
    pub fn protect(
        &mut self,
        now: Instant,
        header: &Header,
        payload: &[u8],
        group_size: usize,
    ) -> Option<Bytes> {
        let seq = header.sequence_number;
        if let Some(last) = self.last_seq {
            let ahead = seq.wrapping_sub(last);
            if ahead == 0 || ahead >= 0x8000 {
                return None;
            }
        }
        if self.count > 0 && seq.wrapping_sub(self.sn_base) >= MAX_SPAN {
            // Too far from the group's start for its mask (a long frame, or many packets
            // skipped): start again from this packet.
            self.clear();
        }
        self.scratch.resize(header.marshal_size(), 0);
        let header_len = header.marshal_to(&mut self.scratch).ok()?;
        if header_len < FIXED_HEADER {
            return None;
        }
        let bytes = &self.scratch[..header_len];
        if self.count == 0 {
            self.sn_base = seq;
            self.started = Some(now);
        }
        self.head[0] ^= bytes[0] & 0x3f;
        self.head[1] ^= bytes[1];
        self.ts ^= header.timestamp;
        let tail = header_len - FIXED_HEADER + payload.len();
        self.length ^= tail as u16;
        if self.parity.len() < tail {
            self.parity.resize(tail, 0);
        }
        self.protection_len = self.protection_len.max(tail);
        let (ext, rest) = self.parity.split_at_mut(header_len - FIXED_HEADER);
        xor_into(ext, &bytes[FIXED_HEADER..]);
        xor_into(rest, payload);
        self.mask |= 1 << (47 - seq.wrapping_sub(self.sn_base));
        self.last_seq = Some(seq);
        self.count += 1;
        let age = self
            .started
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let close = header.marker && (self.count >= group_size || age >= MAX_GROUP_AGE);
        close.then(|| self.finish())
    }

    /// The FEC payload of the group (FEC header, level-0 header, parity); empties the group.
    fn finish(&mut self) -> Bytes {
        let long = self.last_seq.map_or(0, |l| l.wrapping_sub(self.sn_base)) >= SHORT_SPAN;
        let mut out = BytesMut::with_capacity(18 + self.protection_len);
        // E = 0, L for the long mask; the version bits are not recovered (always 2).
        out.put_u8(self.head[0] & 0x3f | if long { 0x40 } else { 0 });
        out.put_u8(self.head[1]);
        out.put_u16(self.sn_base);
        out.put_u32(self.ts);
        out.put_u16(self.length);
        out.put_u16(self.protection_len as u16);
        if long {
            out.put_uint(self.mask, 6);
        } else {
            out.put_u16((self.mask >> 32) as u16);
        }
        out.put_slice(&self.parity[..self.protection_len]);
        self.clear();
        out.freeze()
    }

    /// Abandons the group begun (its packets go unprotected).
    pub fn clear(&mut self) {
        self.parity.iter_mut().for_each(|b| *b = 0);
        self.protection_len = 0;
        self.head = [0; 2];
        self.ts = 0;
        self.length = 0;
        self.mask = 0;
        self.count = 0;
        self.started = None;
    }
}

fn xor_into(acc: &mut [u8], bytes: &[u8]) {
    for (a, b) in acc.iter_mut().zip(bytes) {
        *a ^= b;
    }
}

/// Share of video packets asked to be resent from which a subscriber's video is protected.
const PROTECT_FROM: f64 = 0.01;
/// Share below which protection stops again.
const PROTECT_UNTIL: f64 = 0.004;
/// Fewest video packets sent in the window for the share to count.
const MIN_SENT: u32 = 50;
/// Seconds the loss share is measured over.
const WINDOW_SECONDS: usize = 5;
/// The group size is about this divided by the loss share, so that a group seldom loses
/// two packets (which one parity cannot repair).
const GROUP_LOSS_PRODUCT: f64 = 0.1;
/// Group sizes chosen between these.
const GROUP_SIZES: (usize, usize) = (2, 8);

/// The group size to protect `video_bps` of video with, given the group size the loss calls
/// for and the bandwidth the estimate leaves (`spare_bps`): parity costs about one packet per
/// group, so groups grow until it fits; `None` when even the largest group does not fit.
/// Parity never displaces media: it uses only what the chosen layers leave.
pub fn group_within(group: usize, video_bps: u64, spare_bps: u64) -> Option<usize> {
    if video_bps == 0 {
        return None;
    }
    let needed = video_bps.div_ceil(spare_bps.max(1)) as usize;
    let group = group.max(needed);
    (group <= GROUP_SIZES.1).then_some(group)
}

/// The share of a subscriber's forwarded video packets it asked to be resent (each sequence
/// number counted once), over the last few seconds, and the FEC group size it calls for.
#[derive(Debug, Default)]
pub struct LossMeter {
    /// (sent, asked for) per second, the current one at `second % WINDOW_SECONDS`.
    buckets: [(u32, u32); WINDOW_SECONDS],
    origin: Option<Instant>,
    second: u64,
    group_size: Option<usize>,
}

impl LossMeter {
    /// A meter that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// `count` video packets were sent.
    pub fn on_sent(&mut self, now: Instant, count: u32) {
        self.roll(now);
        self.buckets[self.second as usize % WINDOW_SECONDS].0 += count;
    }

    /// The subscriber asked for `count` packets it had not asked for before.
    pub fn on_resend_asked(&mut self, now: Instant, count: u32) {
        self.roll(now);
        self.buckets[self.second as usize % WINDOW_SECONDS].1 += count;
    }

    /// The share asked to be resent over the window, once enough was sent to tell.
    fn share(&mut self, now: Instant) -> Option<f64> {
        self.roll(now);
        let (sent, asked) = self
            .buckets
            .iter()
            .fold((0, 0), |(s, a), (bs, ba)| (s + bs, a + ba));
        (sent >= MIN_SENT).then(|| f64::from(asked.min(sent)) / f64::from(sent))
    }

    /// The FEC group size the link calls for now, or `None` for no protection (with
    /// hysteresis: on from [`PROTECT_FROM`], off below [`PROTECT_UNTIL`]).
    pub fn group_size(&mut self, now: Instant) -> Option<usize> {
        let share = self.share(now).unwrap_or(0.0);
        let on = match self.group_size {
            Some(_) => share >= PROTECT_UNTIL,
            None => share >= PROTECT_FROM,
        };
        self.group_size = on.then(|| {
            ((GROUP_LOSS_PRODUCT / share.max(PROTECT_UNTIL)).round() as usize)
                .clamp(GROUP_SIZES.0, GROUP_SIZES.1)
        });
        self.group_size
    }

    fn roll(&mut self, now: Instant) {
        let origin = *self.origin.get_or_insert(now);
        let second = now.saturating_duration_since(origin).as_secs();
        if second.saturating_sub(self.second) >= WINDOW_SECONDS as u64 {
            self.buckets = Default::default();
        } else {
            for s in self.second + 1..=second {
                self.buckets[s as usize % WINDOW_SECONDS] = (0, 0);
            }
        }
        self.second = self.second.max(second);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VP8: u8 = 96;
    const TWCC_ID: u8 = 3;

    fn header(seq: u16, ts: u32, marker: bool, with_ext: bool) -> Header {
        let mut h = Header {
            version: 2,
            marker,
            payload_type: VP8,
            sequence_number: seq,
            timestamp: ts,
            ssrc: 0x1234_5678,
            ..Default::default()
        };
        if with_ext {
            h.set_extension(TWCC_ID, Bytes::from_static(&[0, 0]))
                .unwrap();
        }
        h
    }

    fn marshalled(h: &Header, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0; h.marshal_size()];
        h.marshal_to(&mut bytes).unwrap();
        bytes.extend_from_slice(payload);
        bytes
    }

    /// Rebuilds the one packet of a group that is missing, as RFC 5109 section 8 describes
    /// (what a receiver does), from the FEC payload and the packets that arrived.
    fn recover(fec: &[u8], received: &[Vec<u8>]) -> Vec<u8> {
        let sn_base = u16::from_be_bytes([fec[2], fec[3]]);
        let long = fec[0] & 0x40 != 0;
        let (mask, header_len) = if long {
            let mut m = [0u8; 8];
            m[2..].copy_from_slice(&fec[12..18]);
            (u64::from_be_bytes(m), 18)
        } else {
            (u64::from(u16::from_be_bytes([fec[12], fec[13]])) << 32, 14)
        };
        let protection_len = u16::from_be_bytes([fec[10], fec[11]]) as usize;
        let mut head = [fec[0], fec[1]];
        let mut ts = u32::from_be_bytes(fec[4..8].try_into().unwrap());
        let mut length = u16::from_be_bytes([fec[8], fec[9]]);
        let mut tail = fec[header_len..header_len + protection_len].to_vec();
        let mut missing: Vec<u16> = (0..48)
            .filter(|i| mask & (1 << (47 - i)) != 0)
            .map(|i| sn_base.wrapping_add(i))
            .collect();
        for p in received {
            let seq = u16::from_be_bytes([p[2], p[3]]);
            missing.retain(|s| *s != seq);
            head[0] ^= p[0] & 0x3f;
            head[1] ^= p[1];
            ts ^= u32::from_be_bytes(p[4..8].try_into().unwrap());
            length ^= (p.len() - FIXED_HEADER) as u16;
            xor_into(&mut tail, &p[FIXED_HEADER..]);
        }
        assert_eq!(missing.len(), 1, "one packet of the group is missing");
        let mut out = vec![0x80 | (head[0] & 0x3f), head[1]];
        out.extend_from_slice(&missing[0].to_be_bytes());
        out.extend_from_slice(&ts.to_be_bytes());
        out.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        out.extend_from_slice(&tail[..length as usize]);
        out
    }

    #[test]
    fn red_puts_the_block_payload_type_before_the_payload() {
        assert_eq!(&red(VP8, b"abc")[..], &[VP8, b'a', b'b', b'c']);
        assert_eq!(red(0xff, b"")[0], 0x7f, "the F bit stays clear: one block");
    }

    #[test]
    fn any_one_lost_packet_of_a_group_is_rebuilt_from_the_parity() {
        let t0 = Instant::now();
        // Packets of different sizes, markers, with and without an extension.
        let packets: Vec<(Header, Vec<u8>)> = vec![
            (header(65_534, 9_000, false, true), vec![1; 300]),
            (header(65_535, 9_000, true, true), vec![2; 17]),
            (header(0, 12_000, false, false), vec![3; 1100]),
            (header(1, 12_000, true, true), vec![4, 5, 6]),
        ];
        let mut group = ParityGroup::new();
        let mut fec = None;
        for (i, (h, payload)) in packets.iter().enumerate() {
            let out = group.protect(t0, h, payload, 3);
            // Three packets are enough, but the third is inside a frame.
            assert_eq!(
                out.is_some(),
                i == 3,
                "the frame end after three packets closes it"
            );
            fec = out;
        }
        let fec = fec.unwrap();
        assert_eq!(fec[0] & 0xc0, 0, "E and L are clear");
        assert_eq!(u16::from_be_bytes([fec[2], fec[3]]), 65_534, "SN base");
        assert_eq!(
            u16::from_be_bytes([fec[12], fec[13]]),
            0xf000,
            "mask: four packets"
        );
        assert_eq!(
            fec.len(),
            14 + 1100,
            "headers and the longest packet's tail"
        );
        let wire: Vec<Vec<u8>> = packets.iter().map(|(h, p)| marshalled(h, p)).collect();
        for lost in 0..wire.len() {
            let received: Vec<Vec<u8>> = (0..wire.len())
                .filter(|i| *i != lost)
                .map(|i| wire[i].clone())
                .collect();
            assert_eq!(
                recover(&fec, &received),
                wire[lost],
                "packet {lost} rebuilt"
            );
        }
    }

    #[test]
    fn a_frame_end_closes_an_old_group_and_skipped_numbers_stay_out_of_the_mask() {
        let t0 = Instant::now();
        let mut group = ParityGroup::new();
        assert!(
            group
                .protect(t0, &header(10, 0, true, true), b"a", 8)
                .is_none()
        );
        // 12 was not forwarded to this subscriber; 13 ends a frame 70 ms after the start.
        let fec = group
            .protect(
                t0 + Duration::from_millis(70),
                &header(13, 6_300, true, true),
                b"bb",
                8,
            )
            .expect("an old group closes at a frame end");
        assert_eq!(u16::from_be_bytes([fec[12], fec[13]]), 0b1001 << 12);
        let rebuilt = recover(&fec, &[marshalled(&header(10, 0, true, true), b"a")]);
        assert_eq!(rebuilt, marshalled(&header(13, 6_300, true, true), b"bb"));
        // A late packet from before the last one protected goes unprotected: the next
        // group starts at 14.
        assert!(
            group
                .protect(t0, &header(12, 0, false, true), b"c", 2)
                .is_none()
        );
        assert!(
            group
                .protect(t0, &header(14, 0, false, true), b"d", 2)
                .is_none()
        );
        let fec = group
            .protect(t0, &header(15, 0, true, true), b"e", 2)
            .unwrap();
        assert_eq!(u16::from_be_bytes([fec[2], fec[3]]), 14);
        assert_eq!(u16::from_be_bytes([fec[12], fec[13]]), 0xc000);
    }

    #[test]
    fn a_long_frame_is_protected_with_the_long_mask_and_a_longer_one_in_part() {
        let t0 = Instant::now();
        let mut group = ParityGroup::new();
        // A 20-packet keyframe: one parity after its last packet, 48-bit mask.
        let frame: Vec<(Header, Vec<u8>)> = (0..20u16)
            .map(|i| {
                (
                    header(1000 + i, 0, i == 19, true),
                    vec![i as u8; 900 + i as usize],
                )
            })
            .collect();
        let mut fec = None;
        for (h, p) in &frame {
            fec = group.protect(t0, h, p, 3);
        }
        let fec = fec.expect("closed at the frame end");
        assert_eq!(fec[0] & 0x40, 0x40, "L is set");
        let wire: Vec<Vec<u8>> = frame.iter().map(|(h, p)| marshalled(h, p)).collect();
        let received: Vec<Vec<u8>> = wire.iter().skip(1).cloned().collect();
        assert_eq!(recover(&fec, &received), wire[0]);
        // A 60-packet frame: the group starts again at its 49th packet.
        let mut last = None;
        for i in 0..60u16 {
            last = group.protect(t0, &header(2000 + i, 0, i == 59, false), b"k", 3);
        }
        let fec = last.unwrap();
        assert_eq!(u16::from_be_bytes([fec[2], fec[3]]), 2048);
        assert_eq!(fec[0] & 0x40, 0, "12 packets fit the short mask");
    }

    #[test]
    fn parity_uses_only_what_the_estimate_leaves() {
        // 150 kbit/s of video, 3 % loss (groups of 3): 50 kbit/s of parity fits in 100.
        assert_eq!(group_within(3, 150_000, 100_000), Some(3));
        // Only 40 left: groups of 4 (37.5 kbit/s).
        assert_eq!(group_within(3, 150_000, 40_000), Some(4));
        // 10 left: groups of 15 would be needed, more than the largest.
        assert_eq!(group_within(3, 150_000, 10_000), None);
        assert_eq!(
            group_within(3, 0, 100_000),
            None,
            "no video, nothing to protect"
        );
    }

    #[test]
    fn protection_starts_at_one_per_cent_and_stops_below_0_4() {
        let t0 = Instant::now();
        let mut meter = LossMeter::new();
        meter.on_sent(t0, 40);
        meter.on_resend_asked(t0, 10);
        assert_eq!(meter.group_size(t0), None, "too few packets to tell");
        meter.on_sent(t0, 160);
        // 10 of 200: 5 % → groups of 2.
        assert_eq!(meter.group_size(t0), Some(2));
        // A second later, 300 more without loss: 10 of 500 = 2 % → groups of 5.
        let t1 = t0 + Duration::from_secs(1);
        meter.on_sent(t1, 300);
        assert_eq!(meter.group_size(t1), Some(5));
        // After the window has passed, 1000 packets with 5 asked: 0.5 % keeps it on.
        let t6 = t0 + Duration::from_secs(6);
        meter.on_sent(t6, 1000);
        meter.on_resend_asked(t6, 5);
        assert_eq!(meter.group_size(t6), Some(8));
        // 3 of 1000 stops it; 0.5 % does not start it again.
        let t12 = t0 + Duration::from_secs(12);
        meter.on_sent(t12, 1000);
        meter.on_resend_asked(t12, 3);
        assert_eq!(meter.group_size(t12), None);
        meter.on_resend_asked(t12, 2);
        assert_eq!(meter.group_size(t12), None);
        // Nothing sent for a while: nothing to protect.
        assert_eq!(meter.group_size(t0 + Duration::from_secs(30)), None);
        // A subscriber asking for more than it was sent counts as losing everything, no more.
        let t40 = t0 + Duration::from_secs(40);
        meter.on_sent(t40, 60);
        meter.on_resend_asked(t40, 5_000);
        assert_eq!(meter.share(t40), Some(1.0));
        assert_eq!(meter.group_size(t40), Some(2));
    }
}
