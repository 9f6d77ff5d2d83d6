/**
 * The consult page: /consult/#room=ROOM&token=TOKEN joins automatically. Optional:
 * `&relay=1` (reach the server only through TURN), `&camera=WxH` (camera size to ask for,
 * default 1280x720).
 *
 * Test hooks (stable; the end-to-end tests drive the page with them):
 *
 *   window.medrelayState() → {
 *     joined: boolean,                // true from `joined` until leaving or losing the server
 *     participantId: string | null,   // our participant id (from `joined`)
 *     role: string | null,            // our role (from `joined`), e.g. "clinic", "observer"
 *     remoteParticipants: [{ id: string, identity: string, role: string }],
 *                                     // everyone else in the room now
 *     error: { code: string, message: string } | null,
 *                                     // the last error: a server `error` message, or one of
 *                                     // the page's own codes: missing_parameters,
 *                                     // connection_failed, connection_closed,
 *                                     // subscribe_failed, publish_failed, publish_timeout
 *     connectionQuality: 'good' | 'fair' | 'poor' | 'disconnected',
 *     recording: { recording_id: string, by: string, since_ms: number } | null,
 *                                     // the room's recording in progress (the indicator is
 *                                     // shown exactly while this is not null)
 *     quality: { estimate_bps: number, tracks: [{ track_id: string, rid: string | null,
 *                paused: boolean, reason: string | null }] } | null,
 *                                     // the server's last `quality` report: its bandwidth
 *                                     // estimate towards us and the layer of each video
 *     pinned: string | null,          // the track id we pinned
 *     reconnecting: boolean,          // the signaling socket was lost and the page is
 *                                     // reconnecting to resume (`joined` stays true)
 *     resumes: number,                // times the page resumed on a new socket
 *   }
 *
 *   window.medrelayStats() → Promise<[{
 *     participant_id: string,         // the sender, from the latest subscribe_offer's tracks
 *     identity: string,
 *     kind: 'audio' | 'video',
 *     framesDecoded: number,          // numbers are 0 when getStats() lacks them
 *     frameWidth: number,
 *     frameHeight: number,
 *     totalSamplesReceived: number,
 *     trackIdentifier: string,        // as reported by inbound-rtp
 *     track_id: string,               // the track's id in subscribe_offer.tracks
 *     framesPerSecond, freezeCount, totalFreezesDuration, totalPausesDuration (s),
 *     concealedSamples: number | undefined,
 *     packetsLost, nackCount, retransmittedPacketsReceived, jitterBufferDelay (s),
 *     jitterBufferEmittedCount: number | undefined,
 *                                     // inbound-rtp's, undefined when getStats() lacks them
 *   }]>
 *   One entry per inbound-rtp stream of the subscriber connection whose track is in the
 *   latest `subscribe_offer` (and whose participant has not left); [] before joining and
 *   after leaving.
 */

import { applyTranslations, mountLanguageSwitch, onLanguageChange, t } from '../shared/i18n.js';
import { SignalingClient, signalingUrl } from '../shared/signaling.js';
import { ChatPanel } from './chat.js';
import { canShareScreen, openLocalMedia, openScreen } from './media.js';
import { PublisherPeer, SubscriberPeer } from './peer.js';
import { QualityMonitor } from './quality.js';
import { Heartbeat, Reconnector } from './resume.js';
import { TileGrid } from './tiles.js';

/** Server error codes after which the server closes the socket (docs/signaling.md). */
const FATAL_CODES = new Set([
  'message_too_large',
  'not_joined',
  'bad_token',
  'token_expired',
  'wrong_room',
  'room_closed',
  'room_full',
  'rate_limited',
  'removed',
]);

/** Server error codes that can answer a `publish_offer`. */
const PUBLISH_ERROR_CODES = new Set(['forbidden', 'invalid_sdp', 'sdp_too_large']);

