// The impairment bench (bench/impairment.sh starts it in a namespace with only `lo`).
// One consult (tests/e2e/lib/quality.mjs startImpairedConsult): the clinic publishes a
// 1280x720 clip unimpaired, the specialist receives it behind an emulated link. For each
// profile: shape the link, warm up, then sample the specialist's getStats() once a second
// for the measured duration and summarise it. The outage profile cuts the link for 10 s in
// the middle of its window and times the first decoded frame after the restore.

import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { ROOT, ARTIFACTS, sleep } from '../../tests/e2e/lib/server.mjs';
import { expectMediaFrom } from '../../tests/e2e/lib/browser.mjs';
import { metricsText, metricValue } from '../../tests/e2e/lib/api.mjs';
import { QualitySampler, startImpairedConsult, summarize, takeSample, timeToRecover, describeSummary } from '../../tests/e2e/lib/quality.mjs';

const PROFILES = {
  clean: { label: 'clean', shape: null },
  '1mbit': { label: '1 Mbit/s, 1 % loss, 100 ms', shape: { rateKbit: 1000, lossPct: 1, delayMs: 100 } },
  '500k': { label: '500 kbit/s, 3 % loss, 150 ms', shape: { rateKbit: 500, lossPct: 3, delayMs: 150 } },
  outage: { label: 'clean, 10 s outage mid-window', shape: null, outageS: 10 },
};
const CLINIC = 'dr-clinic';
const BEGIN = '<!-- impairment-bench:begin -->';
const END = '<!-- impairment-bench:end -->';

function parseArgs(argv) {
  const o = { duration: 40, warmup: 10, profiles: Object.keys(PROFILES), write: true, fec: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--duration') o.duration = Number(argv[++i]);
    else if (a === '--warmup') o.warmup = Number(argv[++i]);
    else if (a === '--profiles') o.profiles = argv[++i].split(',');
    else if (a === '--no-write') o.write = false;
    // The server without RED and ULPFEC parity (--fec=false): printed only.
    else if (a === '--no-fec') Object.assign(o, { fec: false, write: false });
    else throw new Error(`unknown argument ${a} (--duration S, --warmup S, --profiles a,b, --no-write, --no-fec)`);
  }
  for (const p of o.profiles) if (!PROFILES[p]) throw new Error(`unknown profile ${p}; known: ${Object.keys(PROFILES).join(', ')}`);
  if (!(o.duration >= 5) || !(o.warmup >= 0)) throw new Error('--duration must be >= 5 s, --warmup >= 0');
  if (o.profiles.includes('outage') && o.duration < 20) throw new Error('the outage profile needs --duration >= 20');
  return o;
}

/** Is the specialist still in the room, for itself and as the clinic sees it? */
async function inRoom(consult) {
  const [mine, clinics] = await Promise.all([consult.specialist.state().catch(() => null), consult.clinic.state()]);
  return !!mine?.joined && clinics.remoteParticipants.some((p) => p.id === mine.participantId);
}

/** ULPFEC parity packets the server has sent (to either participant). */
async function parityPackets(consult) {
  return metricValue(await metricsText(consult.server), 'medrelay_fec_packets_total') ?? 0;
}

