// Bad input at the telemetry endpoints gets a typed answer and a closed socket (agents) or a
// typed error on a socket that stays usable (viewers), and nothing already acknowledged is
// lost: frames 1..10 acknowledged before the bad input are still durable afterwards (the
// agent's `welcome` says so, a new viewer's history has them sample for sample), even after
// the gateway is killed and restarted on the same data dir.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, safeJson, sleep } from './lib/server.mjs';
import { IngestClient, Viewer, encodeFrame, nowMs, FLAG_HISTORY } from './lib/telemetry.mjs';

const STREAM = 'AMB-5';
const LAYOUT = [{ index: 0, mdc: 131330, rate_hz: 250, gain: 200, baseline: 0, label: 'II', unit: 'mV' }];

let server;
let dataDir;
let crew;
const opened = [];

/**
 * The hand-made stream: layout at seq 1, then 10-sample waveform frames (40 ms at 250 Hz),
 * captured when made (a viewer's history is the last 10 s by capture time).
 */
const samplesOf = (seq) => Array.from({ length: 10 }, (_, i) => ((seq * 37 + i * 11) % 2000) - 1000);
const frame = (seq, stream = STREAM) => {
  const captureUs = Math.round(nowMs() * 1000);
  return seq === 1
    ? encodeFrame({ kind: 'layout', stream, seq, captureUs, channels: LAYOUT })
    : encodeFrame({ kind: 'waveform', stream, seq, captureUs, blocks: [{ channel: 0, samples: samplesOf(seq) }] });
};

before(async () => {
  server = await startServer({ name: 'telemetry_bad_input' });
  dataDir = server.dataDir;
  crew = await server.token({ ambulance: STREAM, role: 'crew' });
}, { timeout: 60_000 });

after(async () => {
  for (const c of opened) c.terminate();
  await server?.stop();
});

async function agentConnection(token = crew) {
  const c = await IngestClient.connect(server, token);
  if (c.refused) throw new Error(`ingest refused: ${safeJson(c.refused)}`);
  opened.push(c);
  return c;
}

/** Opens an agent connection, sends `data`, expects error `code` then a close. */
async function expectFatal(data, code) {
  const c = await agentConnection();
  const welcome = await c.next('welcome', { timeout: 5000 });
  assert.equal(welcome.stream, STREAM);
  const from = c.messages.length;
  c.send(data);
  const err = await c.next((m) => m.type === 'error', { timeout: 5000, from });
  assert.equal(err.code, code, `expected ${code}, got ${safeJson(err)}`);
  assert.equal(typeof err.message, 'string');
  const closed = await c.closed(5000);
  assert.ok(closed.code === 1008 || closed.code === 1006 || closed.code === 1000, `close after ${code}: ${safeJson(closed)}`);
  return { err, closed, durable: welcome.durable_through };
}

test('frames 1..10 are acknowledged (durable) before any bad input', { timeout: 20_000 }, async () => {
  const c = await agentConnection();
  const welcome = await c.next('welcome', { timeout: 5000 });
  assert.deepEqual(welcome, { type: 'welcome', stream: STREAM, durable_through: 0 });
  for (let seq = 1; seq <= 10; seq++) c.send(frame(seq));
  const ack = await c.ackedThrough(10, { timeout: 5000 });
  assert.equal(ack.stream, STREAM, safeJson(ack));
  c.ws.close(1000);
  await c.closed(5000);
});

test('agent: garbage → bad_frame and close', { timeout: 20_000 }, async () => {
  await expectFatal(Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x13, 0x37, ...Buffer.from('definitely not a frame')]), 'bad_frame');
  await expectFatal(Buffer.alloc(0), 'bad_frame');
});

test('agent: a truncated valid frame → bad_frame', { timeout: 20_000 }, async () => {
  const good = frame(11);
  await expectFatal(good.subarray(0, good.length - 3), 'bad_frame');
  await expectFatal(good.subarray(0, 10), 'bad_frame');
});

test('agent: a frame over 65536 bytes → too_large', { timeout: 20_000 }, async () => {
  // A well-formed waveform frame with 33 000 i16 samples (66 KB).
  const big = encodeFrame({ kind: 'waveform', stream: STREAM, seq: 11, blocks: [{ channel: 0, samples: new Array(33_000).fill(7), format: 1 }] });
  assert.ok(big.length > 65_536, `${big.length} bytes`);
  await expectFatal(big, 'too_large');
});

test('agent: a frame of another stream → stream_not_granted', { timeout: 20_000 }, async () => {
  await expectFatal(frame(11, 'AMB-6'), 'stream_not_granted');
});

