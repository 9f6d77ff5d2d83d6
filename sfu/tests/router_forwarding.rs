//! Deterministic tests of the forwarding core: real `rtc` peer connections as clients, the
//! [`Router`] in between, datagrams carried by hand and time advanced on a virtual clock. No
//! socket, no sleep, no thread.

use bytes::{Bytes, BytesMut};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::marshal::Marshal;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu::tap::Tap;
use sfu::{
    Datagram, ParticipantId, ParticipantInfo, Router, RouterConfig, RouterEvent, TrackSource,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod support;

const ROUTER_ADDR: &str = "127.0.0.1:50000";
const STEP: Duration = Duration::from_millis(5);

/// One client peer connection at a virtual address.
struct Client {
    addr: SocketAddr,
    pc: RTCPeerConnection,
    received: Vec<rtc::rtp::Packet>,
    chat: Vec<String>,
    connected: bool,
    chat_channel: Option<rtc::data_channel::RTCDataChannelId>,
}

fn client(now: Instant, port: u16) -> Client {
    let (addr, pc) = support::client_peer(now, port);
    Client {
        addr,
        pc,
        received: Vec::new(),
        chat: Vec::new(),
        connected: false,
        chat_channel: None,
    }
}

/// The router and its clients on a virtual network and clock.
struct Net {
    now: Instant,
    router: Router,
    clients: Vec<Client>,
    events: Vec<RouterEvent>,
    taps: Vec<Tap>,
    /// Clients whose link is cut: their datagrams are lost both ways.
    cut: Vec<usize>,
}

impl Net {
    fn new() -> Self {
        Self::with_fec(false)
    }

    /// With `fec`, RED and ULPFEC are offered to subscribers and lossy ones get parity
    /// (`--fec`).
    fn with_fec(fec: bool) -> Self {
        let now = Instant::now();
        Self {
            now,
            router: Router::new(RouterConfig {
                fec,
                ..RouterConfig::new(ROUTER_ADDR.parse().unwrap())
            }),
            clients: Vec::new(),
            events: Vec::new(),
            taps: Vec::new(),
            cut: Vec::new(),
        }
    }

    /// Moves every pending datagram, runs due timers, and advances the clock by one step.
    fn step(&mut self) {
        let router_addr: SocketAddr = ROUTER_ADDR.parse().unwrap();
        while let Some(d) = self.router.poll_transmit() {
            if let Some((_, c)) = self
                .clients
                .iter_mut()
                .enumerate()
                .find(|(i, c)| c.addr == d.remote && !self.cut.contains(i))
            {
                let _ = c.pc.handle_read(TaggedBytesMut {
                    now: self.now,
                    transport: TransportContext {
                        local_addr: c.addr,
                        peer_addr: d.local,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: d.data,
                });
            }
        }
        for (i, c) in self.clients.iter_mut().enumerate() {
            while let Some(m) = c.pc.poll_write() {
                if m.transport.peer_addr == router_addr && !self.cut.contains(&i) {
                    self.router.handle_datagram(
                        self.now,
                        Datagram {
                            local: router_addr,
                            remote: c.addr,
                            data: m.message,
                            tcp: false,
                        },
                    );
                }
            }
            while let Some(e) = c.pc.poll_event() {
                match e {
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => {
                        c.connected = s == RTCPeerConnectionState::Connected;
                    }
                    RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) => {
                        c.chat_channel = Some(id);
                    }
                    _ => {}
                }
            }
            while let Some(m) = c.pc.poll_read() {
                match m.message {
                    RTCMessage::RtpPacket(_, p) => c.received.push(p),
                    RTCMessage::DataChannelMessage(_, m) => {
                        c.chat.push(String::from_utf8(m.data.to_vec()).unwrap())
                    }
                    _ => {}
                }
            }
            if c.pc.poll_timeout().is_some_and(|t| t <= self.now) {
                c.pc.handle_timeout(self.now).unwrap();
            }
        }
        if self.router.poll_timeout().is_some_and(|t| t <= self.now) {
            self.router.handle_timeout(self.now);
        }
        while let Some(e) = self.router.poll_event() {
            self.events.push(e);
        }
        while let Some(t) = self.router.poll_tap() {
            self.taps.push(t);
        }
        self.now += STEP;
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let deadline = self.now + limit;
        while self.now < deadline {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    /// Takes the latest subscribe offer for `id` from the events.
    fn take_offer(&mut self, id: ParticipantId) -> Option<(String, Vec<sfu::TrackInfo>)> {
        while let Some(e) = self.router.poll_event() {
            self.events.push(e);
        }
        let i = self.events.iter().rposition(
            |e| matches!(e, RouterEvent::SubscribeOffer { participant, .. } if *participant == id),
        )?;
        match self.events.remove(i) {
            RouterEvent::SubscribeOffer { sdp, tracks, .. } => Some((sdp, tracks)),
            _ => unreachable!(),
        }
    }

    /// Answers the latest subscribe offer for `id` with client `c`.
    fn answer_offer(&mut self, id: ParticipantId, c: usize) -> Vec<sfu::TrackInfo> {
        let (sdp, tracks) = self.take_offer(id).expect("a subscribe offer");
        let pc = &mut self.clients[c].pc;
        pc.set_remote_description(self.now, RTCSessionDescription::offer(sdp).unwrap())
            .unwrap();
        let answer = pc.create_answer(None).unwrap();
        pc.set_local_description(self.now, answer.clone()).unwrap();
        self.router
            .subscribe_answer(self.now, id, answer.sdp)
            .unwrap();
        tracks
    }

    fn join(&mut self, n: u64, can_publish: bool) -> ParticipantId {
        let id = ParticipantId(n);
        self.router
            .join(
                self.now,
                ParticipantInfo {
                    id,
                    room: "consult".into(),
                    identity: format!("user{n}"),
                    role: if can_publish { "clinic" } else { "observer" }.into(),
                    can_publish,
                },
            )
            .unwrap();
        id
    }

    /// A publisher client offering one VP8 track; returns (client index, sender, ssrc).
    fn publish_video(&mut self, id: ParticipantId, port: u16) -> (usize, RTCRtpSenderId, u32) {
        let mut c = client(self.now, port);
        let ssrc = 0x1234_5678;
        let sender = support::publish_vp8(&mut self.router, &mut c.pc, self.now, id, ssrc);
        self.clients.push(c);
        (self.clients.len() - 1, sender, ssrc)
    }

    /// A viewer (observer, client 0, its first offer answered) and a publisher of one VP8
    /// track; returns (viewer, publisher, the publisher's client index, sender, ssrc).
    fn viewer_and_publisher(
        &mut self,
    ) -> (ParticipantId, ParticipantId, usize, RTCRtpSenderId, u32) {
        let viewer = self.join(1, false);
        self.clients.push(client(self.now, 40001));
        self.answer_offer(viewer, 0);
        let publisher = self.join(2, true);
        self.take_offer(publisher);
        let (pub_client, sender, ssrc) = self.publish_video(publisher, 40002);
        (viewer, publisher, pub_client, sender, ssrc)
    }

    /// [`Net::viewer_and_publisher`], once both connections are up.
    fn connected_viewer_and_publisher(
        &mut self,
    ) -> (ParticipantId, ParticipantId, usize, RTCRtpSenderId, u32) {
        let parties = self.viewer_and_publisher();
        assert!(
            self.run_until(Duration::from_secs(5), |n| n.clients[0].connected
                && n.clients[1].connected),
            "both connections establish over ICE-lite and DTLS"
        );
        parties
    }

    /// Client `c` sends `packet` as feedback on its first received stream.
    fn send_rtcp(&mut self, c: usize, packet: Box<dyn rtc::rtcp::Packet>) {
        let now = self.now;
        let pc = &mut self.clients[c].pc;
        let receiver = pc.get_receivers().next().unwrap();
        pc.rtp_receiver(receiver)
            .unwrap()
            .write_rtcp(now, vec![packet])
            .unwrap();
    }

    fn send_rtp(&mut self, c: usize, sender: RTCRtpSenderId, ssrc: u32, seq: u16, ts: u32) {
        let now = self.now;
        let pc = &mut self.clients[c].pc;
        let pt = pc
            .rtp_sender(sender)
            .unwrap()
            .get_parameters()
            .rtp_parameters
            .codecs[0]
            .payload_type;
        let mut packet = rtc::rtp::Packet::default();
        packet.header.version = 2;
        packet.header.ssrc = ssrc;
        packet.header.sequence_number = seq;
        packet.header.timestamp = ts;
        packet.header.payload_type = pt;
        // Each packet is a whole frame.
        packet.header.marker = true;
        packet.payload = Bytes::from(format!("frame-{seq}").into_bytes());
        pc.rtp_sender(sender)
            .unwrap()
            .write_rtp(now, packet)
            .unwrap();
    }
}

/// A subscriber that asks for more than 1 % of its video to be resent gets it in RED, each
/// few frames followed by a ULPFEC parity packet numbered between them; the sequence numbers
/// stay continuous.
#[test]
fn a_lossy_subscriber_gets_its_video_in_red_with_parity_packets() {
    let mut net = Net::with_fec(true);
    let (viewer, _, pub_client, sender, ssrc) = net.connected_viewer_and_publisher();
    net.send_rtp(pub_client, sender, ssrc, 1000, 0);
    assert!(net.run_until(Duration::from_secs(1), |n| {
        n.events.iter().any(
        |e| matches!(e, RouterEvent::SubscribeOffer { participant, .. } if *participant == viewer)
    )
    }));
    net.answer_offer(viewer, 0);
    net.run_until(Duration::from_millis(200), |_| false);
    let mut seq = 1001u16;
    let mut frames = |net: &mut Net, count: u16| {
        for _ in 0..count {
            net.send_rtp(pub_client, sender, ssrc, seq, 3000 * seq as u32);
            seq += 1;
            net.run_until(Duration::from_millis(33), |_| false);
        }
    };
    frames(&mut net, 60);
    let clean = net.clients[0].received.len();
    assert!(clean >= 50, "the viewer receives the stream, got {clean}");
    // RED from the start, before any loss: the stream never switches payload types.
    let red_pt = net.clients[0].received[0].header.payload_type;
    let vp8 = net.clients[0].received[0].payload[0];
    assert_ne!(red_pt, vp8, "the video comes in RED");
    assert!(
        net.clients[0]
            .received
            .iter()
            .all(|p| p.header.payload_type == red_pt && p.payload[0] == vp8),
        "every packet is one VP8 block in RED"
    );
    assert_eq!(
        net.router.stats().fec_packets,
        0,
        "no parity on a clean link"
    );

    // The viewer asks for 3 of its packets again (about 4 % of what it was sent).
    let out_ssrc = net.clients[0].received[0].header.ssrc;
    let asked: Vec<u16> = net.clients[0].received[10..13]
        .iter()
        .map(|p| p.header.sequence_number)
        .collect();
    net.send_rtcp(
        0,
        Box::new(TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: out_ssrc,
            nacks: nack_pairs_from_sequence_numbers(&asked),
        }),
    );
    // The next allocation (every 500 ms) turns protection on.
    frames(&mut net, 20);
    assert_eq!(net.router.stats().nacks_received, 1);
    let group = net
        .router
        .stats()
        .fec_groups
        .iter()
        .find(|(p, _)| *p == viewer)
        .unwrap()
        .1 as usize;
    assert_eq!(
        group, 3,
        "about 4 % loss: a parity packet every 3 frames (0.1 / loss)"
    );
    let protected_from = net.clients[0].received.len();
    frames(&mut net, 40);
    assert!(
        net.clients[0].received[clean..]
            .iter()
            .all(|p| p.header.payload_type == red_pt)
    );
    let red: Vec<&rtc::rtp::Packet> = net.clients[0].received[protected_from..].iter().collect();
    let media = red.iter().filter(|p| p.payload[0] == vp8).count();
    let parity: Vec<&&rtc::rtp::Packet> = red.iter().filter(|p| p.payload[0] != vp8).collect();
    assert!(media >= 30, "frames in RED: {media}");
    // A parity packet protects the frames just before it (ULPFEC header: SN base and mask),
    // `group` of them, or fewer once the first is 60 ms old.
    let mut protected = 0;
    for p in &parity {
        let fec = &p.payload[1..];
        let sn_base = u16::from_be_bytes([fec[2], fec[3]]);
        let n = p.header.sequence_number.wrapping_sub(sn_base) as usize;
        assert!((1..=group).contains(&n), "a group of {n}");
        assert_eq!(u16::from_be_bytes([fec[12], fec[13]]), !(u16::MAX >> n));
        protected += n;
    }
    assert!(
        protected + group >= media,
        "{protected} of {media} frames protected"
    );
    assert_eq!(
        net.router.stats().fec_packets as usize,
        net.clients[0].received[clean..]
            .iter()
            .filter(|p| p.payload[0] != vp8)
            .count(),
        "every parity packet sent arrived (none before the loss)"
    );
    // What the receiver does (RFC 5109 section 8, as libwebrtc does it): each protected
    // packet, taken as lost, is rebuilt from the parity and the others as they arrived (RED
    // header removed, transport-cc value zeroed).
    let as_received = |p: &rtc::rtp::Packet| -> Vec<u8> {
        let mut h = p.header.clone();
        h.payload_type = p.payload[0];
        for ext in h.extensions.iter_mut() {
            ext.payload = Bytes::from(vec![0; ext.payload.len()]);
        }
        let mut bytes = h.marshal().unwrap().to_vec();
        bytes.extend_from_slice(&p.payload[1..]);
        bytes
    };
    assert!(
        red.iter().all(|p| p.header.extensions.len() == 1),
        "each packet carries its transport-wide sequence number"
    );
    let mut rebuilt = 0;
    for p in &parity {
        let fec = &p.payload[1..];
        let sn_base = u16::from_be_bytes([fec[2], fec[3]]);
        let n = p.header.sequence_number.wrapping_sub(sn_base);
        let members: Vec<Vec<u8>> = (0..n)
            .filter_map(|i| {
                red.iter()
                    .find(|m| m.header.sequence_number == sn_base.wrapping_add(i))
                    .map(|m| as_received(m))
            })
            .collect();
        if members.len() != n as usize {
            continue;
        }
        for lost in 0..members.len() {
            let mut head = [fec[0], fec[1]];
            let mut ts = u32::from_be_bytes(fec[4..8].try_into().unwrap());
            let mut length = u16::from_be_bytes([fec[8], fec[9]]);
            let mut tail = fec[14..].to_vec();
            for m in members
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != lost)
                .map(|(_, m)| m)
            {
                head[0] ^= m[0];
                head[1] ^= m[1];
                ts ^= u32::from_be_bytes(m[4..8].try_into().unwrap());
                length ^= (m.len() - 12) as u16;
                for (a, b) in tail.iter_mut().zip(&m[12..]) {
                    *a ^= b;
                }
            }
            let want = &members[lost];
            assert_eq!(head[0] & 0x3f, want[0] & 0x3f, "P, X, CC recovered");
            assert_eq!(head[1], want[1], "M, PT recovered");
            assert_eq!(ts.to_be_bytes(), want[4..8], "timestamp recovered");
            assert_eq!(length as usize, want.len() - 12, "length recovered");
            assert_eq!(
                &tail[..want.len() - 12],
                &want[12..],
                "extensions and payload recovered"
            );
            rebuilt += 1;
        }
    }
    assert!(rebuilt >= media / 2, "{rebuilt} packets rebuilt");
    // Numbered without gaps (the three packets asked for were resent in between).
    let first = net.clients[0].received[clean - 1]
        .header
        .sequence_number
        .wrapping_add(1);
    let mut seqs: Vec<u16> = net.clients[0].received[clean..]
        .iter()
        .map(|p| p.header.sequence_number)
        .collect();
    seqs.retain(|s| s.wrapping_sub(first) < 0x8000);
    seqs.sort_by_key(|s| s.wrapping_sub(first));
    seqs.dedup();
    for pair in seqs.windows(2) {
        assert_eq!(
            pair[1],
            pair[0].wrapping_add(1),
            "continuous sequence numbers"
        );
    }
    // A RED packet lost on the way and asked for again comes back as itself (same SSRC,
    // number, payload type and payload), not as RTX with the payload type of VP8's
    // retransmissions. (The NACK is sent by hand: the `rtc` test client sends none of its own
    // for a stream that was RED from its first packet.)
    let before = net.clients[0].received.len();
    let lost = net.clients[0].received[before - 1]
        .header
        .sequence_number
        .wrapping_add(1);
    net.cut.push(0);
    frames(&mut net, 1);
    net.cut.clear();
    frames(&mut net, 2);
    net.send_rtcp(
        0,
        Box::new(TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: out_ssrc,
            nacks: nack_pairs_from_sequence_numbers(&[lost]),
        }),
    );
    frames(&mut net, 8);
    let again: Vec<&rtc::rtp::Packet> = net.clients[0].received[before..]
        .iter()
        .filter(|p| p.header.sequence_number == lost)
        .collect();
    assert_eq!(again.len(), 1, "resent once");
    assert_eq!(again[0].header.ssrc, out_ssrc);
    assert_eq!(again[0].header.payload_type, red_pt);
    assert_eq!(again[0].payload[0], vp8, "the lost frame's packet, in RED");
    let first_after = net.clients[0].received[before].header.sequence_number;
    assert_ne!(first_after, lost, "it came later than the next ones");
}

