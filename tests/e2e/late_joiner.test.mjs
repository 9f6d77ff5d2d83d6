// A third participant joining a running consult decodes video within 2 seconds of joining
// (the server must ask the senders for a key frame for the new subscriber).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, waitFor, safeJson, sleep } from './lib/server.mjs';
import { launchBrowser, openParticipant, expectMediaFrom, entriesFrom } from './lib/browser.mjs';

const ROOM = 'consult-late-joiner';
const LATE_VIDEO_DEADLINE_MS = 2000;
let server;
let browser;
const people = [];

before(async () => {
  server = await startServer({ name: 'late_joiner' });
  browser = await launchBrowser();
  people.push(await openParticipant(browser, server, { room: ROOM, identity: 'clinic-1', role: 'clinic' }));
  people.push(await openParticipant(browser, server, { room: ROOM, identity: 'specialist-1', role: 'specialist' }));
  const [clinic, specialist] = people;
  await Promise.all([
    expectMediaFrom(clinic, 'specialist-1', { audio: false, timeout: 20_000 }),
    expectMediaFrom(specialist, 'clinic-1', { audio: false, timeout: 20_000 }),
  ]);
  // Let the first two settle (bandwidth ramp, key frames already sent) so the late joiner
  // really joins a running consult.
  await sleep(2000);
}, { timeout: 90_000 });

after(async () => {
  for (const p of people) await p.close();
  await browser?.close();
  await server?.stop();
});

test('a late joiner decodes everyone\'s video within 2 s of joining', { timeout: 60_000 }, async () => {
  const late = await openParticipant(browser, server, { room: ROOM, identity: 'crew-late', role: 'crew' });
  people.push(late);
  const deadline = late.joinedAt + LATE_VIDEO_DEADLINE_MS;
  let last = [];
  let firstOk = null;
  while (Date.now() <= deadline) {
    last = await late.stats();
    const ok = ['clinic-1', 'specialist-1'].every((id) =>
      entriesFrom(last, id, 'video').some((e) => e.framesDecoded > 0 && e.frameWidth > 0),
    );
    if (ok) {
      firstOk = Date.now();
      break;
    }
    await sleep(50);
  }
  assert.ok(
    firstOk,
    `crew-late did not decode video from both clinic-1 and specialist-1 within ${LATE_VIDEO_DEADLINE_MS} ms of joining; ` +
      `medrelayStats() at the deadline: ${safeJson(last)}`,
  );
  console.log(`late joiner decoded video from both senders ${firstOk - late.joinedAt} ms after joining`);
  // And it keeps decoding (not just one key frame).
  await expectMediaFrom(late, 'clinic-1', { audio: false, minFrames: 15, timeout: 10_000 });
  await expectMediaFrom(late, 'specialist-1', { audio: false, minFrames: 15, timeout: 10_000 });
});

test('the earlier participants decode the late joiner', { timeout: 60_000 }, async () => {
  const late = people.find((p) => p.identity === 'crew-late');
  assert.ok(late, 'late joiner present');
  const [clinic, specialist] = people;
  await Promise.all([
    expectMediaFrom(clinic, 'crew-late', { timeout: 20_000 }),
    expectMediaFrom(specialist, 'crew-late', { timeout: 20_000 }),
  ]);
  const st = await clinic.state();
  assert.ok(st.remoteParticipants.some((p) => p.identity === 'crew-late' && p.role === 'crew'), safeJson(st.remoteParticipants));
  await waitFor(async () => (await late.state()).remoteParticipants.length === 2, { timeout: 5000, message: 'late joiner to list 2 remote participants' });
});
