// The ambulance's link drops for 30 seconds mid-stream. The agent runs in its own network
// namespace, joined to the gateway's by a veth pair (10.77.0.2 ⇄ 10.77.0.1, TLS); the link
// is cut by setting the gateway side down, then restored. A viewer on the gateway side sees
// the silence alarm raised during the cut and cleared after it, gets every sample of the
// real record exactly once (the back-filled stretch flagged `late`), and the agent exits 0
// once everything is acknowledged. Prints restore → first live frame and restore → gap closed.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startServer, waitFor, safeJson, sleep } from './lib/server.mjs';
import {
  ECG, readEcg, ecgSourceArgs, makeTlsCert, spawnAgent, touchStream, Viewer, tempDir, nowMs,
  samplesInSeqOrder, seqReport, firstDifference, FLAG_LATE, FLAG_HISTORY,
} from './lib/telemetry.mjs';
import { makeVethNamespace } from './lib/netns.mjs';

const STREAM = 'AMB-12';
const DURATION_S = 75;
const CUT_AT_S = 15;
const CUT_FOR_S = 30;
const EXPECTED = ECG.rate * DURATION_S;

let link;
let server;
let cert;
let spool;
let viewer;
let agent;

before(async () => {
  link = await makeVethNamespace();
  cert = makeTlsCert({ name: 'telemetry-link-cut', ips: ['127.0.0.1', link.hostIp] });
  // Plain HTTP off loopback is refused without --insecure: the gateway serves TLS on the veth.
  server = await startServer({ name: 'telemetry_link_cut', host: link.hostIp, tls: cert });
  spool = tempDir('medrelay-linkcut-spool');
}, { timeout: 60_000 });

