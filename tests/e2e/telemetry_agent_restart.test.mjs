// An agent killed with a backlog loses nothing: while the agent replays the real record, the
// gateway is frozen (SIGSTOP) for 6 s so frames pile up unacknowledged in the agent's spool;
// the agent is SIGKILLed during the freeze, the gateway resumes, and the agent is started
// again with the same --spool. It sends the spooled backlog and resumes the record at the
// next unsent sample. A viewer attached throughout receives every sample of the file's
// prefix exactly once.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startServer, waitFor, safeJson, sleep } from './lib/server.mjs';
import {
  ECG, readEcg, ecgSourceArgs, spawnAgent, touchStream, Viewer, tempDir, nowMs,
  samplesInSeqOrder, seqReport, firstDifference, FLAG_LATE,
} from './lib/telemetry.mjs';

const STREAM = 'AMB-3';
const RUN1_S = 40; // the first run would replay 40 s; it is killed at ~14 s
const RUN2_S = 12; // the second run replays 12 s more after the resume point

let server;
let spool;
let viewer;
const agents = [];

before(async () => {
  server = await startServer({ name: 'telemetry_agent_restart' });
  spool = tempDir('medrelay-restart-spool');
}, { timeout: 60_000 });

after(async () => {
  for (const a of agents) a.kill('SIGKILL');
  server?.signal('SIGCONT');
  viewer?.terminate();
  await server?.stop();
  if (spool) fs.rmSync(spool, { recursive: true, force: true });
});

test('SIGKILL with a spooled backlog, restart with the same spool: every sample exactly once', { timeout: 150_000 }, async () => {
  const ecg = readEcg();
  const crew = await server.token({ ambulance: STREAM, role: 'crew' });
  const er = await server.token({ identity: 'Dr Wang', role: 'er' });
  await touchStream(server, crew);
  viewer = await Viewer.open(server, er, { name: 'er-viewer', stream: STREAM });
  const args = (secs) => ['--gateway', server.wsBase, '--token', crew, ...ecgSourceArgs(), '--duration', String(secs), '--spool', spool];
  const failInfo = (a) => `\nviewer: ${viewer.describe()}\n--- agent log ---\n${a?.logTail(40)}\n--- server log ---\n${server.logTail(30)}`;

  const first = spawnAgent({ name: 'telemetry_agent_restart.run1', args: args(RUN1_S) });
  agents.push(first);
  await waitFor(() => viewer.frames.length >= 25 * 8, { timeout: 20_000, message: '8 s of frames from the first run' }).catch((e) => {
    throw new Error(e.message + failInfo(first));
  });

  // Freeze the gateway: the agent keeps producing into its spool, nothing is acknowledged.
  server.signal('SIGSTOP');
  const stoppedAt = nowMs();
  const framesAtStop = viewer.frames.length;
  await sleep(6000);
  first.kill('SIGKILL');
  const killed = await first.waitExit(5000);
  assert.equal(killed.signal, 'SIGKILL');
  server.signal('SIGCONT');
  console.log(`gateway frozen ${((nowMs() - stoppedAt) / 1000).toFixed(1)} s; agent killed during the freeze (viewer had ${framesAtStop} frames)`);
  const spoolFiles = fs.readdirSync(spool, { recursive: true });
  assert.ok(spoolFiles.length > 0, 'the spool dir is empty after the kill');

  // Whatever the killed run had sent before the freeze reaches the viewer; then restart.
  await sleep(1500);
  const beforeRestart = viewer.frames.length;
  const maxSeqBefore = Math.max(...viewer.frames.map((f) => f.seq));
  const second = spawnAgent({ name: 'telemetry_agent_restart.run2', args: args(RUN2_S) });
  agents.push(second);
  const exit = await second.waitExit(RUN2_S * 1000 + 60_000);
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, `second run's exit${failInfo(second)}`);
  await sleep(500);

  const frames = viewer.streamFrames(STREAM);
  const layouts = viewer.of('layout').filter((m) => m.stream === STREAM);
  const numericSeqs = viewer.of('numerics').filter((m) => m.stream === STREAM).map((m) => m.seq);
  const rep = seqReport([...frames.map((f) => f.seq), ...numericSeqs]);
  assert.equal(rep.dups.length, 0, `duplicate seqs reached the viewer: ${rep.dups.slice(0, 20)}${failInfo(second)}`);
  // The restarted agent sends its layout again (a new seq, shown to viewers without seq).
  assert.ok(rep.missing.length <= Math.max(0, layouts.length - 1), `seqs missing: ${rep.missing.slice(0, 40)} (${layouts.length} layout messages)${failInfo(second)}`);
  const got = samplesInSeqOrder(frames, layouts[0]?.channels?.[0]?.index ?? 0);
  const diff = firstDifference(got, ecg.slice(0, got.length));
  assert.equal(diff, null, `samples (in seq order) differ from the file at ${safeJson(diff)}${failInfo(second)}`);
  // The first run produced at least ~14 s before the kill; the second added RUN2_S more.
  const minimum = ECG.rate * (14 + RUN2_S) - ECG.rate; // a second of slack on the kill time
  assert.ok(got.length >= minimum, `only ${got.length} samples (expected ≥ ${minimum}): the backlog or the resumed part is missing`);
  const afterRestart = frames.filter((f) => f.seq > maxSeqBefore);
  const late = afterRestart.filter((f) => f.flags & FLAG_LATE);
  console.log(
    `${got.length} samples (= the file's first ${got.length}, ${(got.length / ECG.rate).toFixed(2)} s) in ${frames.length} frames, seq ${rep.first}..${rep.last}; ` +
      `${beforeRestart} frames before the restart, ${afterRestart.length} after (${late.length} flagged late: the spooled backlog)`,
  );
  // At least the frames produced after the agent stopped sending (it gives up on a silent
  // connection after a few seconds) exist only in the spool: they arrive late, after the restart.
  assert.ok(late.length >= 25, `the spooled backlog should arrive late after the restart: ${late.length} late frames`);
});