const $ = (id) => document.getElementById(id);
const els = {
  status: $('status'),
  quality: $('quality'),
  qualityText: $('quality-text'),
  error: $('error'),
  errorCode: $('error-code'),
  errorMessage: $('error-message'),
  errorDismiss: $('error-dismiss'),
  notice: $('notice'),
  stage: $('stage'),
  controls: $('controls'),
  publishControls: $('publish-controls'),
  observerNote: $('observer-note'),
  mic: $('btn-mic'),
  camera: $('btn-camera'),
  screen: $('btn-screen'),
  leave: $('btn-leave'),
  record: $('btn-record'),
  recording: $('recording'),
  enableAudio: $('btn-audio'),
  endedView: $('ended-view'),
  endedHeading: $('ended-heading'),
  rejoin: $('btn-rejoin'),
  lang: $('lang'),
};

/**
 * Page state. `phase`: idle → connecting → joined → left | disconnected; `failed` when
 * joining did not succeed.
 */
const state = {
  phase: 'idle',
  room: null,
  /** @type {{id: string, identity: string, role: string} | null} */
  self: null,
  /** @type {Map<string, {id: string, identity: string, role: string}>} */
  remote: new Map(),
  /** @type {{code: string, message: string, key?: string, params?: object} | null} */
  error: null,
  errorDismissed: false,
  /** @type {{key: string, params?: object} | null} */
  notice: null,
  quality: 'disconnected',
  audioBlocked: false,
  screenBusy: false,
  /** The room's recording in progress, from `joined` and `recording` messages. */
  recording: null,
  /** The server's last `quality` report (estimate and layers of what we receive). */
  received: null,
  /** The signaling socket was lost; new ones are tried until one resumes. */
  reconnecting: false,
  /** Successful resumes. */
  resumes: 0,
};

/** What exists while connected. */
const session = {
  /** @type {SignalingClient | null} */
  signaling: null,
  socketOpened: false,
  /** @type {SubscriberPeer | null} */
  subscriber: null,
  /** @type {PublisherPeer | null} */
  publisher: null,
  /** @type {MediaStream | null} camera and microphone */
  local: null,
  /** @type {{track: MediaStreamTrack, stream: MediaStream} | null} */
  screen: null,
  /** @type {QualityMonitor | null} */
  monitor: null,
  /** Use only the TURN relay (`#relay=1`). */
  relayOnly: false,
  /** @type {{width: number, height: number} | undefined} the camera size to ask for */
  camera: undefined,
  /** @type {{iceServers: RTCIceServer[], relayOnly: boolean}} ICE settings from `joined` */
  ice: { iceServers: [], relayOnly: false },
  /** The join token (from the page address), sent again with `resume`. */
  token: null,
  /** The secret of the latest `joined`/`resumed`. */
  resumeToken: null,
  /** Fails a `resume` that gets no answer. */
  resumeTimer: null,
};

/** How long a sent `resume` may wait for its answer before the socket is given up. */
const RESUME_ANSWER_MS = 4000;

const heartbeat = new Heartbeat({
  send: () => session.signaling?.send('heartbeat'),
  onDead: () => {
    console.warn('signaling: no answer from the server; reconnecting');
    session.signaling?.abandon();
    startReconnecting();
  },
});

const reconnector = new Reconnector({
  onMessage: (msg) => handleMessage(msg),
  onClose: (client, event) => onSocketClosed(client, event),
  onOpen: (client) => {
    session.signaling = client;
    client.send('resume', {
      token: session.token,
      room: state.room,
      participant_id: state.self.id,
      resume_token: session.resumeToken,
    });
    session.resumeTimer = setTimeout(() => {
      client.abandon();
      reconnector.start();
    }, RESUME_ANSWER_MS);
  },
  onGiveUp: () => {
    setLabelledError('connection_closed', 'error.connectionClosed', { code: 1006 });
    end('disconnected');
  },
});

const tiles = new TileGrid($('tiles'), {
  onPin: (trackId) => {
    if (state.phase === 'joined') session.signaling.send('pin', { track_id: trackId });
  },
  onShownHeight: (trackId, height) => {
    if (state.phase === 'joined') session.signaling.send('track_settings', { track_id: trackId, height });
  },
  onAudioBlocked: () => {
    state.audioBlocked = true;
    render();
  },
});

