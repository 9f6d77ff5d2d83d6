//! Per-subscriber RTP header rewriting: SSRC, payload type, sequence numbers, timestamps and
//! header-extension ids.
//!
//! A subscriber sees one continuous stream per forwarded track even when the source behind it
//! changes (a publisher restarts its encoder, or later a simulcast layer switch): sequence
//! numbers go on from the last one sent, and timestamps advance by the wall-clock time that
//! passed. VP8's picture ids and TL0PICIDX go on the same way: each simulcast layer numbers
//! its own pictures, and a receiver that saw one layer's numbers before a switch refers the
//! other layer's frames to pictures it never decoded. Everything here is plain arithmetic on values passed in, so it is tested without
//! sockets or clocks.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::Instant;

/// Header-extension URI of transport-wide congestion control sequence numbers. Its values
/// are per transport, so the publisher's never make sense on a subscriber's transport.
pub const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Extensions never forwarded: their values name the publisher's transport (`transport-cc`)
/// or the publisher's m-line and layers (`mid`, `rid`), which would misroute the packet in
/// the subscriber's connection. The subscriber demultiplexes by the signalled SSRC instead.
const NOT_FORWARDED: [&str; 4] = [
    TRANSPORT_CC_URI,
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
];

/// Maps publisher header-extension ids (1..=14, one-byte form) to a subscriber's ids.
///
/// Built from the two negotiated `(id, uri)` lists: an extension the subscriber did not
/// negotiate, or one that must not cross transports, maps to `None` and is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionMap {
    to_subscriber: [Option<u8>; 16],
}

impl ExtensionMap {
    /// Builds the map from the publisher's and the subscriber's `(id, uri)` pairs.
    pub fn new<'a>(
        publisher: impl IntoIterator<Item = (u8, &'a str)>,
        subscriber: impl IntoIterator<Item = (u8, &'a str)> + Clone,
    ) -> Self {
        let mut to_subscriber = [None; 16];
        for (pub_id, uri) in publisher {
            if NOT_FORWARDED.contains(&uri) || pub_id as usize >= to_subscriber.len() {
                continue;
            }
            to_subscriber[pub_id as usize] = subscriber
                .clone()
                .into_iter()
                .find(|(_, sub_uri)| *sub_uri == uri)
                .map(|(id, _)| id);
        }
        Self { to_subscriber }
    }

    /// The subscriber's id for a publisher's extension id, or `None` to drop it.
    pub fn map(&self, publisher_id: u8) -> Option<u8> {
        self.to_subscriber
            .get(publisher_id as usize)
            .copied()
            .flatten()
    }
}

/// Where a forwarded stream stands: the mapping from the current source's sequence numbers
/// and timestamps to the ones the subscriber sees.
#[derive(Debug, Clone)]
pub struct SequenceRewriter {
    clock_rate: u32,
    /// Set once the first packet of the current source has been mapped.
    base: Option<Base>,
    /// The last packet handed to the subscriber (highest sequence number sent; before the
    /// first, the one just before the initial values).
    last_out: Sent,
    /// Packets the router added to the current source's numbering ([`Self::insert`]): the
    /// highest incoming sequence number at each, oldest first.
    inserted: VecDeque<u16>,
    /// The current source's VP8 picture-id and TL0PICIDX offsets, set by its first packet.
    pictures: Option<PictureOffsets>,
    /// The newest VP8 picture id handed out, and the TL0PICIDX that came with it.
    last_picture: Option<(u16, Option<u8>)>,
}

#[derive(Debug, Clone, Copy)]
struct PictureOffsets {
    picture_id: u16,
    tl0: u8,
}

/// Where a VP8 payload descriptor (RFC 7741 §4.2) keeps the fields a subscriber must see
/// continue.
struct Vp8Fields {
    /// The picture id's offset, and whether it is 15 bits wide (else 7).
    picture: Option<(usize, bool)>,
    /// TL0PICIDX's offset.
    tl0: Option<usize>,
}

fn vp8_fields(payload: &[u8]) -> Option<Vp8Fields> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return Some(Vp8Fields {
            picture: None,
            tl0: None,
        });
    }
    let x = *payload.get(1)?;
    let mut at = 2;
    let mut picture = None;
    if x & 0x80 != 0 {
        let wide = payload.get(at)? & 0x80 != 0;
        picture = Some((at, wide));
        at += if wide { 2 } else { 1 };
    }
    let tl0 = (x & 0x40 != 0).then_some(at);
    payload.get(at + usize::from(tl0.is_some()))?;
    Some(Vp8Fields { picture, tl0 })
}

