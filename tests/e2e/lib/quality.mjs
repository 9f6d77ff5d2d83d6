// What a subscriber experiences, measured from Chromium's getStats() through the consult
// page's medrelayStats(): one sample a second of the video and audio received from one
// sender, then per window: video freeze share, time-weighted received resolution, frames per
// second, audio concealment, and the time to recover after a link restore.

import { sleep, startServer } from './server.mjs';
import { entriesFrom, launchBrowser, openParticipant } from './browser.mjs';
import { makeFakeCaptureFiles } from './media.mjs';
import { makeEmulatedLink } from './netns.mjs';

const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** Counters of each inbound stream, by trackIdentifier (a rejoin brings new streams). */
function byStream(entries, fields) {
  const out = {};
  for (const e of entries) out[e.trackIdentifier ?? `#${Object.keys(out).length}`] = Object.fromEntries(fields.map((f) => [f, num(e[f])]));
  return out;
}

/**
 * Growth of `field` from sample map `a` to `b` (byStream), summed over streams; a stream
 * new in `b`, or whose counter went back (a new connection), counts from 0. Null when `b`
 * has streams but none reports the field.
 */
export function growth(a, b, field) {
  let total = 0;
  let seen = false;
  for (const [k, cur] of Object.entries(b)) {
    if (cur[field] === null) continue;
    seen = true;
    const prev = a?.[k]?.[field] ?? null;
    total += prev === null || cur[field] < prev ? cur[field] : cur[field] - prev;
  }
  return seen || Object.keys(b).length === 0 ? total : null;
}

/**
 * One sample of what `participant` receives from `fromIdentity`, at wall time `t` (ms):
 * the counters of that sender's inbound video and audio streams, the largest decoded size,
 * and the server's layer choice for its video (medrelayState().quality, once the server
 * sends it).
 */
export async function takeSample(participant, fromIdentity) {
  const [stats, state] = await Promise.all([participant.stats(), participant.state()]);
  const t = Date.now();
  const video = entriesFrom(stats, fromIdentity, 'video');
  const audio = entriesFrom(stats, fromIdentity, 'audio');
  const quality = state?.quality ?? null;
  const layers = (quality?.tracks || []).filter((tr) => video.some((v) => v.track_id === tr.track_id));
  const best = video.reduce((a, v) => ((Number(v.frameHeight) || 0) > (Number(a?.frameHeight) || 0) ? v : a), video[0]);
  return {
    t,
    joined: !!state?.joined,
    video: {
      frameWidth: Number(best?.frameWidth) || 0,
      frameHeight: Number(best?.frameHeight) || 0,
      framesPerSecond: num(best?.framesPerSecond),
      streams: byStream(video, ['framesDecoded', 'freezeCount', 'totalFreezesDuration', 'totalPausesDuration', 'packetsLost', 'nackCount', 'retransmittedPacketsReceived', 'jitterBufferDelay', 'jitterBufferEmittedCount']),
    },
    audio: { streams: byStream(audio, ['totalSamplesReceived', 'concealedSamples']) },
    layer: layers.length ? { rid: layers[0].rid ?? null, paused: !!layers[0].paused, reason: layers[0].reason ?? null } : null,
    estimateBps: quality?.estimate_bps ?? null,
  };
}

/** Frames decoded and audio samples received between two samples (see growth()). */
export function deltas(a, b) {
  return {
    frames: growth(a.video.streams, b.video.streams, 'framesDecoded'),
    freezeSeconds: growth(a.video.streams, b.video.streams, 'totalFreezesDuration'),
    audioSamples: growth(a.audio.streams, b.audio.streams, 'totalSamplesReceived'),
    concealed: growth(a.audio.streams, b.audio.streams, 'concealedSamples'),
  };
}

/**
 * Samples `participant` (from `fromIdentity`) every `intervalMs` until stop(). `samples`
 * holds every sample; `marks` the events noted with mark(label) ({label, t}).
 */
