// Restrictive networks (issue 6): a clinic whose firewall allows nothing but TCP to a TURN
// server reaches the room through a real coturn (Debian's package), with the short-lived
// credentials medrelay gives each participant in `joined`, and both sides decode each other.
// The credentials are checked against an independent implementation of the TURN REST API
// scheme (node's crypto), and coturn's own log shows the allocation under that username.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startServer, waitFor, freeTcpPort, ARTIFACTS, safeJson } from './lib/server.mjs';
import { launchBrowser, openParticipant, expectMediaFrom, selectedPairs } from './lib/browser.mjs';
import { RawClient } from './lib/ws.mjs';

const ROOM = 'consult-turn';
const SECRET = crypto.randomBytes(16).toString('hex');
const TURNSERVER = '/usr/bin/turnserver';
let turnPort;
let coturn;
let coturnLog = '';
let server;
let browser;
let clinic;
let specialist;

before(async () => {
  assert.ok(fs.existsSync(TURNSERVER), `coturn's ${TURNSERVER} is installed (scripts/test.sh installs Debian's coturn)`);
  turnPort = await freeTcpPort();
  coturn = spawn(TURNSERVER, [
    '-n', '--no-cli', '--simple-log', '--log-file=stdout', '--verbose',
    '--listening-ip=127.0.0.1', `--listening-port=${turnPort}`, '--relay-ip=127.0.0.1',
    '--min-port=49160', '--max-port=49200',
    '--use-auth-secret', `--static-auth-secret=${SECRET}`, '--realm=medrelay.test',
    '--no-tls', '--no-dtls', '--fingerprint',
    // The SFU is on loopback in this test; a real deployment relays to routable addresses.
    '--allow-loopback-peers',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  const logFile = path.join(ARTIFACTS, 'logs', 'turn_relay.coturn.log');
  const collect = (d) => {
    coturnLog += d.toString();
    fs.writeFileSync(logFile, coturnLog);
  };
  coturn.stdout.on('data', collect);
  coturn.stderr.on('data', collect);
  await waitFor(() => /listener opened on : 127\.0\.0\.1/i.test(coturnLog) || /Total General servers/i.test(coturnLog), {
    timeout: 15_000,
    message: 'coturn to listen',
  });
  server = await startServer({
    name: 'turn_relay',
    extraArgs: ['--turn-urls', `turn:127.0.0.1:${turnPort}?transport=tcp`, '--turn-secret', SECRET, '--turn-ttl', '1h'],
  });
  browser = await launchBrowser();
}, { timeout: 90_000 });

after(async () => {
  await clinic?.close();
  await specialist?.close();
  await browser?.close();
  await server?.stop();
  coturn?.kill('SIGTERM');
});

test('joined carries TURN credentials in the TURN REST API scheme, valid for the configured time', { timeout: 30_000 }, async () => {
  const token = await server.token({ room: ROOM, identity: 'raw-client', role: 'observer' });
  const c = await RawClient.connect(server.wsUrl);
  c.send({ type: 'join', token, room: ROOM });
  const joined = await c.next('joined', { timeout: 5000 });
  c.send({ type: 'leave' });
  assert.equal(joined.ice_servers.length, 1, safeJson(joined));
  const [ice] = joined.ice_servers;
  assert.deepEqual(ice.urls, [`turn:127.0.0.1:${turnPort}?transport=tcp`]);
  const [expiry, participant] = ice.username.split(':');
  assert.equal(participant, joined.participant.id, 'the username names the participant, nothing else');
  const lifetime = Number(expiry) - Date.now() / 1000;
  assert.ok(lifetime > 3590 && lifetime <= 3601, `expires in about 1 h, not ${lifetime} s`);
  const expected = crypto.createHmac('sha1', SECRET).update(ice.username).digest('base64');
  assert.equal(ice.credential, expected);
});

test('a relay-only clinic reaches the room through coturn over TCP and both sides decode', { timeout: 90_000 }, async () => {
  clinic = await openParticipant(browser, server, { room: ROOM, identity: 'dr-clinic', role: 'clinic', relayOnly: true });
  specialist = await openParticipant(browser, server, { room: ROOM, identity: 'dr-specialist', role: 'specialist' });
  await Promise.all([
    expectMediaFrom(clinic, 'dr-specialist', { timeout: 30_000 }),
    expectMediaFrom(specialist, 'dr-clinic', { timeout: 30_000 }),
  ]);
  // Every connected peer connection of the clinic runs over a TURN relay reached by TCP.
  const pairs = await selectedPairs(clinic);
  assert.equal(pairs.length, 2, `publisher and subscriber connections: ${safeJson(pairs)}`);
  for (const p of pairs) {
    assert.equal(p.local.candidateType, 'relay', safeJson(pairs));
    assert.equal(p.local.relayProtocol, 'tcp', safeJson(pairs));
  }
  // coturn allocated relays for the clinic's credential (its username: expiry:participant id).
  const { participantId } = await clinic.state();
  assert.ok(participantId, 'clinic has a participant id');
  await waitFor(() => coturnLog.includes(`:${participantId}`), { timeout: 5000, message: `coturn's log to name ${participantId}` });
  await expectMediaFrom(specialist, 'dr-clinic', { minFrames: 20, timeout: 10_000 });
  await clinic.screenshot('consult-turn-relay-clinic');
});

test('credentials made with another secret are refused by coturn: a relay-only page never connects', { timeout: 90_000 }, async () => {
  const wrong = await startServer({
    name: 'turn_relay_wrong_secret',
    extraArgs: ['--turn-urls', `turn:127.0.0.1:${turnPort}?transport=tcp`, '--turn-secret', `${SECRET}-not`],
  });
  let page;
  try {
    page = await openParticipant(browser, wrong, { room: ROOM, identity: 'dr-elsewhere', role: 'clinic', relayOnly: true });
    const { participantId } = await page.state();
    // coturn refuses the allocation: the password does not match this username ...
    await waitFor(() => new RegExp(`check_stun_auth: Cannot find credentials of user <\\d+:${participantId}>`).test(coturnLog), {
      timeout: 15_000,
      message: `coturn to refuse ${participantId}'s credential`,
    });
    // ... and no peer connection of the page connects.
    await new Promise((r) => setTimeout(r, 8000));
    const states = await page.page.evaluate(() => (window.__e2ePcs || []).map((pc) => pc.connectionState));
    assert.ok(states.length > 0, 'the page made peer connections');
    assert.ok(states.every((s) => s !== 'connected'), `no connection through the relay: ${safeJson(states)}`);
  } finally {
    await page?.close();
    await wrong.stop();
  }
});