#[derive(Debug, Clone, Copy)]
struct Base {
    seq_offset: u16,
    ts_offset: u32,
    /// Highest incoming sequence number seen from this source, to tell old from new.
    highest_in: u16,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u16,
    ts: u32,
    at: Instant,
}

/// The rewritten sequence number and timestamp of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Sequence number for the subscriber.
    pub seq: u16,
    /// RTP timestamp for the subscriber.
    pub ts: u32,
}

/// How far back (in sequence numbers) a packet may be and still be forwarded; older ones are
/// from before the current source began and are dropped.
const MAX_REORDER: u16 = 1000;

impl SequenceRewriter {
    /// A rewriter for a stream sampled at `clock_rate` Hz, starting at random-looking values
    /// chosen by the caller (`initial_seq`, `initial_ts`) as RFC 3550 asks.
    pub fn new(clock_rate: u32, initial_seq: u16, initial_ts: u32, now: Instant) -> Self {
        Self {
            clock_rate,
            base: None,
            last_out: Sent {
                seq: initial_seq.wrapping_sub(1),
                ts: initial_ts,
                at: now,
            },
            inserted: VecDeque::new(),
            pictures: None,
            last_picture: None,
        }
    }

    /// Forgets the current source: the next packet starts a new mapping that continues the
    /// subscriber's numbering (call on a source change, e.g. a layer switch or a new SSRC).
    pub fn reset_source(&mut self) {
        self.base = None;
        self.inserted.clear();
        self.pictures = None;
    }

    /// Rewrites a VP8 payload's picture id and TL0PICIDX so that they go on from the last
    /// ones sent, as sequence numbers do: the current source's first packet (a keyframe, at
    /// a switch) takes the next of each. Returns the payload itself while nothing changes,
    /// else a rewritten copy.
    pub fn rewrite_vp8(&mut self, payload: &Bytes) -> Bytes {
        let Some(Vp8Fields { picture, tl0 }) = vp8_fields(payload) else {
            return payload.clone();
        };
        let read_picture = |(at, wide): (usize, bool)| {
            if wide {
                u16::from_be_bytes([payload[at] & 0x7f, payload[at + 1]])
            } else {
                u16::from(payload[at])
            }
        };
        let in_picture = picture.map(read_picture);
        let in_tl0 = tl0.map(|at| payload[at]);
        let last = self.last_picture;
        let offsets = *self.pictures.get_or_insert_with(|| match last {
            Some((picture, tl0)) => PictureOffsets {
                picture_id: picture
                    .wrapping_add(1)
                    .wrapping_sub(in_picture.unwrap_or(0)),
                tl0: tl0.map_or(0, |t| t.wrapping_add(1).wrapping_sub(in_tl0.unwrap_or(0))),
            },
            None => PictureOffsets {
                picture_id: 0,
                tl0: 0,
            },
        });
        let out_picture = in_picture.map(|p| p.wrapping_add(offsets.picture_id) & 0x7fff);
        let out_tl0 = in_tl0.map(|t| t.wrapping_add(offsets.tl0));
        if let Some(out) = out_picture {
            let newer =
                last.is_none_or(|(l, _)| (1..0x4000).contains(&(out.wrapping_sub(l) & 0x7fff)));
            if newer {
                self.last_picture = Some((out, out_tl0.or(last.and_then(|(_, t)| t))));
            }
        }
        if offsets.picture_id == 0 && offsets.tl0 == 0 {
            return payload.clone();
        }
        let mut out = BytesMut::from(&payload[..]);
        if let (Some((at, wide)), Some(p)) = (picture, out_picture) {
            if wide {
                out[at] = 0x80 | (p >> 8) as u8;
                out[at + 1] = p as u8;
            } else {
                out[at] = (p & 0x7f) as u8;
            }
        }
        if let (Some(at), Some(t)) = (tl0, out_tl0) {
            out[at] = t;
        }
        out.freeze()
    }

    /// Takes the next sequence number for a packet the router adds to the stream itself (a
    /// parity packet), with the timestamp of the last packet sent. The source's later packets
    /// are numbered after it; its earlier ones arriving late keep the numbers they had.
    pub fn insert(&mut self) -> Rewritten {
        let last = &mut self.last_out;
        last.seq = last.seq.wrapping_add(1);
        let out = Rewritten {
            seq: last.seq,
            ts: last.ts,
        };
        if let Some(base) = self.base.as_mut() {
            base.seq_offset = base.seq_offset.wrapping_add(1);
            while self
                .inserted
                .front()
                .is_some_and(|b| base.highest_in.wrapping_sub(*b) > MAX_REORDER)
            {
                self.inserted.pop_front();
            }
            self.inserted.push_back(base.highest_in);
        }
        out
    }

