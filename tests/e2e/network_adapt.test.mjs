// Consults on rural and cellular links (issue 6). The clinic publishes a 1280x720 camera from
// this namespace; the specialist's browser sits behind an emulated link (lib/netns.mjs
// makeEmulatedLink; this kernel has no netem). Phase 1: clean, 10 s. Phase 2: 500 kbit/s,
// 3 % loss, 150 ms each way, 25 s: audio and video keep flowing, the server moves the
// specialist to the low simulcast layer within 2 s, and from 4 s on every second has decoded
// frames. Phase 3: limit lifted: the layer and the received size go back up. Samples
// (lib/quality.mjs) go to the artefacts as JSON.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ARTIFACTS, safeJson, sleep } from './lib/server.mjs';
import { expectMediaFrom } from './lib/browser.mjs';
import { QualitySampler, startImpairedConsult, summarize, deltas, describeSummary } from './lib/quality.mjs';

const CLINIC = 'dr-clinic';
const SHAPED = { rateKbit: 500, lossPct: 3, delayMs: 150 };
const CLEAN_S = 10;
const SHAPED_S = 25;
// After the limit starts, before every second must show decoded frames: the 2 s the issue
// allows for the drop, the low layer's keyframe, and the sampler's 1 s steps.
const SETTLE_S = 4;
// The low layer must be reported within the 2 s, seen through 1 s samples.
const DOWN_WITHIN_S = 3;
// Before phase 1: the call's first layer choices (tile size, estimate) and the clinic
// browser's ramp-up of its own layers (`h` and `f` start 3-4 s after `q`). In about a
// quarter of runs the specialist's picture stalls once for about 3 s some 7 s into the call,
// on the clean link, with no layer change on the server; not explained yet (issue 6 note),
// so phase 1 measures the call after that. Once in 25 runs it came later (16 s into the
// call, in CI) and failed phase 1; that is left visible, not waited out.
const WARM_UP_S = 15;
// Without probing, the estimate climbs back slowly past the capacity it last saw (1 % a
// second, so that an upgrade the path cannot carry is tried seldom): 9-14 s measured
// (24-26 s before a step in delay stopped being cut as a queue).
const UP_WITHIN_S = 45;
const MAX_CONCEALED = 0.15; // audio concealment while shaped (3 % loss, no retransmission)

let consult;
let sampler;
// The clinic's view of the specialist's camera (its uplink is shaped too): checked on the
// clean link, printed per phase.
let clinicSampler;
const phase = {};

before(async () => {
  consult = await startImpairedConsult({ name: 'network_adapt', linkName: 'lemadapt', clinicId: CLINIC });
  assert.ok(consult, 'ffmpeg is installed (the clinic camera is a 1280x720 clip made at test time)');
  await expectMediaFrom(consult.specialist, CLINIC, { timeout: 30_000 });
  await sleep(WARM_UP_S * 1000);
  sampler = new QualitySampler(consult.specialist, CLINIC).start();
  clinicSampler = new QualitySampler(consult.clinic, 'dr-specialist').start();
}, { timeout: 120_000 });

after(async () => {
  await sampler?.stop();
  await clinicSampler?.stop();
  for (const [name, p] of Object.entries(phase)) {
    if (p.from && p.to) console.log(`clinic receiving the specialist, ${name}: ${describeSummary(summarize(clinicSampler.between(p.from, p.to)))}`);
  }
  if (sampler) {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const linkStats = await consult?.link.stats().catch((e) => e.message);
    fs.writeFileSync(path.join(ARTIFACTS, 'network_adapt.samples.json'), JSON.stringify({ phase, linkStats, ...sampler.toJSON(), clinic: clinicSampler.toJSON() }, null, 1));
  }
  await consult?.close();
});

/** For failure messages: whether the server still has the specialist in the room. */
async function roomNote() {
  const [mine, clinics] = await Promise.all([consult.specialist.state(), consult.clinic.state()]);
  const seen = clinics.remoteParticipants.some((p) => p.id === mine.participantId);
  return seen ? '' : `\nthe server dropped the specialist from the room (the clinic no longer lists it; its page says joined=${mine.joined})\n--- server log ---\n${consult.server.logTail(15)}`;
}

/** Intervals (consecutive sample pairs) in [from, to] where `pred(delta, sample)` fails. */
function failingIntervals(from, to, pred, on = sampler) {
  const s = on.between(from, to);
  const bad = [];
  for (let i = 1; i < s.length; i++) {
    const d = deltas(s[i - 1], s[i]);
    if (!pred(d, s[i])) bad.push({ atS: +((s[i].t - from) / 1000).toFixed(1), ...d, height: s[i].video.frameHeight, layer: s[i].layer });
  }
  return { bad, intervals: s.length - 1 };
}

