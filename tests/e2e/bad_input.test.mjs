// A misbehaving signaling client gets typed errors, and the browsers in the same room keep
// decoding each other the whole time.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, safeJson, sleep, waitFor } from './lib/server.mjs';
import { launchBrowser, openParticipant, expectMediaFrom } from './lib/browser.mjs';
import { RawClient } from './lib/ws.mjs';

const ROOM = 'consult-bad-input';
let server;
let browser;
let bad;
const people = [];

before(async () => {
  server = await startServer({ name: 'bad_input' });
  browser = await launchBrowser();
  people.push(await openParticipant(browser, server, { room: ROOM, identity: 'bi-clinic', role: 'clinic' }));
  people.push(await openParticipant(browser, server, { room: ROOM, identity: 'bi-specialist', role: 'specialist' }));
  bad = await RawClient.connect(server.wsUrl);
  await bad.join(await server.token({ room: ROOM, identity: 'bi-rogue', role: 'crew' }), ROOM);
}, { timeout: 90_000 });

after(async () => {
  bad?.terminate();
  for (const p of people) await p.close();
  await browser?.close();
  await server?.stop();
});

/** Both browsers are decoding each other right now. */
async function browsersStillFlowing(label) {
  const [clinic, specialist] = people;
  await Promise.all([
    expectMediaFrom(clinic, 'bi-specialist', { audio: false, minFrames: 10, timeout: 10_000 }),
    expectMediaFrom(specialist, 'bi-clinic', { audio: false, minFrames: 10, timeout: 10_000 }),
  ]).catch((e) => {
    throw new Error(`browsers stopped decoding ${label}: ${e.message}`);
  });
}

/** Sends `frame` and expects the non-fatal error `code`, the socket staying open. */
async function expectNonFatal(frame, code) {
  const from = bad.messages.length;
  bad.send(frame);
  const err = await bad.nextError(code, { from, timeout: 5000 });
  assert.equal(typeof err.message, 'string', safeJson(err));
  await sleep(200);
  assert.equal(bad.close, null, `${code} must not close the socket: ${bad.describe()}`);
}

test('the browsers decode each other before the bad input', { timeout: 40_000 }, async () => {
  await browsersStillFlowing('before any bad input');
});

test('invalid JSON gets invalid_json', { timeout: 20_000 }, async () => {
  await expectNonFatal('{"type": "join", this is not json', 'invalid_json');
  await expectNonFatal('{"type":"subscribe_answer"}', 'invalid_json'); // lacks `sdp`
});

test('an unknown type gets unknown_type', { timeout: 20_000 }, async () => {
  await expectNonFatal({ type: 'make_me_admin', please: true }, 'unknown_type');
});

test('a malformed SDP gets invalid_sdp', { timeout: 20_000 }, async () => {
  await expectNonFatal(
    { type: 'publish_offer', sdp: 'v=0\r\nthis is not an sdp\r\nm=video banana\r\n', tracks: [{ track_id: 'x', source: 'camera' }] },
    'invalid_sdp',
  );
});

test('the browsers kept decoding through the non-fatal errors', { timeout: 40_000 }, async () => {
  await browsersStillFlowing('after invalid_json / unknown_type / invalid_sdp');
});

test('a 70 KiB frame gets message_too_large and a close with 1009', { timeout: 20_000 }, async () => {
  const from = bad.messages.length;
  bad.send(JSON.stringify({ type: 'set_muted', track_id: 'x'.repeat(70 * 1024), muted: true }));
  await bad.nextError('message_too_large', { from, timeout: 5000 });
  const closed = await bad.closed(5000);
  assert.equal(closed.code, 1009, `close code: ${safeJson(closed)}`);
});

test('the browsers keep decoding after the rogue client is cut off', { timeout: 40_000 }, async () => {
  await browsersStillFlowing('after message_too_large');
  for (const rx of people) {
    const st = await rx.state();
    assert.ok(st.joined && !st.error, `${rx.identity}: ${safeJson(st)}`);
  }
  // The rogue's socket is gone, so it leaves the room.
  await waitFor(
    async () => !(await people[0].state()).remoteParticipants.some((p) => p.identity === 'bi-rogue'),
    { timeout: 5000, message: 'bi-rogue to leave the clinic\'s participant list' },
  );
});
