// Recording a consult between two headless Chromium pages, and what the records must hold up
// to: every track read by ffprobe (not our code) with the right codec and duration and
// decoded by ffmpeg without error; a kill -9 mid-recording recovered on restart to within
// 2 s of the kill; another room's observer refused; a flipped byte detected; an edited
// audit entry named by `medrelay audit verify`; expiry that spares a recording on legal hold.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import path from 'node:path';
import { startServer, waitFor, safeJson, sleep, BIN, ARTIFACTS } from './lib/server.mjs';
import { launchBrowser, openParticipant, expectMediaFrom } from './lib/browser.mjs';
import { api, metricsText, metricValue } from './lib/api.mjs';
import { RawClient } from './lib/ws.mjs';

const execFileP = promisify(execFile);
const ROOM = 'consult-recorded';
const RECORD_SECONDS = 10;
let server;
let browser;
const people = [];
let first; // the first recording: { id, detail, stoppedAt }

before(async () => {
  server = await startServer({ name: 'recording' });
  browser = await launchBrowser();
  people.push(await openParticipant(browser, server, { room: ROOM, identity: 'clinic-rec', role: 'clinic' }));
  people.push(await openParticipant(browser, server, { room: ROOM, identity: 'specialist-rec', role: 'specialist' }));
  const [clinic, specialist] = people;
  await Promise.all([
    expectMediaFrom(clinic, 'specialist-rec', { timeout: 20_000 }),
    expectMediaFrom(specialist, 'clinic-rec', { timeout: 20_000 }),
  ]);
}, { timeout: 90_000 });

after(async () => {
  for (const p of people) await p.close();
  await browser?.close();
  await server?.stop();
});

async function bearer(url, token, headers = {}) {
  return fetch(url, { headers: { Authorization: `Bearer ${token}`, ...headers }, signal: AbortSignal.timeout(30_000) });
}

/** ffprobe's view of a file: { codec, duration (s) }. */
async function probe(file) {
  const { stdout } = await execFileP('ffprobe', ['-v', 'error', '-show_entries', 'stream=codec_name:format=duration', '-of', 'json', file]);
  const j = JSON.parse(stdout);
  return { codec: j.streams?.[0]?.codec_name, duration: Number(j.format?.duration) };
}

/**
 * ffmpeg's decode errors for a file ('' when it decodes cleanly). Frames keep the file's own
 * millisecond time base (`-enc_time_base -1`): WebRTC video is variable-rate, and two frames
 * a sender gave one RTP timestamp are written 1 ms apart, which the null muxer's default
 * time base (1/frame rate) would round onto one tick and report as a muxing error.
 */
async function decodeErrors(file) {
  const { stderr } = await execFileP('ffmpeg', ['-v', 'error', '-i', file, '-enc_time_base', '-1', '-f', 'null', '-']);
  return stderr.trim();
}

async function download(server, token, id, track, dir) {
  const res = await bearer(`${server.url}/recordings/${id}/tracks/${track.track_id}`, token);
  assert.equal(res.status, 200, `download ${track.track_id}: ${res.status} ${await res.clone().text()}`);
  const bytes = Buffer.from(await res.arrayBuffer());
  assert.equal(bytes.length, Number(res.headers.get('content-length')));
  const file = path.join(dir, `${id}-${track.track_id}.${track.container}`);
  fs.writeFileSync(file, bytes);
  return file;
}