export class QualitySampler {
  constructor(participant, fromIdentity, { intervalMs = 1000 } = {}) {
    Object.assign(this, { participant, fromIdentity, intervalMs });
    this.samples = [];
    this.marks = [];
    this.errors = [];
    this.running = null;
    this.stopped = false;
  }

  start() {
    this.running = (async () => {
      let next = Date.now();
      while (!this.stopped) {
        try {
          this.samples.push(await takeSample(this.participant, this.fromIdentity));
        } catch (e) {
          this.errors.push({ t: Date.now(), error: e.message });
        }
        next += this.intervalMs;
        await sleep(Math.max(0, next - Date.now()));
      }
    })();
    return this;
  }

  async stop() {
    this.stopped = true;
    await this.running;
  }

  mark(label) {
    const m = { label, t: Date.now() };
    this.marks.push(m);
    return m.t;
  }

  /** The samples with from <= t <= to (ms). */
  between(from, to = Infinity) {
    return this.samples.filter((s) => s.t >= from && s.t <= to);
  }

  toJSON() {
    return { fromIdentity: this.fromIdentity, intervalMs: this.intervalMs, marks: this.marks, errors: this.errors, samples: this.samples };
  }
}

/**
 * Figures for consecutive `samples` (at least two):
 *   seconds; freezeShare (0..1) and freezeSource: 'totalFreezesDuration' (Chromium's own
 *   freeze accounting, delta over wall time) or 'framesDecoded' (intervals in which no frame
 *   was decoded, when the field is missing); avgWidth / avgHeight (time-weighted over the
 *   intervals, each counting at its end sample's size); fps (framesDecoded delta / time);
 *   audioConcealedShare (concealedSamples delta / totalSamplesReceived delta, null when
 *   missing or no audio arrived); stalledIntervals: intervals without a decoded frame.
 */
export function summarize(samples) {
  if (samples.length < 2) throw new Error(`summarize needs two samples or more, got ${samples.length}`);
  const seconds = (samples[samples.length - 1].t - samples[0].t) / 1000;
  let wW = 0;
  let hW = 0;
  let frames = 0;
  let stalled = 0;
  let stalledSeconds = 0;
  let freezeSeconds = 0;
  let freezeField = true;
  let audioSamples = 0;
  let concealed = 0;
  let concealedField = true;
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].t - samples[i - 1].t) / 1000;
    const d = deltas(samples[i - 1], samples[i]);
    wW += dt * samples[i].video.frameWidth;
    hW += dt * samples[i].video.frameHeight;
    frames += d.frames;
    if (d.frames <= 0) {
      stalled++;
      stalledSeconds += dt;
    }
    if (d.freezeSeconds === null) freezeField = false;
    else freezeSeconds += d.freezeSeconds;
    audioSamples += d.audioSamples;
    if (d.concealed === null) concealedField = false;
    else concealed += d.concealed;
  }
  // Chromium books a freeze when it ends: a stall still going on at the window's end is
  // counted from the decoded frames instead.
  let trailing = 0;
  for (let i = samples.length - 1; i > 0 && deltas(samples[i - 1], samples[i]).frames <= 0; i--) trailing += (samples[i].t - samples[i - 1].t) / 1000;
  if (freezeField) freezeSeconds += trailing;
  return {
    seconds,
    freezeShare: seconds > 0 ? (freezeField ? freezeSeconds : stalledSeconds) / seconds : 0,
    freezeSource: freezeField ? 'totalFreezesDuration' : 'framesDecoded',
    freezeSeconds: freezeField ? freezeSeconds : stalledSeconds,
    stalledSeconds,
    avgWidth: seconds > 0 ? wW / seconds : 0,
    avgHeight: seconds > 0 ? hW / seconds : 0,
    fps: seconds > 0 ? frames / seconds : 0,
    audioConcealedShare: !concealedField || audioSamples <= 0 ? null : concealed / audioSamples,
    audioSamples,
    stalledIntervals: stalled,
    intervals: samples.length - 1,
  };
}