test('agent: a seq more than 1 000 000 ahead of what is durable → seq_out_of_window', { timeout: 20_000 }, async () => {
  const { durable } = await expectFatal(frame(10 + 1_000_000 + 1), 'seq_out_of_window');
  assert.ok(durable >= 10, `durable_through ${durable}`);
});

test('agent: an unknown control message → bad_message', { timeout: 20_000 }, async () => {
  await expectFatal(JSON.stringify({ type: 'make_me_admin' }), 'bad_message');
});

test('agent upgrade: no token 401, bad token 401, er/specialist/consult tokens 403, each with a JSON code', { timeout: 20_000 }, async () => {
  const cases = [
    ['no token', null, 401],
    ['garbage token', 'not.a.token', 401],
    ['er token', await server.token({ identity: 'Dr Wang', role: 'er' }), 403],
    ['specialist token for the ambulance', await server.token({ identity: 'Dr Li', role: 'specialist', ambulance: STREAM }), 403],
    ['consult crew token (room, no ambulance)', await server.token({ room: 'consult-1', identity: 'crew tablet', role: 'crew' }), 403],
  ];
  for (const [what, token, status] of cases) {
    const r = await IngestClient.connect(server, token);
    if (!r.refused) {
      opened.push(r);
      assert.fail(`${what}: the upgrade was accepted`);
    }
    assert.equal(r.refused.status, status, `${what}: ${safeJson(r.refused)}`);
    assert.ok(r.refused.json && typeof r.refused.json.code === 'string' && typeof r.refused.json.message === 'string', `${what}: body ${r.refused.body}`);
    console.log(`${what}: HTTP ${r.refused.status} ${r.refused.body}`);
  }
});

test('after the bad input the good agent goes on: welcome durable_through ≥ 10, 11..15 acknowledged', { timeout: 20_000 }, async () => {
  const c = await agentConnection();
  const welcome = await c.next('welcome', { timeout: 5000 });
  assert.ok(welcome.durable_through >= 10, `durable_through ${welcome.durable_through} after the bad input: ${safeJson(welcome)}`);
  assert.equal(welcome.durable_through, 10, 'nothing from the bad input became durable');
  // A duplicate is dropped silently and acknowledged again.
  c.send(frame(10));
  for (let seq = 11; seq <= 15; seq++) c.send(frame(seq));
  await c.ackedThrough(15, { timeout: 5000 });
  c.ws.close(1000);
  await c.closed(5000);
});

test('a new viewer gets the layout and history 2..15 sample for sample', { timeout: 20_000 }, async () => {
  const v = await Viewer.open(server, await server.token({ identity: 'Dr Wang', role: 'er' }), { name: 'history', stream: STREAM });
  opened.push(v);
  await sleep(500);
  const layout = v.of('layout').find((m) => m.stream === STREAM);
  assert.ok(layout, `no layout: ${v.describe()}`);
  assert.deepEqual(layout.channels.map(({ label, rate_hz, gain, baseline, unit }) => ({ label, rate_hz, gain, baseline, unit })), [{ label: 'II', rate_hz: 250, gain: 200, baseline: 0, unit: 'mV' }]);
  const got = v.streamFrames(STREAM).map((f) => ({ seq: f.seq, history: Boolean(f.flags & FLAG_HISTORY), samples: f.blocks[0].samples }));
  const want = Array.from({ length: 14 }, (_, i) => ({ seq: i + 2, history: true, samples: samplesOf(i + 2) }));
  assert.deepEqual(got, want, 'history frames');
});

test('viewer: bad token → unauthorized and close; crew token → forbidden and close', { timeout: 20_000 }, async () => {
  for (const [what, token, code] of [
    ['bad token', 'nope', 'unauthorized'],
    ['crew token', crew, 'forbidden'],
  ]) {
    const v = new Viewer(`${server.wsBase}/telemetry/view`, { name: what });
    opened.push(v);
    await v.opened();
    const m = await v.auth(token, { timeout: 5000 });
    assert.equal(m.type, 'error', `${what}: ${safeJson(m)}`);
    assert.equal(m.code, code, `${what}: ${safeJson(m)}`);
    const closed = await v.closed(5000);
    console.log(`viewer ${what}: ${safeJson(m)} then close ${closed.code}`);
  }
  // A first message that is not auth.
  const v = new Viewer(`${server.wsBase}/telemetry/view`, { name: 'no-auth' });
  opened.push(v);
  await v.opened();
  v.send({ type: 'subscribe', stream: STREAM });
  const m = await v.next('error', { timeout: 5000 });
  assert.equal(m.code, 'unauthorized', safeJson(m));
  await v.closed(5000);
});

