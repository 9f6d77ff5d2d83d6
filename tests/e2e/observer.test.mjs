// An observer receives and decodes everyone but publishes nothing; the server refuses an
// observer's publish_offer with `forbidden`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, waitFor, safeJson, sleep } from './lib/server.mjs';
import { launchBrowser, openParticipant, expectMediaFrom, entriesFrom } from './lib/browser.mjs';
import { RawClient, sampleOffer } from './lib/ws.mjs';

const ROOM = 'consult-observer';
let server;
let browser;
const people = [];
const raws = [];

before(async () => {
  server = await startServer({ name: 'observer' });
  browser = await launchBrowser();
  people.push(await openParticipant(browser, server, { room: ROOM, identity: 'obs-clinic', role: 'clinic' }));
  people.push(await openParticipant(browser, server, { room: ROOM, identity: 'obs-specialist', role: 'specialist' }));
}, { timeout: 90_000 });

after(async () => {
  for (const r of raws) r.terminate();
  for (const p of people) await p.close();
  await browser?.close();
  await server?.stop();
});

/** Fails if any entry of clinic's/specialist's stats comes from `identity` / `pid` over `ms`. */
async function expectNothingFrom(identity, pid, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    for (const rx of people.slice(0, 2)) {
      const st = await rx.stats();
      const bad = st.filter((e) => e.identity === identity || (pid && e.participant_id === pid));
      assert.equal(bad.length, 0, `${rx.identity} has a track from observer ${identity}: ${safeJson(bad)}`);
    }
    await sleep(250);
  }
}

test('an observer page decodes the others and publishes nothing', { timeout: 60_000 }, async () => {
  const obs = await openParticipant(browser, server, { room: ROOM, identity: 'obs-watcher', role: 'observer' });
  people.push(obs);
  assert.equal(obs.initialState.role, 'observer');
  await Promise.all([
    expectMediaFrom(obs, 'obs-clinic', { timeout: 20_000 }),
    expectMediaFrom(obs, 'obs-specialist', { timeout: 20_000 }),
  ]);
  const pid = (await obs.state()).participantId;
  // Meanwhile the two publishers still decode each other, and never a track from the observer.
  await Promise.all([
    expectMediaFrom(people[0], 'obs-specialist', { audio: false, timeout: 10_000 }),
    expectMediaFrom(people[1], 'obs-clinic', { audio: false, timeout: 10_000 }),
  ]);
  await expectNothingFrom('obs-watcher', pid, 3000);
  await obs.screenshot('consult-observer');
});

test('an observer\'s publish_offer over a raw WebSocket gets `forbidden`', { timeout: 30_000 }, async () => {
  const tok = await server.token({ room: ROOM, identity: 'obs-raw', role: 'observer' });
  const c = await RawClient.connect(server.wsUrl);
  raws.push(c);
  const joined = await c.join(tok, ROOM);
  assert.equal(joined.participant.role, 'observer', safeJson(joined));
  const from = c.messages.length;
  c.send({ type: 'publish_offer', sdp: sampleOffer('obs-raw-video'), tracks: [{ track_id: 'obs-raw-video', source: 'camera' }] });
  const err = await c.nextError('forbidden', { from, timeout: 5000 });
  assert.equal(typeof err.message, 'string');
  assert.ok(!c.messages.slice(from).some((m) => m.type === 'publish_answer'), `no publish_answer expected: ${c.describe()}`);
  // forbidden is not fatal: the socket stays open and the participant stays in the room.
  await sleep(1000);
  assert.equal(c.close, null, `socket closed after forbidden: ${c.describe()}`);
  await waitFor(
    async () => (await people[0].state()).remoteParticipants.some((p) => p.identity === 'obs-raw'),
    { timeout: 5000, message: 'clinic to list obs-raw' },
  );
  await expectNothingFrom('obs-raw', joined.participant.id, 2000);
});