/// A subscriber (observer) and a publisher: the subscriber's connection comes up, it receives
/// the publisher's packets with its own SSRC, continuous sequence numbers and the payload
/// unchanged.
#[test]
fn a_published_track_reaches_a_subscriber_rewritten_and_intact() {
    let mut net = Net::new();
    let viewer = net.join(1, false);
    net.clients.push(client(net.now, 40001));
    let tracks = net.answer_offer(viewer, 0);
    assert!(tracks.is_empty(), "nothing published yet");

    let publisher = net.join(2, true);
    // The publisher also gets a subscriber offer (it receives nothing yet); leave it
    // unanswered: the router must not need it to forward.
    assert!(net.take_offer(publisher).is_some());
    let (pub_client, sender, ssrc) = net.publish_video(publisher, 40002);
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.clients[0].connected
            && n.clients[1].connected),
        "both connections establish over ICE-lite and DTLS"
    );

    // The first packet publishes the track; the viewer is offered it.
    net.send_rtp(pub_client, sender, ssrc, 1000, 90_000);
    assert!(net.run_until(Duration::from_secs(1), |n| n
        .events
        .iter()
        .any(|e| matches!(e, RouterEvent::SubscribeOffer { participant, .. } if *participant == viewer))));
    let tracks = net.answer_offer(viewer, 0);
    assert_eq!(tracks.len(), 1);
    assert_eq!(tracks[0].participant_id, publisher);
    assert_eq!(tracks[0].source, TrackSource::Camera);
    assert_eq!(tracks[0].track_id, format!("{publisher}-camera-track"));
    net.run_until(Duration::from_millis(200), |_| false);

    for i in 1..=20u16 {
        net.send_rtp(pub_client, sender, ssrc, 1000 + i, 90_000 + 3000 * i as u32);
        net.step();
    }
    net.run_until(Duration::from_millis(200), |_| false);

    let got = &net.clients[0].received;
    assert!(
        got.len() >= 15,
        "the viewer received the stream, got {}",
        got.len()
    );
    let out_ssrc = got[0].header.ssrc;
    assert_ne!(out_ssrc, ssrc, "SSRC is rewritten per subscriber");
    for pair in got.windows(2) {
        assert_eq!(pair[1].header.ssrc, out_ssrc);
        assert_eq!(
            pair[1].header.sequence_number,
            pair[0].header.sequence_number.wrapping_add(1),
            "sequence numbers are continuous"
        );
        assert_eq!(
            pair[1]
                .header
                .timestamp
                .wrapping_sub(pair[0].header.timestamp),
            3000,
            "timestamp spacing is kept"
        );
    }
    let last = got.last().unwrap();
    let in_seq = 1000 + 20;
    assert_eq!(
        last.payload,
        Bytes::from(format!("frame-{in_seq}").into_bytes())
    );
    assert!(net.router.stats().forwarded_packets >= 15);
    assert!(
        net.router.stats().plis_sent >= 1,
        "a keyframe was requested for the new subscriber"
    );

    // The viewer asks for a keyframe: the router relays it to the publisher.
    let plis_before = net.router.stats().plis_sent;
    net.run_until(Duration::from_millis(400), |_| false);
    net.send_rtcp(
        0,
        Box::new(PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: out_ssrc,
        }),
    );
    assert!(net.run_until(Duration::from_millis(200), |n| {
        n.router.stats().keyframe_requests_received >= 1
    }));
    assert!(
        net.router.stats().plis_sent > plis_before,
        "the request reached the publisher"
    );
}

