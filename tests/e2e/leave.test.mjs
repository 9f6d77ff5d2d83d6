// Closing a page removes its participant and its tracks from everyone else within 5 s,
// and the others keep decoding each other.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, safeJson, sleep, waitFor } from './lib/server.mjs';
import { launchBrowser, openParticipant, expectMediaFrom } from './lib/browser.mjs';
import { RawClient } from './lib/ws.mjs';

const ROOM = 'consult-leave';
const GONE_WITHIN_MS = 5000;
let server;
let browser;
let watcher;
const people = [];

before(async () => {
  server = await startServer({ name: 'leave' });
  browser = await launchBrowser();
  for (const [identity, role] of [['lv-clinic', 'clinic'], ['lv-specialist', 'specialist'], ['lv-crew', 'crew']]) {
    people.push(await openParticipant(browser, server, { room: ROOM, identity, role }));
  }
  // A raw observer that only listens, to see the participant_left message itself.
  watcher = await RawClient.connect(server.wsUrl);
  await watcher.join(await server.token({ room: ROOM, identity: 'lv-watcher', role: 'observer' }), ROOM);
}, { timeout: 90_000 });

after(async () => {
  watcher?.terminate();
  for (const p of people) await p.close();
  await browser?.close();
  await server?.stop();
});

test('closing a page removes its participant and tracks from the others within 5 s', { timeout: 60_000 }, async () => {
  const [clinic, specialist, crew] = people;
  // First, everyone decodes the crew page (so there is something to remove).
  await Promise.all([
    expectMediaFrom(clinic, 'lv-crew', { audio: false, timeout: 20_000 }),
    expectMediaFrom(specialist, 'lv-crew', { audio: false, timeout: 20_000 }),
  ]);
  const crewId = (await crew.state()).participantId;
  assert.ok(crewId, 'crew has a participantId');
  const from = watcher.messages.length;

  const closedAt = Date.now();
  await crew.page.close();
  people.splice(2, 1);
  await crew.close();

  const remaining = [clinic, specialist];
  const done = new Map();
  let last = {};
  while (done.size < remaining.length && Date.now() - closedAt <= GONE_WITHIN_MS) {
    for (const rx of remaining) {
      if (done.has(rx.identity)) continue;
      const st = await rx.state();
      const stats = await rx.stats();
      last[rx.identity] = { remoteParticipants: st.remoteParticipants, stats };
      const inList = st.remoteParticipants.some((p) => p.id === crewId || p.identity === 'lv-crew');
      const inStats = stats.some((e) => e.participant_id === crewId || e.identity === 'lv-crew');
      if (!inList && !inStats) done.set(rx.identity, Date.now() - closedAt);
    }
    if (done.size < remaining.length) await sleep(100);
  }
  assert.equal(
    done.size,
    remaining.length,
    `lv-crew (${crewId}) still present ${GONE_WITHIN_MS} ms after its page closed: ${safeJson(last)}`,
  );
  console.log(`crew removed from the others after ${safeJson(Object.fromEntries(done))} ms`);

  const left = await watcher.next((m) => m.type === 'participant_left' && m.participant_id === crewId, { from, timeout: 2000 });
  assert.ok(['left', 'disconnected'].includes(left.reason), `reason: ${safeJson(left)}`);
});

test('the remaining participants keep decoding each other', { timeout: 40_000 }, async () => {
  // Independent of the previous test: the crew page is gone whatever happened there.
  while (people.length > 2) await people.pop().close();
  const [clinic, specialist] = people;
  await Promise.all([
    expectMediaFrom(clinic, 'lv-specialist', { timeout: 15_000 }),
    expectMediaFrom(specialist, 'lv-clinic', { timeout: 15_000 }),
  ]);
  for (const rx of [clinic, specialist]) {
    const want = [rx === clinic ? 'lv-specialist' : 'lv-clinic'];
    let seen;
    await waitFor(
      async () => {
        seen = (await rx.state()).remoteParticipants;
        return safeJson(seen.map((p) => p.identity).filter((i) => i !== 'lv-watcher').sort()) === safeJson(want);
      },
      { timeout: 5000, message: `${rx.identity} to list exactly ${want}` },
    ).catch((e) => {
      throw new Error(`${e.message}: ${safeJson(seen)}`);
    });
  }
});
