// A full disk during a recording: the recording stops with a clear alarm to the room (a
// `recording_unavailable` error, the indicator off) and in the server log, and the consult
// goes on (both pages keep decoding each other). The data directory is a small tmpfs mounted
// in the test's own mount namespace (the e2e runner is root inside `unshare`), then filled.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServer, waitFor, safeJson } from './lib/server.mjs';
import { launchBrowser, openParticipant, expectMediaFrom } from './lib/browser.mjs';

const execFileP = promisify(execFile);
const ROOM = 'consult-disk-full';
let mountPoint;
let server;
let browser;
const people = [];

before(async () => {
  mountPoint = fs.mkdtempSync(path.join(os.tmpdir(), 'medrelay-tmpfs-'));
  await execFileP('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', mountPoint]);
  const dataDir = path.join(mountPoint, 'data');
  fs.mkdirSync(dataDir);
  server = await startServer({ name: 'recording_disk_full', dataDir });
  browser = await launchBrowser();
  people.push(await openParticipant(browser, server, { room: ROOM, identity: 'clinic-df', role: 'clinic' }));
  people.push(await openParticipant(browser, server, { room: ROOM, identity: 'specialist-df', role: 'specialist' }));
  const [clinic, specialist] = people;
  await Promise.all([
    expectMediaFrom(clinic, 'specialist-df', { timeout: 20_000 }),
    expectMediaFrom(specialist, 'clinic-df', { timeout: 20_000 }),
  ]);
}, { timeout: 90_000 });

after(async () => {
  for (const p of people) await p.close();
  await browser?.close();
  await server?.stop();
  if (mountPoint) await execFileP('umount', [mountPoint]).catch(() => {});
});

test('a full disk stops the recording with an alarm to the room; the consult goes on', { timeout: 90_000 }, async () => {
  const [clinic, specialist] = people;
  await specialist.page.locator('#btn-record').click();
  for (const p of people) {
    await waitFor(async () => (await p.state()).recording !== null, { timeout: 5000, message: `${p.identity} to see the recording start` });
  }
  // Fill the disk, leaving a little room: the recording soon cannot write.
  const { stdout } = await execFileP('df', ['-B1', '--output=avail', mountPoint]);
  const avail = Number(stdout.trim().split('\n').pop());
  const filler = path.join(mountPoint, 'filler');
  fs.writeFileSync(filler, Buffer.alloc(Math.max(0, avail - 300_000)));

  for (const p of people) {
    await waitFor(async () => (await p.state()).error?.code === 'recording_unavailable', {
      timeout: 30_000,
      message: `${p.identity} to be told the recording failed`,
    });
    await waitFor(async () => (await p.state()).recording === null, { timeout: 10_000, message: `${p.identity}'s indicator to go off` });
    assert.equal(await p.page.locator('#recording').isVisible(), false);
  }
  const err = (await clinic.state()).error;
  assert.match(err.message, /recording stopped/, safeJson(err));
  await specialist.page.screenshot({ path: path.join(process.env.E2E_ARTIFACTS || '.', 'recording-disk-full.png') });
  assert.match(server.logTail(200), /a recorded track failed, recording stops/);

  // Forwarding is untouched: both keep decoding new frames (growth measured from now).
  await expectMediaFrom(clinic, 'specialist-df', { minFrames: 30, timeout: 10_000 });
  await expectMediaFrom(specialist, 'clinic-df', { minFrames: 30, timeout: 10_000 });
  assert.ok(server.alive(), 'the server keeps running');
  fs.rmSync(filler);
});
