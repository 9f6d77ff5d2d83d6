//! Inbound RTCP, closest to the wire: lets a subscriber's keyframe requests and NACKs reach
//! the router, and trims its NACKs.
//!
//! The `rtc` interceptor chain ends inbound RTCP at its terminus unless a packet is marked
//! [`Attribute::DeliverToApplication`]. This interceptor marks the compound packets that
//! carry a PLI or FIR, and on a subscriber connection those that carry a NACK; receiver
//! reports stay with the chain. The router relays keyframe requests to the publisher,
//! throttled, and counts what NACKs ask for as the subscriber's loss (the NACK responder
//! further down the chain answers them from its cache). On a subscriber connection each
//! NACK is first trimmed to what its [`NackBudget`] allows, and the transport-wide sequence
//! numbers each transport-cc feedback covers are noted in its [`Estimate`] (the estimator
//! further down the chain tells a lost packet from one whose feedback was lost). Its
//! receiver reference time reports are answered at once ([`rtt_reply`]).

use crate::bandwidth::Estimate;
use crate::nack_limit::NackBudget;
use crate::rtt_reply;
use rtc::interceptor::{
    Attribute, AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;
use rtc::shared::error::Error;
use std::collections::VecDeque;
use std::time::Instant;

/// Where the marker sits in the chain: before every named slot.
pub(crate) const SLOT: usize = 500;

/// Marks inbound RTCP carrying PLI/FIR for delivery to the application; on a subscriber
/// connection, trims NACKs and delivers them too, and notes transport-cc coverage.
#[derive(Default)]
pub(crate) struct KeyframeRequestMarker {
    /// On a subscriber connection: its NACK budget, a share of its [`Estimate`].
    nacks: Option<NackBudget>,
    /// The SSRCs this connection sends, in the order they were bound (a reply to the
    /// browser's RTCP is sent as the first).
    local_ssrcs: Vec<u32>,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl KeyframeRequestMarker {
    /// The marker of a subscriber connection whose estimator publishes into `estimate`.
    pub(crate) fn for_subscriber(estimate: &Estimate) -> Self {
        Self {
            nacks: Some(NackBudget::new(estimate.clone())),
            ..Self::default()
        }
    }
}

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestMarker {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let (Some(budget), Packet::Rtcp(packets)) = (&self.nacks, &msg.message.packet) {
            let estimate = budget.estimate();
            for cc in packets
                .iter()
                .filter_map(|p| p.as_any().downcast_ref::<TransportLayerCc>())
            {
                estimate.feedback_covered(cc.base_sequence_number, cc.packet_status_count);
            }
            if let Some(reply) = self
                .local_ssrcs
                .first()
                .and_then(|&ssrc| rtt_reply::answer(packets, ssrc))
            {
                self.writes.push_back(TaggedPacket {
                    now: msg.now,
                    transport: TransportContext::default(),
                    message: AttributedPacket::new(Packet::Rtcp(vec![Box::new(reply)])),
                });
            }
        }
        if let (Some(budget), Packet::Rtcp(packets)) = (&mut self.nacks, &mut msg.message.packet) {
            let now = msg.now;
            *packets = std::mem::take(packets)
                .into_iter()
                .filter_map(
                    |packet| match packet.as_any().downcast_ref::<TransportLayerNack>() {
                        Some(nack) => budget
                            .trim(now, nack)
                            .map(|t| Box::new(t) as Box<dyn rtc::rtcp::Packet>),
                        None => Some(packet),
                    },
                )
                .collect();
        }
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| {
                is_keyframe_request(p.as_ref())
                    || (self.nacks.is_some() && p.as_any().is::<TransportLayerNack>())
            })
            && !msg.message.has(&Attribute::DeliverToApplication)
        {
            msg.message.attributes.push(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for KeyframeRequestMarker {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.local_ssrcs.push(info.ssrc);
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.local_ssrcs.retain(|&ssrc| ssrc != info.ssrc);
    }
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::extended_report::{
        DLRRReportBlock, ExtendedReport, ReceiverReferenceTimeReportBlock,
    };

    fn read(marker: &mut KeyframeRequestMarker, packets: Vec<Box<dyn rtc::rtcp::Packet>>) {
        marker
            .handle_read(TaggedPacket {
                now: Instant::now(),
                transport: TransportContext::default(),
                message: AttributedPacket::new(Packet::Rtcp(packets)),
            })
            .unwrap();
        assert!(marker.poll_read().is_some(), "inbound RTCP passes on");
    }

    fn rrtr() -> Box<dyn rtc::rtcp::Packet> {
        Box::new(ExtendedReport {
            sender_ssrc: 1,
            reports: vec![Box::new(ReceiverReferenceTimeReportBlock {
                ntp_timestamp: 0x0001_2345_6789_0000,
            })],
        })
    }

    #[test]
    fn a_subscriber_connection_notes_feedback_coverage_and_answers_rrtr() {
        let estimate = Estimate::new();
        let mut marker = KeyframeRequestMarker::for_subscriber(&estimate);
        marker.bind_local_stream(&StreamInfo {
            ssrc: 0xABCD,
            ..Default::default()
        });
        let feedback = TransportLayerCc {
            base_sequence_number: 100,
            packet_status_count: 5,
            ..Default::default()
        };
        read(&mut marker, vec![Box::new(feedback), rrtr()]);
        assert!(estimate.covered(100) && estimate.covered(104) && !estimate.covered(105));
        let reply = marker.poll_write().expect("a DLRR reply");
        let Packet::Rtcp(packets) = reply.message.packet else {
            panic!("RTCP out");
        };
        let xr = packets[0]
            .as_any()
            .downcast_ref::<ExtendedReport>()
            .expect("an XR");
        assert_eq!(
            xr.sender_ssrc, 0xABCD,
            "sent as the connection's first stream"
        );
        assert!(xr.reports[0].as_any().is::<DLRRReportBlock>());
        assert!(marker.poll_write().is_none(), "one reply per report");
    }

    #[test]
    fn a_publisher_connection_and_one_without_streams_do_not_answer() {
        let mut publisher = KeyframeRequestMarker::default();
        publisher.bind_local_stream(&StreamInfo {
            ssrc: 7,
            ..Default::default()
        });
        read(&mut publisher, vec![rrtr()]);
        assert!(publisher.poll_write().is_none());
        let mut empty = KeyframeRequestMarker::for_subscriber(&Estimate::new());
        read(&mut empty, vec![rrtr()]);
        assert!(empty.poll_write().is_none(), "no SSRC to answer as yet");
    }
}
