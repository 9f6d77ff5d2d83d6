//! The forwarding core: rooms, participants, published tracks and subscriptions.
//!
//! [`Router`] is a plain state machine in the style of str0m's `Rtc`: commands and datagrams
//! go in with the current [`Instant`], and the caller drains [`Router::poll_transmit`],
//! [`Router::poll_event`] and [`Router::poll_timeout`]. The per-packet path is
//! [`Router::handle_datagram`] → the publisher's peer connection (SRTP, NACK generation) →
//! `forward` → each subscription's header rewrite → the subscriber's peer connection
//! (NACK cache, SRTP) → [`Router::poll_transmit`].

use crate::demux::{Demuxer, PcKey, PcKind};
use crate::peer;
use crate::rewrite::{ExtensionMap, SequenceRewriter};
use crate::tap::{Tap, TapCodec, TapId, TapPacket, TapTrack};
use crate::{ParticipantId, ParticipantInfo, SfuError, TrackInfo, TrackKind, TrackSource};
use bytes::BytesMut;
use rtc::data_channel::RTCDataChannelId;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Most taps queued for the recorder before packets are dropped (counted in
/// [`RouterStats::dropped_taps`]).
const MAX_QUEUED_TAPS: usize = 4096;

/// Settings of the forwarding core.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The shared UDP socket's address, announced as every peer connection's only candidate.
    pub media_addr: SocketAddr,
    /// Minimum time between two keyframe requests sent to one publisher track.
    pub keyframe_request_interval: Duration,
    /// Largest chat message accepted on the data channel, in bytes.
    pub max_chat_message: usize,
}

impl RouterConfig {
    /// Defaults for a socket at `media_addr`.
    pub fn new(media_addr: SocketAddr) -> Self {
        Self {
            media_addr,
            keyframe_request_interval: Duration::from_millis(300),
            max_chat_message: 4096,
        }
    }
}

/// One UDP datagram, received or to send.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// The router's socket address.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The bytes.
    pub data: BytesMut,
    /// Carried by a TCP connection (ICE-TCP, RFC 4571 framing) instead of UDP.
    pub tcp: bool,
}

/// What the router tells signaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RouterEvent {
    /// A new offer for a participant's subscriber connection, to be answered with
    /// [`Router::subscribe_answer`].
    SubscribeOffer {
        /// Who must answer.
        participant: ParticipantId,
        /// The SDP offer.
        sdp: String,
        /// Every track the offer carries.
        tracks: Vec<TrackInfo>,
    },
    /// A chat message arrived on a participant's `chat` data channel.
    Chat {
        /// The sender.
        from: ParticipantId,
        /// The UTF-8 text as the client sent it (at most `max_chat_message` bytes).
        text: String,
    },
    /// One of a participant's peer connections failed (ICE or DTLS).
    TransportFailed {
        /// Whose.
        participant: ParticipantId,
    },
}

/// The answer to a publish offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAnswer {
    /// The SDP answer.
    pub sdp: String,
}

/// Counters of the forwarding core, read by the metrics endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// RTP packets handed to subscribers' connections.
    pub forwarded_packets: u64,
    /// Payload bytes of those packets.
    pub forwarded_bytes: u64,
    /// RTP packets that could not be forwarded to some subscriber (codec or state mismatch).
    pub dropped_packets: u64,
    /// NACK feedback packets received from subscribers (answered from the packet cache).
    pub nacks_received: u64,
    /// PLI/FIR received from subscribers.
    pub keyframe_requests_received: u64,
    /// PLIs sent to publishers.
    pub plis_sent: u64,
    /// Datagrams that matched no peer connection.
    pub unroutable_datagrams: u64,
    /// Chat messages dropped (too large or not text).
    pub dropped_chat_messages: u64,
    /// Recording taps dropped because the queue for the recorder was full (the shell drains
    /// it after every input, so this stays 0 unless the loop stalls).
    pub dropped_taps: u64,
}

type TrackKey = (ParticipantId, String);

struct Participant {
    info: ParticipantInfo,
    subscriber: RTCPeerConnection,
    chat: Option<RTCDataChannelId>,
    chat_open: bool,
    subscriber_connected: bool,
    offer_outstanding: bool,
    needs_offer: bool,
    publisher: Option<RTCPeerConnection>,
    sources: HashMap<String, TrackSource>,
}

impl Participant {
    fn pc(&mut self, kind: PcKind) -> Option<&mut RTCPeerConnection> {
        match kind {
            PcKind::Subscriber => Some(&mut self.subscriber),
            PcKind::Publisher => self.publisher.as_mut(),
        }
    }
}