test('viewer: a stream the token does not grant → forbidden; the socket stays usable', { timeout: 20_000 }, async () => {
  const v = await Viewer.open(server, await server.token({ identity: 'Dr Li', role: 'specialist', ambulance: 'AMB-1' }), { name: 'amb1-only' });
  opened.push(v);
  let from = v.json.length;
  v.send({ type: 'subscribe', stream: STREAM });
  const m = await v.next('error', { timeout: 5000, from });
  assert.equal(m.code, 'forbidden', safeJson(m));
  assert.equal(v.close, null);
  // Its own stream is not known yet (never connected): unknown_stream, still open.
  from = v.json.length;
  v.send({ type: 'subscribe', stream: 'AMB-1' });
  const u = await v.next('error', { timeout: 5000, from });
  assert.equal(u.code, 'unknown_stream', safeJson(u));
  assert.equal(v.close, null);
  assert.equal(v.frames.length, 0, 'no frames of a stream not granted');
  // Nor does a consult token without an ambulance see any stream.
  const consult = await Viewer.open(server, await server.token({ room: 'consult-1', identity: 'Dr Room', role: 'specialist' }), { name: 'consult' });
  opened.push(consult);
  from = consult.json.length;
  consult.send({ type: 'subscribe', stream: STREAM });
  assert.equal((await consult.next('error', { timeout: 5000, from })).code, 'forbidden');
});

test('viewer: unknown message → bad_message, binary → bad_message, 70 KB → too_large; a subscribe afterwards works', { timeout: 20_000 }, async () => {
  const v = await Viewer.open(server, await server.token({ identity: 'Dr Wang', role: 'er' }), { name: 'er-bad' });
  opened.push(v);
  for (const [data, code] of [
    [{ type: 'make_me_admin', please: true }, 'bad_message'],
    ['{"type": "subscribe", this is not json', 'bad_message'],
    [{ type: 'subscribe', stream: 'has spaces' }, 'bad_message'],
    [Buffer.from([1, 2, 3]), 'bad_message'],
    [JSON.stringify({ type: 'subscribe', stream: STREAM, pad: 'x'.repeat(70 * 1024) }), 'too_large'],
  ]) {
    const from = v.json.length;
    v.send(data);
    const m = await v.next('error', { timeout: 5000, from });
    assert.equal(m.code, code, `${safeJson(data).slice(0, 80)} → ${safeJson(m)}`);
    assert.equal(v.close, null, `${code} closed the viewer`);
  }
  const from = v.json.length;
  v.send({ type: 'ack_alarm', stream: STREAM, alarm: 999 });
  const e = await v.next('error', { timeout: 5000, from });
  assert.ok(e.code, safeJson(e));
  console.log(`ack of an unknown alarm: ${safeJson(e)}`);
  await v.subscribe(STREAM);
  await sleep(500);
  // The last 10 s of history: a contiguous run ending at 15 (all of 2..15 unless 10 s passed).
  const seqs = v.streamFrames(STREAM).map((f) => f.seq);
  assert.ok(seqs.length >= 5 && seqs.at(-1) === 15, `history after the errors: ${safeJson(seqs)}`);
  assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => 16 - seqs.length + i), 'contiguous');
});

test('the acknowledged frames survive a gateway crash (SIGKILL) and restart on the same data dir', { timeout: 60_000 }, async () => {
  for (const c of opened.splice(0)) c.terminate();
  await server.stop({ kill: true, keepDataDir: true });
  server = await startServer({ name: 'telemetry_bad_input', dataDir });
  const c = await agentConnection();
  const welcome = await c.next('welcome', { timeout: 5000 });
  assert.equal(welcome.durable_through, 15, `after a crash: ${safeJson(welcome)}`);
  c.send(frame(16));
  await c.ackedThrough(16, { timeout: 5000 });
  const v = await Viewer.open(server, await server.token({ identity: 'Dr Wang', role: 'er' }), { name: 'after-restart', stream: STREAM });
  opened.push(v);
  const layout = v.of('layout').find((m) => m.stream === STREAM);
  assert.ok(layout && layout.channels[0].label === 'II', `layout recovered from the journal: ${v.describe()}`);
  c.send(frame(17));
  await c.ackedThrough(17, { timeout: 5000 });
  await sleep(300);
  // 16 (arrived before the subscribe) as history, then 17 live.
  assert.deepEqual(
    v.streamFrames(STREAM).map((f) => [f.seq, f.flags, f.blocks[0].samples]),
    [[16, FLAG_HISTORY, samplesOf(16)], [17, 0, samplesOf(17)]],
  );
});