/**
 * Seconds from `restoredAt` (ms) until `participant` decodes a new video frame from
 * `fromIdentity` (on any stream, old or new), polled every `pollMs`; `before` is a sample
 * taken before the restore (default: one taken now). Null if that does not happen within
 * `timeoutMs` of the restore.
 */
export async function timeToRecover(participant, fromIdentity, restoredAt, { before = null, pollMs = 100, timeoutMs = 30_000 } = {}) {
  let prev = before ?? (await takeSample(participant, fromIdentity));
  while (Date.now() - restoredAt < timeoutMs) {
    await sleep(pollMs);
    const s = await takeSample(participant, fromIdentity);
    if (deltas(prev, s).frames > 0) return (s.t - restoredAt) / 1000;
    prev = s;
  }
  return null;
}

/** One-line text of summarize()'s figures, for logs. */
export function describeSummary(q) {
  const pct = (x) => (x === null ? 'n/a' : `${(100 * x).toFixed(2)} %`);
  return `${q.seconds.toFixed(1)} s: frozen ${pct(q.freezeShare)} (${q.freezeSource}), ${Math.round(q.avgWidth)}x${Math.round(q.avgHeight)} avg, ${q.fps.toFixed(1)} fps, audio concealed ${pct(q.audioConcealedShare)}, ${q.stalledIntervals}/${q.intervals} intervals without a decoded frame`;
}

/**
 * A consult across an emulated link: medrelay listens on the link's host address, the
 * clinic (publisher, `width`x`height` ffmpeg clip) is in this namespace with an unimpaired
 * path, the specialist (subscriber, a small clip of its own) in the link's namespace;
 * `serverArgs` are added to the server's command line.
 * Returns { link, server, clinic, specialist, reopenSpecialist(), close() }. Null when
 * ffmpeg is missing.
 */
export async function startImpairedConsult({ name, room = name, width = 1280, height = 720, linkName = 'lemq', clinicId = 'dr-clinic', specialistId = 'dr-specialist', serverArgs = [] }) {
  const clips = await makeFakeCaptureFiles({ width, height, seconds: 6 });
  if (!clips) return null;
  const small = await makeFakeCaptureFiles({ width: 320, height: 180, seconds: 4 });
  const env = { clips, small };
  const close = async () => {
    await env.clinic?.close();
    await env.specialist?.close();
    await env.pubBrowser?.close();
    await env.subBrowser?.close();
    await env.server?.stop();
    await env.link?.destroy();
    clips.cleanup();
    small.cleanup();
  };
  try {
    env.link = await makeEmulatedLink({ name: linkName });
    // Plain HTTP off loopback needs --insecure, and the page a secure origin for getUserMedia.
    env.server = await startServer({ name, host: env.link.hostIp, extraArgs: ['--insecure', ...serverArgs] });
    const secure = `--unsafely-treat-insecure-origin-as-secure=${env.server.url}`;
    env.pubBrowser = await launchBrowser({ extraArgs: [...clips.chromiumArgs, secure] });
    env.subBrowser = await launchBrowser({ netns: env.link.ns, extraArgs: [...small.chromiumArgs, secure] });
    env.clinic = await openParticipant(env.pubBrowser, env.server, { room, identity: clinicId, role: 'clinic', camera: '1280x720' });
    env.specialist = await openParticipant(env.subBrowser, env.server, { room, identity: specialistId, role: 'specialist' });
  } catch (e) {
    await close().catch(() => {});
    throw e;
  }
  return {
    ...env,
    /** A fresh specialist page (e.g. after the old one lost its session). */
    async reopenSpecialist() {
      await env.specialist?.close();
      env.specialist = null;
      env.specialist = await openParticipant(env.subBrowser, env.server, { room, identity: specialistId, role: 'specialist' });
      this.specialist = env.specialist;
      return env.specialist;
    },
    close,
  };
}