test('a specialist records the consult; ffprobe and ffmpeg read every track', { timeout: 120_000 }, async () => {
  const [clinic, specialist] = people;
  const button = specialist.page.locator('#btn-record');
  await button.waitFor({ state: 'visible', timeout: 5000 });
  assert.equal(await clinic.page.locator('#btn-record').isVisible(), false, 'only specialists get the button');
  const startedAt = Date.now();
  await button.click();
  for (const p of people) {
    await waitFor(async () => (await p.state()).recording !== null, { timeout: 5000, message: `${p.identity} to see the recording start` });
    assert.ok(await p.page.locator('#recording').isVisible(), `${p.identity} shows the recording indicator`);
  }
  const { recording_id: id } = (await clinic.state()).recording;
  await specialist.page.screenshot({ path: path.join(ARTIFACTS, 'recording-indicator.png') });
  // A late joiner is recorded from when it publishes, and sees the indicator at once.
  await sleep(3000);
  const lateJoinAt = Date.now();
  const late = await openParticipant(browser, server, { room: ROOM, identity: 'crew-rec', role: 'crew' });
  people.push(late);
  assert.equal((await late.state()).recording?.recording_id, id, 'joined carries the recording');
  // A screen share that comes and goes, and a muted microphone, are in the record too.
  const screenAt = Date.now();
  await specialist.page.locator('#btn-screen').click();
  await clinic.page.locator('#btn-mic').click();
  await sleep(RECORD_SECONDS * 1000 - 3000);
  await button.click();
  const stoppedAt = Date.now();
  await specialist.page.locator('#btn-screen').click();
  await clinic.page.locator('#btn-mic').click();
  for (const p of people) {
    await waitFor(async () => (await p.state()).recording === null, { timeout: 10_000, message: `${p.identity} to see the recording stop` });
    assert.equal(await p.page.locator('#recording').isVisible(), false);
  }

  const token = await server.token({ room: ROOM, identity: 'specialist-rec', role: 'specialist' });
  const list = await (await bearer(`${server.url}/recordings`, token)).json();
  assert.deepEqual(list.map((r) => r.id), [id], safeJson(list));
  const detail = await (await bearer(`${server.url}/recordings/${id}`, token)).json();
  assert.equal(detail.state, 'complete', safeJson(detail));
  assert.deepEqual(detail.participants.map((p) => p.identity).sort(), ['clinic-rec', 'crew-rec', 'specialist-rec']);
  const tracks = detail.tracks;
  const kinds = tracks.map((t) => `${t.participant}:${t.kind}:${t.codec}`).sort();
  assert.deepEqual(kinds, [
    'clinic-rec:audio:opus', 'clinic-rec:video:vp8', 'crew-rec:audio:opus', 'crew-rec:video:vp8',
    'specialist-rec:audio:opus', 'specialist-rec:screen:vp8', 'specialist-rec:video:vp8',
  ], safeJson(tracks));
  const startsLate = (t) => t.participant === 'crew-rec' || t.kind === 'screen';
  for (const t of tracks.filter(startsLate)) {
    assert.ok(t.start_offset_ms >= 2500, `${t.participant}'s ${t.kind} starts ${t.start_offset_ms} ms in`);
  }

  const dir = fs.mkdtempSync(path.join(ARTIFACTS, 'recording-'));
  for (const t of tracks) {
    assert.equal(t.state, 'complete', safeJson(t));
    assert.match(t.sha256, /^[0-9a-f]{64}$/);
    const file = await download(server, token, id, t, dir);
    const { codec, duration } = await probe(file);
    assert.equal(codec, t.codec, `${t.track_id}: ffprobe says ${codec}`);
    const truth = (t.ended_offset_ms - t.start_offset_ms) / 1000;
    assert.ok(Math.abs(duration - truth) <= 1, `${t.track_id}: ffprobe ${duration} s, recorded ${truth} s`);
    // What the test's own clock saw between start and stop (opening the late joiner's page
    // takes seconds on a loaded machine, so the span is measured, not assumed). A late
    // track began between the late joiner's page opening and the screen share's click.
    const span = (at) => (stoppedAt - at) / 1000;
    const [least, most] = startsLate(t) ? [span(screenAt), span(lateJoinAt)] : [span(startedAt), span(startedAt)];
    assert.ok(truth >= least - 2 && truth <= most + 1, `${t.track_id}: ${truth} s recorded, the test saw ${least.toFixed(1)}-${most.toFixed(1)} s`);
    assert.equal(await decodeErrors(file), '', `${t.track_id}: ffmpeg decode errors`);
  }
  // A range of the plain file.
  const v = tracks.find((t) => t.kind === 'video');
  const part = await bearer(`${server.url}/recordings/${id}/tracks/${v.track_id}`, token, { Range: 'bytes=0-99' });
  assert.equal(part.status, 206);
  assert.equal(part.headers.get('content-range'), `bytes 0-99/${v.bytes}`);
  assert.equal(Buffer.from(await part.arrayBuffer()).subarray(0, 4).toString('hex'), '1a45dfa3', 'an EBML header');
  const beyond = await bearer(`${server.url}/recordings/${id}/tracks/${v.track_id}`, token, { Range: `bytes=${v.bytes}-` });
  assert.equal(beyond.status, 416);
  // The whole consult in one file, the tracks in sync.
  const whole = await bearer(`${server.url}/recordings/${id}/consult`, token);
  assert.equal(whole.status, 200);
  const consultFile = path.join(dir, `${id}-consult.webm`);
  fs.writeFileSync(consultFile, Buffer.from(await whole.arrayBuffer()));
  const { stdout: streamsJson } = await execFileP('ffprobe', ['-v', 'error', '-show_entries', 'stream=codec_name:format=duration', '-of', 'json', consultFile]);
  const merged = JSON.parse(streamsJson);
  assert.deepEqual(merged.streams.map((s) => s.codec_name).sort(), ['opus', 'opus', 'opus', 'vp8', 'vp8', 'vp8', 'vp8'], streamsJson);
  const longest = Math.max(...tracks.map((t) => t.ended_offset_ms)) / 1000;
  assert.ok(Math.abs(Number(merged.format.duration) - longest) <= 1, `consult ${merged.format.duration} s, tracks end at ${longest} s`);
  assert.equal(await decodeErrors(consultFile), '', 'the consult file decodes cleanly');
  const text = await metricsText(server);
  const written = tracks.reduce((a, t) => a + t.bytes, 0);
  assert.ok(metricValue(text, 'medrelay_recorder_bytes_total') >= written * 0.9, 'the recorder counts what it wrote');
  assert.equal(metricValue(text, 'medrelay_recorder_dropped_total'), 0, 'nothing dropped on a quiet machine');
  assert.equal(metricValue(text, 'medrelay_recorder_active'), 0);
  first = { id, detail, stoppedAt };
});