const chat = new ChatPanel({
  log: $('chat-log'),
  form: $('chat-form'),
  input: $('chat-input'),
  send: $('chat-send'),
  hint: $('chat-hint'),
});

window.medrelayState = () => ({
  joined: state.phase === 'joined',
  participantId: state.self?.id ?? null,
  role: state.self?.role ?? null,
  remoteParticipants: [...state.remote.values()].map(({ id, identity, role }) => ({ id, identity, role })),
  error: state.error && { code: state.error.code, message: state.error.message },
  connectionQuality: state.quality,
  recording: state.recording,
  quality: state.received,
  pinned: tiles.pinned(),
  reconnecting: state.reconnecting,
  resumes: state.resumes,
});

window.medrelayStats = async () => (session.subscriber ? session.subscriber.inboundStats() : []);

main();

function main() {
  applyTranslations();
  mountLanguageSwitch(els.lang);
  onLanguageChange(() => {
    render();
    tiles.renderLabels();
    chat.renderLabels();
  });
  els.mic.addEventListener('click', () => toggleTrack(audioTrack(), 'microphone'));
  els.camera.addEventListener('click', () => toggleTrack(videoTrack(), 'camera'));
  els.screen.addEventListener('click', toggleScreen);
  els.leave.addEventListener('click', leave);
  els.record.addEventListener('click', () => {
    if (state.phase === 'joined') session.signaling.send('set_recording', { on: !state.recording });
  });
  els.rejoin.addEventListener('click', () => location.reload());
  els.errorDismiss.addEventListener('click', () => {
    state.errorDismissed = true;
    render();
  });
  els.enableAudio.addEventListener('click', () => {
    state.audioBlocked = false;
    tiles.resumeAudio();
    render();
  });
  window.addEventListener('hashchange', () => location.reload());
  // Tell the server at once rather than letting it notice the closed socket.
  window.addEventListener('pagehide', () => {
    if (state.phase === 'joined') session.signaling.send('leave');
  });

  const params = new URLSearchParams(location.hash.slice(1));
  const room = params.get('room');
  const token = params.get('token');
  // `relay=1`: reach the server only through the TURN relay (a firewall that allows
  // nothing else).
  session.relayOnly = params.get('relay') === '1';
  // `camera=WxH`: the camera size to ask for (default 1280x720).
  const camera = /^(\d{2,4})x(\d{2,4})$/.exec(params.get('camera') ?? '');
  session.camera = camera ? { width: Number(camera[1]), height: Number(camera[2]) } : undefined;
  if (!room || !token) {
    setLabelledError('missing_parameters', 'error.missingParams');
    state.phase = 'failed';
    render();
    return;
  }
  join(room, token);
}

/** Opens the signaling socket and sends `join`. */
async function join(room, token) {
  state.phase = 'connecting';
  state.room = room;
  session.token = token;
  render();
  const client = new SignalingClient({ onMessage: handleMessage, onClose: (event) => onSocketClosed(client, event) });
  session.signaling = client;
  try {
    await client.connect(signalingUrl());
  } catch {
    return; // reported by onSocketClosed
  }
  session.socketOpened = true;
  client.send('join', { token, room });
}

/** Handles one server message; the next one waits until this has finished. */
async function handleMessage(msg) {
  heartbeat.heard();
  switch (msg.type) {
    case 'heartbeat':
      return;
    case 'joined':
      return onJoined(msg);
    case 'resumed':
      return onResumed(msg);
    case 'subscribe_offer':
      return onSubscribeOffer(msg);
    case 'publish_answer':
      return session.publisher?.handleAnswer(msg);
    case 'participant_joined':
      state.remote.set(msg.participant.id, msg.participant);
      refreshRemote();
      return;
    case 'participant_left':
      state.remote.delete(msg.participant_id);
      session.subscriber?.forgetParticipant(msg.participant_id);
      refreshRemote();
      return;
    case 'recording':
      state.recording = msg.on ? { recording_id: msg.recording_id, by: msg.by, since_ms: msg.since_ms } : null;
      render();
      return;
    case 'track_muted':
      session.subscriber?.setTrackMuted(msg.participant_id, msg.track_id, msg.muted);
      refreshRemote();
      return;
    case 'quality':
      state.received = { estimate_bps: msg.estimate_bps, tracks: msg.tracks };
      tiles.setQuality(msg);
      return;
    case 'layers_wanted':
      return session.publisher?.setLayers(msg.track_id, msg.rids);
    case 'error':
      return onServerError(msg);
    default:
      console.warn('signaling: unknown message type', msg.type);
  }
}