/// When the publisher leaves, its track is removed from the viewer by a new offer.
#[test]
fn leaving_removes_the_track_by_renegotiation() {
    let mut net = Net::new();
    let (viewer, publisher, pub_client, sender, ssrc) = net.viewer_and_publisher();
    net.run_until(Duration::from_secs(5), |n| n.clients[1].connected);
    net.send_rtp(pub_client, sender, ssrc, 1, 0);
    net.run_until(Duration::from_secs(1), |n| !n.events.is_empty());
    assert_eq!(net.answer_offer(viewer, 0).len(), 1);
    assert_eq!(net.router.subscription_count(), 1);

    net.router.leave(net.now, publisher);
    assert_eq!(net.router.track_count(), 0);
    assert_eq!(net.router.subscription_count(), 0);
    let (sdp, tracks) = net.take_offer(viewer).expect("a renegotiation offer");
    assert!(tracks.is_empty());
    assert!(
        sdp.contains("a=inactive") || sdp.contains("a=recvonly"),
        "the removed track's m-line no longer sends"
    );
}

/// Observers may not publish; unknown participants and bad SDP get typed errors and change
/// nothing.
#[test]
fn bad_commands_get_typed_errors() {
    let mut net = Net::new();
    let observer = net.join(1, false);
    let err = net
        .router
        .publish_offer(net.now, observer, "v=0".into(), vec![])
        .unwrap_err();
    assert!(matches!(err, sfu::SfuError::PublishForbidden));
    let clinic = net.join(2, true);
    let err = net
        .router
        .publish_offer(net.now, clinic, "this is not sdp".into(), vec![])
        .unwrap_err();
    assert!(matches!(err, sfu::SfuError::InvalidSdp(_)), "{err:?}");
    let err = net
        .router
        .subscribe_answer(net.now, ParticipantId(99), "v=0".into())
        .unwrap_err();
    assert!(matches!(err, sfu::SfuError::UnknownParticipant(_)));
    assert!(matches!(
        net.router.join(
            net.now,
            ParticipantInfo {
                id: clinic,
                room: "consult".into(),
                identity: "again".into(),
                role: "clinic".into(),
                can_publish: true
            }
        ),
        Err(sfu::SfuError::AlreadyJoined(_))
    ));
    // Garbage on the media port is counted and ignored.
    net.router.handle_datagram(
        net.now,
        Datagram {
            local: ROUTER_ADDR.parse().unwrap(),
            remote: "127.0.0.1:1".parse().unwrap(),
            data: BytesMut::from(&b"garbage"[..]),
            tcp: false,
        },
    );
    assert_eq!(net.router.stats().unroutable_datagrams, 1);
    assert_eq!(net.router.participant_count(), 2);
}

