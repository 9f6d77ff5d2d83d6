// The real ECG (MIT-BIH 208, MLII, 360 Hz) replayed by the agent over TLS (a certificate made
// with openssl, trusted by the agent through --ca) reaches a viewer sample for sample, in
// order, with its layout; a second viewer that subscribes mid-way gets the recent history
// (flag `history`) and then live frames, without a gap or a duplicate in between.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startServer, waitFor, safeJson, sleep } from './lib/server.mjs';
import {
  ECG, readEcg, ecgSourceArgs, makeTlsCert, spawnAgent, touchStream, Viewer, tempDir,
  samplesInSeqOrder, seqReport, firstDifference, FLAG_HISTORY,
} from './lib/telemetry.mjs';

const STREAM = 'AMB-7';
const DURATION_S = 20;
const EXPECTED = ECG.rate * DURATION_S; // samples the agent sends: --duration × rate

let server;
let cert;
let spool;
const viewers = [];
let agent;

before(async () => {
  cert = makeTlsCert({ name: 'telemetry-replay' });
  server = await startServer({ name: 'telemetry_replay', tls: cert });
  spool = tempDir('medrelay-replay-spool');
}, { timeout: 60_000 });

after(async () => {
  agent?.kill('SIGKILL');
  for (const v of viewers) v.terminate();
  await server?.stop();
  for (const d of [cert?.dir, spool]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

/** Waveform frames and numerics seqs of a viewer, and the layout messages it got. */
function account(v) {
  const frames = v.streamFrames(STREAM);
  const numericSeqs = v.of('numerics').filter((m) => m.stream === STREAM).map((m) => m.seq);
  const layouts = v.of('layout').filter((m) => m.stream === STREAM);
  return { frames, numericSeqs, layouts, seqs: seqReport([...frames.map((f) => f.seq), ...numericSeqs]) };
}

test('the real record replayed over TLS arrives sample for sample; a late viewer gets history then live', { timeout: 120_000 }, async () => {
  const ecg = readEcg();
  assert.ok(ecg.length >= EXPECTED, `the record has ${ecg.length} samples, fewer than ${EXPECTED}`);
  assert.match(server.url, /^https:/, 'the gateway serves TLS');

  const crew = await server.token({ ambulance: STREAM, role: 'crew' });
  const er = await server.token({ identity: 'Dr Wang', role: 'er' });
  // The gateway lists a stream once its agent has connected; a bare connection makes it known
  // so the first viewer can subscribe before any data exists.
  const welcome0 = await touchStream(server, crew);
  assert.equal(welcome0.stream, STREAM, safeJson(welcome0));
  assert.equal(welcome0.durable_through, 0, `a new stream: ${safeJson(welcome0)}`);

  const first = await Viewer.open(server, er, { name: 'viewer-1', stream: STREAM });
  viewers.push(first);
  assert.equal(first.of('welcome')[0].role, 'er');
  assert.equal(first.frames.length, 0, 'nothing before the agent starts');

  agent = spawnAgent({
    name: 'telemetry_replay',
    args: ['--gateway', server.wsBase, '--token', crew, '--ca', cert.ca, ...ecgSourceArgs(), '--duration', String(DURATION_S), '--spool', spool],
  });

  // Mid-way, a second viewer subscribes.
  await waitFor(() => first.frames.length >= 25 * 9 || agent.exit, { timeout: 20_000, message: 'viewer-1 to receive 9 s of frames' }).catch((e) => {
    throw new Error(`${e.message}\nviewer-1: ${first.describe()}\n--- agent log ---\n${agent.logTail()}\n--- server log ---\n${server.logTail(20)}`);
  });
  assert.equal(agent.exit, null, `the agent exited early: ${safeJson(agent.exit)}\n${agent.logTail()}`);
  const second = await Viewer.open(server, er, { name: 'viewer-2', stream: STREAM });
  viewers.push(second);

  const exit = await agent.waitExit(DURATION_S * 1000 + 30_000);
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, `agent exit; log:\n${agent.logTail()}`);
  // Everything was acknowledged before the agent exited, so it has been sent to viewers.
  await waitFor(() => samplesInSeqOrder(first.streamFrames(STREAM)).length >= EXPECTED, { timeout: 5000, message: `viewer-1 to hold ${EXPECTED} samples` }).catch(() => {});
  await sleep(500);

  // --- viewer 1: the layout, then every sample of the file's prefix exactly once, in order.
  const a = account(first);
  assert.ok(a.layouts.length >= 1, `viewer-1 got no layout: ${first.describe()}`);
  assert.deepEqual(
    a.layouts[0].channels.map(({ label, unit, rate_hz, gain, baseline }) => ({ label, unit, rate_hz, gain, baseline })),
    [{ label: ECG.label, unit: ECG.unit, rate_hz: ECG.rate, gain: ECG.gain, baseline: ECG.baseline }],
    `layout: ${safeJson(a.layouts[0])}`,
  );
  const ch = a.layouts[0].channels[0].index;
  assert.equal(a.seqs.dups.length, 0, `duplicate seqs at viewer-1: ${a.seqs.dups.slice(0, 20)}`);
  assert.deepEqual(a.seqs.missing, [], `seqs missing at viewer-1 between ${a.seqs.first} and ${a.seqs.last}`);
  const order = first.streamFrames(STREAM).map((f) => f.seq);
  for (let i = 1; i < order.length; i++) {
    assert.ok(order[i] > order[i - 1], `viewer-1 received seq ${order[i]} after ${order[i - 1]} (not in order)`);
  }
  const flagged = a.frames.filter((f) => f.flags !== 0);
  assert.equal(flagged.length, 0, `viewer-1 was subscribed throughout: no history/late flags expected, got ${safeJson(flagged.slice(0, 5).map((f) => ({ seq: f.seq, flags: f.flags })))}`);
  for (const f of a.frames) {
    assert.deepEqual(f.blocks.map((b) => b.channel), [ch], `frame ${f.seq} blocks`);
  }
  const got = samplesInSeqOrder(a.frames, ch);
  const want = ecg.slice(0, EXPECTED);
  const diff = firstDifference(got, want);
  assert.equal(got.length, EXPECTED, `viewer-1 received ${got.length} samples, the agent sent ${EXPECTED} (${DURATION_S} s × ${ECG.rate} Hz)`);
  assert.equal(diff, null, `viewer-1 samples differ from the file at ${safeJson(diff)}`);
  // Capture times advance by the samples' duration. The agent corrects them by its clock
  // offset estimate, which may move a little as probes come in; on one machine it is ~0.
  const byseq = [...a.frames].sort((x, y) => x.seq - y.seq);
  let sampleIndex = 0;
  const skew = [];
  for (const f of byseq) {
    skew.push({ seq: f.seq, ms: (f.captureUs - (byseq[0].captureUs + (sampleIndex * 1e6) / ECG.rate)) / 1000 });
    sampleIndex += f.blocks[0].samples.length;
  }
  const worst = skew.reduce((w, s) => (Math.abs(s.ms) > Math.abs(w.ms) ? s : w));
  const recvDelay = a.frames.map((f) => f.at - f.captureUs / 1000);
  console.log(`capture time vs sample index: first frames ${safeJson(skew.slice(0, 8).map((s) => +s.ms.toFixed(2)))}, worst ${safeJson(worst)}; receive − capture: min ${Math.min(...recvDelay).toFixed(1)} ms, max ${Math.max(...recvDelay).toFixed(1)} ms`);
  const later = skew.slice(25);
  const laterWorst = later.reduce((w, s) => (Math.abs(s.ms - later[0].ms) > Math.abs(w.ms - later[0].ms) ? s : w));
  assert.ok(Math.abs(laterWorst.ms - later[0].ms) < 5, `capture times after the first second drift from the sample clock: ${safeJson(laterWorst)} vs ${safeJson(later[0])}`);
  assert.ok(Math.min(...recvDelay) > -5, `a frame arrived ${Math.min(...recvDelay).toFixed(1)} ms before its capture time (clock correction off on one machine)`);
  console.log(`viewer-1: ${got.length} samples in ${a.frames.length} frames (seq ${a.seqs.first}..${a.seqs.last}), identical to the file's first ${EXPECTED}`);

  // --- viewer 2: history first, then live; history ∪ live is contiguous, and the same data.
  const b = account(second);
  assert.ok(b.layouts.length >= 1, `viewer-2 got no layout on subscribe: ${second.describe()}`);
  const hist = b.frames.filter((f) => f.flags & FLAG_HISTORY);
  const live = b.frames.filter((f) => !(f.flags & FLAG_HISTORY));
  assert.ok(hist.length >= 25 * 8, `viewer-2 subscribed ~9 s in: expected ≥ 8 s of history frames, got ${hist.length}`);
  assert.ok(live.length >= 25 * 5, `viewer-2 live frames: ${live.length}`);
  const lastHistIdx = b.frames.findLastIndex((f) => f.flags & FLAG_HISTORY);
  const firstLiveIdx = b.frames.findIndex((f) => !(f.flags & FLAG_HISTORY));
  assert.ok(lastHistIdx < firstLiveIdx, `viewer-2 got a history frame (index ${lastHistIdx}) after a live one (index ${firstLiveIdx})`);
  assert.equal(b.seqs.dups.length, 0, `viewer-2 duplicates: ${b.seqs.dups.slice(0, 20)}`);
  assert.deepEqual(b.seqs.missing, [], `viewer-2 seqs missing between history and live (${b.seqs.first}..${b.seqs.last})`);
  const seq2 = b.frames.map((f) => f.seq);
  for (let i = 1; i < seq2.length; i++) assert.ok(seq2[i] > seq2[i - 1], `viewer-2: seq ${seq2[i]} after ${seq2[i - 1]}`);
  assert.equal(b.seqs.last, a.seqs.last, 'viewer-2 received through the last frame');
  // The same samples as viewer-1 for the same seqs: the file from viewer-2's first sample on.
  const offset = samplesInSeqOrder(a.frames.filter((f) => f.seq < b.frames[0].seq), ch).length;
  const got2 = samplesInSeqOrder(b.frames, ch);
  const diff2 = firstDifference(got2, ecg.slice(offset, EXPECTED));
  assert.equal(diff2, null, `viewer-2 samples differ from the file (from sample ${offset}) at ${safeJson(diff2)}`);
  assert.equal(offset + got2.length, EXPECTED);
  console.log(`viewer-2: ${hist.length} history frames (seq ${hist[0].seq}..${hist.at(-1).seq}) then ${live.length} live (seq ${live[0].seq}..${live.at(-1).seq}); samples ${offset}..${EXPECTED - 1} of the file`);
});
