//! One simulated participant's peer connection: the `rtc` crate's sans-IO
//! `RTCPeerConnection` on its own UDP socket, driven by one tokio task.
//!
//! A *publisher* peer sends the clip's audio and video tracks, paced in real time, and notes
//! in its [`SendLog`] when each packet went to the socket. A *subscriber* peer decrypts what
//! arrives, counts it, looks up each payload in the clip's fingerprints and measures the
//! latency from the publisher's send; it never decodes.

use crate::clip::{Clip, Kind};
use crate::stats::{Meter, SendLog, SequenceTracker};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TransportContext, TransportMessage, TransportProtocol};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

/// Datagrams read in one go before the peer connection's output is flushed.
const READ_BATCH: usize = 32;
/// A task merges its latencies into the meter at least this often.
const MERGE_EVERY: Duration = Duration::from_millis(250);

/// One datagram read from a peer's socket.
struct Received {
    len: usize,
    from: SocketAddr,
    /// When the kernel queued it, ns since the Unix epoch.
    kernel_ns: Option<u64>,
    /// Datagrams the kernel had dropped at this socket until then, its receive buffer
    /// being full (`SO_RXQ_OVFL`, which the kernel leaves out while it is 0).
    socket_drops: u32,
}

/// Reads one waiting datagram with the kernel's receive time and the socket's drop count.
fn try_recv(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Received> {
    socket.try_io(Interest::READABLE, || {
        let mut iov = [IoSliceMut::new(buf)];
        let mut space = nix::cmsg_space!(TimeSpec, u32);
        let message = recvmsg::<SockaddrStorage>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .map_err(std::io::Error::from)?;
        let (mut kernel_ns, mut socket_drops) = (None, 0);
        for c in message.cmsgs().into_iter().flatten() {
            match c {
                ControlMessageOwned::ScmTimestampns(ts) => {
                    kernel_ns = Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
                }
                ControlMessageOwned::RxqOvfl(n) => socket_drops = n,
                _ => {}
            }
        }
        let from = message
            .address
            .and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
            })
            .ok_or_else(|| std::io::Error::other("a datagram without an IPv4 source"))?;
        Ok(Received {
            len: message.bytes,
            from,
            kernel_ns,
            socket_drops,
        })
    })
}

/// Why a peer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The `rtc` crate refused something (SDP, candidate, track).
    #[error("peer connection: {0}")]
    Rtc(#[from] rtc::shared::error::Error),
    /// The UDP socket.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// How a subscriber tells which publisher a received track comes from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// From the track id: medrelay names a forwarded track `<participant>-<track id>`, and
    /// publishers' track ids end in `lg<publisher>a` or `lg<publisher>v`.
    TrackId,
    /// Every track of this connection comes from one publisher (a Janus subscription to
    /// one feed).
    Fixed(usize),
}

/// What a subscriber peer needs to time what it receives.
#[derive(Clone)]
pub struct Timing {
    /// The clip's fingerprints.
    pub clip: Arc<Clip>,
    /// Every publisher's send log, by publisher index.
    pub logs: Arc<Vec<SendLog>>,
    /// Shared counters.
    pub meter: Arc<Meter>,
}

/// A client peer connection and its socket, not yet driven.
pub struct ClientPeer {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
}

/// The `track_id` a publisher uses for its track of `kind`.
pub fn publisher_track_id(publisher: usize, kind: Kind) -> String {
    match kind {
        Kind::Audio => format!("lg{publisher}a"),
        Kind::Video => format!("lg{publisher}v"),
    }
}

fn publisher_of(track_id: &str) -> Option<usize> {
    let tail = track_id.strip_suffix(['a', 'v'])?;
    let start = tail.rfind("lg")?;
    tail[start + 2..].parse().ok()
}

