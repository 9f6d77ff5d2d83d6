//! Retransmissions of RED-wrapped video, sent as the packets themselves.
//!
//! With forward error correction on (`--fec`, the default), a subscriber's video goes out
//! wrapped in RED (RFC 2198, see [`fec`](crate::fec)). The `rtc` NACK responder retransmits
//! over RTX with the one RTX payload type of the stream, the one associated with its primary
//! codec (VP8's), whatever the packet's own payload type was. A RED packet resent that way
//! reaches the browser as a VP8 packet with a RED header in front, which it cannot
//! depacketize: the frame never completes, its sequence number no longer counts as missing,
//! and the picture stops until the browser asks for a keyframe about 3 s later.
//!
//! This interceptor sits between the NACK responder and the wire on subscriber connections
//! with `--fec`. It keeps each stream's recent RED packets as they were written, and replaces
//! an RTX retransmission of one of them with that packet itself: same SSRC, sequence number,
//! header extensions and payload (RFC 4585 retransmission, as before RTX). Being identical,
//! the resent packet can also serve the browser's parity recovery. Other retransmissions pass
//! as they are.

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Where it sits in the chain: between the NACK responder (4,000) and the transport-wide
/// sequence numbers (2,000), which a resent packet must still get.
pub(crate) const SLOT: usize = 3_500;

/// How many of a stream's latest packets it remembers (the NACK responder's own cache holds
/// as many).
const HISTORY: usize = 1024;

/// Turns RTX retransmissions of RED packets back into the packets themselves.
pub(crate) struct RedResend {
    red_payload_type: u8,
    /// Media SSRC of each bound stream's RTX SSRC.
    rtx_of: HashMap<u32, u32>,
    /// Each bound stream's latest packets by sequence number; `None` where it was not RED.
    sent: HashMap<u32, Vec<Option<rtc::rtp::Packet>>>,
    writes: VecDeque<TaggedPacket>,
    reads: VecDeque<TaggedPacket>,
}

impl RedResend {
    /// For a connection whose RED packets carry `red_payload_type`.
    pub(crate) fn new(red_payload_type: u8) -> Self {
        Self {
            red_payload_type,
            rtx_of: HashMap::new(),
            sent: HashMap::new(),
            writes: VecDeque::new(),
            reads: VecDeque::new(),
        }
    }

    /// The RED packet an RTX retransmission carries, if it is one this stream sent.
    fn original(&self, rtx: &rtc::rtp::Packet) -> Option<rtc::rtp::Packet> {
        let media = self.rtx_of.get(&rtx.header.ssrc)?;
        let seq = u16::from_be_bytes(rtx.payload.get(..2)?.try_into().ok()?);
        self.sent.get(media)?[usize::from(seq) % HISTORY]
            .as_ref()
            .filter(|p| p.header.sequence_number == seq)
            .cloned()
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RedResend {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtp(packet) = &mut msg.message.packet {
            if let Some(original) = self.original(packet) {
                *packet = original;
            } else if let Some(history) = self.sent.get_mut(&packet.header.ssrc) {
                history[usize::from(packet.header.sequence_number) % HISTORY] =
                    (packet.header.payload_type == self.red_payload_type).then(|| packet.clone());
            }
        }
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for RedResend {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if let Some(rtx) = info.ssrc_rtx {
            self.rtx_of.insert(rtx, info.ssrc);
            self.sent.insert(info.ssrc, vec![None; HISTORY]);
        }
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        if let Some(rtx) = info.ssrc_rtx {
            self.rtx_of.remove(&rtx);
        }
        self.sent.remove(&info.ssrc);
    }

    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::interceptor::AttributedPacket;
    use rtc::shared::TransportContext;

    const RED: u8 = 116;

    fn rtp(ssrc: u32, pt: u8, seq: u16, payload: &[u8]) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc,
                payload_type: pt,
                sequence_number: seq,
                timestamp: 9000,
                marker: true,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn write(r: &mut RedResend, packet: rtc::rtp::Packet) -> rtc::rtp::Packet {
        r.handle_write(TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtp(packet)),
        })
        .unwrap();
        match r.poll_write().unwrap().message.packet {
            Packet::Rtp(p) => p,
            _ => panic!("RTP in, something else out"),
        }
    }

    #[test]
    fn an_rtx_retransmission_of_a_red_packet_becomes_the_packet_itself() {
        let mut r = RedResend::new(RED);
        r.bind_local_stream(&StreamInfo {
            ssrc: 1111,
            ssrc_rtx: Some(2222),
            payload_type: 96,
            payload_type_rtx: Some(97),
            ..Default::default()
        });
        let mut red = rtp(1111, RED, 500, &[96, 0x90, 0x80, 1, 2, 3]);
        red.header
            .set_extension(3, Bytes::from_static(&[0, 0]))
            .unwrap();
        assert_eq!(write(&mut r, red.clone()), red, "media passes unchanged");
        let vp8 = rtp(1111, 96, 501, &[0x90, 0x80, 4, 5]);
        write(&mut r, vp8.clone());
        // The responder's RTX for 500 (VP8's RTX type, original sequence number in front).
        let mut rtx_payload = 500u16.to_be_bytes().to_vec();
        rtx_payload.extend_from_slice(&red.payload);
        assert_eq!(write(&mut r, rtp(2222, 97, 7, &rtx_payload)), red);
        // An RTX for a packet that was not RED, or that is no longer remembered, passes.
        let mut plain = 501u16.to_be_bytes().to_vec();
        plain.extend_from_slice(&vp8.payload);
        let rtx = rtp(2222, 97, 8, &plain);
        assert_eq!(write(&mut r, rtx.clone()), rtx);
        for seq in 502..502 + HISTORY as u16 {
            write(&mut r, rtp(1111, 96, seq, &[0x90]));
        }
        let rtx = rtp(2222, 97, 9, &rtx_payload);
        assert_eq!(write(&mut r, rtx.clone()), rtx, "500 is out of the history");
        // Garbage on the RTX SSRC (too short for a sequence number) passes too.
        let short = rtp(2222, 97, 10, &[1]);
        assert_eq!(write(&mut r, short.clone()), short);
    }
}