/// A track a participant publishes.
struct PublishedTrack {
    info: TrackInfo,
    publisher_track_id: String,
    receiver_id: RTCRtpReceiverId,
    media_ssrc: u32,
    /// The publisher's negotiated codecs by payload type; the first is the primary one.
    codecs: Vec<(u8, RTCRtpCodec)>,
    extensions: Vec<(u8, String)>,
    subscriptions: Vec<Subscription>,
    last_keyframe_request: Option<Instant>,
    /// Its tap number while its room is recorded.
    tap: Option<TapId>,
}

/// One track forwarded to one subscriber (mediasoup's consumer).
struct Subscription {
    subscriber: ParticipantId,
    sender_id: RTCRtpSenderId,
    out_ssrc: u32,
    rewriter: SequenceRewriter,
    /// Payload-type and extension mapping, known once the subscriber has answered.
    negotiated: Option<Negotiated>,
}

struct Negotiated {
    payload_types: Vec<(u8, u8)>,
    extensions: ExtensionMap,
}

impl Negotiated {
    fn payload_type(&self, publisher_pt: u8) -> Option<u8> {
        self.payload_types
            .iter()
            .find(|(p, _)| *p == publisher_pt)
            .map(|(_, s)| *s)
    }
}

/// The sans-IO forwarding core. See the [module docs](self).
pub struct Router {
    config: RouterConfig,
    participants: HashMap<ParticipantId, Participant>,
    rooms: HashMap<String, Vec<ParticipantId>>,
    tracks: HashMap<TrackKey, PublishedTrack>,
    /// (subscriber, track id in its subscriber connection) → the published track.
    downtracks: HashMap<(ParticipantId, String), TrackKey>,
    demux: Demuxer,
    dirty: Vec<PcKey>,
    dirty_set: HashSet<PcKey>,
    transmits: VecDeque<Datagram>,
    events: VecDeque<RouterEvent>,
    stats: RouterStats,
    /// Rooms being recorded.
    recorded_rooms: HashSet<String>,
    /// Taps for the recorder, drained by [`Router::poll_tap`].
    taps: VecDeque<Tap>,
    next_tap: TapId,
}

impl Router {
    /// An empty router.
    pub fn new(config: RouterConfig) -> Self {
        Self {
            config,
            participants: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            downtracks: HashMap::new(),
            demux: Demuxer::default(),
            dirty: Vec::new(),
            dirty_set: HashSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: RouterStats::default(),
            recorded_rooms: HashSet::new(),
            taps: VecDeque::new(),
            next_tap: 0,
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }

    /// Participants currently in the router.
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// Tracks currently published.
    pub fn track_count(&self) -> usize {
        self.tracks.len()
    }

    /// Subscriptions (track × subscriber) currently forwarded.
    pub fn subscription_count(&self) -> usize {
        self.tracks.values().map(|t| t.subscriptions.len()).sum()
    }

    /// Adds a participant: builds its subscriber connection with the `chat` data channel and
    /// the room's current tracks, and emits its first [`RouterEvent::SubscribeOffer`].
    pub fn join(&mut self, now: Instant, info: ParticipantInfo) -> Result<(), SfuError> {
        if self.participants.contains_key(&info.id) {
            return Err(SfuError::AlreadyJoined(info.id));
        }
        let id = info.id;
        let mut new_peer = peer::build(now, self.config.media_addr)?;
        let chat = new_peer.create_data_channel("chat", None)?.id();
        let room_members = self.rooms.entry(info.room.clone()).or_default();
        let existing: Vec<TrackKey> = self
            .tracks
            .keys()
            .filter(|(publisher, _)| room_members.contains(publisher))
            .cloned()
            .collect();
        room_members.push(id);
        self.participants.insert(
            id,
            Participant {
                info,
                subscriber: new_peer,
                chat: Some(chat),
                chat_open: false,
                subscriber_connected: false,
                offer_outstanding: false,
                needs_offer: false,
                publisher: None,
                sources: HashMap::new(),
            },
        );
        for key in existing {
            self.subscribe(now, &key, id)?;
        }
        self.offer_to(now, id)
    }

    /// Applies a participant's publisher-connection offer and returns the answer.
    ///
    /// `sources` names the source of each track id the client publishes; tracks it does not
    /// name count as camera (video) or microphone (audio). Tracks that the new offer no
    /// longer sends are unpublished.
    pub fn publish_offer(
        &mut self,
        now: Instant,
        id: ParticipantId,
        sdp: String,
        sources: Vec<(String, TrackSource)>,
    ) -> Result<PublishAnswer, SfuError> {
        let media_addr = self.config.media_addr;
        let participant = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant(id))?;
        if !participant.info.can_publish {
            return Err(SfuError::PublishForbidden);
        }
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let sending = sending_track_ids(&offer)?;
        let new_pc = participant.publisher.is_none();
        if new_pc {
            participant.publisher = Some(peer::build(now, media_addr)?);
        }
        let pc = participant
            .publisher
            .as_mut()
            .expect("publisher connection exists");
        if let Err(e) = pc.set_remote_description(now, offer) {
            if new_pc {
                participant.publisher = None;
            }
            return Err(SfuError::InvalidSdp(e.to_string()));
        }
        let answer = pc.create_answer(None)?;
        pc.set_local_description(now, answer)?;
        learn_ufrag(&mut self.demux, pc, (id, PcKind::Publisher));
        let sdp = pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or(SfuError::InvalidSdp("no local description".into()))?;
        participant.sources.extend(sources);

        let gone: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|((publisher, _), t)| {
                *publisher == id && !sending.contains(&t.publisher_track_id)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.unpublish(now, &key);
        }
        self.process(now, (id, PcKind::Publisher));
        // A track whose SSRC the offer already names is published now rather than on its
        // first packet; this also republishes a reused transceiver (a screen share stopped
        // and started again), whose receiver never opens a second time.
        for (receiver_id, track_id, ssrc) in self.unpublished_receivers(id, &sending) {
            self.publish(now, id, receiver_id, track_id, ssrc);
        }
        Ok(PublishAnswer { sdp })
    }