/// Chat sent on one participant's data channel reaches the others' channels.
#[test]
fn chat_is_relayed_between_data_channels() {
    let mut net = Net::new();
    let a = net.join(1, true);
    net.clients.push(client(net.now, 40001));
    net.answer_offer(a, 0);
    let b = net.join(2, true);
    net.clients.push(client(net.now, 40002));
    net.answer_offer(b, 1);
    assert!(net.run_until(Duration::from_secs(5), |n| {
        n.clients.iter().all(|c| c.chat_channel.is_some())
    }));
    let now = net.now;
    let dc = net.clients[0].chat_channel.unwrap();
    net.clients[0]
        .pc
        .data_channel(dc)
        .unwrap()
        .send_text(now, r#"{"text":"hello"}"#)
        .unwrap();
    assert!(net.run_until(Duration::from_secs(1), |n| {
        n.events
            .iter()
            .any(|e| matches!(e, RouterEvent::Chat { from, .. } if *from == a))
    }));
    net.router.broadcast_chat(net.now, a, "stamped");
    assert!(net.run_until(Duration::from_secs(1), |n| !n.clients[1].chat.is_empty()));
    assert_eq!(net.clients[1].chat, vec!["stamped".to_string()]);
    assert!(
        net.clients[0].chat.is_empty(),
        "the sender does not get its own message"
    );
}

/// A recorded room's track is tapped: announced with its codec, then its packets exactly as
/// the publisher sent them, then ended when recording stops or the publisher leaves; a
/// keyframe is asked for when a tap starts.
#[test]
fn recorded_rooms_tap_their_tracks_packets() {
    let mut net = Net::new();
    net.router.set_recording(net.now, "consult", true);
    let publisher = net.join(2, true);
    net.take_offer(publisher);
    let (pub_client, sender, ssrc) = net.publish_video(publisher, 40002);
    net.run_until(Duration::from_secs(5), |n| n.clients[0].connected);
    assert!(
        net.taps.iter().all(|t| matches!(t, Tap::Started(_))),
        "no packet yet: {:?}",
        net.taps
    );
    for seq in 1..=5 {
        net.send_rtp(pub_client, sender, ssrc, seq, u32::from(seq) * 3000);
    }
    net.run_until(Duration::from_secs(1), |n| n.taps.len() >= 6);
    let Tap::Started(track) = &net.taps[0] else {
        panic!("the track is announced first: {:?}", net.taps[0])
    };
    assert_eq!(
        (
            track.participant,
            track.publisher_track_id.as_str(),
            track.kind,
            track.source
        ),
        (
            publisher,
            "camera-track",
            sfu::TrackKind::Video,
            TrackSource::Camera
        )
    );
    assert_eq!(track.codecs[0].mime_type.to_ascii_lowercase(), "video/vp8");
    assert_eq!(track.codecs[0].clock_rate, 90_000);
    let tap = track.tap;
    let packets: Vec<(u16, u32, Vec<u8>)> = net.taps[1..]
        .iter()
        .map(|t| match t {
            Tap::Packet(p) if p.tap == tap => (p.sequence_number, p.timestamp, p.payload.to_vec()),
            other => panic!("a packet of the track: {other:?}"),
        })
        .collect();
    let sent: Vec<(u16, u32, Vec<u8>)> = (1..=5)
        .map(|seq| {
            (
                seq,
                u32::from(seq) * 3000,
                format!("frame-{seq}").into_bytes(),
            )
        })
        .collect();
    assert_eq!(packets, sent);
    assert!(
        net.router.stats().plis_sent >= 1,
        "a keyframe was asked for"
    );

    net.taps.clear();
    net.router.set_recording(net.now, "consult", false);
    net.send_rtp(pub_client, sender, ssrc, 6, 18_000);
    net.run_until(Duration::from_millis(200), |_| false);
    assert_eq!(net.taps, [Tap::Ended { tap }]);

    net.taps.clear();
    net.router.set_recording(net.now, "consult", true);
    net.router.leave(net.now, publisher);
    net.run_until(Duration::from_millis(100), |_| false);
    assert!(
        matches!(&net.taps[..], [Tap::Started(t), Tap::Ended { tap: ended }] if t.tap == *ended && t.tap != tap),
        "{:?}",
        net.taps
    );
    assert_eq!(net.router.stats().dropped_taps, 0);
}

/// A subscriber whose link is cut long enough for its connection to fail comes back: while
/// it was away an offer was sent and lost; `resume` replaces it with an ICE-restart offer
/// (a new local ufrag, which the demultiplexer routes), and media flows again.
#[test]
fn a_resumed_subscriber_gets_media_again_after_an_ice_restart() {
    let mut net = Net::new();
    let (viewer, _, pub_client, sender, ssrc) = net.connected_viewer_and_publisher();
    net.send_rtp(pub_client, sender, ssrc, 1, 0);
    net.run_until(Duration::from_secs(1), |n| !n.events.is_empty());
    let (old_offer, _) = net.take_offer(viewer).expect("an offer with the track");
    let ufrag = |sdp: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .map(str::to_owned)
    };
    let old_ufrag = ufrag(&old_offer);

    // The link goes before the offer is answered: the offer is lost with the old socket.
    net.cut.push(0);
    let mut seq = 2u16;
    let cut_until = net.now + Duration::from_secs(10);
    while net.now < cut_until {
        net.send_rtp(pub_client, sender, ssrc, seq, seq as u32 * 3000);
        seq += 1;
        net.run_until(Duration::from_millis(100), |_| false);
    }
    assert!(
        !net.clients[0].connected,
        "the cut link took the connection down"
    );
    net.cut.clear();

    net.router.resume(net.now, viewer).unwrap();
    let tracks = net.answer_offer(viewer, 0);
    assert_eq!(tracks.len(), 1, "the subscription survived");
    let restart_offer = net.clients[0].pc.remote_description().unwrap().sdp.clone();
    assert_ne!(ufrag(&restart_offer), old_ufrag, "new ICE credentials");

    let before = net.clients[0].received.len();
    let resumed_at = net.now;
    let mut got_media = false;
    while net.now < resumed_at + Duration::from_secs(2) {
        net.send_rtp(pub_client, sender, ssrc, seq, seq as u32 * 3000);
        seq += 1;
        net.run_until(Duration::from_millis(30), |_| false);
        if net.clients[0].received.len() > before + 5 {
            got_media = true;
            break;
        }
    }
    assert!(
        got_media,
        "media reaches the resumed subscriber within 2 s (got {} packets after the restart)",
        net.clients[0].received.len() - before
    );
    assert!(
        net.router.resume(net.now, ParticipantId(99)).is_err(),
        "an unknown participant cannot resume"
    );
}