after(async () => {
  agent?.kill('SIGKILL');
  viewer?.terminate();
  await server?.stop();
  await link?.destroy();
  for (const d of [cert?.dir, spool]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

test('a 30 s link cut: silence alarm, every sample exactly once, back-fill flagged late', { timeout: 150_000 }, async () => {
  const ecg = readEcg();
  const crew = await server.token({ ambulance: STREAM, role: 'crew' });
  const er = await server.token({ identity: 'Dr Wang', role: 'er' });
  await touchStream(server, crew);
  viewer = await Viewer.open(server, er, { name: 'er-viewer', stream: STREAM });

  agent = spawnAgent({
    name: 'telemetry_link_cut',
    netns: link.ns,
    args: ['--gateway', `wss://${link.hostIp}:${server.port}`, '--token', crew, '--ca', cert.ca, ...ecgSourceArgs(), '--duration', String(DURATION_S), '--spool', spool],
  });
  const failInfo = () => `\nviewer: ${viewer.describe()}\n--- agent log ---\n${agent.logTail(40)}\n--- server log ---\n${server.logTail(30)}`;

  await waitFor(() => viewer.frames.length > 0, { timeout: 10_000, message: 'the first frame from the agent in the other namespace' }).catch((e) => {
    throw new Error(e.message + failInfo());
  });
  const firstFrameAt = viewer.frames[0].at;
  await sleep(Math.max(0, firstFrameAt + CUT_AT_S * 1000 - nowMs()));
  assert.equal(agent.exit, null, `agent exited before the cut: ${safeJson(agent.exit)}${failInfo()}`);

  // --- cut
  await link.cut();
  const cutAt = nowMs();
  const framesBeforeCut = viewer.frames.length;
  console.log(`link cut at +${((cutAt - firstFrameAt) / 1000).toFixed(1)} s (${framesBeforeCut} frames received)`);
  const silent = await viewer
    .next((m) => m.type === 'alarm' && m.alarm.condition === 'silent' && m.alarm.state === 'active', { timeout: 12_000 })
    .catch((e) => {
      throw new Error(`no silence alarm within 12 s of the cut: ${e.message}${failInfo()}`);
    });
  const silentAfter = viewer.alarmEvents().find((a) => a.id === silent.alarm.id).at - cutAt;
  console.log(`silence alarm ${silent.alarm.id} raised ${Math.round(silentAfter)} ms after the cut: ${safeJson(silent.alarm)}`);
  assert.equal(silent.alarm.kind, 'technical', safeJson(silent.alarm));
  assert.equal(silent.alarm.vital, null, safeJson(silent.alarm));
  assert.equal(silent.alarm.priority, 'medium', safeJson(silent.alarm));
  assert.ok(silentAfter >= 3000, `silence alarm only ${silentAfter} ms after the cut (5 s of silence expected)`);
  await sleep(Math.max(0, cutAt + CUT_FOR_S * 1000 - nowMs()));
  const receivedDuringCut = viewer.frames.filter((f) => f.at > cutAt + 1000).length;

  // --- restore
  await link.restore();
  const restoreAt = nowMs();
  console.log(`link restored after ${((restoreAt - cutAt) / 1000).toFixed(1)} s; ${receivedDuringCut} frames arrived during the cut`);
  assert.equal(receivedDuringCut, 0, 'frames arrived while the link was down: the cut did not cut');

  const cleared = await viewer
    .next((m) => m.type === 'alarm' && m.alarm.id === silent.alarm.id && m.alarm.state === 'cleared', { timeout: 30_000 })
    .catch((e) => {
      throw new Error(`the silence alarm was not cleared within 30 s of the restore: ${e.message}${failInfo()}`);
    });
  assert.ok(cleared.alarm.cleared_at_ms >= cutAt - 1000, safeJson(cleared.alarm));

  const exit = await agent.waitExit(DURATION_S * 1000 + 60_000 - (nowMs() - firstFrameAt));
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, `agent exit${failInfo()}`);
  await sleep(500);

  // --- every sample exactly once, in seq order the file's prefix
  const frames = viewer.streamFrames(STREAM);
  const layouts = viewer.of('layout').filter((m) => m.stream === STREAM);
  const numericSeqs = viewer.of('numerics').filter((m) => m.stream === STREAM).map((m) => m.seq);
  const rep = seqReport([...frames.map((f) => f.seq), ...numericSeqs]);
  assert.equal(rep.dups.length, 0, `duplicate seqs reached the viewer: ${rep.dups.slice(0, 20)}`);
  // A layout frame has a seq but reaches viewers as a `layout` message without it.
  assert.ok(rep.missing.length <= Math.max(0, layouts.length - 1), `seqs missing at the viewer: ${rep.missing.slice(0, 40)} (${layouts.length} layout messages)${failInfo()}`);
  const got = samplesInSeqOrder(frames, layouts[0]?.channels?.[0]?.index ?? 0);
  const diff = firstDifference(got, ecg.slice(0, EXPECTED));
  assert.equal(got.length, EXPECTED, `received ${got.length} samples, the agent sent ${EXPECTED}`);
  assert.equal(diff, null, `samples differ from the file at ${safeJson(diff)}`);
  assert.equal(frames.filter((f) => f.flags & FLAG_HISTORY).length, 0, 'no history frames for a viewer subscribed throughout');

  // --- the back-fill: every frame captured before the restore that arrived after it
  const after = frames.filter((f) => f.at >= restoreAt);
  console.log(`first frames after the restore: ${safeJson(after.slice(0, 8).map((f) => ({ seq: f.seq, flags: f.flags, ms_after_restore: Math.round(f.at - restoreAt), captured_ms_before_restore: Math.round(restoreAt - f.captureUs / 1000) })))}`);
  const firstLive = after.find((f) => f.captureUs / 1000 >= restoreAt - 1000 && !(f.flags & FLAG_LATE));
  assert.ok(firstLive, `no live frame after the restore${failInfo()}`);
  const maxBefore = Math.max(...frames.filter((f) => f.at < restoreAt).map((f) => f.seq));
  const backfill = after.filter((f) => f.captureUs / 1000 < restoreAt - 1000);

  // --- timings: restore → first live frame, restore → gap closed (contiguous again)
  const byArrival = [...frames].sort((x, y) => x.at - y.at);
  const have = new Set(numericSeqs);
  let contiguousThrough = rep.first - 1;
  let maxSeen = 0;
  let gapClosedAt = null;
  for (const f of byArrival) {
    have.add(f.seq);
    maxSeen = Math.max(maxSeen, f.seq);
    while (have.has(contiguousThrough + 1) || rep.missing.includes(contiguousThrough + 1)) contiguousThrough++;
    if (f.at >= restoreAt && f.seq > maxBefore && contiguousThrough >= maxSeen && contiguousThrough >= firstLive.seq) {
      gapClosedAt = f.at;
      break;
    }
  }
  const toLive = firstLive.at - restoreAt;
  const toClosed = gapClosedAt === null ? null : gapClosedAt - restoreAt;
  const lateTotal = frames.filter((f) => f.flags & FLAG_LATE).length;
  console.log(`restore → first live frame: ${Math.round(toLive)} ms (seq ${firstLive.seq})`);
  console.log(`restore → gap closed: ${toClosed === null ? 'never' : `${Math.round(toClosed)} ms`} (${backfill.length} back-filled frames, ${lateTotal} flagged late in all)`);
  console.log(`agent exited ${((exit.at - restoreAt) / 1000).toFixed(1)} s after the restore; ${got.length} samples, seq ${rep.first}..${rep.last}`);
  assert.ok(gapClosedAt, 'the gap never closed');
  const notLate = backfill.filter((f) => !(f.flags & FLAG_LATE));
  assert.ok(backfill.length >= 25 * (CUT_FOR_S - 6), `back-filled frames: ${backfill.length}, expected about ${25 * CUT_FOR_S} (30 s at 25 frames/s)`);
  assert.deepEqual(
    notLate.map((f) => ({ seq: f.seq, flags: f.flags, ms_after_restore: Math.round(f.at - restoreAt) })),
    [],
    `${notLate.length} of ${backfill.length} back-filled frames (captured before the restore, received after it) are not flagged late`,
  );
  const lateBeforeCut = frames.filter((f) => f.at < cutAt && f.flags & FLAG_LATE).length;
  assert.equal(lateBeforeCut, 0, 'frames flagged late before any outage');
  assert.ok(toLive < 20_000, `first live frame ${toLive} ms after the restore`);
});