test('another room\'s observer and specialist get 403; a flipped byte is detected, not served', { timeout: 30_000 }, async () => {
  assert.ok(first, 'the recording test ran');
  const track = first.detail.tracks.find((t) => t.kind === 'video');
  const url = `${server.url}/recordings/${first.id}/tracks/${track.track_id}`;
  for (const role of ['observer', 'specialist']) {
    const other = await server.token({ room: 'another-room', identity: `other-${role}`, role });
    const res = await bearer(url, other);
    assert.equal(res.status, 403, `${role} of another room: ${res.status}`);
  }
  const sameRoomObserver = await server.token({ room: ROOM, identity: 'watcher', role: 'observer' });
  assert.equal((await bearer(url, sameRoomObserver)).status, 403, 'observers may not download');
  assert.equal((await fetch(url)).status, 401);

  // Bad requests get typed JSON errors.
  const typed = (r, status, code) => {
    assert.equal(r.status, status, `${r.status} ${r.text}`);
    assert.equal(r.body?.code, code, r.text);
  };
  typed(await api(server, 'GET', '/recordings?colour=red'), 400, 'bad_request');
  typed(await api(server, 'PUT', `/api/recordings/${first.id}/hold`, { body: { hold: true } }), 400, 'bad_request');
  typed(await api(server, 'PUT', `/api/recordings/${first.id}/hold`, { body: 'not json' }), 400, 'bad_request');
  typed(await api(server, 'PUT', '/api/recordings/rec-404/hold', { body: { hold: true, reason: 'x' } }), 404, 'not_found');
  const specialistToken = await server.token({ room: ROOM, identity: 'specialist-rec', role: 'specialist' });
  const asUser = await fetch(`${server.url}/api/recordings/${first.id}/hold`, {
    method: 'PUT',
    headers: { Authorization: `Bearer ${specialistToken}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ hold: true, reason: 'x' }),
  });
  assert.equal(asUser.status, 403, 'legal holds need the API key');
  typed(await api(server, 'GET', `/recordings/${first.id}/tracks/t99-video`), 404, 'not_found');

  const file = path.join(server.dataDir, track.file);
  const bytes = fs.readFileSync(file);
  const at = Math.floor(bytes.length / 2);
  bytes[at] ^= 0x01;
  fs.writeFileSync(file, bytes);
  const token = await server.token({ room: ROOM, identity: 'specialist-rec', role: 'specialist' });
  let served = null;
  try {
    const res = await bearer(url, token);
    served = res.status === 200 ? Buffer.from(await res.arrayBuffer()) : null;
  } catch {
    served = null; // the body was cut: authentication failed mid-stream
  }
  assert.ok(served === null || served.length < track.bytes, `a tampered file was served whole (${served?.length} bytes)`);
  bytes[at] ^= 0x01;
  fs.writeFileSync(file, bytes);
});

test('a room created with record:true is recorded from the first join until the last one leaves', { timeout: 30_000 }, async () => {
  const created = await api(server, 'POST', '/api/rooms', { body: { name: 'auto-recorded', record: true } });
  assert.equal(created.status, 201, safeJson(created.body));
  assert.equal(created.body.record, true);
  const client = await RawClient.connect(server.wsUrl);
  try {
    const token = await server.token({ room: 'auto-recorded', identity: 'nurse-auto', role: 'clinic' });
    const joined = await client.join(token, 'auto-recorded');
    assert.equal(joined.recording?.by, 'room', safeJson(joined));
    const id = joined.recording.recording_id;
    client.send({ type: 'leave' });
    await waitFor(async () => {
      const r = (await api(server, 'GET', `/recordings/${id}`)).body;
      return r?.state === 'complete';
    }, { timeout: 10_000, message: 'the recording to end when the last one leaves' });
    const detail = (await api(server, 'GET', `/recordings/${id}`)).body;
    assert.deepEqual(detail.participants.map((p) => [p.identity, p.role]), [['nurse-auto', 'clinic']]);
    assert.equal(detail.started_by, 'room');
  } finally {
    client.terminate();
  }
});

test('kill -9 mid-recording: after a restart the recording is listed and plays to within 2 s of the kill', { timeout: 120_000 }, async () => {
  const [clinic] = people;
  const on = await api(server, 'PUT', `/api/rooms/${ROOM}/recording`, { body: { on: true } });
  assert.equal(on.status, 200, safeJson(on.body));
  const id = on.body.recording.recording_id;
  await waitFor(async () => (await clinic.state()).recording?.recording_id === id, { timeout: 5000, message: 'the page to show the API-started recording' });
  await sleep(6000);
  const killedAt = Date.now();
  await server.stop({ kill: true, keepDataDir: true });
  for (const p of people) await p.close();
  people.length = 0;
  server = await startServer({ name: 'recording-restart', dataDir: server.dataDir });
  const list = await api(server, 'GET', '/recordings');
  const rec = list.body.find((r) => r.id === id);
  assert.ok(rec, `recording ${id} listed after the restart: ${safeJson(list.body)}`);
  assert.equal(rec.state, 'recovered');
  const detail = (await api(server, 'GET', `/recordings/${id}`)).body;
  assert.equal(detail.tracks.length, 6, safeJson(detail.tracks));
  const token = await server.token({ room: ROOM, identity: 'specialist-rec', role: 'specialist' });
  const dir = fs.mkdtempSync(path.join(ARTIFACTS, 'recording-killed-'));
  for (const t of detail.tracks) {
    assert.equal(t.state, 'recovered', safeJson(t));
    const file = await download(server, token, id, t, dir);
    const { codec, duration } = await probe(file);
    assert.equal(codec, t.codec);
    const untilKill = (killedAt - (rec.started_ms + t.start_offset_ms)) / 1000;
    assert.ok(duration >= untilKill - 2, `${t.track_id}: plays ${duration} s of the ${untilKill} s before the kill`);
    assert.equal(await decodeErrors(file), '', `${t.track_id}: ffmpeg decode errors`);
  }
});

test('expiry deletes an expired recording and spares one under legal hold; audit verify names an edited entry', { timeout: 60_000 }, async () => {
  assert.ok(first, 'the recording test ran');
  const all = (await api(server, 'GET', '/recordings')).body;
  assert.equal(all.length, 3, safeJson(all));
  const held = first.id;
  const others = all.filter((r) => r.id !== held).map((r) => r.id).sort();
  const hold = await api(server, 'PUT', `/api/recordings/${held}/hold`, { body: { hold: true, reason: 'complaint 2026-17' } });
  assert.equal(hold.status, 204, safeJson(hold.body));
  // With a retention of 0 days everything that has ended has expired.
  await server.stop({ keepDataDir: true });
  server = await startServer({ name: 'recording-expiry', dataDir: server.dataDir, extraArgs: ['--retention-days', '0'] });
  const expired = await api(server, 'POST', '/api/recordings/expire');
  assert.equal(expired.status, 200, safeJson(expired.body));
  assert.deepEqual(expired.body.deleted.sort(), others);
  for (const other of others) {
    assert.ok(!fs.existsSync(path.join(server.dataDir, 'recordings', other)), 'the expired files are gone');
  }
  assert.ok(fs.existsSync(path.join(server.dataDir, 'recordings', held)), 'the held recording stays');
  assert.deepEqual((await api(server, 'GET', '/recordings')).body.map((r) => r.id), [held]);
  await server.stop({ keepDataDir: true });

  const args = ['audit', 'verify', '--data-dir', server.dataDir];
  const ok = await execFileP(BIN, args);
  assert.match(ok.stdout, /audit trail intact: \d+ entries/);
  const query = await execFileP(BIN, ['audit', 'query', '--data-dir', server.dataDir, '--action', 'expiry_delete']);
  const deletions = query.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(deletions.map((e) => e.target).sort(), others);
  const log = path.join(server.dataDir, 'audit', 'audit.log');
  const lines = fs.readFileSync(log, 'utf8').split('\n');
  assert.ok(lines.length > 4, `${lines.length} audit lines`);
  // One byte of the third entry: the first letter of its identity.
  const i = lines[2].indexOf('"actor":"') + '"actor":"'.length;
  lines[2] = lines[2].slice(0, i) + (lines[2][i] === 'X' ? 'Y' : 'X') + lines[2].slice(i + 1);
  fs.writeFileSync(log, lines.join('\n'));
  const bad = await execFileP(BIN, args).then(() => null, (e) => e);
  assert.ok(bad, 'verify fails on an edited entry');
  assert.match(bad.stderr, /line 3 \(seq 3\)/, bad.stderr);

  // Without its master key the server refuses to start rather than write plain files.
  fs.renameSync(path.join(server.dataDir, 'master.key'), path.join(server.dataDir, 'master.key.away'));
  const refused = await execFileP(BIN, ['serve', '--data-dir', server.dataDir, '--listen', '127.0.0.1:0', '--media-port', '0'], { timeout: 20_000 })
    .then(() => null, (e) => e);
  assert.ok(refused && refused.code !== 0, 'the server must not start without its master key');
  assert.match(refused.stderr, /master key .* is missing/, refused.stderr);
});
