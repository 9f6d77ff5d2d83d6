// A fatal error must reach the client, followed by a close frame (1008 with the code as
// reason), even when the client has already sent more frames the server will never read:
// a client may well pipeline (e.g. `join` then `publish_offer`, or a pong to the server's
// first ping arriving just after `join`). If the server closes the TCP connection with
// unread input, the kernel resets it and the client can lose the error and the close frame
// (it sees 1006, abnormal closure, and no `error`).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, safeJson } from './lib/server.mjs';
import { RawClientPool } from './lib/ws.mjs';
import { api, describeResponse } from './lib/api.mjs';
import { launchBrowser } from './lib/browser.mjs';

const ATTEMPTS = 8;
let server;
let browser;
const raws = new RawClientPool();

before(async () => {
  server = await startServer({ name: 'fatal_close' });
}, { timeout: 60_000 });

after(async () => {
  raws.terminateAll();
  await browser?.close();
  await server?.stop();
});

/** Sends join then `extra` frames at once; returns what arrived and how the socket closed. */
async function refusedJoin(token, room, extra) {
  const c = await raws.connect(server.wsUrl);
  c.send({ type: 'join', token, room });
  for (let k = 0; k < extra; k++) c.send({ type: 'leave' });
  const closed = await c.closed(5000);
  return { codes: c.messages.filter((m) => m.type === 'error').map((m) => m.code), joined: c.messages.some((m) => m.type === 'joined'), close: closed, socketError: c.lastError?.code ?? null };
}

async function expectAllDelivered(what, code, run) {
  const outcomes = [];
  for (let i = 0; i < ATTEMPTS; i++) outcomes.push(await run(i));
  const bad = outcomes.filter((o) => o.joined || o.codes[0] !== code || o.close.code !== 1008 || o.close.reason !== code);
  const tally = {};
  for (const o of outcomes) {
    const k = `error=${o.codes.join(',') || '(none)'} close=${o.close.code}${o.close.reason ? `/${o.close.reason}` : ''}${o.socketError ? ` socket=${o.socketError}` : ''}`;
    tally[k] = (tally[k] || 0) + 1;
  }
  assert.equal(bad.length, 0, `${what}: ${bad.length}/${ATTEMPTS} attempts did not get error ${code} then close 1008/${code}; outcomes ${safeJson(tally)}`);
}

test('room_full reaches a client that pipelined frames after join (error, then close 1008)', { timeout: 30_000 }, async () => {
  const r = await api(server, 'POST', '/api/rooms', { body: { name: 'fatal-full', max_participants: 1 } });
  assert.equal(r.status, 201, describeResponse(r));
  const first = await raws.connect(server.wsUrl);
  await first.join(await server.token({ room: 'fatal-full', identity: 'dr-in', role: 'clinic' }), 'fatal-full');
  const token = await server.token({ room: 'fatal-full', identity: 'dr-out', role: 'clinic' });
  // Control: without pipelined frames.
  const plain = await refusedJoin(token, 'fatal-full', 0);
  assert.deepEqual([plain.codes, plain.close.code], [['room_full'], 1008], safeJson(plain));
  await expectAllDelivered('room_full with 5 pipelined frames', 'room_full', () => refusedJoin(token, 'fatal-full', 5));
});

test('bad_token reaches a client that pipelined frames after join (error, then close 1008)', { timeout: 30_000 }, async () => {
  await expectAllDelivered('bad_token with 5 pipelined frames', 'bad_token', () => refusedJoin('garbage', 'fatal-full', 5));
});

test('Chromium\'s own WebSocket gets bad_token and a clean close 1008, with and without a pipelined frame', { timeout: 60_000 }, async () => {
  browser = await launchBrowser();
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${server.url}/healthz`);
  const outcomes = await page.evaluate(async (url) => {
    const out = [];
    for (const extra of [0, 0, 0, 1, 1, 1]) {
      out.push(
        await new Promise((resolve) => {
          const ws = new WebSocket(url);
          const codes = [];
          ws.onopen = () => {
            ws.send(JSON.stringify({ type: 'join', token: 'garbage', room: 'r' }));
            for (let k = 0; k < extra; k++) ws.send(JSON.stringify({ type: 'leave' }));
          };
          ws.onmessage = (e) => codes.push(JSON.parse(e.data).code);
          ws.onclose = (e) => resolve({ extra, codes, close: e.code, reason: e.reason, wasClean: e.wasClean });
        }),
      );
    }
    return out;
  }, server.wsUrl);
  const bad = outcomes.filter((o) => o.codes[0] !== 'bad_token' || o.close !== 1008 || o.reason !== 'bad_token');
  assert.equal(bad.length, 0, `${bad.length}/${outcomes.length} attempts did not get bad_token then close 1008/bad_token: ${safeJson(outcomes)}`);
});
