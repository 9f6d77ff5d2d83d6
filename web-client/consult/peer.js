/**
 * The two peer connections of a participant (docs/signaling.md):
 *
 * - `SubscriberPeer`: the server offers, we answer. Receives every remote track and the
 *   server-created `chat` data channel, and knows which RemoteTrack each receiver carries.
 * - `PublisherPeer`: we offer (`publish_offer`), the server answers. Sends camera,
 *   microphone and screen share; renegotiates one offer at a time.
 *
 * The server is ICE-lite and its descriptions carry its candidate, so no candidates are
 * exchanged: gathered local candidates are simply not sent.
 */

import { mediaSections } from './sdp.js';

/**
 * @typedef {object} RemoteTrack  as sent in `subscribe_offer.tracks`
 * @property {string} stream_id
 * @property {string} track_id
 * @property {string} participant_id
 * @property {string} identity
 * @property {'audio' | 'video'} kind
 * @property {'camera' | 'microphone' | 'screen'} source
 * @property {boolean} muted
 */

/**
 * @typedef {object} ReceivedTrack
 * @property {RemoteTrack} info
 * @property {MediaStreamTrack} track  the receiver's track
 */

/** How long the server gets to answer a `publish_offer`. */
const PUBLISH_ANSWER_TIMEOUT_MS = 10_000;

/**
 * The camera's simulcast layers, lowest first (the order the server ranks them in): a
 * quarter, half and full resolution (180p, 360p and 720p from a 720p camera).
 */
const SIMULCAST_LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

/**
 * The layers for a camera of this height: browsers send at most two layers below 540p
 * (dropping the top one) and one below 360p, so smaller cameras get the top two, or no
 * simulcast at all (undefined).
 * @param {MediaStreamTrack} track
 */
function simulcastLayers(track) {
  const height = track.getSettings?.().height ?? 720;
  const count = height >= 540 ? 3 : height >= 360 ? 2 : 1;
  if (count === 1) return undefined;
  return SIMULCAST_LAYERS.slice(SIMULCAST_LAYERS.length - count).map((layer) => ({ ...layer }));
}

/**
 * The peer connections' configuration.
 * @param {{iceServers?: RTCIceServer[], relayOnly?: boolean}} ice the TURN servers (with our
 *   short-lived credentials, from `joined`) and whether to use nothing but them
 * @returns {RTCConfiguration}
 */
const pcConfig = ({ iceServers = [], relayOnly = false } = {}) => ({
  iceServers,
  iceTransportPolicy: relayOnly ? 'relay' : 'all',
  bundlePolicy: 'max-bundle',
  rtcpMuxPolicy: 'require',
});

const trackKey = (streamId, trackId) => `${streamId} ${trackId}`;

export class SubscriberPeer {
  /** @type {RTCPeerConnection} */
  pc;
  /** RemoteTracks of the latest offer (minus departed participants), by "stream_id track_id". */
  #tracks = new Map();
  /** Media sections of the latest offer, by mid. */
  #sections = new Map();
  /** Stream and track ids reported by `ontrack`, by transceiver. */
  #onTrackIds = new WeakMap();

  /**
   * @param {object} handlers
   * @param {(channel: RTCDataChannel) => void} handlers.onChatChannel the server's `chat` channel
   * @param {() => void} handlers.onStateChange the connection state changed
   * @param {{iceServers?: RTCIceServer[], relayOnly?: boolean}} [handlers.ice] see pcConfig
   */
  constructor({ onChatChannel, onStateChange, ice }) {
    this.pc = new RTCPeerConnection(pcConfig(ice));
    this.pc.ontrack = (event) => {
      this.#onTrackIds.set(event.transceiver, { streamId: event.streams[0]?.id ?? null, trackId: event.track.id });
    };
    this.pc.ondatachannel = (event) => {
      if (event.channel.label === 'chat') onChatChannel(event.channel);
    };
    this.pc.onconnectionstatechange = onStateChange;
  }

  /**
   * Applies a `subscribe_offer` and returns the SDP of the answer to send back. Callers
   * must not apply the next offer before this one has resolved.
   * @param {string} sdp
   * @param {RemoteTrack[]} tracks every track the offer carries
   * @returns {Promise<string>}
   */
  async applyOffer(sdp, tracks) {
    await this.pc.setRemoteDescription({ type: 'offer', sdp });
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    this.#tracks = new Map(tracks.map((tr) => [trackKey(tr.stream_id, tr.track_id), { ...tr }]));
    this.#sections = mediaSections(sdp);
    return this.pc.localDescription.sdp;
  }