    /// Applies a participant's answer to the last [`RouterEvent::SubscribeOffer`].
    pub fn subscribe_answer(
        &mut self,
        now: Instant,
        id: ParticipantId,
        sdp: String,
    ) -> Result<(), SfuError> {
        let participant = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant(id))?;
        if !participant.offer_outstanding {
            return Err(SfuError::NoOfferOutstanding);
        }
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        participant
            .subscriber
            .set_remote_description(now, answer)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        participant.offer_outstanding = false;
        let again = std::mem::take(&mut participant.needs_offer);
        self.negotiate_subscriptions(now, id);
        self.process(now, (id, PcKind::Subscriber));
        if again {
            self.offer_to(now, id)?;
        }
        Ok(())
    }

    /// Removes a participant, its tracks from everyone else, and its connections.
    pub fn leave(&mut self, now: Instant, id: ParticipantId) {
        let Some(mut participant) = self.participants.remove(&id) else {
            return;
        };
        if let Some(members) = self.rooms.get_mut(&participant.info.room) {
            members.retain(|m| *m != id);
            if members.is_empty() {
                self.rooms.remove(&participant.info.room);
            }
        }
        let own: Vec<TrackKey> = self
            .tracks
            .keys()
            .filter(|(publisher, _)| *publisher == id)
            .cloned()
            .collect();
        for key in own {
            self.unpublish(now, &key);
        }
        for track in self.tracks.values_mut() {
            track.subscriptions.retain(|s| s.subscriber != id);
        }
        self.downtracks
            .retain(|(subscriber, _), _| *subscriber != id);
        self.demux.remove_participant(id);
        self.dirty_set.retain(|(p, _)| *p != id);
        self.dirty.retain(|(p, _)| *p != id);
        // Closing queues DTLS close alerts that nobody will drain: the peer is gone anyway.
        let _ = participant.subscriber.close();
        if let Some(publisher) = participant.publisher.as_mut() {
            let _ = publisher.close();
        }
    }

    /// A participant is back after losing its signaling socket: the subscribe offer that was
    /// outstanding went with the old socket, so a fresh [`RouterEvent::SubscribeOffer`] that
    /// restarts ICE on its subscriber connection replaces it. Tracks and subscriptions stay;
    /// the client restarts ICE on its publisher connection with an ordinary publish offer.
    pub fn resume(&mut self, now: Instant, id: ParticipantId) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant(id))?;
        p.offer_outstanding = false;
        p.needs_offer = false;
        p.subscriber.restart_ice();
        self.offer_to(now, id)
    }

    /// Starts or stops recording `room`: while on, every track published in it is tapped
    /// ([`Router::poll_tap`]); turning it on asks each video publisher for a keyframe so the
    /// recording starts with a picture.
    pub fn set_recording(&mut self, now: Instant, room: &str, on: bool) {
        let keys: Vec<TrackKey> = self
            .tracks
            .keys()
            .filter(|(publisher, _)| {
                self.participants
                    .get(publisher)
                    .is_some_and(|p| p.info.room == room)
            })
            .cloned()
            .collect();
        if on {
            if !self.recorded_rooms.insert(room.to_owned()) {
                return;
            }
            for key in keys {
                self.start_tap(now, &key, room);
            }
        } else if self.recorded_rooms.remove(room) {
            for key in keys {
                if let Some(tap) = self.tracks.get_mut(&key).and_then(|t| t.tap.take()) {
                    self.taps.push_back(Tap::Ended { tap });
                }
            }
        }
    }

    /// The next tap for the recorder, if any. Drain after every input, as with
    /// [`Router::poll_transmit`].
    pub fn poll_tap(&mut self) -> Option<Tap> {
        self.taps.pop_front()
    }

    /// Announces a track of a recorded room and asks its publisher for a keyframe.
    fn start_tap(&mut self, now: Instant, key: &TrackKey, room: &str) {
        let Some(track) = self.tracks.get_mut(key) else {
            return;
        };
        if track.tap.is_some() {
            return;
        }
        self.next_tap += 1;
        let tap = self.next_tap;
        track.tap = Some(tap);
        self.taps.push_back(Tap::Started(TapTrack {
            tap,
            room: room.to_owned(),
            participant: key.0,
            identity: track.info.identity.clone(),
            role: track.info.role.clone(),
            publisher_track_id: track.publisher_track_id.clone(),
            kind: track.info.kind,
            source: track.info.source,
            codecs: track
                .codecs
                .iter()
                .map(|(pt, c)| TapCodec {
                    payload_type: *pt,
                    mime_type: c.mime_type.clone(),
                    clock_rate: c.clock_rate,
                    channels: c.channels,
                    fmtp: c.sdp_fmtp_line.clone(),
                })
                .collect(),
        }));
        self.request_keyframe(now, key, Throttle::No);
    }

    /// Sends `text` on the `chat` data channel of every participant of `from`'s room but
    /// `from` itself.
    pub fn broadcast_chat(&mut self, now: Instant, from: ParticipantId, text: &str) {
        let Some(room) = self.participants.get(&from).map(|p| p.info.room.clone()) else {
            return;
        };
        let members = self.rooms.get(&room).cloned().unwrap_or_default();
        for member in members.into_iter().filter(|m| *m != from) {
            let Some(p) = self.participants.get_mut(&member) else {
                continue;
            };
            let (Some(chat), true) = (p.chat, p.chat_open) else {
                // Its channel is not open yet: the message cannot reach it.
                self.stats.dropped_chat_messages += 1;
                continue;
            };
            if let Some(mut dc) = p.subscriber.data_channel(chat)
                && let Err(e) = dc.send_text(now, text.to_owned())
            {
                debug!(participant = %member, error = %e, "chat delivery failed");
            }
            self.mark_dirty((member, PcKind::Subscriber));
        }
    }

    /// Feeds one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, datagram: Datagram) {
        let Some(key) = self.demux.route(datagram.remote, &datagram.data) else {
            self.stats.unroutable_datagrams += 1;
            return;
        };
        let Some(pc) = self.participants.get_mut(&key.0).and_then(|p| p.pc(key.1)) else {
            self.stats.unroutable_datagrams += 1;
            return;
        };
        let message = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: datagram.local,
                peer_addr: datagram.remote,
                ecn: None,
                transport_protocol: if datagram.tcp {
                    TransportProtocol::TCP
                } else {
                    TransportProtocol::UDP
                },
            },
            message: datagram.data,
        };
        if let Err(e) = pc.handle_read(message) {
            debug!(participant = %key.0, error = %e, "datagram rejected");
        }
        self.process(now, key);
    }

    /// Tells the router that `now` has come; runs every deadline that has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (id, p) in self.participants.iter_mut() {
            for kind in [PcKind::Subscriber, PcKind::Publisher] {
                if let Some(pc) = p.pc(kind)
                    && pc.poll_timeout().is_some_and(|t| t <= now)
                {
                    if let Err(e) = pc.handle_timeout(now) {
                        debug!(participant = %id, error = %e, "timeout handling failed");
                    }
                    due.push((*id, kind));
                }
            }
        }
        for key in due {
            self.process(now, key);
        }
    }

    /// The next instant at which [`Router::handle_timeout`] must be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for p in self.participants.values_mut() {
            for kind in [PcKind::Subscriber, PcKind::Publisher] {
                if let Some(t) = p.pc(kind).and_then(|pc| pc.poll_timeout()) {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                }
            }
        }
        earliest
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        loop {
            if let Some(d) = self.transmits.pop_front() {
                return Some(d);
            }
            let key = self.dirty.pop()?;
            self.dirty_set.remove(&key);
            let Some(pc) = self.participants.get_mut(&key.0).and_then(|p| p.pc(key.1)) else {
                continue;
            };
            while let Some(out) = pc.poll_write() {
                self.transmits.push_back(Datagram {
                    local: out.transport.local_addr,
                    remote: out.transport.peer_addr,
                    data: out.message,
                    tcp: out.transport.transport_protocol == TransportProtocol::TCP,
                });
            }
        }
    }

    /// The next event for signaling.
    pub fn poll_event(&mut self) -> Option<RouterEvent> {
        self.events.pop_front()
    }

    fn mark_dirty(&mut self, key: PcKey) {
        if self.dirty_set.insert(key) {
            self.dirty.push(key);
        }
    }

    /// Drains a peer connection's events and messages and acts on them.
    fn process(&mut self, now: Instant, key: PcKey) {
        loop {
            let Some(pc) = self.participants.get_mut(&key.0).and_then(|p| p.pc(key.1)) else {
                return;
            };
            if let Some(event) = pc.poll_event() {
                self.on_pc_event(now, key, event);
                continue;
            }
            if let Some(message) = pc.poll_read() {
                self.on_pc_message(now, key, message.message);
                continue;
            }
            break;
        }
        self.mark_dirty(key);
    }

    fn on_pc_event(&mut self, now: Instant, key: PcKey, event: RTCPeerConnectionEvent) {
        let (id, kind) = key;
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                debug!(participant = %id, ?kind, ?state, "peer connection state");
                if state == RTCPeerConnectionState::Failed {
                    self.events
                        .push_back(RouterEvent::TransportFailed { participant: id });
                }
                if kind == PcKind::Subscriber {
                    let connected = state == RTCPeerConnectionState::Connected;
                    if let Some(p) = self.participants.get_mut(&id) {
                        p.subscriber_connected = connected;
                    }
                    if connected {
                        self.request_keyframes_for(now, id);
                    }
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if kind == PcKind::Publisher =>
            {
                self.publish(now, id, init.receiver_id, init.track_id, init.ssrc);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id))
                if kind == PcKind::Publisher =>
            {
                self.unpublish(now, &(id, track_id));
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(dc))
                if kind == PcKind::Subscriber =>
            {
                if let Some(p) = self.participants.get_mut(&id)
                    && p.chat == Some(dc)
                {
                    p.chat_open = true;
                }
            }
            _ => {}
        }
    }

    fn on_pc_message(&mut self, now: Instant, key: PcKey, message: RTCMessage) {
        let (id, kind) = key;
        match (kind, message) {
            (PcKind::Publisher, RTCMessage::RtpPacket(track_id, packet)) => {
                self.forward(now, &(id, track_id), packet);
            }
            (PcKind::Subscriber, RTCMessage::RtcpPacket(track_id, packets)) => {
                let Some(track_key) = self.downtracks.get(&(id, track_id)).cloned() else {
                    return;
                };
                for packet in &packets {
                    let any = packet.as_any();
                    if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                        self.stats.keyframe_requests_received += 1;
                        self.request_keyframe(now, &track_key, Throttle::Yes);
                    } else if any.is::<TransportLayerNack>() {
                        self.stats.nacks_received += 1;
                    }
                }
            }
            (PcKind::Subscriber, RTCMessage::DataChannelMessage(_, message)) => {
                let text = (message.is_string
                    && message.data.len() <= self.config.max_chat_message)
                    .then(|| String::from_utf8(message.data.to_vec()).ok())
                    .flatten();
                match text {
                    Some(text) => self.events.push_back(RouterEvent::Chat { from: id, text }),
                    None => self.stats.dropped_chat_messages += 1,
                }
            }
            _ => {}
        }
    }

    /// A publisher's track delivered its first packet: make it a published track and
    /// subscribe everyone else in the room to it.
    fn publish(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        receiver_id: RTCRtpReceiverId,
        track_id: String,
        ssrc: u32,
    ) {
        let key = (publisher, track_id.clone());
        if self.tracks.contains_key(&key) {
            return;
        }
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        let source_hint = p.sources.get(&track_id).copied();
        let (identity, role, room) = (
            p.info.identity.clone(),
            p.info.role.clone(),
            p.info.room.clone(),
        );
        let Some(mut receiver) = p
            .publisher
            .as_mut()
            .and_then(|pc| pc.rtp_receiver(receiver_id))
        else {
            return;
        };
        let kind = match receiver.track().kind() {
            RtpCodecKind::Audio => TrackKind::Audio,
            _ => TrackKind::Video,
        };
        let params = &receiver.get_parameters().rtp_parameters;
        let codecs: Vec<(u8, RTCRtpCodec)> = params
            .codecs
            .iter()
            .map(|c| (c.payload_type, c.rtp_codec.clone()))
            .collect();
        let extensions: Vec<(u8, String)> = params
            .header_extensions
            .iter()
            .map(|h| (h.id as u8, h.uri.clone()))
            .collect();
        if codecs.is_empty() {
            warn!(participant = %publisher, "published track has no negotiated codec");
            return;
        }
        let source = source_hint.unwrap_or(match kind {
            TrackKind::Audio => TrackSource::Microphone,
            TrackKind::Video => TrackSource::Camera,
        });
        let info = TrackInfo {
            stream_id: publisher.to_string(),
            track_id: format!("{publisher}-{track_id}"),
            participant_id: publisher,
            identity,
            role,
            kind,
            source,
        };
        self.tracks.insert(
            key.clone(),
            PublishedTrack {
                info,
                publisher_track_id: track_id,
                receiver_id,
                media_ssrc: ssrc,
                codecs,
                extensions,
                subscriptions: Vec::new(),
                last_keyframe_request: None,
                tap: None,
            },
        );
        if self.recorded_rooms.contains(&room) {
            self.start_tap(now, &key, &room);
        }
        let members = self.rooms.get(&room).cloned().unwrap_or_default();
        for member in members.into_iter().filter(|m| *m != publisher) {
            if let Err(e) = self
                .subscribe(now, &key, member)
                .and_then(|_| self.offer_to(now, member))
            {
                warn!(participant = %member, error = %e, "subscribing failed");
            }
        }
    }

    /// Receivers of `publisher` that the last offer sends on, that have a known SSRC, and
    /// that are not published yet.
    fn unpublished_receivers(
        &mut self,
        publisher: ParticipantId,
        sending: &HashSet<String>,
    ) -> Vec<(RTCRtpReceiverId, String, u32)> {
        let Some(pc) = self
            .participants
            .get_mut(&publisher)
            .and_then(|p| p.publisher.as_mut())
        else {
            return Vec::new();
        };
        let receiver_ids: Vec<RTCRtpReceiverId> = pc.get_receivers().collect();
        receiver_ids
            .into_iter()
            .filter_map(|receiver_id| {
                let receiver = pc.rtp_receiver(receiver_id)?;
                let track = receiver.track();
                let track_id = track.track_id().clone();
                let published = self.tracks.contains_key(&(publisher, track_id.clone()));
                (!published && sending.contains(&track_id))
                    .then(|| {
                        track
                            .ssrcs()
                            .next()
                            .map(|ssrc| (receiver_id, track_id, ssrc))
                    })
                    .flatten()
            })
            .collect()
    }

    /// Removes a published track and its subscriptions, renegotiating each subscriber.
    fn unpublish(&mut self, now: Instant, key: &TrackKey) {
        let Some(track) = self.tracks.remove(key) else {
            return;
        };
        if let Some(tap) = track.tap {
            self.taps.push_back(Tap::Ended { tap });
        }
        for sub in track.subscriptions {
            self.downtracks
                .remove(&(sub.subscriber, track.info.track_id.clone()));
            let Some(p) = self.participants.get_mut(&sub.subscriber) else {
                continue;
            };
            if let Err(e) = p.subscriber.remove_track(sub.sender_id) {
                warn!(participant = %sub.subscriber, error = %e, "removing a forwarded track failed");
            }
            if let Err(e) = self.offer_to(now, sub.subscriber) {
                warn!(participant = %sub.subscriber, error = %e, "renegotiation failed");
            }
        }
    }

    /// Adds a forwarded track for `subscriber` (renegotiation is the caller's).
    fn subscribe(
        &mut self,
        now: Instant,
        key: &TrackKey,
        subscriber: ParticipantId,
    ) -> Result<(), SfuError> {
        let (Some(track), Some(p)) = (
            self.tracks.get_mut(key),
            self.participants.get_mut(&subscriber),
        ) else {
            return Ok(());
        };
        let out_ssrc = rand::random::<u32>();
        let kind = match track.info.kind {
            TrackKind::Audio => RtpCodecKind::Audio,
            TrackKind::Video => RtpCodecKind::Video,
        };
        let (_, primary_codec) = &track.codecs[0];
        let media_track = MediaStreamTrack::new(
            track.info.stream_id.clone(),
            track.info.track_id.clone(),
            track.info.track_id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(out_ssrc),
                    ..Default::default()
                },
                codec: primary_codec.clone(),
                ..Default::default()
            }],
        );
        let sender_id = p.subscriber.add_track(media_track)?;
        track.subscriptions.push(Subscription {
            subscriber,
            sender_id,
            out_ssrc,
            rewriter: SequenceRewriter::new(
                primary_codec.clock_rate,
                rand::random(),
                rand::random(),
                now,
            ),
            negotiated: None,
        });
        self.downtracks
            .insert((subscriber, track.info.track_id.clone()), key.clone());
        Ok(())
    }

    /// Sends a new subscriber-connection offer, or defers it while one is outstanding.
    fn offer_to(&mut self, now: Instant, id: ParticipantId) -> Result<(), SfuError> {
        let Some(p) = self.participants.get_mut(&id) else {
            return Ok(());
        };
        if p.offer_outstanding {
            p.needs_offer = true;
            return Ok(());
        }
        let offer = p.subscriber.create_offer(None)?;
        p.subscriber.set_local_description(now, offer)?;
        learn_ufrag(&mut self.demux, &p.subscriber, (id, PcKind::Subscriber));
        let sdp = p
            .subscriber
            .local_description()
            .map(|d| d.sdp)
            .ok_or(SfuError::InvalidSdp("no local description".into()))?;
        p.offer_outstanding = true;
        let mut tracks: Vec<TrackInfo> = self
            .tracks
            .values()
            .filter(|t| t.subscriptions.iter().any(|s| s.subscriber == id))
            .map(|t| t.info.clone())
            .collect();
        tracks.sort_by(|a, b| a.track_id.cmp(&b.track_id));
        self.events.push_back(RouterEvent::SubscribeOffer {
            participant: id,
            sdp,
            tracks,
        });
        self.process(now, (id, PcKind::Subscriber));
        Ok(())
    }

    /// After an answer: learn each subscription's payload types and extension ids.
    fn negotiate_subscriptions(&mut self, now: Instant, id: ParticipantId) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let mut new_video = Vec::new();
        for (key, track) in self.tracks.iter_mut() {
            for sub in track
                .subscriptions
                .iter_mut()
                .filter(|s| s.subscriber == id)
            {
                let Some(mut sender) = p.subscriber.rtp_sender(sub.sender_id) else {
                    continue;
                };
                let params = &sender.get_parameters().rtp_parameters;
                let payload_types = track
                    .codecs
                    .iter()
                    .filter_map(|(pub_pt, codec)| {
                        let same_mime =
                            |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
                                c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type)
                            };
                        params
                            .codecs
                            .iter()
                            .filter(same_mime)
                            .find(|c| c.rtp_codec.sdp_fmtp_line == codec.sdp_fmtp_line)
                            .or_else(|| params.codecs.iter().find(same_mime))
                            .map(|c| (*pub_pt, c.payload_type))
                    })
                    .collect();
                let extensions = ExtensionMap::new(
                    track.extensions.iter().map(|(i, u)| (*i, u.as_str())),
                    params
                        .header_extensions
                        .iter()
                        .map(|h| (h.id as u8, h.uri.as_str())),
                );
                let first = sub.negotiated.is_none();
                sub.negotiated = Some(Negotiated {
                    payload_types,
                    extensions,
                });
                if first && track.info.kind == TrackKind::Video && p.subscriber_connected {
                    new_video.push(key.clone());
                }
            }
        }
        // A subscription that starts on a live connection needs a keyframe now; one on a
        // connection still coming up gets it when the connection is up.
        for key in new_video {
            self.request_keyframe(now, &key, Throttle::No);
        }
    }

    /// Forwards one publisher packet to every subscription of its track.
    fn forward(&mut self, now: Instant, key: &TrackKey, packet: rtc::rtp::Packet) {
        let Some(track) = self.tracks.get_mut(key) else {
            self.stats.dropped_packets += 1;
            return;
        };
        let payload_len = packet.payload.len() as u64;
        if let Some(tap) = track.tap {
            if self.taps.len() < MAX_QUEUED_TAPS {
                self.taps.push_back(Tap::Packet(TapPacket {
                    tap,
                    payload_type: packet.header.payload_type,
                    sequence_number: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    marker: packet.header.marker,
                    payload: packet.payload.clone(),
                }));
            } else {
                self.stats.dropped_taps += 1;
            }
        }
        for sub in track.subscriptions.iter_mut() {
            let Some(p) = self.participants.get_mut(&sub.subscriber) else {
                continue;
            };
            let Some(negotiated) = sub.negotiated.as_ref().filter(|_| p.subscriber_connected)
            else {
                continue;
            };
            let Some(pt) = negotiated.payload_type(packet.header.payload_type) else {
                self.stats.dropped_packets += 1;
                continue;
            };
            let Some(rewritten) =
                sub.rewriter
                    .rewrite(packet.header.sequence_number, packet.header.timestamp, now)
            else {
                self.stats.dropped_packets += 1;
                continue;
            };
            let mut out = packet.clone();
            out.header.ssrc = sub.out_ssrc;
            out.header.payload_type = pt;
            out.header.sequence_number = rewritten.seq;
            out.header.timestamp = rewritten.ts;
            out.header
                .extensions
                .retain_mut(|ext| match negotiated.extensions.map(ext.id) {
                    Some(id) => {
                        ext.id = id;
                        true
                    }
                    None => false,
                });
            out.header.extension = !out.header.extensions.is_empty();
            match p.subscriber.rtp_sender(sub.sender_id) {
                Some(mut sender) => match sender.write_rtp(now, out) {
                    Ok(()) => {
                        self.stats.forwarded_packets += 1;
                        self.stats.forwarded_bytes += payload_len;
                    }
                    Err(e) => {
                        self.stats.dropped_packets += 1;
                        debug!(participant = %sub.subscriber, error = %e, "forwarding failed");
                    }
                },
                None => self.stats.dropped_packets += 1,
            }
            let dirty = (sub.subscriber, PcKind::Subscriber);
            if self.dirty_set.insert(dirty) {
                self.dirty.push(dirty);
            }
        }
    }

    /// Asks the publishers of every video track `subscriber` receives for a keyframe.
    fn request_keyframes_for(&mut self, now: Instant, subscriber: ParticipantId) {
        let keys: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| {
                t.info.kind == TrackKind::Video
                    && t.subscriptions.iter().any(|s| s.subscriber == subscriber)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.request_keyframe(now, &key, Throttle::No);
        }
    }

    /// Sends a PLI to a track's publisher. Requests relayed from subscribers are throttled
    /// to one per `keyframe_request_interval`; the router's own (a subscription starting, a
    /// subscriber connecting) are not, since each is needed by someone who has no picture yet
    /// and they come only with joins and renegotiations.
    fn request_keyframe(&mut self, now: Instant, key: &TrackKey, throttle: Throttle) {
        let interval = self.config.keyframe_request_interval;
        let Some(track) = self.tracks.get_mut(key) else {
            return;
        };
        let recent = track
            .last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < interval);
        if track.info.kind != TrackKind::Video || (throttle == Throttle::Yes && recent) {
            return;
        }
        let Some(mut receiver) = self
            .participants
            .get_mut(&key.0)
            .and_then(|p| p.publisher.as_mut())
            .and_then(|pc| pc.rtp_receiver(track.receiver_id))
        else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: track.media_ssrc,
        };
        match receiver.write_rtcp(now, vec![Box::new(pli)]) {
            Ok(()) => {
                track.last_keyframe_request = Some(now);
                self.stats.plis_sent += 1;
            }
            Err(e) => debug!(participant = %key.0, error = %e, "PLI failed"),
        }
        self.mark_dirty((key.0, PcKind::Publisher));
    }
}