function onJoined(msg) {
  state.phase = 'joined';
  session.resumeToken = msg.resume_token ?? null;
  heartbeat.start();
  state.self = msg.participant;
  state.room = msg.room;
  state.recording = msg.recording ?? null;
  for (const p of msg.participants ?? []) state.remote.set(p.id, p);
  session.ice = { iceServers: msg.ice_servers ?? [], relayOnly: session.relayOnly };
  session.subscriber = new SubscriberPeer({
    ice: session.ice,
    onChatChannel: (channel) => chat.attach(channel),
    onStateChange: () => session.monitor?.refresh(),
  });
  session.monitor = new QualityMonitor({
    source: () => ({
      signalingOpen: session.signaling?.isOpen ?? false,
      subscriber: session.subscriber?.pc ?? null,
      publisher: session.publisher?.pc ?? null,
    }),
    onChange: (quality) => {
      state.quality = quality;
      render();
    },
  });
  session.monitor.start();
  tiles.setLocal(state.self, null);
  refreshRemote();
  render();
  if (state.self.role !== 'observer') startPublishing();
}

async function onSubscribeOffer(msg) {
  if (!session.subscriber) return;
  try {
    const answer = await session.subscriber.applyOffer(msg.sdp, msg.tracks ?? []);
    session.signaling.send('subscribe_answer', { sdp: answer });
  } catch (err) {
    if (state.phase !== 'joined') return;
    console.error('subscribe_offer failed', err);
    setError('subscribe_failed', String(err.message ?? err));
  }
  refreshRemote();
}

/** The signaling socket was lost while joined: keep everything and try to resume. */
function startReconnecting() {
  if (state.phase !== 'joined' || !session.resumeToken) return;
  heartbeat.stop();
  state.reconnecting = true;
  render();
  reconnector.start();
}

/**
 * Back on a new socket as the same participant: reconcile what was missed while away; the
 * server's next `subscribe_offer` restarts ICE on the subscriber connection, and the
 * publisher connection restarts ICE itself unless it is still connected.
 */
function onResumed(msg) {
  clearTimeout(session.resumeTimer);
  state.reconnecting = false;
  state.resumes += 1;
  session.resumeToken = msg.resume_token;
  state.self = msg.participant;
  state.recording = msg.recording ?? null;
  const present = new Map((msg.participants ?? []).map((p) => [p.id, p]));
  for (const id of state.remote.keys()) {
    if (!present.has(id)) session.subscriber?.forgetParticipant(id);
  }
  state.remote = present;
  heartbeat.start();
  session.publisher?.resume();
  refreshRemote();
  render();
}

/** `resume` was refused (or the window ended): join again as a new participant. */
function rejoin() {
  clearTimeout(session.resumeTimer);
  state.reconnecting = false;
  end('connecting');
  state.error = null;
  join(state.room, session.token);
}

function onServerError(msg) {
  const code = String(msg.code ?? 'unknown');
  if (code === 'resume_failed') {
    console.warn(`resume refused: ${msg.message}; joining again`);
    rejoin();
    return;
  }
  setError(code, String(msg.message ?? ''));
  if (PUBLISH_ERROR_CODES.has(code)) session.publisher?.failPending(code, String(msg.message ?? ''));
  if (FATAL_CODES.has(code) && (state.phase === 'joined' || state.phase === 'connecting')) {
    end(state.phase === 'joined' ? 'disconnected' : 'failed');
  }
  render();
}

function onSocketClosed(client, event) {
  if (client !== session.signaling) return; // a socket given up or replaced
  if (state.phase === 'joined' && session.resumeToken) {
    clearTimeout(session.resumeTimer);
    startReconnecting();
    return;
  }
  if (state.phase !== 'joined' && state.phase !== 'connecting') return;
  if (session.socketOpened) setLabelledError('connection_closed', 'error.connectionClosed', { code: event.code });
  else setLabelledError('connection_failed', 'error.connection');
  end(state.phase === 'joined' ? 'disconnected' : 'failed');
}

