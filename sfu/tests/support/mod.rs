//! What the router's deterministic test and the tap benchmark both need: a client peer
//! connection at a virtual loopback address. (Shared by `mod support;` in the tests and
//! `#[path]` in the bench.)

use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use std::net::SocketAddr;
use std::time::Instant;

/// A peer connection with the default codecs and one host candidate at 127.0.0.1:`port`
/// (candidate gathering complete); returns it with its address.
pub fn client_peer(now: Instant, port: u16) -> (SocketAddr, RTCPeerConnection) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs().unwrap();
    let setting_engine = SettingEngineBuilder::new()
        .with_include_loopback_candidate(true)
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media_engine)
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
