#!/usr/bin/env node
// Opens the consult page in headless Chromium as one participant and prints, one JSON
// object per line: {"event":"ready"} once joined, {"event":"stats"} every 500 ms, and
// {"event":"result"} at the end. Used by the Python interop tests.
//
//   node tools/consult_probe.mjs --url http://127.0.0.1:PORT --room R --token T \
//       --identity NAME [--seconds 30] [--expect-video-from IDENTITY --min-frames 30] \
//       [--chromium-arg --use-file-for-fake-video-capture=clip.y4m ...]
//
// With --expect-video-from it exits 0 as soon as the video from that identity has grown by
// --min-frames decoded frames with frameWidth > 0, and 1 if that did not happen within
// --seconds. Without it, it stays in the room (publishing its fake camera and microphone)
// for --seconds or until SIGTERM, then exits 0.

import { parseArgs } from 'node:util';
import { launchBrowser, openParticipant, total, entriesFrom } from '../lib/browser.mjs';
import { sleep } from '../lib/server.mjs';

const { values: o } = parseArgs({
  options: {
    url: { type: 'string' },
    room: { type: 'string' },
    token: { type: 'string' },
    identity: { type: 'string', default: 'probe' },
    seconds: { type: 'string', default: '30' },
    'expect-video-from': { type: 'string' },
    'min-frames': { type: 'string', default: '30' },
    'chromium-arg': { type: 'string', multiple: true, default: [] },
    tag: { type: 'string', default: 'probe' },
  },
});

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const t0 = Date.now();
let browser;
let participant;
let stopping = false;

async function shutdown(code) {
  if (stopping) return;
  stopping = true;
  try {
    await participant?.close();
    await browser?.close();
  } finally {
    process.exit(code);
  }
}
process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));

try {
  browser = await launchBrowser({ extraArgs: o['chromium-arg'] });
  const server = { url: o.url, name: o.tag, logTail: () => '' };
  participant = await openParticipant(browser, server, { room: o.room, identity: o.identity, token: o.token, expectError: true });
  emit({ event: 'ready', t: Date.now() - t0, state: participant.initialState });
  if (participant.initialState.error) await shutdown(1);

  const from = o['expect-video-from'];
  const minFrames = Number(o['min-frames']);
  const end = Date.now() + Number(o.seconds) * 1000;
  let base = null;
  while (!stopping && Date.now() < end) {
    const [stats, state] = await Promise.all([participant.stats(), participant.state()]);
    emit({ event: 'stats', t: Date.now() - t0, stats, state });
    if (from) {
      const frames = total(stats, from, 'video', 'framesDecoded');
      const width = Math.max(0, ...entriesFrom(stats, from, 'video').map((e) => e.frameWidth || 0));
      if (base === null && entriesFrom(stats, from, 'video').length) base = frames;
      if (base !== null && frames - base >= minFrames && width > 0) {
        emit({ event: 'result', ok: true, from, frames, base, width, t: Date.now() - t0 });
        await shutdown(0);
      }
    }
    await sleep(500);
  }
  if (from) {
    emit({ event: 'result', ok: false, from, base, t: Date.now() - t0 });
    await shutdown(1);
  }
  emit({ event: 'result', ok: true, t: Date.now() - t0 });
  await shutdown(0);
} catch (e) {
  emit({ event: 'fatal', message: String(e && e.stack ? e.stack : e) });
  await shutdown(2);
}
