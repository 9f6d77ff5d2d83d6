//! Building the router's peer connections: ICE-lite on the shared socket (UDP, and TCP for
//! networks that block UDP), DTLS server,
//! default codecs (Opus, VP8, VP9, H.264, AV1) and the default interceptors (NACK generator
//! and responder with its packet cache, RTCP reports, TWCC feedback), plus the marker that
//! surfaces keyframe requests. Subscriber connections add send-side congestion control
//! ([`bandwidth`](crate::bandwidth)), offer REMB for peers without transport-cc, and, with
//! parity on, RED and ULPFEC for the parity packets sent to lossy subscribers
//! ([`fec`](crate::fec)), with [`red_resend`](crate::red_resend) so that a RED packet is
//! retransmitted as itself. Only then: a browser that is offered them expects the repair to
//! come from parity and waits less for retransmissions.

use crate::SfuError;
use crate::bandwidth::Estimate;
use crate::keyframe_relay::{self, KeyframeRequestMarker};
use crate::red_resend;
use crate::rtt_reply;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::{CongestionControlBuilder, Registry, Slot, TwccSenderBuilder};
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_ULP_FEC, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind, TYPE_RTCP_FB_GOOG_REMB,
};
use std::net::SocketAddr;
use std::time::Instant;

/// MIME type of RED (RFC 2198), which carries video and its ULPFEC parity in one stream.
pub(crate) const MIME_TYPE_RED: &str = "video/red";
/// Payload types offered for RED and ULPFEC (free in the default codec table).
const RED_PAYLOAD_TYPE: u8 = 116;
const ULPFEC_PAYLOAD_TYPE: u8 = 117;

/// Builds an ICE-lite peer connection whose only candidate is `media_addr`. A subscriber
/// connection passes the [`Estimate`] its congestion controller is to publish into, and
/// `fec` to offer RED and ULPFEC.
///
/// Its ICE credentials are the agent's own random ones, so that an ICE restart draws fresh
/// ones too; the router reads the local ufrag from each local description it sets.
pub(crate) fn build(
    now: Instant,
    media_addr: SocketAddr,
    estimate: Option<&Estimate>,
    fec: bool,
) -> Result<RTCPeerConnection, SfuError> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs()?;
    let marker = estimate.map_or_else(
        KeyframeRequestMarker::default,
        KeyframeRequestMarker::for_subscriber,
    );
    let mut registry = register_default_interceptors(Registry::new(), &mut media_engine)?
        .with(Slot::from(keyframe_relay::SLOT), marker);
    if let Some(estimate) = estimate {
        // Transport-wide sequence numbers on what we send, and GCC on the feedback. No pacer:
        // forwarded packets arrive paced by their publisher, and layer selection keeps the
        // rate under the estimate.
        registry = registry
            .with(
                Slot::CongestionControl,
                CongestionControlBuilder::new(estimate.estimator()).build(),
            )
            .with(Slot::TwccSender, TwccSenderBuilder::new().build());
        media_engine.register_feedback(
            RTCPFeedback {
                typ: TYPE_RTCP_FB_GOOG_REMB.to_owned(),
                parameter: String::new(),
            },
            RtpCodecKind::Video,
        );
        // Receive-only browsers learn their round-trip time from our DLRR replies
        // (see `rtt_reply`).
        media_engine.register_feedback(
            RTCPFeedback {
                typ: rtt_reply::RRTR_FEEDBACK.to_owned(),
                parameter: String::new(),
            },
            RtpCodecKind::Video,
        );
    }
    // Only towards subscribers: a publisher offered them would wrap its own video in RED.
    if let (Some(_), true) = (estimate, fec) {
        registry = registry.with(
            Slot::from(red_resend::SLOT),
            red_resend::RedResend::new(RED_PAYLOAD_TYPE),
        );
        for (mime_type, payload_type) in [
            (MIME_TYPE_RED, RED_PAYLOAD_TYPE),
            (MIME_TYPE_ULP_FEC, ULPFEC_PAYLOAD_TYPE),
        ] {
            media_engine.register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: mime_type.to_owned(),
                        clock_rate: 90_000,
                        ..Default::default()
                    },
                    payload_type,
                },
                RtpCodecKind::Video,
            )?;
        }
    }
    let setting_engine = SettingEngineBuilder::new()
        .with_lite(true)
        // The browser is the DTLS client and starts the handshake once ICE connects.
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_include_loopback_candidate(true)
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_setting_engine(setting_engine)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .build(now)?;

    let host = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: media_addr.ip().to_string(),
            port: media_addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&host).to_json()?)?;
    // ICE-TCP (RFC 6544): the same port over TCP, for networks that block UDP. Browsers
    // connect to it (tcptype passive); frames are RFC 4571 length-prefixed.
    let tcp = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "tcp".to_owned(),
            address: media_addr.ip().to_string(),
            port: media_addr.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type: TcpType::Passive,
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&tcp).to_json()?)?;
    // End of gathering: the shared sockets are the only candidates there will ever be.
    pc.add_local_candidate(RTCIceCandidateInit::default())?;
    Ok(pc)
}