/** Opens the camera and microphone and publishes them (not for observers). */
async function startPublishing() {
  const { stream, notice } = await openLocalMedia(session.camera);
  if (state.phase !== 'joined') {
    stopTracks(stream);
    return;
  }
  session.local = stream;
  if (notice) state.notice = { key: notice };
  tiles.setLocal(state.self, stream);
  session.publisher = new PublisherPeer({
    ice: session.ice,
    send: (type, fields) => session.signaling.send(type, fields),
    onRejected: (ids) => {
      state.notice = { key: 'notice.rejected', params: { tracks: ids.join(', ') } };
      render();
    },
    onError: (err) => {
      // A server `error` that failed the offer has been shown already.
      if (err.code === 'publish_timeout') setLabelledError('publish_timeout', 'error.publishTimeout');
      else if (!PUBLISH_ERROR_CODES.has(err.code)) setError('publish_failed', String(err.message ?? err));
      render();
    },
    onStateChange: () => session.monitor?.refresh(),
  });
  for (const track of stream.getTracks()) {
    session.publisher.addTrack(track, track.kind === 'audio' ? 'microphone' : 'camera', stream);
  }
  render();
  if (stream.getTracks().length) await publish();
}

/** Sends a `publish_offer` for the current tracks, then re-announces muted tracks. */
async function publish() {
  const publisher = session.publisher;
  await publisher.negotiate();
  for (const [track, source] of [[audioTrack(), 'microphone'], [videoTrack(), 'camera']]) {
    const trackId = publisher.publishedTrackId(source);
    if (track && trackId && !track.enabled) session.signaling.send('set_muted', { track_id: trackId, muted: true });
  }
}

/** Mutes/unmutes the microphone or turns the camera off/on, and tells the others. */
function toggleTrack(track, source) {
  if (!track) return;
  track.enabled = !track.enabled;
  const trackId = session.publisher?.publishedTrackId(source);
  if (trackId) session.signaling.send('set_muted', { track_id: trackId, muted: !track.enabled });
  render();
}

async function toggleScreen() {
  if (state.screenBusy || !session.publisher) return;
  state.screenBusy = true;
  render();
  try {
    if (session.screen) await stopScreen();
    else await startScreen();
  } finally {
    state.screenBusy = false;
    render();
  }
}

async function startScreen() {
  let screen;
  try {
    screen = await openScreen();
  } catch (err) {
    // NotAllowedError: the user closed the picker; nothing to report.
    if (err.name !== 'NotAllowedError') {
      state.notice = { key: 'notice.shareFailed' };
      render();
    }
    return;
  }
  if (state.phase !== 'joined' || !session.publisher) {
    screen.track.stop();
    return;
  }
  session.screen = screen;
  // The browser's own "stop sharing" button ends the track.
  screen.track.addEventListener('ended', () => {
    if (session.screen === screen) toggleScreen();
  });
  tiles.setLocalScreen(state.self, screen.track);
  await session.publisher.setScreen(screen.track, screen.stream);
  await publish();
}

async function stopScreen() {
  const screen = session.screen;
  session.screen = null;
  screen.track.stop();
  tiles.setLocalScreen(state.self, null);
  if (!session.publisher) return;
  await session.publisher.setScreen(null, null);
  await publish();
}

/** Leaves the room: tells the server, closes everything, shows the "left" view. */
function leave() {
  if (state.phase !== 'joined' && state.phase !== 'connecting') return;
  session.signaling.send('leave');
  end('left');
}

/** Closes the connections and stops capture; the page stays in `phase`. */
function end(phase) {
  state.phase = phase;
  heartbeat.stop();
  reconnector.stop();
  clearTimeout(session.resumeTimer);
  state.reconnecting = false;
  session.resumeToken = null;
  session.monitor?.stop();
  session.subscriber?.close();
  session.publisher?.close();
  session.signaling?.close();
  stopTracks(session.local);
  if (session.screen) session.screen.track.stop();
  Object.assign(session, { subscriber: null, publisher: null, local: null, screen: null, monitor: null });
  state.remote.clear();
  state.quality = 'disconnected';
  state.audioBlocked = false;
  tiles.clear();
  chat.detach();
  render();
}

