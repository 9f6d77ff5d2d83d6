// A flood of joins from one address (127.0.0.1): the limiter admits at most 30 joins per
// 10 s window (signaling/src/limiter.rs) and answers the rest with the fatal error
// `rate_limited`, while two browsers already in the room keep decoding each other.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, waitFor, safeJson, sleep } from './lib/server.mjs';
import { launchBrowser, openParticipant, expectMediaFrom, total } from './lib/browser.mjs';
import { RawClient } from './lib/ws.mjs';
import { api, describeResponse, metricsText, metricValue } from './lib/api.mjs';

const ROOM = 'consult-flood';
const FLOOD = 35;
const LIMIT = 30; // JOINS_PER_WINDOW
const WINDOW_MS = 10_000;
let server;
let browser;
let sender;
let receiver;
const raws = [];
let flood; // { results: [{i, type, code, at}], started, ended }
const samplers = [];

before(async () => {
  server = await startServer({ name: 'join_flood' });
  browser = await launchBrowser();
}, { timeout: 90_000 });

after(async () => {
  for (const s of samplers) await s.stop();
  for (const r of raws) r.terminate();
  await sender?.close();
  await receiver?.close();
  await browser?.close();
  await server?.stop();
});

async function mint(identity) {
  const r = await api(server, 'POST', `/api/rooms/${ROOM}/tokens`, { body: { identity, role: 'crew' } });
  assert.equal(r.status, 201, describeResponse(r));
  return r.body.token;
}

/**
 * Samples the receiver's decoded video frames from the sender every 250 ms until stopped;
 * returns { stop(): Promise<samples[]> }.
 */
function sampleFrames(rx, from) {
  const samples = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      try {
        samples.push({ t: Date.now(), frames: total(await rx.stats(), from, 'video', 'framesDecoded') });
      } catch (e) {
        samples.push({ t: Date.now(), error: e.message });
      }
      await sleep(250);
    }
  })();
  const sampler = {
    async stop() {
      running = false;
      await loop;
      return samples;
    },
  };
  samplers.push(sampler);
  return sampler;
}

/** The longest time (ms) the frame counter stood still across `samples`, and errors seen. */
function longestStall(samples) {
  let stall = 0;
  let since = null;
  let prev = null;
  for (const s of samples) {
    if (s.error) continue;
    if (prev === null || s.frames > prev.frames) since = s.t;
    stall = Math.max(stall, s.t - since);
    prev = s;
  }
  return stall;
}

test('two browsers in the room decode each other before the flood', { timeout: 60_000 }, async () => {
  sender = await openParticipant(browser, server, { room: ROOM, identity: 'dr-steady', role: 'specialist' });
  receiver = await openParticipant(browser, server, { room: ROOM, identity: 'nurse-steady', role: 'clinic' });
  await Promise.all([
    expectMediaFrom(receiver, 'dr-steady', { audio: false, timeout: 20_000 }),
    expectMediaFrom(sender, 'nurse-steady', { audio: false, timeout: 20_000 }),
  ]);
});

