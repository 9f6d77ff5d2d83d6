//! The forwarding core: rooms, participants, published tracks and subscriptions.
//!
//! [`Router`] is a plain state machine in the style of str0m's `Rtc`: commands and datagrams
//! go in with the current [`Instant`], and the caller drains [`Router::poll_transmit`],
//! [`Router::poll_event`] and [`Router::poll_timeout`]. The per-packet path is
//! [`Router::handle_datagram`] → the publisher's peer connection (SRTP, NACK generation) →
//! `forward` → each subscription's header rewrite → the subscriber's peer connection
//! (NACK cache, SRTP) → [`Router::poll_transmit`].

use crate::bandwidth::Estimate;
use crate::demux::{Demuxer, PcKey, PcKind};
use crate::fec::{self, LossMeter, ParityGroup};
use crate::peer;
use crate::rewrite::{ExtensionMap, Rewritten, SequenceRewriter, TRANSPORT_CC_URI};
use crate::simulcast::{self, BitrateMeter, Choice, Demand, LayerView, PauseReason, VideoCodec};
use crate::tap::{Tap, TapCodec, TapId, TapPacket, TapTrack};
use crate::{ParticipantId, ParticipantInfo, SfuError, TrackInfo, TrackKind, TrackSource};
use bytes::{Bytes, BytesMut};
use rtc::data_channel::RTCDataChannelId;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_ULP_FEC;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
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

/// How often every subscriber's layers are chosen again.
const ALLOCATION_INTERVAL: Duration = Duration::from_millis(500);
/// A layer without packets for this long is taken as stopped by its publisher.
const LAYER_SILENT_AFTER: Duration = Duration::from_millis(1500);
/// How long a layer just asked for may take to start before it counts as unavailable.
const LAYER_START_GRACE: Duration = Duration::from_secs(3);
/// A layer that did not start when asked for is not chosen again for this long.
const LAYER_RETRY_AFTER: Duration = Duration::from_secs(10);
/// A layer stays on at the publisher this long after its last use (switching back is then
/// quick, and the publisher's encoder is not toggled by every wobble of the estimate).
const LAYER_KEEP_AFTER_USE: Duration = Duration::from_secs(10);
/// Video is paused for bandwidth only when its lowest layer has not fitted for this long (a
/// moment's dip of the estimate is not worth a freeze and a keyframe).
const PAUSE_AFTER: Duration = Duration::from_secs(2);
/// How long nothing is forwarded on a subscription moving down for bandwidth, for the
/// path's queue to drain before the new layer's keyframe (at most the 500 ms a browser's
/// link may queue; the next allocation then asks for the keyframe).
const DRAIN: Duration = Duration::from_millis(450);
/// No upgrade for this long after a downgrade (the estimate needs time to settle).
const UPGRADE_HOLD: Duration = Duration::from_secs(4);
/// A subscriber's quality report is sent again when only its estimate moved, at most this
/// often.
const QUALITY_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of the forwarding core.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The shared UDP socket's address, announced as every peer connection's only candidate.
    pub media_addr: SocketAddr,
    /// Minimum time between two keyframe requests sent to one publisher track.
    pub keyframe_request_interval: Duration,
    /// Largest chat message accepted on the data channel, in bytes.
    pub max_chat_message: usize,
    /// Whether lossy subscribers' video is followed by ULPFEC parity packets (`fec.rs`).
    pub fec: bool,
}

impl RouterConfig {
    /// Defaults for a socket at `media_addr`.
    pub fn new(media_addr: SocketAddr) -> Self {
        Self {
            media_addr,
            keyframe_request_interval: Duration::from_millis(300),
            max_chat_message: 4096,
            fec: false,
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
    /// What a subscriber receives changed: its bandwidth estimate or a track's layer.
    Quality {
        /// The subscriber.
        participant: ParticipantId,
        /// The estimated bandwidth towards it, in bits per second.
        estimate_bps: u64,
        /// Every video track it is subscribed to.
        tracks: Vec<TrackQuality>,
    },
    /// The simulcast layers of a publisher's track that someone receives changed; the
    /// publisher should send only these (the others are paused).
    LayersWanted {
        /// The publisher.
        participant: ParticipantId,
        /// The track id in the publisher's own connection (`MediaStreamTrack.id`).
        track_id: String,
        /// The `rid`s to send.
        rids: Vec<String>,
    },
}

/// What a subscriber receives of one video track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackQuality {
    /// The track id in the subscriber connection.
    pub track_id: String,
    /// The layer it receives (`None` for a track without simulcast or while paused).
    pub rid: Option<String>,
    /// Why it receives nothing, if so.
    pub paused: Option<PauseReason>,
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
    /// Simulcast layer switches made for subscribers (at keyframes).
    pub layer_switches: u64,
    /// ULPFEC parity packets sent to subscribers whose link loses packets.
    pub fec_packets: u64,
    /// Video packets per parity packet towards each subscriber (0: not protected), by
    /// participant.
    pub fec_groups: Vec<(ParticipantId, u64)>,
    /// Each subscriber's bandwidth estimate in bits per second, by participant.
    pub estimates: Vec<(ParticipantId, u64)>,
    /// Video subscriptions by what they receive: a layer's `rid` (`"single"` without
    /// simulcast) or `paused_<reason>`.
    pub video_subscriptions: Vec<(String, u64)>,
}

type TrackKey = (ParticipantId, String);

struct Participant {
    info: ParticipantInfo,
    subscriber: RTCPeerConnection,
    /// The congestion controller's estimate towards it.
    estimate: Estimate,
    /// The last REMB it sent (for a subscriber without transport-cc).
    remb_bps: Option<u64>,
    /// The share of its video it asks to be resent, and the parity group size that calls for.
    loss: LossMeter,
    /// Parity packets follow this many of its video packets (`None`: no protection).
    fec_group: Option<usize>,
    /// The track (id in its subscriber connection) it pinned.
    pinned: Option<String>,
    /// The last quality report sent to it, and when.
    reported: Option<(u64, Vec<TrackQuality>, Instant)>,
    chat: Option<RTCDataChannelId>,
    chat_open: bool,
    subscriber_connected: bool,
    offer_outstanding: bool,
    needs_offer: bool,
    publisher: Option<RTCPeerConnection>,
    sources: HashMap<String, TrackSource>,
    /// Simulcast `rid`s (lowest first) of each track id its last offer sends.
    rids: TrackRids,
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
    /// The primary codec, when its keyframes can be recognised (layer switches wait for one).
    video_codec: Option<VideoCodec>,
    extensions: Vec<(u8, String)>,
    /// Its RTP streams, lowest first: one without simulcast.
    layers: Vec<Layer>,
    subscriptions: Vec<Subscription>,
    last_keyframe_request: Option<Instant>,
    /// Its tap while its room is recorded.
    tap: Option<TrackTap>,
}

/// One RTP stream of a published track: a simulcast layer, or the only stream.
struct Layer {
    /// Its `rid` (none without simulcast).
    rid: Option<String>,
    /// Its SSRC, once a packet named it.
    ssrc: Option<u32>,
    meter: BitrateMeter,
    /// Its picture height, from its last keyframe.
    height: Option<u32>,
    /// Whether the publisher was last asked to send it, and since when.
    wanted: bool,
    wanted_since: Option<Instant>,
    /// When it last failed to start within [`LAYER_START_GRACE`] of being asked for (the
    /// publisher cannot send it now, e.g. for its own bandwidth or CPU).
    failed_at: Option<Instant>,
    /// When a subscriber or the recording last received it or waited for it.
    last_used: Option<Instant>,
}

impl Layer {
    /// A layer just announced: the publisher sends it, or is about to.
    fn new(rid: Option<String>, ssrc: Option<u32>, now: Instant) -> Self {
        Self {
            rid,
            ssrc,
            meter: BitrateMeter::new(),
            height: None,
            wanted: true,
            wanted_since: Some(now),
            failed_at: None,
            last_used: None,
        }
    }