  /**
   * Every track currently received, with the RemoteTrack it carries.
   * @returns {ReceivedTrack[]}
   */
  receivedTracks() {
    const received = [];
    for (const transceiver of this.pc.getTransceivers()) {
      const info = this.#infoFor(transceiver);
      if (info) received.push({ info, track: transceiver.receiver.track });
    }
    return received;
  }

  /** Applies a `track_muted` message. */
  setTrackMuted(participantId, trackId, muted) {
    for (const info of this.#tracks.values()) {
      if (info.participant_id === participantId && info.track_id === trackId) info.muted = muted;
    }
  }

  /** Drops a departed participant's tracks at once, before the server's next offer. */
  forgetParticipant(participantId) {
    for (const [key, info] of this.#tracks) {
      if (info.participant_id === participantId) this.#tracks.delete(key);
    }
  }

  /**
   * One entry per inbound-rtp stream whose RemoteTrack is known (see `medrelayStats`).
   * The stream is matched by its `mid`, or through `trackIdentifier` to the receiver's
   * transceiver when the browser does not report `mid`.
   */
  async inboundStats() {
    const transceivers = this.pc.getTransceivers();
    const report = await this.pc.getStats();
    const entries = [];
    for (const stat of report.values()) {
      if (stat.type !== 'inbound-rtp') continue;
      const transceiver =
        transceivers.find((t) => stat.mid !== undefined && t.mid === stat.mid) ??
        transceivers.find((t) => t.receiver.track.id === stat.trackIdentifier);
      const info = transceiver && this.#infoFor(transceiver);
      if (!info) continue;
      entries.push({
        participant_id: info.participant_id,
        identity: info.identity,
        kind: stat.kind ?? info.kind,
        framesDecoded: stat.framesDecoded ?? 0,
        frameWidth: stat.frameWidth ?? 0,
        frameHeight: stat.frameHeight ?? 0,
        totalSamplesReceived: stat.totalSamplesReceived ?? 0,
        trackIdentifier: stat.trackIdentifier,
        track_id: info.track_id,
        // Network-quality figures; undefined when getStats() lacks them.
        framesPerSecond: stat.framesPerSecond,
        freezeCount: stat.freezeCount,
        totalFreezesDuration: stat.totalFreezesDuration,
        totalPausesDuration: stat.totalPausesDuration,
        concealedSamples: stat.concealedSamples,
        packetsLost: stat.packetsLost,
        nackCount: stat.nackCount,
        retransmittedPacketsReceived: stat.retransmittedPacketsReceived,
        jitterBufferDelay: stat.jitterBufferDelay,
        jitterBufferEmittedCount: stat.jitterBufferEmittedCount,
      });
    }
    return entries;
  }

  close() {
    this.pc.close();
  }

  /**
   * The RemoteTrack a transceiver carries in the latest offer, or null. The offer's
   * `a=msid` of the transceiver's mid wins over the ids seen by `ontrack`, because a
   * receiver whose m-section the server reuses for another track keeps its first
   * track id.
   */
  #infoFor(transceiver) {
    const section = transceiver.mid === null ? undefined : this.#sections.get(transceiver.mid);
    if (!section?.sending) return null;
    const seen = this.#onTrackIds.get(transceiver);
    const streamId = section.streamId ?? seen?.streamId;
    const trackId = section.trackId ?? seen?.trackId;
    return this.#tracks.get(trackKey(streamId, trackId)) ?? null;
  }
}

export class PublisherPeer {
  /** @type {RTCPeerConnection} */
  pc;
  /** The source of every transceiver we added. */
  #sources = new Map();
  /** The stream of each simulcast transceiver, to send it afresh when renegotiating. */
  #streams = new Map();
  /** The simulcast layers the server last asked for, by source (`layers_wanted`). */
  #wantedLayers = new Map();
  /** The running application of `#wantedLayers`, if any. */
  #applyingLayers = null;
  /** The announced `track_id` of every source published by the last accepted offer. */
  #published = new Map();
  /** The `publish_offer` awaiting its answer: {resolve, reject}. */
  #pending = null;
  #wanted = false;
  #iceRestart = false;
  #running = null;
  #send;
  #onRejected;
  #onError;

