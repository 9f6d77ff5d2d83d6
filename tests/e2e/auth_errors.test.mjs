// Token and join errors over a raw WebSocket: each fatal error is an `error` message with
// the documented code, followed by the server closing the socket.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, safeJson, sleep } from './lib/server.mjs';
import { RawClientPool, sampleOffer } from './lib/ws.mjs';

let server;
const raws = new RawClientPool();

before(async () => {
  server = await startServer({ name: 'auth_errors' });
}, { timeout: 60_000 });

after(async () => {
  raws.terminateAll();
  await server?.stop();
});

function connect() {
  return raws.connect(server.wsUrl);
}

/** Sends `join` and expects error `code`, then the socket closed by the server. */
async function expectJoinRefused(token, room, code) {
  const c = await connect();
  c.send({ type: 'join', token, room });
  const err = await c.next((m) => m.type === 'error' || m.type === 'joined', { timeout: 5000 });
  assert.equal(err.type, 'error', `expected error ${code}, got ${safeJson(err)}`);
  assert.equal(err.code, code, `expected error ${code}, got ${safeJson(err)}`);
  assert.equal(typeof err.message, 'string');
  await c.closed(5000);
  assert.ok(!c.messages.some((m) => m.type === 'joined' || m.type === 'subscribe_offer'), c.describe());
  return c;
}

test('a valid token joins and gets a subscribe_offer at once', { timeout: 20_000 }, async () => {
  const tok = await server.token({ room: 'room-a', identity: 'nurse-a', role: 'clinic' });
  const c = await connect();
  const joined = await c.join(tok, 'room-a');
  assert.equal(joined.room, 'room-a');
  assert.equal(joined.participant.identity, 'nurse-a');
  assert.equal(joined.participant.role, 'clinic');
  assert.equal(typeof joined.participant.id, 'string');
  assert.ok(Array.isArray(joined.participants), safeJson(joined));
  const offer = await c.next('subscribe_offer', { timeout: 5000 });
  assert.equal(typeof offer.sdp, 'string');
  assert.ok(offer.sdp.startsWith('v=0'), 'subscribe_offer.sdp is an SDP');
  assert.ok(/m=application /.test(offer.sdp), 'subscribe_offer carries the chat data channel');
  assert.ok(/a=ice-lite/.test(offer.sdp), 'server is ICE-lite');
  assert.ok(Array.isArray(offer.tracks), safeJson(offer.tracks));
  // A second join on the same socket: already_joined, not fatal.
  c.send({ type: 'join', token: tok, room: 'room-a' });
  await c.nextError('already_joined', { timeout: 5000 });
  await sleep(300);
  assert.equal(c.close, null, `already_joined must not close: ${c.describe()}`);
  c.send({ type: 'leave' });
  await c.closed(5000);
});

test('a token for room A used for room B gets wrong_room', { timeout: 20_000 }, async () => {
  const tok = await server.token({ room: 'room-a', identity: 'nurse-b', role: 'clinic' });
  await expectJoinRefused(tok, 'room-b', 'wrong_room');
});

test('an expired token gets token_expired', { timeout: 20_000 }, async () => {
  const tok = await server.token({ room: 'room-a', identity: 'nurse-c', role: 'clinic', ttl: '1s' });
  await sleep(2100);
  await expectJoinRefused(tok, 'room-a', 'token_expired');
});

test('a garbage token gets bad_token', { timeout: 20_000 }, async () => {
  await expectJoinRefused('garbage', 'room-a', 'bad_token');
});

test('a token with one character changed gets bad_token', { timeout: 20_000 }, async () => {
  const tok = await server.token({ room: 'room-a', identity: 'nurse-d', role: 'clinic' });
  // Change an alphanumeric character near the middle: every bit of it is significant.
  let i = Math.floor(tok.length / 2);
  while (!/[A-Za-z0-9]/.test(tok[i])) i++;
  const forged = tok.slice(0, i) + (tok[i] === 'A' ? 'B' : 'A') + tok.slice(i + 1);
  await expectJoinRefused(forged, 'room-a', 'bad_token');
});

test('anything before join gets not_joined and a close', { timeout: 20_000 }, async () => {
  const c = await connect();
  c.send({ type: 'publish_offer', sdp: sampleOffer(), tracks: [{ track_id: 'e2e-video-track', source: 'camera' }] });
  await c.nextError('not_joined', { timeout: 5000 });
  await c.closed(5000);
});
