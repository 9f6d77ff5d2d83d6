/**
 * The video grid: our own preview first, then one tile per remote participant (camera
 * video and microphone audio on one MediaStream per participant) and an extra tile for
 * every screen share, right after its owner's. Remote video tiles report the size they are
 * shown at (the server sends no larger a layer), can be pinned (kept at the best quality),
 * and say when the server paused their video for a poor connection.
 */

import { t, roleLabel } from '../shared/i18n.js';

/** @typedef {{id: string, identity: string, role: string}} Participant */
/** @typedef {import('./peer.js').ReceivedTrack} ReceivedTrack */

/**
 * One tile: video (always muted), optional audio element, placeholder when there is no
 * video to show (no video track, or the camera is off), caption with name, role and mute
 * flags.
 */
class Tile {
  el = document.createElement('figure');
  #video = document.createElement('video');
  #audio = null;
  #placeholder = document.createElement('div');
  #avatar = document.createElement('span');
  #name = document.createElement('span');
  #role = document.createElement('span');
  #micFlag = document.createElement('span');
  #camFlag = document.createElement('span');
  #pausedNote = document.createElement('div');
  #pin = null;
  #stream = new MediaStream();
  /** Subscriber-side id of the video shown (remote tiles), as in `subscribe_offer`. */
  videoTrackId = null;
  #cameraOff = false;
  #variant;
  #participant;
  #onAudioBlocked;