  /**
   * @param {object} deps
   * @param {(type: string, fields: object) => void} deps.send sends a signaling message
   * @param {(trackIds: string[]) => void} deps.onRejected the server refused these tracks
   * @param {(err: Error) => void} deps.onError a negotiation failed (it was rolled back)
   * @param {() => void} deps.onStateChange the connection state changed
   * @param {{iceServers?: RTCIceServer[], relayOnly?: boolean}} [deps.ice] see pcConfig
   */
  constructor({ send, onRejected, onError, onStateChange, ice }) {
    this.pc = new RTCPeerConnection(pcConfig(ice));
    this.#send = send;
    this.#onRejected = onRejected;
    this.#onError = onError;
    this.pc.onconnectionstatechange = onStateChange;
  }

  /**
   * Adds a camera or microphone track (call `negotiate()` afterwards).
   * @param {MediaStreamTrack} track
   * @param {'camera' | 'microphone'} source
   * @param {MediaStream} stream
   */
  addTrack(track, source, stream) {
    const init = { direction: 'sendonly', streams: [stream] };
    // The camera goes out in three simulcast layers; the server forwards to each viewer
    // the one its link and tile size allow, and pauses the ones nobody watches.
    if (source === 'camera') init.sendEncodings = simulcastLayers(track);
    const transceiver = this.pc.addTransceiver(track, init);
    this.#sources.set(transceiver, source);
    if (init.sendEncodings) this.#streams.set(transceiver, stream);
  }

  /**
   * Moves each negotiated simulcast track to a fresh transceiver before a new offer. A
   * browser names a layer's `rid` only in a stream's first packets, and the server learns
   * which stream is which layer from them again after every negotiation; new streams carry
   * them. The server keeps the track and switches its viewers at the new streams' first
   * keyframe.
   */
  #renewSimulcast() {
    for (const [old, stream] of [...this.#streams]) {
      if (old.currentDirection !== 'sendonly' || !old.sender.track) continue;
      const { track } = old.sender;
      const active = old.sender.getParameters().encodings.map((e) => [e.rid, e.active]);
      const sendEncodings = (simulcastLayers(track) ?? []).map((layer) => ({
        ...layer,
        active: active.find(([rid]) => rid === layer.rid)?.[1] ?? true,
      }));
      const source = this.#sources.get(old);
      old.stop();
      this.#sources.delete(old);
      this.#streams.delete(old);
      const fresh = this.pc.addTransceiver(track, { direction: 'sendonly', streams: [stream], sendEncodings });
      this.#sources.set(fresh, source);
      this.#streams.set(fresh, stream);
    }
  }

  /**
   * Sends only the simulcast layers `rids` of the published track `trackId` (the server's
   * `layers_wanted`, naming the track as announced); the others are paused until someone
   * watches them.
   * @param {string} trackId
   * @param {string[]} rids
   */
  setLayers(trackId, rids) {
    // `trackId` is the one announced in `publish_offer` (its m-line's a=msid), per source.
    const source = [...this.#published].find(([, id]) => id === trackId)?.[0];
    if (!source) return Promise.resolve();
    this.#wantedLayers.set(source, rids);
    // One setParameters at a time (a second one while the first is pending is refused),
    // always applying the latest wish; a refused one is tried again.
    this.#applyingLayers ??= (async () => {
      try {
        for (let attempt = 0; attempt < 10 && this.#layersDiffer(); attempt++) {
          for (const [src, wanted] of this.#wantedLayers) {
            const transceiver = [...this.#sources].find(([, s]) => s === src)?.[0];
            const params = transceiver?.sender.getParameters();
            if (!params?.encodings?.length) continue;
            for (const encoding of params.encodings) {
              if (encoding.rid) encoding.active = wanted.includes(encoding.rid);
            }
            await transceiver.sender.setParameters(params).catch((err) => console.warn('publisher: pausing layers failed', err));
          }
        }
      } finally {
        this.#applyingLayers = null;
      }
    })();
    return this.#applyingLayers;
  }

  /** Whether some simulcast sender's active layers differ from the server's last wish. */
  #layersDiffer() {
    for (const [src, wanted] of this.#wantedLayers) {
      const transceiver = [...this.#sources].find(([, s]) => s === src)?.[0];
      const encodings = transceiver?.sender.getParameters().encodings ?? [];
      if (encodings.some((e) => e.rid && e.active !== wanted.includes(e.rid))) return true;
    }
    return false;
  }