/// Whether a keyframe request obeys the per-track throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Throttle {
    Yes,
    No,
}

/// Track ids (the `a=msid` track part) of the m-lines an offer actually sends on.
fn sending_track_ids(offer: &RTCSessionDescription) -> Result<HashSet<String>, SfuError> {
    let parsed = offer
        .unmarshal()
        .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
    let mut ids = HashSet::new();
    for media in &parsed.media_descriptions {
        let attr = |name: &str| {
            media
                .attributes
                .iter()
                .find(|a| a.key == name)
                .map(|a| a.value.clone().unwrap_or_default())
        };
        let sends = !["recvonly", "inactive"]
            .iter()
            .any(|d| media.attributes.iter().any(|a| a.key == *d));
        if media.media_name.port.value == 0 || !sends {
            continue;
        }
        if let Some(track) =
            attr("msid").and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        {
            ids.insert(track);
        }
    }
    Ok(ids)
}

/// Routes a peer connection's current local ICE ufrag to it: a local description can carry
/// a new one (an ICE restart, ours or the client's).
fn learn_ufrag(demux: &mut Demuxer, pc: &RTCPeerConnection, key: PcKey) {
    let ufrag = pc.local_description().and_then(|d| {
        d.sdp
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:").map(str::to_owned))
    });
    match ufrag {
        Some(ufrag) => demux.register(ufrag, key),
        None => warn!(participant = %key.0, "a local description without an ICE ufrag"),
    }
}