  /**
   * @param {'local' | 'remote' | 'screen' | 'local-screen'} variant
   * @param {Participant} participant the owner
   * @param {() => void} onAudioBlocked the browser refused to play audio without a gesture
   */
  constructor(variant, participant, onAudioBlocked, onPin = null) {
    this.#variant = variant;
    this.#participant = participant;
    this.#onAudioBlocked = onAudioBlocked;
    this.el.className = `tile tile--${variant}`;
    this.el.dataset.participantId = participant.id;
    this.#video.className = 'tile-video';
    Object.assign(this.#video, { autoplay: true, playsInline: true, muted: true });
    this.#placeholder.className = 'tile-placeholder';
    this.#placeholder.setAttribute('aria-hidden', 'true');
    this.#avatar.className = 'tile-avatar';
    this.#placeholder.append(this.#avatar);
    const caption = document.createElement('figcaption');
    caption.className = 'tile-caption';
    this.#name.className = 'tile-name';
    this.#role.className = 'tile-role';
    this.#micFlag.className = 'tile-flag tile-flag--mic';
    this.#camFlag.className = 'tile-flag tile-flag--cam';
    this.#micFlag.hidden = true;
    this.#camFlag.hidden = true;
    caption.append(this.#name, this.#role, this.#micFlag, this.#camFlag);
    if (onPin) {
      this.#pin = document.createElement('button');
      this.#pin.type = 'button';
      this.#pin.className = 'tile-pin';
      this.#pin.setAttribute('aria-pressed', 'false');
      this.#pin.addEventListener('click', () => this.videoTrackId && onPin(this.videoTrackId));
      caption.append(this.#pin);
    }
    this.#pausedNote.className = 'tile-paused';
    this.#pausedNote.hidden = true;
    this.el.append(this.#video, this.#placeholder, this.#pausedNote, caption);
    if (variant === 'remote') {
      this.#audio = document.createElement('audio');
      this.#audio.autoplay = true;
      this.el.append(this.#audio);
    }
    this.#video.srcObject = this.#stream;
    this.setFlags({ micMuted: false, cameraOff: false });
    this.render();
  }

  /** Updates the owner (e.g. its role became known) and re-renders the caption. */
  setParticipant(participant) {
    this.#participant = participant;
    this.render();
  }

  /**
   * Shows exactly `tracks`. The elements are re-attached only when the set changes.
   * @param {MediaStreamTrack[]} tracks
   */
  setTracks(tracks) {
    const current = this.#stream.getTracks();
    if (current.length === tracks.length && tracks.every((tr) => current.includes(tr))) return;
    for (const tr of current) if (!tracks.includes(tr)) this.#stream.removeTrack(tr);
    for (const tr of tracks) if (!current.includes(tr)) this.#stream.addTrack(tr);
    this.#showVideo();
    // Re-assigning srcObject reloads the element, so it picks up added and removed tracks.
    this.#video.srcObject = this.#stream;
    this.#video.play().catch(() => {});
    if (this.#audio) {
      this.#audio.srcObject = this.#stream;
      this.playAudio();
    }
  }

  /** (Re)starts audio playback; reports a refusal for lack of a user gesture. */
  playAudio() {
    this.#audio?.play().catch((err) => {
      if (err.name === 'NotAllowedError') this.#onAudioBlocked();
    });
  }

  /**
   * @param {{micMuted: boolean, cameraOff: boolean}} flags whether the owner muted the
   *   microphone / turned the camera off (flagged, and the placeholder replaces the video).
   */
  setFlags({ micMuted, cameraOff }) {
    this.#micFlag.hidden = !micMuted;
    this.#camFlag.hidden = !cameraOff;
    this.#cameraOff = cameraOff;
    this.#showVideo();
  }

  /** Shows the video, or the placeholder when there is none or the camera is off. */
  #showVideo() {
    const visible = !this.#cameraOff && this.#stream.getVideoTracks().length > 0;
    this.#video.hidden = !visible;
    this.#placeholder.hidden = visible;
  }

  /** The element whose size is the shown size of the video. */
  get videoElement() {
    return this.#video;
  }

  /** Height in device pixels at which the video is shown now (0 when it is not). */
  shownHeight() {
    if (this.#video.hidden || !this.el.isConnected) return 0;
    return Math.round(this.#video.getBoundingClientRect().height * (window.devicePixelRatio || 1));
  }

  /** Shows or hides the "video paused: poor connection" note. */
  setPaused(paused) {
    this.#pausedNote.hidden = !paused;
  }

  /** Marks the tile as pinned or not. */
  setPinned(pinned) {
    this.#pin?.setAttribute('aria-pressed', String(pinned));
  }

  /** Renders the caption in the active language. */
  render() {
    const { identity, role } = this.#participant;
    const name = {
      local: `${identity} (${t('consult.you')})`,
      remote: identity,
      screen: t('consult.screen', { name: identity }),
      'local-screen': t('consult.yourScreen'),
    }[this.#variant];
    this.#name.textContent = name;
    this.#role.textContent = roleLabel(role);
    this.#role.dataset.role = role;
    this.#avatar.textContent = initials(identity);
    this.#micFlag.textContent = t('tile.micMuted');
    this.#camFlag.textContent = t('tile.cameraOff');
    this.#pausedNote.textContent = t('tile.videoPaused');
    if (this.#pin) {
      const pinned = this.#pin.getAttribute('aria-pressed') === 'true';
      this.#pin.textContent = t(pinned ? 'tile.unpin' : 'tile.pin');
      this.#pin.title = t('tile.pinHint');
    }
    this.el.setAttribute('aria-label', `${name}, ${roleLabel(role)}`);
  }

  remove() {
    this.#video.srcObject = null;
    if (this.#audio) this.#audio.srcObject = null;
    this.el.remove();
  }
}

export class TileGrid {
  #container;
  #onAudioBlocked;
  #onPin;
  #onShownHeight;
  /** track id → last height reported, so only changes are sent. */
  #reported = new Map();
  #pinned = null;
  #resize = new ResizeObserver(() => this.#reportSizes());
  /** @type {Tile | null} */
  #local = null;
  /** @type {Tile | null} */
  #localScreen = null;
  /** @type {Map<string, {main: Tile, screen: Tile | null}>} */
  #remote = new Map();

  /**
   * @param {HTMLElement} container
   * @param {{onAudioBlocked: () => void, onPin: (trackId: string | null) => void,
   *   onShownHeight: (trackId: string, height: number) => void}} handlers
   *   `onPin`: the user pinned a track (or unpinned with null); `onShownHeight`: a received
   *   video is now shown this many device pixels high (0: not shown).
   */
  constructor(container, { onAudioBlocked, onPin, onShownHeight }) {
    this.#container = container;
    this.#onAudioBlocked = onAudioBlocked;
    this.#onPin = onPin;
    this.#onShownHeight = onShownHeight;
  }

  /** Tiles that show a received video. */
  *#videoTiles() {
    for (const { main, screen } of this.#remote.values()) {
      if (main.videoTrackId) yield main;
      if (screen?.videoTrackId) yield screen;
    }
  }

  #newRemoteTile(variant, p) {
    const tile = new Tile(variant, p, this.#onAudioBlocked, (id) => this.#togglePin(id));
    this.#resize.observe(tile.videoElement);
    return tile;
  }

  #togglePin(trackId) {
    this.#pinned = this.#pinned === trackId ? null : trackId;
    for (const tile of this.#videoTiles()) tile.setPinned(tile.videoTrackId === this.#pinned);
    this.renderLabels();
    this.#onPin(this.#pinned);
  }

  /** Sends the shown height of every received video whose height changed. */
  #reportSizes() {
    for (const tile of this.#videoTiles()) {
      const height = tile.shownHeight();
      if (this.#reported.get(tile.videoTrackId) === height) continue;
      this.#reported.set(tile.videoTrackId, height);
      this.#onShownHeight(tile.videoTrackId, height);
    }
  }

  /**
   * Applies the server's `quality` report: a video it paused for bandwidth says so.
   * @param {{tracks: {track_id: string, paused: boolean, reason: string | null}[]}} report
   */
  setQuality(report) {
    const paused = new Set(report.tracks.filter((tr) => tr.paused && tr.reason === 'bandwidth').map((tr) => tr.track_id));
    for (const tile of this.#videoTiles()) tile.setPaused(paused.has(tile.videoTrackId));
  }

  /**
   * Shows our own tile (first in the grid) with the local preview.
   * @param {Participant} self
   * @param {MediaStream | null} stream null for observers and while capture is opening
   */
  setLocal(self, stream) {
    if (!this.#local) {
      this.#local = new Tile('local', self, this.#onAudioBlocked);
      this.#container.prepend(this.#local.el);
    }
    this.#local.setParticipant(self);
    this.#local.setTracks(stream ? stream.getVideoTracks() : []);
  }

  /** Updates our own tile's mute flags. */
  setLocalFlags(flags) {
    this.#local?.setFlags(flags);
  }

  /**
   * Shows (`track`) or removes (`null`) the preview of our screen share.
   * @param {Participant} self
   * @param {MediaStreamTrack | null} track
   */
  setLocalScreen(self, track) {
    if (!track) {
      this.#localScreen?.remove();
      this.#localScreen = null;
      return;
    }
    this.#localScreen ??= new Tile('local-screen', self, this.#onAudioBlocked);
    this.#local.el.after(this.#localScreen.el);
    this.#localScreen.setTracks([track]);
  }

  /**
   * Makes the remote tiles match `participants` and the tracks received from them.
   * Tracks of a participant not (yet) in `participants` are not shown.
   * @param {Iterable<Participant>} participants
   * @param {ReceivedTrack[]} received
   */
  syncRemote(participants, received) {
    const present = new Set();
    for (const p of participants) {
      present.add(p.id);
      let tiles = this.#remote.get(p.id);
      if (!tiles) {
        tiles = { main: this.#newRemoteTile('remote', p), screen: null };
        this.#remote.set(p.id, tiles);
        this.#container.append(tiles.main.el);
      }
      tiles.main.setParticipant(p);
      const own = received.filter((r) => r.info.participant_id === p.id);
      const main = own.filter((r) => r.info.source !== 'screen');
      const screen = own.filter((r) => r.info.source === 'screen');
      tiles.main.setTracks(main.map((r) => r.track));
      tiles.main.videoTrackId = main.find((r) => r.info.kind === 'video')?.info.track_id ?? null;
      tiles.main.setFlags({
        micMuted: main.some((r) => r.info.kind === 'audio' && r.info.muted),
        cameraOff: main.some((r) => r.info.kind === 'video' && r.info.muted),
      });
      if (screen.length) {
        if (!tiles.screen) {
          tiles.screen = this.#newRemoteTile('screen', p);
          tiles.main.el.after(tiles.screen.el);
        }
        tiles.screen.setParticipant(p);
        tiles.screen.setTracks(screen.map((r) => r.track));
        tiles.screen.videoTrackId = screen.find((r) => r.info.kind === 'video')?.info.track_id ?? null;
      } else if (tiles.screen) {
        this.#resize.unobserve(tiles.screen.videoElement);
        tiles.screen.remove();
        tiles.screen = null;
      }
    }
    for (const [id, tiles] of this.#remote) {
      if (present.has(id)) continue;
      for (const tile of [tiles.main, tiles.screen]) {
        if (!tile) continue;
        this.#resize.unobserve(tile.videoElement);
        tile.remove();
      }
      this.#remote.delete(id);
    }
    const shown = new Set([...this.#videoTiles()].map((tile) => tile.videoTrackId));
    for (const id of this.#reported.keys()) if (!shown.has(id)) this.#reported.delete(id);
    if (this.#pinned && !shown.has(this.#pinned)) this.#pinned = null;
    for (const tile of this.#videoTiles()) tile.setPinned(tile.videoTrackId === this.#pinned);
    this.#reportSizes();
  }

  /** The pinned track's id, or null. */
  pinned() {
    return this.#pinned;
  }

  /** Retries remote audio playback (after a user gesture). */
  resumeAudio() {
    for (const { main } of this.#remote.values()) main.playAudio();
  }

  /** Re-renders every caption in the active language. */
  renderLabels() {
    this.#local?.render();
    this.#localScreen?.render();
    for (const { main, screen } of this.#remote.values()) {
      main.render();
      screen?.render();
    }
  }

  /** Removes every tile and stops showing media (after leaving). */
  clear() {
    this.#local?.remove();
    this.#localScreen?.remove();
    for (const { main, screen } of this.#remote.values()) {
      main.remove();
      screen?.remove();
    }
    this.#local = null;
    this.#localScreen = null;
    this.#remote.clear();
    this.#resize.disconnect();
    this.#reported.clear();
    this.#pinned = null;
  }
}

/** Up to two initials of an identity, for the placeholder avatar. */
function initials(identity) {
  const words = identity.split(/[\s._-]+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[1][0] : (words[0] ?? '?').slice(0, 2);
  return letters.toUpperCase();
}