    /// Maps one incoming packet, or returns `None` when it is too old for the current source.
    pub fn rewrite(&mut self, in_seq: u16, in_ts: u32, now: Instant) -> Option<Rewritten> {
        let base = match self.base {
            Some(mut base) => {
                let ahead = in_seq.wrapping_sub(base.highest_in);
                if ahead != 0 && ahead < 0x8000 {
                    base.highest_in = in_seq;
                } else if base.highest_in.wrapping_sub(in_seq) > MAX_REORDER {
                    return None;
                }
                self.base = Some(base);
                base
            }
            None => {
                let base = self.start_source(in_seq, in_ts, now);
                self.base = Some(base);
                base
            }
        };
        // A late packet from before packets were inserted keeps the numbering of its time.
        let before_inserts = self
            .inserted
            .iter()
            .rev()
            .take_while(|b| b.wrapping_sub(in_seq) < 0x8000)
            .count() as u16;
        let out = Rewritten {
            seq: in_seq
                .wrapping_add(base.seq_offset)
                .wrapping_sub(before_inserts),
            ts: in_ts.wrapping_add(base.ts_offset),
        };
        let last = self.last_out;
        if out.seq.wrapping_sub(last.seq) < 0x8000 && out.seq != last.seq {
            self.last_out = Sent {
                seq: out.seq,
                ts: out.ts,
                at: now,
            };
        }
        Some(out)
    }

    /// Chooses offsets so that the first packet of a source follows the last one sent: the
    /// next sequence number, and a timestamp advanced by the time that passed (at least 1).
    fn start_source(&self, in_seq: u16, in_ts: u32, now: Instant) -> Base {
        let last = self.last_out;
        let elapsed = now.saturating_duration_since(last.at);
        let ticks = (elapsed.as_micros() as u64 * self.clock_rate as u64 / 1_000_000)
            .clamp(1, u32::MAX as u64) as u32;
        let (next_seq, next_ts) = (last.seq.wrapping_add(1), last.ts.wrapping_add(ticks));
        Base {
            seq_offset: next_seq.wrapping_sub(in_seq),
            ts_offset: next_ts.wrapping_sub(in_ts),
            highest_in: in_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_packet_starts_at_the_chosen_initial_values() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(90_000, 500, 1_000, t0);
        let out = rw.rewrite(40_000, 7_777, t0).unwrap();
        assert_eq!(out.seq, 500);
        // 0 ms elapsed is advanced by the minimum of one tick.
        assert_eq!(out.ts, 1_001);
        let out = rw.rewrite(40_001, 7_777 + 3000, t0).unwrap();
        assert_eq!(
            out,
            Rewritten {
                seq: 501,
                ts: 4_001
            }
        );
    }

    #[test]
    fn sequence_numbers_wrap_around_continuously() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(48_000, 65_534, 0, t0);
        let seqs: Vec<u16> = (0..4u16)
            .map(|i| rw.rewrite(100 + i, 960 * i as u32, t0).unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![65_534, 65_535, 0, 1]);
    }