test('phase 1, clean link: each side decodes the other', { timeout: 60_000 }, async () => {
  phase.clean = { from: sampler.mark('clean') };
  await sleep(CLEAN_S * 1000);
  phase.clean.to = Date.now();
  const q = summarize(sampler.between(phase.clean.from, phase.clean.to));
  phase.clean.summary = q;
  console.log(`clean: ${describeSummary(q)}`);
  assert.ok(q.fps >= 10, `clean link: ${describeSummary(q)}`);
  assert.equal(q.stalledIntervals, 0, `clean link: ${describeSummary(q)}`);
  // The size is the page's and the sender's choice (CPU, bandwidth estimate): only check it is known.
  assert.ok(q.avgHeight > 0, `clean link: ${describeSummary(q)}`);
  // The other way, from the specialist's browser, which has a loopback and a link address:
  // its media keeps coming (the server stays on the pair the browser uses).
  const back = failingIntervals(phase.clean.from, phase.clean.to, (d) => d.frames > 0 && d.audioSamples > d.concealed, clinicSampler);
  assert.deepEqual(back.bad, [], `seconds in which the clinic got no video frame or no real audio from the specialist (of ${back.intervals})`);
});

test('phase 2, 500 kbit/s 3 % loss 150 ms: audio and video keep flowing', { timeout: 90_000 }, async () => {
  await consult.link.shape(SHAPED);
  phase.shaped = { from: sampler.mark('shaped'), ...SHAPED };
  await sleep(SHAPED_S * 1000);
  phase.shaped.to = Date.now();
  const q = summarize(sampler.between(phase.shaped.from + SETTLE_S * 1000, phase.shaped.to));
  phase.shaped.summary = q;
  console.log(`shaped (after ${SETTLE_S} s): ${describeSummary(q)}; link ${safeJson((await consult.link.stats()).down)}`);

  const room = await roomNote();
  // Concealed samples count in totalSamplesReceived too: some must be real.
  const audio = failingIntervals(phase.shaped.from, phase.shaped.to, (d) => d.audioSamples > 0 && d.audioSamples > d.concealed);
  assert.deepEqual(audio.bad, [], `seconds without received audio while shaped (of ${audio.intervals})${room}`);
  assert.ok(q.audioConcealedShare !== null && q.audioConcealedShare <= MAX_CONCEALED, `audio concealed: ${describeSummary(q)}`);
  const video = failingIntervals(phase.shaped.from + SETTLE_S * 1000, phase.shaped.to, (d) => d.frames > 0);
  assert.deepEqual(video.bad, [], `seconds without a decoded frame after ${SETTLE_S} s shaped (of ${video.intervals})${room}`);
});

test('phase 2: the server moved the specialist to the low layer [needs server simulcast]', { timeout: 10_000 }, async () => {
  assert.ok(phase.shaped?.to, 'phase 2 ran');
  const s = sampler.between(phase.shaped.from + SETTLE_S * 1000, phase.shaped.to);
  const last = s[s.length - 1];
  assert.ok(last?.layer, `no medrelayState().quality entry for the clinic's video track while shaped; last sample ${safeJson(last)}`);
  assert.deepEqual({ rid: last.layer.rid, paused: last.layer.paused }, { rid: 'q', paused: false }, `layer at the end of phase 2: ${safeJson(last.layer)}`);
  phase.shaped.maxHeight = Math.max(...s.map((x) => x.video.frameHeight));
  // How long after the limit started the server reported the low layer (a figure, printed).
  const low = sampler.between(phase.shaped.from, phase.shaped.to).find((x) => x.layer?.rid === 'q');
  phase.shaped.lowLayerAfterS = low ? (low.t - phase.shaped.from) / 1000 : null;
  console.log(`low layer ${phase.shaped.lowLayerAfterS} s after the limit started`);
  assert.ok(low && phase.shaped.lowLayerAfterS <= DOWN_WITHIN_S, `the low layer was reported ${phase.shaped.lowLayerAfterS} s after the limit started (at most ${DOWN_WITHIN_S} s with 1 s samples)`);
});

test('phase 3, limit lifted: audio and video keep flowing; layer and size go back up [layer needs server simulcast]', { timeout: 90_000 }, async () => {
  assert.ok(phase.shaped?.to, 'phase 2 ran');
  const shaped = sampler.between(phase.shaped.from + SETTLE_S * 1000, phase.shaped.to);
  const shapedHeight = shaped.length ? shaped[shaped.length - 1].video.frameHeight : 0;
  await consult.link.unshape();
  phase.lifted = { from: sampler.mark('lifted'), shapedHeight };
  let up = null;
  while (!up && Date.now() - phase.lifted.from < UP_WITHIN_S * 1000) {
    await sleep(1000);
    const last = sampler.samples[sampler.samples.length - 1];
    if (last.t > phase.lifted.from && ['h', 'f'].includes(last.layer?.rid) && last.video.frameHeight > shapedHeight) up = last;
  }
  phase.lifted.to = Date.now();
  phase.lifted.upAfterS = up ? (up.t - phase.lifted.from) / 1000 : null;
  const q = summarize(sampler.between(phase.lifted.from, phase.lifted.to));
  phase.lifted.summary = q;
  console.log(`lifted: ${describeSummary(q)}; back up after ${phase.lifted.upAfterS ?? 'never'} s`);

  const flow = failingIntervals(phase.lifted.from, phase.lifted.to, (d) => d.frames > 0 && d.audioSamples > d.concealed);
  assert.deepEqual(flow.bad, [], `seconds without decoded video or received audio after the limit was lifted (of ${flow.intervals})${await roomNote()}`);
  const last = sampler.samples[sampler.samples.length - 1];
  assert.ok(up, `within ${UP_WITHIN_S} s of lifting the limit, no layer h/f with frameHeight above ${shapedHeight} (at the end of the limit); last sample ${safeJson(last)}`);
});
