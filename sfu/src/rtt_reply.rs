//! Round-trip time for a browser that only receives.
//!
//! A browser measures its round-trip time from the reports on what it sends; on a subscriber
//! connection it sends nothing, so it has none and assumes 100 ms. Its jitter buffer then
//! holds frames too briefly for a retransmission on a long path to arrive in time (measured
//! on a 150 ms each-way link with 3 % loss: the buffer shrank to 80 ms and every repaired
//! loss froze the picture for about 0.3 s), and it repeats each NACK every 100 ms.
//!
//! RFC 3611 gives a receiver its round-trip time: it sends a Receiver Reference Time report
//! (RRTR, an XR block carrying its NTP time) and the sender answers with a DLRR block naming
//! that time and how long it held it. Subscriber offers ask for this (`a=rtcp-fb:* rrtr`)
//! and [`answer`] builds the reply, which the inbound-RTCP interceptor in
//! [`keyframe_relay`](crate::keyframe_relay) sends at once (so the delay it reports is 0).

use rtc::rtcp::Packet;
use rtc::rtcp::extended_report::{
    DLRRReport, DLRRReportBlock, ExtendedReport, ReceiverReferenceTimeReportBlock,
};

/// The SDP feedback type that asks a receiver for RRTR reports.
pub(crate) const RRTR_FEEDBACK: &str = "rrtr";

/// The DLRR reply, sent as `sender_ssrc`, to the RRTR blocks among inbound `packets`; None
/// without any.
pub(crate) fn answer(packets: &[Box<dyn Packet>], sender_ssrc: u32) -> Option<ExtendedReport> {
    let reports: Vec<DLRRReport> = packets
        .iter()
        .filter_map(|p| p.as_any().downcast_ref::<ExtendedReport>())
        .flat_map(|xr| {
            xr.reports
                .iter()
                .filter_map(|block| {
                    block
                        .as_any()
                        .downcast_ref::<ReceiverReferenceTimeReportBlock>()
                })
                .map(|rrtr| DLRRReport {
                    ssrc: xr.sender_ssrc,
                    // The middle 32 bits of the NTP timestamp (RFC 3611 section 4.5).
                    last_rr: (rrtr.ntp_timestamp >> 16) as u32,
                    dlrr: 0,
                })
        })
        .collect();
    (!reports.is_empty()).then(|| ExtendedReport {
        sender_ssrc,
        reports: vec![Box::new(DLRRReportBlock { reports })],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::shared::marshal::{Marshal, Unmarshal};

    #[test]
    fn an_rrtr_is_answered_with_its_middle_bits_and_no_delay() {
        let rrtr = ExtendedReport {
            sender_ssrc: 1,
            reports: vec![Box::new(ReceiverReferenceTimeReportBlock {
                ntp_timestamp: 0xEED8_1234_5678_9ABC,
            })],
        };
        // What the browser sends, as it reaches us: parsed from the wire.
        let wire = rrtr.marshal().unwrap();
        let parsed = ExtendedReport::unmarshal(&mut wire.clone()).unwrap();
        let inbound: Vec<Box<dyn Packet>> =
            vec![Box::new(ReceiverReport::default()), Box::new(parsed)];
        let reply = answer(&inbound, 0xCAFE).expect("answered");
        assert_eq!(reply.sender_ssrc, 0xCAFE);
        // The reply survives the wire too, and names the receiver and its time.
        let back = ExtendedReport::unmarshal(&mut reply.marshal().unwrap()).unwrap();
        let block = back.reports[0]
            .as_any()
            .downcast_ref::<DLRRReportBlock>()
            .expect("a DLRR block");
        assert_eq!(
            block.reports,
            vec![DLRRReport {
                ssrc: 1,
                last_rr: 0x1234_5678,
                dlrr: 0
            }]
        );
    }

    #[test]
    fn other_rtcp_is_not_answered() {
        let inbound: Vec<Box<dyn Packet>> = vec![Box::new(ReceiverReport::default())];
        assert!(answer(&inbound, 7).is_none());
    }
}