    /// Whether media (not just padding) arrived recently.
    fn flowing(&self, now: Instant) -> bool {
        self.meter
            .last_packet()
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_SILENT_AFTER)
    }

    /// Whether it may be chosen: it flows, or the publisher was told to pause it (and would
    /// resume it when asked), or it was asked for only just now; a layer that recently failed
    /// to start when asked is not chosen until it flows again.
    fn available(&self, now: Instant) -> bool {
        if self.flowing(now) {
            return true;
        }
        let asked_for = self.wanted_since.map(|t| now.saturating_duration_since(t));
        let failed = self
            .failed_at
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_RETRY_AFTER);
        let starting = asked_for.is_some_and(|d| d < LAYER_START_GRACE);
        !failed && (!self.wanted || starting)
    }

    /// Notes a layer that was asked for and has not started within the grace time.
    fn check_started(&mut self, now: Instant) {
        let overdue = self
            .wanted_since
            .is_some_and(|t| now.saturating_duration_since(t) >= LAYER_START_GRACE);
        if self.wanted && overdue && !self.flowing(now) {
            self.failed_at = Some(now);
        }
    }
}

/// A recorded track's tap: it follows the highest layer that flows, switching at keyframes.
struct TrackTap {
    id: TapId,
    current: Option<usize>,
    target: Option<usize>,
    rewriter: SequenceRewriter,
}

/// One track forwarded to one subscriber (mediasoup's consumer).
struct Subscription {
    subscriber: ParticipantId,
    sender_id: RTCRtpSenderId,
    out_ssrc: u32,
    rewriter: SequenceRewriter,
    /// Payload-type and extension mapping, known once the subscriber has answered.
    negotiated: Option<Negotiated>,
    /// The layer forwarded now.
    current: Option<usize>,
    /// What the allocator chose; a different layer is switched to at its next keyframe.
    target: Choice,
    /// The height the subscriber shows the track at (`Some(0)`: not shown).
    shown_height: Option<u32>,
    last_downgrade: Option<Instant>,
    /// Since when the allocator has wanted to pause it for bandwidth.
    short_since: Option<Instant>,
    /// Moving down for bandwidth: nothing is forwarded until then, so the queue on the
    /// path drains before the new layer's keyframe is asked for (a keyframe sent into a full
    /// queue is cut by its drops, and the picture stalls for seconds); after it, the old
    /// layer is still not forwarded while that keyframe is awaited.
    drain_until: Option<Instant>,
    /// The parity being built over what it forwards, while its subscriber's link loses.
    parity: ParityGroup,
    /// The highest sequence number its subscriber has asked to be resent.
    highest_nacked: Option<u16>,
}

struct Negotiated {
    payload_types: Vec<(u8, u8)>,
    extensions: ExtensionMap,
    /// RED and ULPFEC payload types, if the subscriber accepted both.
    fec: Option<FecPayloadTypes>,
    /// The subscriber's id of the transport-cc extension.
    transport_cc_id: Option<u8>,
}

