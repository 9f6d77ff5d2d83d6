//! What the router's deterministic test and the tap benchmark both need: a client peer
//! connection at a virtual loopback address, and publishing a VP8 camera track through the
//! router. (Shared by `mod support;` in the tests and `#[path]` in the bench.)

use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use sfu::{ParticipantId, Router, TrackSource};
use std::net::SocketAddr;
use std::time::Instant;

/// A peer connection with the default codecs plus RED and ULPFEC for video (as browsers
/// offer them), the default interceptors, and one host candidate at 127.0.0.1:`port` (candidate gathering complete);
/// returns it with its address.
pub fn client_peer(now: Instant, port: u16) -> (SocketAddr, RTCPeerConnection) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs().unwrap();
    for (mime_type, payload_type) in [("video/red", 116), ("video/ulpfec", 117)] {
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: mime_type.to_owned(),
                        clock_rate: 90_000,
                        ..Default::default()
                    },
                    payload_type,
                },
                RtpCodecKind::Video,
            )
            .unwrap();
    }
    // The default interceptors, as a browser has them: NACK, RTCP reports, transport-cc.
    let registry = register_default_interceptors(Registry::new(), &mut media_engine).unwrap();
    let setting_engine = SettingEngineBuilder::new()
        .with_include_loopback_candidate(true)
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting_engine)
        .build(now)
        .unwrap();
    let host = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".into(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .unwrap();
    pc.add_local_candidate(RTCIceCandidate::from(&host).to_json().unwrap())
        .unwrap();
    pc.add_local_candidate(RTCIceCandidateInit::default())
        .unwrap();
    (addr, pc)
}

/// Offers one VP8 camera track (`camera-track`, SSRC `ssrc`) from `pc` as `publisher`'s
/// publisher connection and applies the router's answer; returns the track's sender.
pub fn publish_vp8(
    router: &mut Router,
    pc: &mut RTCPeerConnection,
    now: Instant,
    publisher: ParticipantId,
    ssrc: u32,
) -> RTCRtpSenderId {
    let track = MediaStreamTrack::new(
        "stream".into(),
        "camera-track".into(),
        "camera".into(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: "video/VP8".into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            },
            ..Default::default()
        }],
    );
    let sender = pc.add_track(track).unwrap();
    let offer = pc.create_offer(None).unwrap();
    pc.set_local_description(now, offer.clone()).unwrap();
    let answer = router
        .publish_offer(
            now,
            publisher,
            offer.sdp,
            vec![("camera-track".into(), TrackSource::Camera)],
        )
        .unwrap();
    pc.set_remote_description(now, RTCSessionDescription::answer(answer.sdp).unwrap())
        .unwrap();
    sender
}