    #[test]
    fn reordered_and_retransmitted_packets_keep_their_mapping() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(90_000, 10, 0, t0);
        let a = rw.rewrite(1000, 0, t0).unwrap();
        let c = rw.rewrite(1002, 6000, t0).unwrap();
        let b = rw.rewrite(1001, 3000, t0).unwrap();
        assert_eq!((a.seq, b.seq, c.seq), (10, 11, 12));
        // A retransmission of 1001 maps to the same number again.
        assert_eq!(rw.rewrite(1001, 3000, t0).unwrap(), b);
    }

    #[test]
    fn inserted_packets_take_numbers_between_the_source_s_own() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(90_000, 100, 0, t0);
        assert_eq!(rw.rewrite(10, 3000, t0).unwrap().seq, 100);
        // 11 is late; 12 arrives first.
        assert_eq!(rw.rewrite(12, 6000, t0).unwrap().seq, 102);
        let fec = rw.insert();
        assert_eq!(
            (fec.seq, fec.ts),
            (103, rw.rewrite(12, 6000, t0).unwrap().ts)
        );
        assert_eq!(rw.rewrite(13, 9000, t0).unwrap().seq, 104);
        assert_eq!(rw.insert().seq, 105);
        // The late packet and a retransmission keep the numbers of their time.
        assert_eq!(rw.rewrite(11, 3000, t0).unwrap().seq, 101);
        assert_eq!(rw.rewrite(13, 9000, t0).unwrap().seq, 104);
        assert_eq!(rw.rewrite(14, 12_000, t0).unwrap().seq, 106);
        // A new source continues after the last number taken.
        assert_eq!(rw.insert().seq, 107);
        rw.reset_source();
        assert_eq!(rw.rewrite(5000, 0, t0).unwrap().seq, 108);
    }

    /// A VP8 payload descriptor with a 15-bit picture id and TL0PICIDX, then one byte.
    fn vp8(picture: u16, tl0: u8) -> Bytes {
        Bytes::from(vec![
            0x90,
            0xc0,
            0x80 | (picture >> 8) as u8,
            picture as u8,
            tl0,
            0xaa,
        ])
    }

    fn fields(payload: &Bytes) -> (u16, u8) {
        (
            u16::from_be_bytes([payload[2] & 0x7f, payload[3]]),
            payload[4],
        )
    }

    #[test]
    fn vp8_picture_ids_and_tl0_go_on_across_a_source_change() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(90_000, 0, 0, t0);
        // The first source passes as it is (nothing to continue from).
        let first = vp8(32_000, 250);
        assert_eq!(rw.rewrite_vp8(&first), first);
        for (p, t) in [(32_001, 250), (32_767, 255), (0, 0), (1, 0)] {
            assert_eq!(fields(&rw.rewrite_vp8(&vp8(p, t))), (p, t));
        }
        // A layer switch: the other layer numbers its pictures on its own.
        rw.reset_source();
        let keyframe = rw.rewrite_vp8(&vp8(7_000, 9));
        assert_eq!(
            fields(&keyframe),
            (2, 1),
            "the next picture id and TL0PICIDX"
        );
        assert_eq!(keyframe[5], 0xaa, "the rest is untouched");
        assert_eq!(fields(&rw.rewrite_vp8(&vp8(7_001, 9))), (3, 1));
        assert_eq!(fields(&rw.rewrite_vp8(&vp8(7_002, 10))), (4, 2));
        // A late packet of an earlier picture keeps its mapping and does not move "last".
        assert_eq!(fields(&rw.rewrite_vp8(&vp8(7_001, 9))), (3, 1));
        rw.reset_source();
        assert_eq!(fields(&rw.rewrite_vp8(&vp8(100, 200))), (5, 3));
    }

    #[test]
    fn vp8_descriptors_without_the_fields_pass_unchanged() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(90_000, 0, 0, t0);
        rw.rewrite_vp8(&vp8(10, 1));
        rw.reset_source();
        // No extension bits; a 7-bit picture id without TL0PICIDX; a truncated descriptor.
        let plain = Bytes::from_static(&[0x10, 0x00]);
        assert_eq!(rw.rewrite_vp8(&plain), plain);
        rw.reset_source();
        let short = Bytes::from_static(&[0x90, 0x80, 0x05, 0x00]);
        assert_eq!(rw.rewrite_vp8(&short)[2], 11, "7 bits wide, next after 10");
        let truncated = Bytes::from_static(&[0x90, 0xc0, 0x80]);
        assert_eq!(rw.rewrite_vp8(&truncated), truncated);
    }

    #[test]
    fn source_change_continues_numbering_and_advances_time() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(90_000, 0, 0, t0);
        for i in 0..10u16 {
            rw.rewrite(5000 + i, 3000 * i as u32, t0).unwrap();
        }
        rw.reset_source();
        let t1 = t0 + Duration::from_millis(100);
        let out = rw.rewrite(12, 999_999, t1).unwrap();
        assert_eq!(out.seq, 10, "continues after the last sequence number sent");
        // last ts sent was 27_001 (1 tick of initial advance + 9 frames); 100 ms at 90 kHz = 9000.
        assert_eq!(out.ts, 27_001 + 9_000);
        assert_eq!(rw.rewrite(13, 999_999 + 3000, t1).unwrap().seq, 11);
    }

    #[test]
    fn packets_from_far_before_the_current_source_are_dropped() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(90_000, 0, 0, t0);
        rw.rewrite(30_000, 0, t0).unwrap();
        assert!(rw.rewrite(30_000 - 2_000, 0, t0).is_none());
        assert!(rw.rewrite(30_000 - 5, 0, t0).is_some());
    }

    #[test]
    fn extension_map_translates_by_uri_and_drops_transport_specific_ones() {
        let publisher = [
            (1u8, "urn:ietf:params:rtp-hdrext:sdes:mid"),
            (3u8, TRANSPORT_CC_URI),
            (4u8, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
            (9u8, "urn:example:not-negotiated"),
        ];
        let subscriber = [
            (5u8, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
            (2u8, "urn:ietf:params:rtp-hdrext:sdes:mid"),
            (7u8, TRANSPORT_CC_URI),
        ];
        let map = ExtensionMap::new(publisher, subscriber);
        assert_eq!(map.map(1), None, "mid names the publisher's m-line");
        assert_eq!(map.map(3), None);
        assert_eq!(map.map(4), Some(5));
        assert_eq!(map.map(9), None);
        assert_eq!(map.map(15), None);
    }
}