/// The payload types a subscriber receives parity packets with.
#[derive(Clone, Copy)]
struct FecPayloadTypes {
    red: u8,
    ulpfec: u8,
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
    /// When layers are next chosen.
    next_allocation: Option<Instant>,
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
            next_allocation: None,
        }
    }

    /// Counters since start, with the current estimates and layers.
    pub fn stats(&self) -> RouterStats {
        let mut estimates: Vec<(ParticipantId, u64)> = self
            .participants
            .iter()
            .map(|(id, p)| (*id, subscriber_estimate(p)))
            .collect();
        estimates.sort();
        let mut fec_groups: Vec<(ParticipantId, u64)> = self
            .participants
            .iter()
            .map(|(id, p)| (*id, p.fec_group.unwrap_or(0) as u64))
            .collect();
        fec_groups.sort();
        let mut by_layer: HashMap<String, u64> = HashMap::new();
        for track in self
            .tracks
            .values()
            .filter(|t| t.info.kind == TrackKind::Video)
        {
            for sub in &track.subscriptions {
                let label = match sub.target {
                    Choice::Paused(reason) => format!("paused_{}", reason.as_str()),
                    Choice::Layer(l) => track.layers[l]
                        .rid
                        .clone()
                        .unwrap_or_else(|| "single".to_owned()),
                };
                *by_layer.entry(label).or_default() += 1;
            }
        }
        let mut by_layer: Vec<(String, u64)> = by_layer.into_iter().collect();
        by_layer.sort();
        RouterStats {
            estimates,
            video_subscriptions: by_layer,
            fec_groups,
            ..self.stats.clone()
        }
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
        let estimate = Estimate::new();
        let mut new_peer = peer::build(
            now,
            self.config.media_addr,
            Some(&estimate),
            self.config.fec,
        )?;
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
                estimate,
                remb_bps: None,
                loss: LossMeter::new(),
                fec_group: None,
                pinned: None,
                reported: None,
                chat: Some(chat),
                chat_open: false,
                subscriber_connected: false,
                offer_outstanding: false,
                needs_offer: false,
                publisher: None,
                sources: HashMap::new(),
                rids: HashMap::new(),
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
        let (sending, rids) = sending_tracks(&offer)?;
        let new_pc = participant.publisher.is_none();
        if new_pc {
            participant.publisher = Some(peer::build(now, media_addr, None, false)?);
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
        participant.rids = rids;
        self.move_renewed_tracks(id, &sending);

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
        // Before the connection's events: the old receiver's close must find the track moved.
        self.rebind_moved_tracks(now, id);
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
                    self.taps.push_back(Tap::Ended { tap: tap.id });
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
        track.tap = Some(TrackTap {
            id: tap,
            current: None,
            target: top_available(&track.layers, now),
            rewriter: SequenceRewriter::new(
                track.codecs[0].1.clock_rate,
                rand::random(),
                rand::random(),
                now,
            ),
        });
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
        self.request_keyframe(now, key, None, Throttle::No);
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

    /// Sets the height (device pixels) at which `subscriber` shows one of its tracks (its id
    /// in the subscriber connection): the layer it receives is at most as tall as needed;
    /// `0` means not shown, and its video is paused.
    pub fn set_shown_height(
        &mut self,
        now: Instant,
        subscriber: ParticipantId,
        track_id: &str,
        height: u32,
    ) -> Result<(), SfuError> {
        let key = self
            .downtracks
            .get(&(subscriber, track_id.to_owned()))
            .ok_or_else(|| SfuError::UnknownTrack(track_id.to_owned()))?;
        if let Some(sub) = self.tracks.get_mut(key).and_then(|t| {
            t.subscriptions
                .iter_mut()
                .find(|s| s.subscriber == subscriber)
        }) {
            sub.shown_height = Some(height);
        }
        self.allocate_for(now, subscriber);
        self.update_wanted_layers(now);
        Ok(())
    }

    /// Pins one of `subscriber`'s tracks (its id in the subscriber connection), or unpins
    /// with `None`: a pinned video gets the best layer that fits before any other video.
    pub fn set_pinned(
        &mut self,
        now: Instant,
        subscriber: ParticipantId,
        track_id: Option<&str>,
    ) -> Result<(), SfuError> {
        if let Some(id) = track_id
            && !self.downtracks.contains_key(&(subscriber, id.to_owned()))
        {
            return Err(SfuError::UnknownTrack(id.to_owned()));
        }
        let p = self
            .participants
            .get_mut(&subscriber)
            .ok_or(SfuError::UnknownParticipant(subscriber))?;
        p.pinned = track_id.map(str::to_owned);
        self.allocate_for(now, subscriber);
        self.update_wanted_layers(now);
        Ok(())
    }

    /// Feeds one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, datagram: Datagram) {
        let Some(key) = self
            .demux
            .route(now, datagram.remote, datagram.tcp, &datagram.data)
        else {
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
        if self.next_allocation.is_none_or(|t| t <= now) {
            self.next_allocation = Some(now + ALLOCATION_INTERVAL);
            for layer in self.tracks.values_mut().flat_map(|t| t.layers.iter_mut()) {
                layer.check_started(now);
            }
            let ids: Vec<ParticipantId> = self.participants.keys().copied().collect();
            for id in ids {
                self.allocate_for(now, id);
            }
            self.update_wanted_layers(now);
        }
    }

    /// The next instant at which [`Router::handle_timeout`] must be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let mut earliest: Option<Instant> = self
            .next_allocation
            .filter(|_| !self.participants.is_empty());
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
                debug!(participant = %id, track = %init.track_id, ssrc = init.ssrc, rid = ?init.rid, "track opened");
                self.publish(now, id, init.receiver_id, init.track_id, init.ssrc);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id))
                if kind == PcKind::Publisher =>
            {
                // The close of a receiver the track has moved away from changes nothing.
                let key = (id, track_id);
                if !self.receiver_carries(&key) {
                    self.unpublish(now, &key);
                }
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
                for remb in packets
                    .iter()
                    .filter_map(|p| p.as_any().downcast_ref::<ReceiverEstimatedMaximumBitrate>())
                {
                    if let Some(p) = self.participants.get_mut(&id) {
                        p.remb_bps = Some(remb.bitrate as u64);
                    }
                }
                let Some(track_key) = self.downtracks.get(&(id, track_id)).cloned() else {
                    return;
                };
                for packet in &packets {
                    let any = packet.as_any();
                    if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                        self.stats.keyframe_requests_received += 1;
                        self.request_keyframe(now, &track_key, Some(id), Throttle::Yes);
                    } else if let Some(nack) = packet.as_any().downcast_ref::<TransportLayerNack>()
                    {
                        self.stats.nacks_received += 1;
                        if self.config.fec {
                            self.count_resend_requests(now, &track_key, id, nack);
                        }
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
        let rids = p.rids.get(&track_id).cloned().unwrap_or_default();
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
        let layers: Vec<Layer> = if rids.len() > 1 {
            let first = receiver.track().rid(ssrc).cloned();
            rids.into_iter()
                .map(|rid| {
                    let known = (first.as_ref() == Some(&rid)).then_some(ssrc);
                    Layer::new(Some(rid), known, now)
                })
                .collect()
        } else {
            vec![Layer::new(None, Some(ssrc), now)]
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
        let video_codec = (kind == TrackKind::Video)
            .then(|| VideoCodec::from_mime(&codecs[0].1.mime_type))
            .flatten();
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
                video_codec,
                extensions,
                layers,
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

    /// Moves each published track of `publisher` whose receiver no longer carries it to the
    /// receiver that does now. The page sends its simulcast camera on a fresh transceiver at
    /// every renegotiation: the `rtc` crate forgets which SSRC carries which `rid` when a
    /// description is applied, and the browser names the `rid` only in a stream's first
    /// packets. Subscribers keep their subscriptions and switch at the new stream's first
    /// keyframe.
    fn rebind_moved_tracks(&mut self, now: Instant, publisher: ParticipantId) {
        let keys: Vec<TrackKey> = self
            .tracks
            .keys()
            .filter(|(p, _)| *p == publisher)
            .cloned()
            .collect();
        for key in keys {
            if self.receiver_carries(&key) {
                continue;
            }
            let Some(p) = self.participants.get_mut(&publisher) else {
                return;
            };
            let rids = p.rids.get(&key.1).cloned().unwrap_or_default();
            let Some(pc) = p.publisher.as_mut() else {
                return;
            };
            let receivers: Vec<RTCRtpReceiverId> = pc.get_receivers().collect();
            let Some((receiver_id, ssrc)) = receivers.into_iter().rev().find_map(|r| {
                let receiver = pc.rtp_receiver(r)?;
                let track = receiver.track();
                (*track.track_id() == key.1).then(|| (r, track.ssrcs().next()))
            }) else {
                continue;
            };
            let Some(track) = self.tracks.get_mut(&key) else {
                continue;
            };
            debug!(participant = %publisher, track = %key.1, "track moved to a new receiver");
            track.receiver_id = receiver_id;
            if let Some(ssrc) = ssrc {
                track.media_ssrc = ssrc;
            }
            track.layers = if rids.len() > 1 {
                rids.into_iter()
                    .map(|rid| Layer::new(Some(rid), None, now))
                    .collect()
            } else {
                vec![Layer::new(None, ssrc, now)]
            };
            for sub in track.subscriptions.iter_mut() {
                sub.current = None;
                sub.rewriter.reset_source();
            }
            if let Some(tap) = track.tap.as_mut() {
                tap.current = None;
                tap.rewriter.reset_source();
            }
            self.next_allocation = Some(now);
        }
    }

    /// Re-keys a published simulcast track that the page now sends on a fresh transceiver
    /// (under a new `a=msid` track id, same source) so that it stays the same track for its
    /// subscribers; [`Router::rebind_moved_tracks`] then finds its new receiver.
    fn move_renewed_tracks(&mut self, publisher: ParticipantId, sending: &HashSet<String>) {
        let Some(p) = self.participants.get(&publisher) else {
            return;
        };
        let gone: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|((owner, id), t)| {
                *owner == publisher && t.layers.len() > 1 && !sending.contains(id)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for old in gone {
            let source = p.sources.get(&old.1).copied();
            let renewed = sending.iter().find(|id| {
                p.rids.contains_key(*id)
                    && p.sources.get(*id).copied() == source
                    && !self.tracks.contains_key(&(publisher, (*id).clone()))
            });
            let Some(new_id) = renewed.cloned() else {
                continue;
            };
            let Some(mut track) = self.tracks.remove(&old) else {
                continue;
            };
            debug!(participant = %publisher, from = %old.1, to = %new_id, "track renewed");
            track.publisher_track_id = new_id.clone();
            let key = (publisher, new_id);
            for target in self.downtracks.values_mut().filter(|k| **k == old) {
                *target = key.clone();
            }
            self.tracks.insert(key, track);
        }
    }

    /// Whether a published track's receiver still exists and carries it.
    fn receiver_carries(&mut self, key: &TrackKey) -> bool {
        let Some(receiver_id) = self.tracks.get(key).map(|t| t.receiver_id) else {
            return false;
        };
        self.participants
            .get_mut(&key.0)
            .and_then(|p| p.publisher.as_mut())
            .and_then(|pc| pc.rtp_receiver(receiver_id))
            .is_some_and(|r| *r.track().track_id() == key.1)
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
            self.taps.push_back(Tap::Ended { tap: tap.id });
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
            current: None,
            target: Choice::Layer(0),
            shown_height: None,
            last_downgrade: None,
            short_since: None,
            drain_until: None,
            parity: ParityGroup::new(),
            highest_nacked: None,
        });
        self.downtracks
            .insert((subscriber, track.info.track_id.clone()), key.clone());
        self.allocate_for(now, subscriber);
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
                let payload_type_of = |mime: &str| {
                    params
                        .codecs
                        .iter()
                        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
                        .map(|c| c.payload_type)
                };
                let fec = match (
                    payload_type_of(peer::MIME_TYPE_RED),
                    payload_type_of(MIME_TYPE_ULP_FEC),
                ) {
                    (Some(red), Some(ulpfec)) => Some(FecPayloadTypes { red, ulpfec }),
                    _ => None,
                };
                let transport_cc_id = params
                    .header_extensions
                    .iter()
                    .find(|h| h.uri == TRANSPORT_CC_URI)
                    .map(|h| h.id as u8);
                let first = sub.negotiated.is_none();
                sub.negotiated = Some(Negotiated {
                    payload_types,
                    extensions,
                    fec,
                    transport_cc_id,
                });
                if first && track.info.kind == TrackKind::Video && p.subscriber_connected {
                    new_video.push(key.clone());
                }
            }
        }
        // A subscription that starts on a live connection needs a keyframe now; one on a
        // connection still coming up gets it when the connection is up.
        for key in new_video {
            self.request_keyframe(now, &key, Some(id), Throttle::No);
        }
    }

    /// Forwards one publisher packet to every subscription of its track that receives its
    /// layer (switching a subscription to its chosen layer when this packet starts a
    /// keyframe of it), and to the track's tap.
    fn forward(&mut self, now: Instant, key: &TrackKey, packet: rtc::rtp::Packet) {
        let Some(layer) = self.layer_of(key, packet.header.ssrc) else {
            debug!(
                ssrc = packet.header.ssrc,
                "packet of an unknown layer dropped"
            );
            self.stats.dropped_packets += 1;
            return;
        };
        let Some(track) = self.tracks.get_mut(key) else {
            self.stats.dropped_packets += 1;
            return;
        };
        let payload_len = packet.payload.len() as u64;
        let codec = track.video_codec;
        // Whether a subscription may start or change layers here: at a keyframe's first
        // packet of a simulcast track; anywhere for a single stream, for audio, and for codecs
        // whose keyframes we cannot see.
        let simulcast = track.layers.len() > 1;
        let switch_point =
            !simulcast || codec.is_none_or(|c| simulcast::is_keyframe_start(c, &packet.payload));
        // Padding-only packets (bandwidth probes) say nothing about a layer's media.
        if !packet.payload.is_empty() {
            let l = &mut track.layers[layer];
            if !l.flowing(now) {
                // A layer (re)starts: choose layers again at once.
                self.next_allocation = Some(now);
            }
            l.meter.record(now, packet.payload.len());
            if let Some(height) = codec.and_then(|c| simulcast::keyframe_height(c, &packet.payload))
            {
                l.height = Some(height);
            }
        }
        // A single stream is recorded with its own numbering; layers are made one stream.
        if let Some(tap) = track.tap.as_mut()
            && follow(
                &mut tap.current,
                tap.target,
                layer,
                switch_point,
                &mut tap.rewriter,
            )
            && let Some(rewritten) = if simulcast {
                tap.rewriter
                    .rewrite(packet.header.sequence_number, packet.header.timestamp, now)
            } else {
                Some(Rewritten {
                    seq: packet.header.sequence_number,
                    ts: packet.header.timestamp,
                })
            }
        {
            if self.taps.len() < MAX_QUEUED_TAPS {
                self.taps.push_back(Tap::Packet(TapPacket {
                    tap: tap.id,
                    payload_type: packet.header.payload_type,
                    sequence_number: rewritten.seq,
                    timestamp: rewritten.ts,
                    marker: packet.header.marker,
                    payload: packet.payload.clone(),
                }));
            } else {
                self.stats.dropped_taps += 1;
            }
        }
        for sub in track.subscriptions.iter_mut() {
            // A subscriber that cannot receive yet keeps waiting for its keyframe.
            let Some(p) = self.participants.get_mut(&sub.subscriber) else {
                continue;
            };
            let Some(negotiated) = sub.negotiated.as_ref().filter(|_| p.subscriber_connected)
            else {
                continue;
            };
            let target = match sub.target {
                Choice::Layer(l) => Some(l),
                Choice::Paused(_) => None,
            };
            if sub.drain_until.is_some_and(|until| now < until) {
                continue;
            }
            let before = sub.current;
            if !follow(
                &mut sub.current,
                target,
                layer,
                switch_point,
                &mut sub.rewriter,
            ) {
                continue;
            }
            if before != sub.current {
                debug!(subscriber = %sub.subscriber, ?before, now = ?sub.current, "layer switched");
                if before.is_some() {
                    self.stats.layer_switches += 1;
                }
            }
            if sub.current == target {
                sub.drain_until = None;
            } else if sub.drain_until.is_some() {
                continue;
            }
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
            if track.video_codec == Some(VideoCodec::Vp8) {
                out.payload = sub.rewriter.rewrite_vp8(&out.payload);
            }
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
            // Keep the header's padding bookkeeping consistent with the extensions left, so
            // an interceptor adding one (transport-cc) marshals a valid header.
            let ext_len = out.header.get_extension_payload_len();
            out.header.extensions_padding = (4 - ext_len % 4) % 4;
            let video = track.info.kind == TrackKind::Video;
            // Where RED was negotiated, video always travels in it, protected or not: a
            // stream that switched between VP8 and RED as the loss came and went left a VP8
            // packet lost just before the switch unrepaired by its retransmission, and the
            // picture stopped until a keyframe 3 s later.
            let red = negotiated
                .fec
                .filter(|_| video && self.config.fec && !out.payload.is_empty());
            // The parity covers the transport-cc extension with the zero value the receiver
            // sees (it zeroes it to recover); the congestion controller then writes the real
            // value in place. A packet whose extension cannot be set goes unprotected.
            let parity = match (red, p.fec_group) {
                (Some(pts), Some(group))
                    if !out.header.padding
                        && negotiated.transport_cc_id.is_none_or(|id| {
                            out.header
                                .set_extension(id, Bytes::from_static(&[0, 0]))
                                .is_ok()
                        }) =>
                {
                    let parity = sub.parity.protect(now, &out.header, &out.payload, group);
                    parity.map(|parity| {
                        let Rewritten { seq, ts } = sub.rewriter.insert();
                        rtc::rtp::Packet {
                            header: rtc::rtp::header::Header {
                                version: 2,
                                payload_type: pts.red,
                                sequence_number: seq,
                                timestamp: ts,
                                ssrc: sub.out_ssrc,
                                ..Default::default()
                            },
                            payload: fec::red(pts.ulpfec, &parity),
                        }
                    })
                }
                _ => None,
            };
            if let Some(pts) = red {
                out.header.payload_type = pts.red;
                out.payload = fec::red(pt, &out.payload);
            }
            match p.subscriber.rtp_sender(sub.sender_id) {
                Some(mut sender) => {
                    match sender.write_rtp(now, out) {
                        Ok(()) => {
                            self.stats.forwarded_packets += 1;
                            self.stats.forwarded_bytes += payload_len;
                            if video && self.config.fec {
                                p.loss.on_sent(now, 1);
                            }
                        }
                        Err(e) => {
                            self.stats.dropped_packets += 1;
                            debug!(participant = %sub.subscriber, error = %e, "forwarding failed");
                        }
                    }
                    if let Some(parity) = parity {
                        match sender.write_rtp(now, parity) {
                            Ok(()) => self.stats.fec_packets += 1,
                            Err(e) => {
                                debug!(participant = %sub.subscriber, error = %e, "parity not sent")
                            }
                        }
                    }
                }
                None => self.stats.dropped_packets += 1,
            }
            let dirty = (sub.subscriber, PcKind::Subscriber);
            if self.dirty_set.insert(dirty) {
                self.dirty.push(dirty);
            }
        }
    }

    /// The layer (index) of a track that an SSRC carries, learning it from the publisher's
    /// connection (`rid`) the first time.
    fn layer_of(&mut self, key: &TrackKey, ssrc: u32) -> Option<usize> {
        let track = self.tracks.get_mut(key)?;
        if track.layers.len() == 1 {
            return Some(0);
        }
        if let Some(i) = track.layers.iter().position(|l| l.ssrc == Some(ssrc)) {
            return Some(i);
        }
        let receiver = self
            .participants
            .get_mut(&key.0)?
            .publisher
            .as_mut()?
            .rtp_receiver(track.receiver_id)?;
        let rid = receiver.track().rid(ssrc)?.clone();
        let i = track
            .layers
            .iter()
            .position(|l| l.rid.as_deref() == Some(rid.as_str()))?;
        track.layers[i].ssrc = Some(ssrc);
        Some(i)
    }

    /// Chooses again what `subscriber` receives of each track, within its estimate; asks for
    /// keyframes where it must switch, and tells it when anything changed.
    fn allocate_for(&mut self, now: Instant, subscriber: ParticipantId) {
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        let loss_group = p.loss.group_size(now).filter(|_| self.config.fec);
        let budget = subscriber_estimate(p);
        let pinned = p.pinned.clone();
        let mut keys: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.subscriptions.iter().any(|s| s.subscriber == subscriber))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        let views: Vec<Vec<LayerView>> = keys
            .iter()
            .map(|k| {
                let track = &self.tracks[k];
                let heights = layer_heights(&track.layers);
                track
                    .layers
                    .iter()
                    .zip(heights)
                    .map(|(l, height)| LayerView {
                        bitrate_bps: layer_cost(track.info.kind, l),
                        height,
                        available: l.available(now),
                    })
                    .collect()
            })
            .collect();
        let demands: Vec<Demand<'_>> = keys
            .iter()
            .zip(&views)
            .map(|(k, layers)| {
                let track = &self.tracks[k];
                let sub = track
                    .subscriptions
                    .iter()
                    .find(|s| s.subscriber == subscriber)
                    .expect("filtered above");
                Demand {
                    audio: track.info.kind == TrackKind::Audio,
                    pinned: pinned.as_deref() == Some(track.info.track_id.as_str()),
                    shown_height: sub.shown_height,
                    layers,
                    current: Some(sub.target),
                }
            })
            .collect();
        // What the subscriber receives now costs more than its estimate: a downgrade now is
        // for bandwidth, not for a smaller tile.
        let over_budget = demands
            .iter()
            .filter_map(|d| match d.current {
                Some(Choice::Layer(l)) => d.layers.get(l).map(|v| v.bitrate_bps),
                _ => None,
            })
            .sum::<u64>()
            > budget;
        let choices = simulcast::allocate(budget, &demands);
        // What the choice costs: parity for the video may use what the estimate leaves.
        let (mut audio_bps, mut video_bps) = (0, 0);
        for (demand, choice) in demands.iter().zip(&choices) {
            if let Choice::Layer(l) = choice {
                let cost = demand.layers.get(*l).map_or(0, |v| v.bitrate_bps);
                *(if demand.audio {
                    &mut audio_bps
                } else {
                    &mut video_bps
                }) += cost;
            }
        }
        let fec_group = loss_group.and_then(|group| {
            fec::group_within(
                group,
                video_bps,
                budget.saturating_sub(audio_bps + video_bps),
            )
        });
        let protection_ended = p.fec_group.is_some() && fec_group.is_none();
        let mut need_keyframe = Vec::new();
        let mut waiting = Vec::new();
        let mut report = Vec::new();
        for (key, choice) in keys.iter().zip(choices) {
            let track = self.tracks.get_mut(key).expect("listed above");
            let sub = track
                .subscriptions
                .iter_mut()
                .find(|s| s.subscriber == subscriber)
                .expect("filtered above");
            if protection_ended {
                // A group begun while protected is abandoned: its parity would come late.
                sub.parity.clear();
            }
            let rank = |c: Choice| match c {
                Choice::Layer(l) => l as i64,
                Choice::Paused(_) => -1,
            };
            let upgrade = rank(choice) > rank(sub.target);
            let held = sub
                .last_downgrade
                .is_some_and(|t| now.saturating_duration_since(t) < UPGRADE_HOLD);
            let visible_again = matches!(sub.target, Choice::Paused(PauseReason::NotVisible));
            let short = choice == Choice::Paused(PauseReason::Bandwidth);
            if !short {
                sub.short_since = None;
            }
            let pause_held = short
                && matches!(sub.target, Choice::Layer(_))
                && now.saturating_duration_since(*sub.short_since.get_or_insert(now)) < PAUSE_AFTER;
            if choice != sub.target && !(upgrade && held && !visible_again) && !pause_held {
                if rank(choice) < rank(sub.target) {
                    sub.last_downgrade = Some(now);
                    // Only towards a layer that flows: one the publisher must start first
                    // would leave the picture frozen for longer than the queue takes to drain.
                    let flows = matches!(choice, Choice::Layer(l) if track.layers[l].flowing(now));
                    sub.drain_until = (over_budget && flows).then_some(now + DRAIN);
                } else {
                    sub.drain_until = None;
                }
                debug!(%subscriber, track = %track.info.track_id, from = ?sub.target, to = ?choice, budget, "layer chosen");
                sub.target = choice;
                // While draining, the next allocation asks for it (as for any switch waited on).
                if let Choice::Layer(l) = choice
                    && sub.current != Some(l)
                    && track.layers[l].flowing(now)
                    && sub.drain_until.is_none()
                {
                    need_keyframe.push(key.clone());
                }
            }
            if let Choice::Layer(l) = sub.target
                && sub.current != Some(l)
                && track.info.kind == TrackKind::Video
                && track.layers[l].flowing(now)
                && sub.drain_until.is_none_or(|until| until <= now)
            {
                // Still waiting for the keyframe to switch at: ask again (throttled).
                waiting.push(key.clone());
            }
            if track.info.kind == TrackKind::Video {
                report.push(TrackQuality {
                    track_id: track.info.track_id.clone(),
                    rid: match sub.target {
                        Choice::Layer(l) => track.layers[l].rid.clone(),
                        Choice::Paused(_) => None,
                    },
                    paused: match sub.target {
                        Choice::Paused(reason) => Some(reason),
                        Choice::Layer(_) => None,
                    },
                });
            }
        }
        for key in need_keyframe {
            self.request_keyframe(now, &key, None, Throttle::No);
        }
        for key in waiting {
            self.request_keyframe(now, &key, None, Throttle::Yes);
        }
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        if p.fec_group.is_some() != fec_group.is_some() {
            debug!(%subscriber, ?fec_group, "video protection changed");
        }
        p.fec_group = fec_group;
        let changed = match &p.reported {
            None => true,
            Some((bps, tracks, at)) => {
                *tracks != report
                    || (now.saturating_duration_since(*at) >= QUALITY_REPORT_INTERVAL
                        && budget.abs_diff(*bps) * 10 > *bps)
            }
        };
        if changed {
            p.reported = Some((budget, report.clone(), now));
            self.events.push_back(RouterEvent::Quality {
                participant: subscriber,
                estimate_bps: budget,
                tracks: report,
            });
        }
    }

    /// Tells publishers which simulcast layers someone receives (or is about to, or did
    /// within [`LAYER_KEEP_AFTER_USE`]), so the others can be paused. The lowest layer stays
    /// on while anyone subscribes, as the fallback under congestion; a recorded track keeps
    /// its top layer.
    fn update_wanted_layers(&mut self, now: Instant) {
        for ((publisher, _), track) in self.tracks.iter_mut() {
            if track.layers.len() < 2 {
                continue;
            }
            // Recording follows the highest layer that flows.
            if let Some(tap) = track.tap.as_mut() {
                tap.target = top_available(&track.layers, now);
            }
            let used = track
                .subscriptions
                .iter()
                .flat_map(|s| {
                    let target = match s.target {
                        Choice::Layer(l) => Some(l),
                        Choice::Paused(_) => None,
                    };
                    [target, s.current]
                })
                .chain(track.tap.iter().flat_map(|t| [t.target, t.current]));
            for l in used.flatten() {
                track.layers[l].last_used = Some(now);
            }
            let top = track.layers.len() - 1;
            let watched = !track.subscriptions.is_empty() || track.tap.is_some();
            let wanted: Vec<bool> = track
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let recent = l
                        .last_used
                        .is_some_and(|t| now.saturating_duration_since(t) < LAYER_KEEP_AFTER_USE);
                    recent || (i == 0 && watched) || (i == top && track.tap.is_some())
                })
                .collect();
            let changed = track
                .layers
                .iter()
                .zip(&wanted)
                .any(|(l, w)| l.wanted != *w);
            if !changed {
                continue;
            }
            for (l, w) in track.layers.iter_mut().zip(&wanted) {
                if *w && !l.wanted {
                    l.wanted_since = Some(now);
                }
                l.wanted = *w;
            }
            self.events.push_back(RouterEvent::LayersWanted {
                participant: *publisher,
                track_id: track.publisher_track_id.clone(),
                rids: track
                    .layers
                    .iter()
                    .filter(|l| l.wanted)
                    .filter_map(|l| l.rid.clone())
                    .collect(),
            });
        }
    }

    /// Counts the video packets a subscriber's NACK asks for that it had not asked for
    /// before, as the loss its link shows ([`LossMeter`]).
    fn count_resend_requests(
        &mut self,
        now: Instant,
        key: &TrackKey,
        subscriber: ParticipantId,
        nack: &TransportLayerNack,
    ) {
        let (Some(track), Some(p)) = (
            self.tracks.get_mut(key),
            self.participants.get_mut(&subscriber),
        ) else {
            return;
        };
        if track.info.kind != TrackKind::Video {
            return;
        }
        let Some(sub) = track
            .subscriptions
            .iter_mut()
            .find(|s| s.subscriber == subscriber)
        else {
            return;
        };
        let mut new = 0;
        for seq in nack.nacks.iter().flat_map(|pair| pair.packet_list()) {
            if sub
                .highest_nacked
                .is_none_or(|h| seq != h && seq.wrapping_sub(h) < 0x8000)
            {
                sub.highest_nacked = Some(seq);
                new += 1;
            }
        }
        p.loss.on_resend_asked(now, new);
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
            self.request_keyframe(now, &key, Some(subscriber), Throttle::No);
        }
    }

    /// Sends a PLI to a track's publisher: for the layer `for_subscriber` receives (or is
    /// about to), or else for each layer someone waits to switch to. Requests relayed from
    /// subscribers and repeated while waiting are throttled to one per
    /// `keyframe_request_interval`; the router's own first ones (a subscription starting, a
    /// subscriber connecting) are not, since each is needed by someone who has no picture.
    fn request_keyframe(
        &mut self,
        now: Instant,
        key: &TrackKey,
        for_subscriber: Option<ParticipantId>,
        throttle: Throttle,
    ) {
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
        let layer_of = |c: Choice| match c {
            Choice::Layer(l) => Some(l),
            Choice::Paused(_) => None,
        };
        let mut layers: Vec<usize> = match for_subscriber {
            // A subscriber without a picture yet takes the first keyframe of any layer.
            Some(id) => track
                .subscriptions
                .iter()
                .filter(|s| s.subscriber == id)
                .flat_map(|s| match (s.current, layer_of(s.target)) {
                    (Some(l), _) => vec![l],
                    (None, Some(_)) => (0..track.layers.len())
                        .filter(|&l| track.layers[l].flowing(now))
                        .collect(),
                    (None, None) => Vec::new(),
                })
                .collect(),
            None => track
                .subscriptions
                .iter()
                .map(|s| (layer_of(s.target), s.current))
                .chain(track.tap.iter().map(|t| (t.target, t.current)))
                .filter_map(|(target, current)| target.filter(|t| current != Some(*t)))
                .collect(),
        };
        if layers.is_empty() {
            return;
        }
        layers.sort_unstable();
        layers.dedup();
        let ssrcs: Vec<u32> = layers
            .iter()
            .map(|&l| track.layers[l].ssrc.unwrap_or(track.media_ssrc))
            .collect();
        let plis: Vec<Box<dyn rtc::rtcp::Packet>> = ssrcs
            .into_iter()
            .map(|media_ssrc| {
                Box::new(PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                }) as Box<dyn rtc::rtcp::Packet>
            })
            .collect();
        match receiver.write_rtcp(now, plis) {
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

/// Moves a forwarding state (`current` layer) towards `target` as a packet of `layer`
/// passes, and says whether that packet is to be forwarded: a different target is switched
/// to at a switch point (a keyframe) of its layer, restarting the rewriter's source mapping.
/// A state that forwards nothing yet starts at the first switch point of any layer, so the
/// first picture comes as soon as possible; it moves on to the target later.
fn follow(
    current: &mut Option<usize>,
    target: Option<usize>,
    layer: usize,
    switch_point: bool,
    rewriter: &mut SequenceRewriter,
) -> bool {
    if target.is_none() {
        // Paused: whatever comes next is a new source for the rewriter.
        if current.take().is_some() {
            rewriter.reset_source();
        }
        return false;
    }
    let start = current.is_none();
    if switch_point && *current != Some(layer) && (target == Some(layer) || start) {
        if current.is_some() {
            rewriter.reset_source();
        }
        *current = Some(layer);
    }
    *current == Some(layer)
}

/// Each layer's picture height: seen in its keyframes, or else inferred from the nearest
/// layer above whose height is known (each layer half the one above, as the page sends them).
fn layer_heights(layers: &[Layer]) -> Vec<Option<u32>> {
    let mut heights: Vec<Option<u32>> = layers.iter().map(|l| l.height).collect();
    for i in (0..heights.len()).rev() {
        if heights[i].is_none() {
            heights[i] = heights.get(i + 1).copied().flatten().map(|h| h / 2);
        }
    }
    heights
}

/// The highest layer that can be chosen now.
fn top_available(layers: &[Layer], now: Instant) -> Option<usize> {
    layers.iter().rposition(|l| l.available(now))
}

/// The estimate a subscriber's layers are chosen within: its congestion controller's once
/// transport-cc feedback arrives, otherwise its REMB, otherwise the initial guess.
fn subscriber_estimate(p: &Participant) -> u64 {
    match p.remb_bps {
        Some(remb) if !p.estimate.fed() => remb,
        _ => p.estimate.bps(),
    }
}

/// What a layer costs against a subscriber's budget: its measured bitrate, and for a
/// simulcast layer no less than its ceiling (it may burst to that at any time). A stream not
/// measured yet counts as its ceiling, or a typical audio or video bitrate.
fn layer_cost(kind: TrackKind, layer: &Layer) -> u64 {
    let ceiling = layer.rid.as_deref().and_then(layer_ceiling);
    let assumed = match kind {
        TrackKind::Audio => 40_000,
        TrackKind::Video => ceiling.unwrap_or(500_000),
    };
    layer
        .meter
        .bitrate_bps()
        .unwrap_or(assumed)
        .max(ceiling.unwrap_or(0))
}

/// The most the consult page lets a simulcast layer send (its `maxBitrate`), by `rid`.
fn layer_ceiling(rid: &str) -> Option<u64> {
    match rid {
        "q" => Some(150_000),
        "h" => Some(500_000),
        "f" => Some(1_500_000),
        _ => None,
    }
}

/// Simulcast `rid`s by track id, lowest first.
type TrackRids = HashMap<String, Vec<String>>;

/// Track ids (the `a=msid` track part) of the m-lines an offer actually sends on, and the
/// simulcast `rid`s of each (`a=rid:<id> send`, in the offer's order: lowest first).
fn sending_tracks(offer: &RTCSessionDescription) -> Result<(HashSet<String>, TrackRids), SfuError> {
    let parsed = offer
        .unmarshal()
        .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
    let mut ids = HashSet::new();
    let mut rids = HashMap::new();
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
            let layer_rids: Vec<String> = media
                .attributes
                .iter()
                .filter(|a| a.key == "rid")
                .filter_map(|a| {
                    let mut parts = a.value.as_deref()?.split_whitespace();
                    let rid = parts.next()?;
                    (parts.next() == Some("send")).then(|| rid.to_owned())
                })
                .collect();
            if !layer_rids.is_empty() {
                rids.insert(track.clone(), layer_rids);
            }
            ids.insert(track);
        }
    }
    Ok((ids, rids))
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