  /**
   * Starts (`track`) or stops (`null`) sending the screen share; the screen transceiver is
   * reused across shares. Call `negotiate()` afterwards.
   * @param {MediaStreamTrack | null} track
   * @param {MediaStream | null} stream
   */
  async setScreen(track, stream) {
    const transceiver = [...this.#sources].find(([, source]) => source === 'screen')?.[0];
    if (!track) {
      if (transceiver) {
        await transceiver.sender.replaceTrack(null);
        transceiver.direction = 'inactive';
      }
      return;
    }
    if (!transceiver) {
      this.#sources.set(this.pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] }), 'screen');
      return;
    }
    await transceiver.sender.replaceTrack(track);
    transceiver.sender.setStreams(stream);
    transceiver.direction = 'sendonly';
  }

  /**
   * The `track_id` under which `source` was announced to the server, or null if it is not
   * published.
   * @param {'camera' | 'microphone' | 'screen'} source
   */
  publishedTrackId(source) {
    return this.#published.get(source) ?? null;
  }

  /**
   * Sends a `publish_offer` for the current tracks and applies the answer. Calls made
   * while an offer is outstanding are folded into one more offer after it. Never rejects:
   * failures go to `onError`.
   * @returns {Promise<void>}
   */
  negotiate() {
    this.#wanted = true;
    this.#running ??= this.#run();
    return this.#running;
  }

  /**
   * Applies a `publish_answer`.
   * @param {{sdp: string, rejected?: string[]}} msg
   */
  handleAnswer(msg) {
    if (!this.#pending) {
      console.warn('publisher: publish_answer without an outstanding offer ignored');
      return;
    }
    this.#pending.resolve(msg);
  }

  /**
   * Fails the outstanding offer, if any, after a server `error` that refers to it.
   * @param {string} code
   * @param {string} message
   */
  failPending(code, message) {
    this.#pending?.reject(Object.assign(new Error(message), { code }));
  }

  close() {
    this.#wanted = false;
    this.#pending?.reject(new Error('publisher closed'));
    this.pc.close();
  }

  /**
   * After signaling resumed on a new socket: an offer that went unanswered with the old
   * socket is sent again, and ICE restarts (a new offer with fresh credentials) unless the
   * connection is still connected.
   */
  resume() {
    const lost = this.#pending !== null;
    if (this.pc.connectionState === 'connected' && !lost) return;
    this.#iceRestart = this.pc.connectionState !== 'connected';
    this.#wanted = true;
    if (lost) this.#pending.reject(Object.assign(new Error('signaling resumed'), { code: 'resumed' }));
    else this.negotiate();
  }

  async #run() {
    try {
      while (this.#wanted && this.pc.signalingState !== 'closed') {
        this.#wanted = false;
        try {
          await this.#offerOnce();
        } catch (err) {
          if (this.pc.signalingState === 'closed') return;
          if (this.pc.signalingState === 'have-local-offer') {
            await this.pc.setLocalDescription({ type: 'rollback' }).catch((e) => console.warn('publisher: rollback failed', e));
          }
          // An offer lost with a resumed socket is simply made again (`#wanted` is set).
          if (err.code !== 'resumed') this.#onError(err);
        }
      }
    } finally {
      this.#running = null;
    }
  }

  async #offerOnce() {
    this.#renewSimulcast();
    const iceRestart = this.#iceRestart;
    this.#iceRestart = false;
    await this.pc.setLocalDescription(await this.pc.createOffer({ iceRestart }));
    const sdp = this.pc.localDescription.sdp;
    const sections = mediaSections(sdp);
    const tracks = [];
    for (const [transceiver, source] of this.#sources) {
      const section = transceiver.mid === null ? undefined : sections.get(transceiver.mid);
      // `track_id` is the track part of a=msid (for a reused screen transceiver that is
      // its first track's id, not the current track's).
      if (section?.sending && section.trackId) tracks.push({ track_id: section.trackId, source });
    }
    const answer = await new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(Object.assign(new Error('no publish_answer'), { code: 'publish_timeout' })),
        PUBLISH_ANSWER_TIMEOUT_MS,
      );
      this.#pending = {
        resolve: (msg) => {
          clearTimeout(timer);
          resolve(msg);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      this.#send('publish_offer', { sdp, tracks });
    }).finally(() => {
      this.#pending = null;
    });
    await this.pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    const rejected = answer.rejected ?? [];
    this.#published = new Map(tracks.filter((tr) => !rejected.includes(tr.track_id)).map((tr) => [tr.source, tr.track_id]));
    if (rejected.length) this.#onRejected(rejected);
  }
}