impl ClientPeer {
    /// A peer connection with the default codecs and interceptors (RTCP reports, NACK,
    /// TWCC feedback, as a browser has) on a new socket at 127.0.0.1.
    pub async fn new(now: Instant) -> Result<Self, PeerError> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        // The kernel stamps each datagram as it reaches the socket: latency is measured to
        // the subscriber's socket, not to when this process got round to reading it.
        setsockopt(&socket, sockopt::ReceiveTimestampns, &true).map_err(std::io::Error::from)?;
        // And counts what it drops when this process reads too slowly: the load generator's
        // own overload, told apart from losses inside the SFU.
        setsockopt(&socket, sockopt::RxqOvfl, &1).map_err(std::io::Error::from)?;
        let local = socket.local_addr()?;
        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
        let setting_engine = SettingEngineBuilder::new()
            .with_include_loopback_candidate(true)
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .with_setting_engine(setting_engine)
            .with_interceptor_registry(registry)
            .build(now)?;
        let host = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".into(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&host).to_json()?)?;
        pc.add_local_candidate(RTCIceCandidateInit::default())?;
        Ok(Self { pc, socket, local })
    }

    /// Adds the clip's audio and video tracks for publisher `index` and returns the offer.
    pub fn offer_tracks(&mut self, index: usize) -> Result<(String, PublishedTracks), PeerError> {
        let mut senders = Vec::new();
        for kind in [Kind::Audio, Kind::Video] {
            let ssrc = rand::random::<u32>();
            let (codec_kind, codec) = match kind {
                Kind::Audio => (
                    RtpCodecKind::Audio,
                    RTCRtpCodec {
                        mime_type: "audio/opus".into(),
                        clock_rate: 48_000,
                        channels: 2,
                        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                        rtcp_feedback: vec![],
                    },
                ),
                Kind::Video => (
                    RtpCodecKind::Video,
                    RTCRtpCodec {
                        mime_type: "video/VP8".into(),
                        clock_rate: 90_000,
                        channels: 0,
                        sdp_fmtp_line: String::new(),
                        rtcp_feedback: vec![],
                    },
                ),
            };
            let track = MediaStreamTrack::new(
                format!("lg{index}"),
                publisher_track_id(index, kind),
                publisher_track_id(index, kind),
                codec_kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            );
            senders.push((kind, self.pc.add_track(track)?, ssrc));
        }
        let offer = self.pc.create_offer(None)?;
        self.pc
            .set_local_description(Instant::now(), offer.clone())?;
        Ok((offer.sdp, PublishedTracks { index, senders }))
    }

    /// Applies the SFU's answer to our offer.
    pub fn accept_answer(&mut self, sdp: String) -> Result<(), PeerError> {
        self.pc
            .set_remote_description(Instant::now(), RTCSessionDescription::answer(sdp)?)?;
        Ok(())
    }

    /// Applies the SFU's offer and returns our answer.
    pub fn answer(&mut self, sdp: String) -> Result<String, PeerError> {
        let now = Instant::now();
        self.pc
            .set_remote_description(now, RTCSessionDescription::offer(sdp)?)?;
        let answer = self.pc.create_answer(None)?;
        self.pc.set_local_description(now, answer.clone())?;
        Ok(answer.sdp)
    }

    /// Drives the peer until `stop` turns true: sends the clip if `media` is given,
    /// measures what arrives if `timing` is given, answers renegotiation offers from
    /// `offers`.
    pub async fn run(
        mut self,
        media: Option<MediaPlan>,
        timing: Timing,
        origin: Origin,
        mut offers: mpsc::Receiver<(String, oneshot::Sender<Result<String, PeerError>>)>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut pacer = media.map(|m| Pacer::new(m, Instant::now()));
        let mut state = PeerState {
            timing,
            origin,
            sequences: HashMap::new(),
            latencies: Histogram::new_with_max(60_000_000, 3).expect("valid bounds"),
            connected: false,
            socket_drops: 0,
            next_merge: Instant::now() + MERGE_EVERY,
        };
        let mut buf = vec![0u8; 2048];
        let mut offers_open = true;
        loop {
            let now = Instant::now();
            let mut deadline = self
                .pc
                .poll_timeout()
                .unwrap_or(now + Duration::from_secs(1));
            if let Some(p) = pacer.as_ref().filter(|_| state.connected) {
                deadline = deadline.min(p.next_due());
            }
            deadline = deadline.min(state.next_merge);
            tokio::select! {
                ready = self.socket.readable() => {
                    if ready.is_ok() {
                        let now = Instant::now();
                        for _ in 0..READ_BATCH {
                            match try_recv(&self.socket, &mut buf) {
                                Ok(Received { len, from, kernel_ns, socket_drops }) => {
                                    self.feed(now, from, &buf[..len]);
                                    state.socket_drops = state.socket_drops.max(socket_drops);
                                    let at = kernel_ns.map_or_else(
                                        || state.timing.meter.wall_ns(),
                                        |ns| state.timing.meter.since_start(ns),
                                    );
                                    self.read_media(&mut state, at);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {}
                offer = offers.recv(), if offers_open => match offer {
                    Some((sdp, reply)) => { let _ = reply.send(self.answer(sdp)); }
                    None => offers_open = false,
                },
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
            let now = Instant::now();
            if self.pc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = self.pc.handle_timeout(now);
            }
            // Media starts once DTLS-SRTP is up, at the clip's start.
            if let Some(p) = pacer.as_mut().filter(|_| state.connected) {
                if !p.started {
                    p.start(now);
                }
                p.send_due(now, &mut self.pc, &state.timing.meter);
            }
            self.drain(&mut state).await;
            if now >= state.next_merge {
                state.merge();
            }
        }
        state.merge();
        let lost: u64 = state.sequences.values().map(SequenceTracker::lost).sum();
        state
            .timing
            .meter
            .lost_packets
            .fetch_add(lost, Ordering::Relaxed);
        state
            .timing
            .meter
            .socket_drops
            .fetch_add(u64::from(state.socket_drops), Ordering::Relaxed);
        let _ = self.pc.close();
        self.drain(&mut state).await;
    }

    fn feed(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let message = TransportMessage {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = self.pc.handle_read(message) {
            debug!(error = %e, "datagram rejected");
        }
    }

    /// Takes the RTP packets the last datagram gave, received at `at_ns`.
    fn read_media(&mut self, state: &mut PeerState, at_ns: u64) {
        while let Some(message) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(track_id, packet) = message.message {
                state.on_rtp(at_ns, &track_id, &packet);
            }
        }
    }

    /// Handles the peer connection's events and received packets, then sends its output.
    async fn drain(&mut self, state: &mut PeerState) {
        while let Some(event) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(change) = event {
                let meter = &state.timing.meter;
                match change {
                    // Once per peer: an ICE restart reaches `connected` again.
                    RTCPeerConnectionState::Connected if !state.connected => {
                        state.connected = true;
                        meter.connected_peers.fetch_add(1, Ordering::Relaxed);
                    }
                    RTCPeerConnectionState::Failed => {
                        meter.failed_peers.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
        let now = state.timing.meter.wall_ns();
        self.read_media(state, now);
        while let Some(out) = self.pc.poll_write() {
            let _ = self
                .socket
                .send_to(&out.message, out.transport.peer_addr)
                .await;
        }
    }
}

/// A publisher's senders, from [`ClientPeer::offer_tracks`].
pub struct PublishedTracks {
    index: usize,
    senders: Vec<(Kind, RTCRtpSenderId, u32)>,
}

impl PublishedTracks {
    /// Each track's kind and `track_id`, as the SFU's signaling wants them listed.
    pub fn track_ids(&self) -> impl Iterator<Item = (Kind, String)> + '_ {
        self.senders
            .iter()
            .map(|&(kind, _, _)| (kind, publisher_track_id(self.index, kind)))
    }
}

/// What a publisher peer sends.
pub struct MediaPlan {
    /// The clip.
    pub clip: Arc<Clip>,
    /// The publisher's senders.
    pub tracks: PublishedTracks,
    /// Where it notes send times.
    pub log: Arc<Vec<SendLog>>,
    /// The publisher's index in `log`.
    pub index: usize,
}

/// One track's position in the looping clip.
struct TrackPacer {
    kind: Kind,
    sender: RTCRtpSenderId,
    ssrc: u32,
    payload_type: Option<u8>,
    frame: usize,
    seq: u16,
    timestamp: u32,
    due: Instant,
}

/// Sends each track's frames when they are due.
struct Pacer {
    plan: MediaPlan,
    tracks: Vec<TrackPacer>,
    started: bool,
}

impl Pacer {
    fn new(plan: MediaPlan, now: Instant) -> Self {
        let tracks = plan
            .tracks
            .senders
            .iter()
            .map(|&(kind, sender, ssrc)| TrackPacer {
                kind,
                sender,
                ssrc,
                payload_type: None,
                frame: 0,
                seq: rand::random(),
                timestamp: rand::random(),
                due: now,
            })
            .collect();
        Self {
            plan,
            tracks,
            started: false,
        }
    }

    /// Makes every track's first frame due at `now`.
    fn start(&mut self, now: Instant) {
        for t in self.tracks.iter_mut() {
            t.due = now;
        }
        self.started = true;
    }

    fn next_due(&self) -> Instant {
        self.tracks
            .iter()
            .map(|t| t.due)
            .min()
            .expect("a publisher has tracks")
    }

    fn send_due(&mut self, now: Instant, pc: &mut RTCPeerConnection, meter: &Meter) {
        if !meter.publishing.load(Ordering::Relaxed) {
            return;
        }
        let log = &self.plan.log[self.plan.index];
        for t in self.tracks.iter_mut() {
            let clip = self.plan.clip.track(t.kind);
            while t.due <= now {
                let Some(mut sender) = pc.rtp_sender(t.sender) else {
                    return;
                };
                let payload_type = *t.payload_type.get_or_insert_with(|| {
                    sender
                        .get_parameters()
                        .rtp_parameters
                        .codecs
                        .first()
                        .map_or(0, |c| c.payload_type)
                });
                let frame = &clip.frames[t.frame];
                let at = meter.wall_ns();
                let last = frame.payloads.len() - 1;
                for (i, payload) in frame.payloads.iter().enumerate() {
                    let mut packet = rtc::rtp::Packet::default();
                    packet.header.version = 2;
                    packet.header.ssrc = t.ssrc;
                    packet.header.payload_type = payload_type;
                    packet.header.sequence_number = t.seq;
                    packet.header.timestamp = t.timestamp;
                    packet.header.marker = i == last;
                    packet.payload = payload.clone();
                    log.sent(t.kind, frame.first_packet + i as u32, at);
                    if sender.write_rtp(now, packet).is_ok() {
                        meter.sent_packets.fetch_add(1, Ordering::Relaxed);
                    }
                    t.seq = t.seq.wrapping_add(1);
                }
                t.timestamp = t.timestamp.wrapping_add(clip.timestamp_step);
                t.frame = (t.frame + 1) % clip.frames.len();
                t.due += clip.frame_interval;
            }
        }
    }
}

/// What a peer has seen: whether it is connected and, for a subscriber, what it received.
struct PeerState {
    timing: Timing,
    origin: Origin,
    sequences: HashMap<u32, SequenceTracker>,
    latencies: Histogram<u64>,
    next_merge: Instant,
    /// The peer connection reached `connected` (media can flow).
    connected: bool,
    /// Datagrams the kernel dropped at this peer's socket (its receive buffer was full).
    socket_drops: u32,
}

impl PeerState {
    fn on_rtp(&mut self, received: u64, track_id: &str, packet: &rtc::rtp::Packet) {
        let meter = &self.timing.meter;
        meter.received_packets.fetch_add(1, Ordering::Relaxed);
        meter
            .received_bytes
            .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
        self.sequences
            .entry(packet.header.ssrc)
            .or_default()
            .observe(packet.header.sequence_number);
        let publisher = match self.origin {
            Origin::TrackId => publisher_of(track_id),
            Origin::Fixed(p) => Some(p),
        };
        let Some(log) = publisher.and_then(|p| self.timing.logs.get(p)) else {
            return;
        };
        let Some((kind, index)) = self.timing.clip.fingerprints.lookup(&packet.payload) else {
            return;
        };
        let Some(sent) = log.sent_at(kind, index) else {
            return;
        };
        if received >= sent {
            let _ = self
                .latencies
                .record(((received - sent) / 1_000).min(60_000_000));
            meter.timed_packets.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn merge(&mut self) {
        self.timing.meter.merge(&mut self.latencies);
        self.next_merge = Instant::now() + MERGE_EVERY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publisher_is_read_from_a_forwarded_track_id() {
        assert_eq!(publisher_of("p17-lg3v"), Some(3));
        assert_eq!(publisher_of("lg12a"), Some(12));
        assert_eq!(publisher_of("camera"), None);
        assert_eq!(
            publisher_of(&format!("x-{}", publisher_track_id(7, Kind::Video))),
            Some(7)
        );
    }
}