/** Makes the remote tiles match the participants and the tracks received. */
function refreshRemote() {
  tiles.syncRemote(state.remote.values(), session.subscriber?.receivedTracks() ?? []);
}

/** Records and shows an error whose message is given as is (server or browser text). */
function setError(code, message) {
  state.error = { code, message };
  state.errorDismissed = false;
  console.warn(`error ${code}: ${message}`);
}

/** Records and shows an error of the page itself, labelled by i18n `key`. */
function setLabelledError(code, key, params = {}) {
  setError(code, t(key, params));
  Object.assign(state.error, { key, params });
}

function audioTrack() {
  return session.local?.getAudioTracks()[0] ?? null;
}

function videoTrack() {
  return session.local?.getVideoTracks()[0] ?? null;
}

function stopTracks(stream) {
  for (const track of stream?.getTracks() ?? []) track.stop();
}

/** Renders everything that depends on state or language. */
function render() {
  document.title = `${t('consult.title')} — ${t('app.name')}`;
  const statusKey = {
    idle: 'status.connecting',
    connecting: 'status.connecting',
    joined: 'status.joined',
    left: 'status.left',
    disconnected: 'status.disconnected',
    failed: 'status.failed',
  }[state.phase];
  els.status.textContent = t(state.reconnecting ? 'status.reconnecting' : statusKey, { room: state.room ?? '' });
  els.status.dataset.phase = state.reconnecting ? 'reconnecting' : state.phase;

  els.quality.dataset.quality = state.quality;
  els.qualityText.textContent = t(`quality.${state.quality}`);

  const error = state.error;
  els.error.hidden = !error || state.errorDismissed;
  if (error) {
    els.errorCode.textContent = error.code;
    els.errorMessage.textContent = error.key ? t(error.key, error.params) : error.message;
  }
  els.notice.hidden = !state.notice;
  if (state.notice) els.notice.textContent = t(state.notice.key, state.notice.params);

  const joined = state.phase === 'joined';
  const ended = state.phase === 'left' || state.phase === 'disconnected' || state.phase === 'failed';
  const observer = state.self?.role === 'observer';
  els.stage.hidden = ended;
  els.endedView.hidden = !ended;
  if (ended) els.endedHeading.textContent = t(`ended.${state.phase}`);
  els.controls.hidden = !joined;
  els.publishControls.hidden = observer;
  els.observerNote.hidden = !observer;

  const mic = audioTrack();
  els.mic.disabled = !mic;
  els.mic.textContent = t(mic && !mic.enabled ? 'controls.unmute' : 'controls.mute');
  els.mic.classList.toggle('is-off', Boolean(mic && !mic.enabled));

  const cam = videoTrack();
  els.camera.disabled = !cam;
  els.camera.textContent = t(cam && !cam.enabled ? 'controls.cameraOn' : 'controls.cameraOff');
  els.camera.classList.toggle('is-off', Boolean(cam && !cam.enabled));

  els.screen.hidden = !canShareScreen();
  els.screen.disabled = !session.publisher || state.screenBusy;
  els.screen.textContent = t(session.screen ? 'controls.shareStop' : 'controls.shareStart');
  els.screen.classList.toggle('is-active', Boolean(session.screen));

  els.enableAudio.hidden = !state.audioBlocked;

  // Everyone sees that the consult is recorded; specialists start and stop it.
  els.recording.hidden = !(joined && state.recording);
  els.record.hidden = !joined || state.self?.role !== 'specialist';
  els.record.textContent = t(state.recording ? 'controls.recordStop' : 'controls.recordStart');
  els.record.classList.toggle('is-active', Boolean(state.recording));

  tiles.setLocalFlags({ micMuted: Boolean(mic && !mic.enabled), cameraOff: Boolean(cam && !cam.enabled) });
}