test(`${FLOOD} joins from one address: at most ${LIMIT} admitted, the rest rate_limited, and the browsers keep decoding`, { timeout: 90_000 }, async () => {
  assert.ok(sender && receiver, 'both browsers joined');
  const tokens = [];
  for (let i = 0; i < FLOOD; i++) tokens.push(await mint(`flood-${i}`));
  // The browsers' own joins opened the limiter's window for 127.0.0.1 (at the latest when the
  // first was admitted): start the flood in a fresh window, so only the flood's joins count.
  while (Date.now() < sender.joinedAt + WINDOW_MS + 500) await sleep(100);

  const before = await metricsText(server);
  const sampler = sampleFrames(receiver, 'dr-steady');
  const samplerBack = sampleFrames(sender, 'nurse-steady');
  const started = Date.now();
  const results = [];
  // One after the other, as fast as the server answers, so the order is known.
  for (let i = 0; i < FLOOD; i++) {
    const c = await RawClient.connect(server.wsUrl);
    raws.push(c);
    c.send({ type: 'join', token: tokens[i], room: ROOM });
    const m = await c.next((x) => x.type === 'joined' || x.type === 'error', { timeout: 5000 });
    results.push({ i, client: c, type: m.type, code: m.code, at: Date.now() - started });
  }
  const ended = Date.now();
  flood = { results, started, ended };
  const summary = results.map((r) => `${r.i}:${r.type === 'joined' ? 'ok' : r.code}@${r.at}ms`).join(' ');
  assert.ok(ended - started < WINDOW_MS - 1000, `the flood took ${ended - started} ms, not within one window: ${summary}`);

  const admitted = results.filter((r) => r.type === 'joined');
  const limited = results.filter((r) => r.type === 'error' && r.code === 'rate_limited');
  assert.equal(admitted.length + limited.length, FLOOD, `every join is either admitted or rate_limited: ${summary}`);
  assert.ok(admitted.length <= LIMIT, `at most ${LIMIT} admitted: ${summary}`);
  // In a fresh window, exactly the first 30 pass and every later one is refused.
  assert.deepEqual(admitted.map((r) => r.i), [...Array(LIMIT).keys()], `the first ${LIMIT} are admitted: ${summary}`);
  assert.deepEqual(limited.map((r) => r.i), [...Array(FLOOD - LIMIT).keys()].map((k) => k + LIMIT), summary);
  // rate_limited is fatal: each refused socket is closed (the code is checked at the end).
  const closes = [];
  for (const r of limited) {
    closes.push({ i: r.i, ...(await r.client.closed(5000)) });
    assert.ok(!r.client.messages.some((m) => m.type === 'joined'), r.client.describe());
  }
  // The admitted ones are really in: still open, listed by the API, counted by /metrics.
  await sleep(500);
  for (const r of admitted) assert.equal(r.client.close, null, `flood-${r.i} was closed: ${r.client.describe()}`);
  const list = await api(server, 'GET', `/api/rooms/${ROOM}/participants`);
  assert.equal(list.status, 200, describeResponse(list));
  assert.equal(list.body.length, 2 + LIMIT, `participants: ${list.body.map((p) => p.identity).join(', ')}`);
  const m = await metricsText(server);
  assert.equal(metricValue(m, 'medrelay_participants'), 2 + LIMIT);
  assert.equal(metricValue(m, 'medrelay_joins_total') - metricValue(before, 'medrelay_joins_total'), LIMIT, 'joins_total grew by the admitted ones');
  assert.equal((metricValue(m, 'medrelay_ws_errors_total', { code: 'rate_limited' }) || 0) - (metricValue(before, 'medrelay_ws_errors_total', { code: 'rate_limited' }) || 0), FLOOD - LIMIT);

  // The browsers saw the admitted joins and nothing went wrong for them.
  await waitFor(
    async () => (await receiver.state()).remoteParticipants.length === 1 + LIMIT,
    { timeout: 10_000, message: `the receiver page to list ${1 + LIMIT} others` },
  );
  // And they decoded throughout: during the flood and right after it.
  await expectMediaFrom(receiver, 'dr-steady', { audio: false, minFrames: 20, timeout: 10_000 });
  await expectMediaFrom(sender, 'nurse-steady', { audio: false, minFrames: 20, timeout: 10_000 });
  const samples = await sampler.stop();
  const back = await samplerBack.stop();
  for (const [name, s] of [['nurse-steady from dr-steady', samples], ['dr-steady from nurse-steady', back]]) {
    const during = s.filter((x) => !x.error && x.t >= started && x.t <= ended + 1000);
    assert.ok(during.length >= 2, `${name}: samples during the flood: ${safeJson(s)}`);
    const grew = during[during.length - 1].frames - during[0].frames;
    const secs = (during[during.length - 1].t - during[0].t) / 1000;
    assert.ok(grew >= Math.max(5, secs * 5), `${name} decoded ${grew} frames in ${secs.toFixed(1)} s of flood: ${safeJson(during)}`);
    const stall = longestStall(s);
    assert.ok(stall < 2000, `${name}: framesDecoded stood still for ${stall} ms: ${safeJson(s)}`);
  }
  for (const p of [sender, receiver]) {
    const st = await p.state();
    assert.equal(st.joined, true, `${p.identity} still joined`);
    assert.equal(st.error, null, `${p.identity} error: ${safeJson(st.error)}`);
  }
  // Last, so that the checks above always run: each refusal ended with close 1008 (policy
  // violation). A 1006 here is the server dropping the connection without a clean closing
  // handshake (reproduced deterministically by fatal_close.test.mjs).
  assert.deepEqual(closes.filter((c) => c.code !== 1008), [], `close codes after rate_limited: ${safeJson(closes)}`);
});

test('the flood leaves; the browsers keep decoding; after the window a join is admitted again', { timeout: 60_000 }, async () => {
  assert.ok(flood, 'the flood ran');
  for (const r of flood.results) if (r.type === 'joined') r.client.send({ type: 'leave' });
  await waitFor(
    async () => (await receiver.state()).remoteParticipants.length === 1 && (await sender.state()).remoteParticipants.length === 1,
    { timeout: 10_000, message: 'both pages to list only each other again' },
  );
  const list = await api(server, 'GET', `/api/rooms/${ROOM}/participants`);
  assert.deepEqual(list.body.map((p) => p.identity).sort(), ['dr-steady', 'nurse-steady'], describeResponse(list));
  await expectMediaFrom(receiver, 'dr-steady', { audio: false, minFrames: 20, timeout: 10_000 });

  // Still inside the flood's window: refused.
  if (Date.now() < flood.started + WINDOW_MS - 1000) {
    const c = await RawClient.connect(server.wsUrl);
    raws.push(c);
    c.send({ type: 'join', token: await mint('flood-again-early'), room: ROOM });
    const m = await c.next((x) => x.type === 'joined' || x.type === 'error', { timeout: 5000 });
    assert.equal(m.code, 'rate_limited', `still within the window: ${safeJson(m)}`);
  }
  // A new window: admitted.
  while (Date.now() < flood.started + WINDOW_MS + 500) await sleep(100);
  const c = await RawClient.connect(server.wsUrl);
  raws.push(c);
  const joined = await c.join(await mint('flood-again-late'), ROOM);
  assert.equal(joined.participant.identity, 'flood-again-late');
  c.send({ type: 'leave' });
  await c.closed(5000);
});