async function runProfile(consult, name, o) {
  const p = PROFILES[name];
  const notes = [];
  await consult.link.unshape();
  // A profile starts from a working session: the one before may have lost it.
  if (!(await inRoom(consult))) {
    notes.push('specialist rejoined before the profile');
    await consult.reopenSpecialist();
  }
  await expectMediaFrom(consult.specialist, CLINIC, { timeout: 30_000 });
  if (p.shape) await consult.link.shape(p.shape);
  await sleep(o.warmup * 1000);
  const linkBefore = await consult.link.stats();
  const fecBefore = await parityPackets(consult);
  const sampler = new QualitySampler(consult.specialist, CLINIC).start();
  const from = sampler.mark('measure');
  let recoveryS;
  if (p.outageS) {
    await sleep(((o.duration - p.outageS) / 2) * 1000);
    await consult.link.cut();
    sampler.mark('cut');
    await sleep(p.outageS * 1000);
    const before = await takeSample(consult.specialist, CLINIC);
    await consult.link.restore();
    const restoredAt = sampler.mark('restore');
    recoveryS = await timeToRecover(consult.specialist, CLINIC, restoredAt, { before, timeoutMs: Math.max(5, (o.duration - p.outageS) / 2) * 1000 });
  }
  await sleep(Math.max(0, from + o.duration * 1000 - Date.now()));
  await sampler.stop();
  const linkAfter = await consult.link.stats();
  const parity = (await parityPackets(consult)) - fecBefore;
  if (parity > 0) notes.push(`${parity} ULPFEC parity packets sent`);
  const q = summarize(sampler.samples);
  const lost = sampler.samples.find((s) => !s.joined);
  if (lost) notes.push(`the specialist's page lost its session at +${((lost.t - from) / 1000).toFixed(0)} s`);
  else if (!(await inRoom(consult))) notes.push('the server dropped the specialist from the room');
  const down = Object.fromEntries(['offered', 'bytes_offered', 'forwarded', 'bytes', 'dropped_loss', 'dropped_queue', 'dropped_cut'].map((k) => [k, linkAfter.down[k] - linkBefore.down[k]]));
  const row = { profile: name, label: p.label, shape: p.shape, ...q, recoveryS, notes, linkDown: down };
  fs.writeFileSync(path.join(ARTIFACTS, `impairment.${name}.json`), JSON.stringify({ row, ...sampler.toJSON() }, null, 1));
  console.log(`${name}: ${describeSummary(q)}${p.outageS ? `; recovery ${recoveryS ?? 'none'} s` : ''}; link down: offered ${(down.bytes_offered * 8 / 1000 / q.seconds).toFixed(0)} kbit/s, forwarded ${(down.bytes * 8 / 1000 / q.seconds).toFixed(0)} kbit/s${notes.length ? `; ${notes.join('; ')}` : ''}`);
  return row;
}

const pct = (x) => (x === null || x === undefined ? 'n/a' : `${(100 * x).toFixed(1)} %`);

function table(rows, o) {
  const lines = [
    '| profile | video frozen | avg received size | frames/s | audio concealed | recovery after outage | sent to the link / delivered | notes |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const r of rows) {
    const rec = r.profile === 'outage' ? (r.recoveryS === null ? 'none' : `${r.recoveryS.toFixed(1)} s`) : '';
    const kbit = (b) => `${Math.round((b * 8) / 1000 / r.seconds)}`;
    const frozen = `${pct(r.freezeShare)}${r.freezeSource === 'totalFreezesDuration' ? '' : ' ¹'}`;
    lines.push(`| ${r.label} | ${frozen} | ${Math.round(r.avgWidth)}x${Math.round(r.avgHeight)} | ${r.fps.toFixed(1)} | ${pct(r.audioConcealedShare)} | ${rec} | ${kbit(r.linkDown.bytes_offered)} / ${kbit(r.linkDown.bytes)} kbit/s | ${r.notes.join('; ')} |`);
  }
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
  } catch {
    /* not a checkout */
  }
  const when = new Date().toISOString().slice(0, 16).replace('T', ' ');
  lines.push('');
  lines.push(`Run of ${when} UTC at ${commit}: \`bash bench/impairment.sh --duration ${o.duration} --warmup ${o.warmup}\`, one run per profile, each measured for ${o.duration} s after ${o.warmup} s of warm-up on the profile. Frozen: Chromium's \`totalFreezesDuration\` growth over wall time (¹ where missing: seconds without a decoded frame). Sizes are time-weighted; "sent to the link / delivered" is what the server sent towards the specialist and what the emulated link let through.`);
  return lines.join('\n');
}

function writeSection(file, text) {
  const doc = fs.readFileSync(file, 'utf8');
  const a = doc.indexOf(BEGIN);
  const b = doc.indexOf(END);
  if (a < 0 || b < a) throw new Error(`${file} lacks the ${BEGIN} ... ${END} markers`);
  fs.writeFileSync(file, `${doc.slice(0, a + BEGIN.length)}\n${text}\n${doc.slice(b)}`);
}

const o = parseArgs(process.argv.slice(2));
fs.mkdirSync(ARTIFACTS, { recursive: true });
const consult = await startImpairedConsult({ name: 'impairment', linkName: 'lembench', clinicId: CLINIC, serverArgs: o.fec ? [] : ['--fec=false'] });
if (!consult) throw new Error('ffmpeg is missing');
const rows = [];
try {
  for (const name of o.profiles) rows.push(await runProfile(consult, name, o));
} finally {
  await consult.close();
}
const text = table(rows, o);
console.log(`\n${text}`);
if (o.write) {
  writeSection(path.join(ROOT, 'docs', 'benchmarks.md'), text);
  console.log('\nwritten to docs/benchmarks.md');
}
