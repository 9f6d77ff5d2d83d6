// Two browsers (clinic, specialist) in one room decode each other's camera and microphone.
// Capture is a 640x480 ffmpeg clip, so the decoded size can be checked exactly.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, waitFor, safeJson } from './lib/server.mjs';
import { launchBrowser, openParticipant, expectMediaFrom, entriesFrom } from './lib/browser.mjs';
import { makeFakeCaptureFiles } from './lib/media.mjs';

const ROOM = 'consult-two-party';
let server;
let browser;
// Made before the tests are declared, so a missing ffmpeg can skip the size test.
const clips = await makeFakeCaptureFiles({ width: 640, height: 480 });
let clinic;
let specialist;

before(async () => {
  server = await startServer({ name: 'two_party' });
  browser = await launchBrowser({ extraArgs: clips ? clips.chromiumArgs : [] });
}, { timeout: 90_000 });

after(async () => {
  await clinic?.close();
  await specialist?.close();
  await browser?.close();
  await server?.stop();
  clips?.cleanup();
});

test('clinic and specialist join one room and see each other', { timeout: 60_000 }, async () => {
  clinic = await openParticipant(browser, server, { room: ROOM, identity: 'dr-clinic', role: 'clinic' });
  specialist = await openParticipant(browser, server, { room: ROOM, identity: 'dr-specialist', role: 'specialist' });
  assert.equal(clinic.initialState.role, 'clinic');
  assert.equal(specialist.initialState.role, 'specialist');
  assert.ok(clinic.initialState.participantId, 'clinic has a participantId');
  await waitFor(
    async () => {
      const a = await clinic.state();
      const b = await specialist.state();
      return (
        a.remoteParticipants.some((p) => p.identity === 'dr-specialist' && p.role === 'specialist' && p.id === b.participantId) &&
        b.remoteParticipants.some((p) => p.identity === 'dr-clinic' && p.role === 'clinic' && p.id === a.participantId)
      );
    },
    { timeout: 10_000, message: 'each page to list the other in remoteParticipants' },
  );
});

test('each decodes the other\'s video and audio, and keeps decoding', { timeout: 60_000 }, async () => {
  assert.ok(clinic && specialist, 'both participants joined');
  const [toClinic, toSpecialist] = await Promise.all([
    expectMediaFrom(clinic, 'dr-specialist', { timeout: 20_000 }),
    expectMediaFrom(specialist, 'dr-clinic', { timeout: 20_000 }),
  ]);
  // The entries name the sender by participant id as well as identity.
  const sState = await specialist.state();
  const cState = await clinic.state();
  for (const e of entriesFrom(toClinic.stats, 'dr-specialist')) assert.equal(e.participant_id, sState.participantId, safeJson(e));
  for (const e of entriesFrom(toSpecialist.stats, 'dr-clinic')) assert.equal(e.participant_id, cState.participantId, safeJson(e));
  // Still flowing a little later: a second, independent growth window.
  await Promise.all([
    expectMediaFrom(clinic, 'dr-specialist', { minFrames: 20, timeout: 10_000 }),
    expectMediaFrom(specialist, 'dr-clinic', { minFrames: 20, timeout: 10_000 }),
  ]);
  await clinic.screenshot('consult-two-party-clinic');
  await specialist.screenshot('consult-two-party-specialist');
});

test('video from a 640x480 file capture is decoded at exactly 640x480', { timeout: 60_000, skip: !clips && 'ffmpeg not installed' }, async () => {
  assert.ok(clinic && specialist, 'both participants joined');
  // The sender may start below full size while its bandwidth estimate ramps up; it must
  // reach the source's size.
  for (const [rx, from] of [[clinic, 'dr-specialist'], [specialist, 'dr-clinic']]) {
    let last;
    await waitFor(
      async () => {
        last = entriesFrom(await rx.stats(), from, 'video');
        return last.some((e) => e.frameWidth === 640 && e.frameHeight === 480);
      },
      { timeout: 25_000, interval: 250, message: `${rx.identity} to decode ${from}'s video at 640x480` },
    ).catch(async (e) => {
      const tx = await (from === 'dr-clinic' ? clinic : specialist).outboundVideo().catch(() => null);
      throw new Error(`${e.message}; last video entries: ${safeJson(last)}; sender outbound-rtp video: ${safeJson(tx)}`);
    });
  }
});
