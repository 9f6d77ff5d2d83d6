// The administrative REST API (/api, X-Api-Key) end to end: authentication, rooms, tokens
// it mints used for real joins over a raw WebSocket, participant listing and removal,
// participant limits, closing a room, /openapi.json, and /metrics agreeing with all that.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, waitFor, safeJson, sleep } from './lib/server.mjs';
import { RawClientPool } from './lib/ws.mjs';
import { api, describeResponse, metrics, metricsText, metricValue } from './lib/api.mjs';

let server;
const raws = new RawClientPool();
/** Joins accepted so far in this file (for medrelay_joins_total). */
let acceptedJoins = 0;

before(async () => {
  server = await startServer({ name: 'rest_api' });
}, { timeout: 60_000 });

after(async () => {
  raws.terminateAll();
  await server?.stop();
});

function connect() {
  return raws.connect(server.wsUrl);
}

/** Mints a token through the REST API (asserting 201 {token}). */
async function mintToken(room, identity, role, ttlSeconds) {
  const body = { identity, role };
  if (ttlSeconds !== undefined) body.ttl_seconds = ttlSeconds;
  const r = await api(server, 'POST', `/api/rooms/${room}/tokens`, { body });
  assert.equal(r.status, 201, `POST tokens: ${describeResponse(r)}`);
  assert.equal(typeof r.body?.token, 'string', describeResponse(r));
  assert.ok(r.body.token.length > 20, describeResponse(r));
  return r.body.token;
}

/** Joins `room` with a REST-minted token; returns { client, joined }. */
async function joinWithApiToken(room, identity, role) {
  const token = await mintToken(room, identity, role);
  const client = await connect();
  const joined = await client.join(token, room);
  acceptedJoins++;
  return { client, joined };
}

/** Sends join and expects the fatal error `code` followed by a close. */
async function expectJoinRefused(room, identity, code) {
  const token = await mintToken(room, identity, 'clinic');
  const c = await connect();
  c.send({ type: 'join', token, room });
  const m = await c.next((x) => x.type === 'error' || x.type === 'joined', { timeout: 5000 });
  assert.equal(m.type, 'error', `expected error ${code}, got ${safeJson(m)}`);
  assert.equal(m.code, code, `expected error ${code}, got ${safeJson(m)}`);
  const closed = await c.closed(5000);
  assert.ok(!c.messages.some((x) => x.type === 'joined'), c.describe());
  return { client: c, closed };
}

async function participants(room) {
  const r = await api(server, 'GET', `/api/rooms/${room}/participants`);
  assert.equal(r.status, 200, `GET participants of ${room}: ${describeResponse(r)}`);
  assert.ok(Array.isArray(r.body), describeResponse(r));
  return r.body;
}

async function roomList() {
  const r = await api(server, 'GET', '/api/rooms');
  assert.equal(r.status, 200, `GET /api/rooms: ${describeResponse(r)}`);
  assert.ok(Array.isArray(r.body), describeResponse(r));
  return r.body;
}

/** Waits until /metrics shows exactly `want` ({medrelay_rooms: 1, …}). */
async function expectMetrics(want, message) {
  let last;
  await waitFor(
    async () => {
      last = await metrics(server, ...Object.keys(want));
      return Object.entries(want).every(([k, v]) => last[k] === v);
    },
    { timeout: 5000, interval: 100, message: `${message}: /metrics ${safeJson(want)}` },
  ).catch((e) => {
    throw new Error(`${e.message}; last seen ${safeJson(last)}`);
  });
}

test('without or with a wrong X-Api-Key every /api route answers 401 unauthorized', { timeout: 20_000 }, async () => {
  const key = server.apiKey();
  const wrongKeys = [null, '', 'not-the-key', key.slice(0, -1), key + 'x', key.slice(0, -1) + (key.endsWith('a') ? 'b' : 'a')];
  const routes = [
    ['GET', '/api/rooms', undefined],
    ['POST', '/api/rooms', { name: 'sneaky' }],
    ['DELETE', '/api/rooms/sneaky', undefined],
    ['GET', '/api/rooms/sneaky/participants', undefined],
    ['DELETE', '/api/rooms/sneaky/participants/123', undefined],
    ['POST', '/api/rooms/sneaky/tokens', { identity: 'mallory', role: 'specialist' }],
  ];
  for (const [method, path, body] of routes) {
    for (const k of wrongKeys) {
      const r = await api(server, method, path, { body, key: k });
      const what = `${method} ${path} with key ${k === null ? '(none)' : JSON.stringify(k.length > 8 ? `${k.slice(0, 4)}…(${k.length})` : k)}`;
      assert.equal(r.status, 401, `${what}: ${describeResponse(r)}`);
      assert.equal(r.body?.code, 'unauthorized', `${what}: ${describeResponse(r)}`);
      assert.equal(typeof r.body?.message, 'string', `${what}: ${describeResponse(r)}`);
      assert.match(r.headers.get('content-type') || '', /application\/json/, what);
    }
  }
  // Nothing of the above took effect: no room was created, no token minted.
  const list = await roomList();
  assert.deepEqual(list, [], `rooms after unauthorized requests: ${safeJson(list)}`);
});

test('POST /api/rooms creates a room (201) listed by GET; invalid names are 400 bad_request', { timeout: 20_000 }, async () => {
  const r = await api(server, 'POST', '/api/rooms', { body: { name: 'rest-room.A_1' } });
  assert.equal(r.status, 201, describeResponse(r));
  assert.equal(r.body.name, 'rest-room.A_1', describeResponse(r));
  assert.equal(r.body.participants, 0, describeResponse(r));
  assert.equal(r.body.max_participants ?? null, null, describeResponse(r));
  assert.ok(Math.abs(r.body.created_at_ms - Date.now()) < 60_000, `created_at_ms ${r.body.created_at_ms} is about now`);

  const list = await roomList();
  const listed = list.find((x) => x.name === 'rest-room.A_1');
  assert.ok(listed, `created room in GET /api/rooms: ${safeJson(list)}`);
  assert.equal(listed.participants, 0);
  assert.equal(listed.created_at_ms, r.body.created_at_ms);

  for (const name of ['', 'a b', '../etc', 'room/with/slash', 'é-room', 'x'.repeat(129)]) {
    const bad = await api(server, 'POST', '/api/rooms', { body: { name } });
    assert.equal(bad.status, 400, `name ${JSON.stringify(name.length > 20 ? name.slice(0, 10) + '…' : name)}: ${describeResponse(bad)}`);
    assert.equal(bad.body?.code, 'bad_request', describeResponse(bad));
  }
  // A 128-character name is the longest allowed.
  const longest = await api(server, 'POST', '/api/rooms', { body: { name: 'y'.repeat(128) } });
  assert.equal(longest.status, 201, describeResponse(longest));
  assert.ok((await roomList()).some((x) => x.name === 'y'.repeat(128)));
  // Tokens for an invalid room name or an empty identity are refused too.
  const badTok = await api(server, 'POST', '/api/rooms/a%20b/tokens', { body: { identity: 'x', role: 'clinic' } });
  assert.equal(badTok.status, 400, describeResponse(badTok));
  assert.equal(badTok.body?.code, 'bad_request', describeResponse(badTok));
  const noIdentity = await api(server, 'POST', '/api/rooms/rest-room.A_1/tokens', { body: { identity: '', role: 'clinic' } });
  assert.equal(noIdentity.status, 400, describeResponse(noIdentity));
  assert.equal(noIdentity.body?.code, 'bad_request', describeResponse(noIdentity));

  await expectMetrics({ medrelay_rooms: 2, medrelay_participants: 0 }, 'two rooms created, nobody in them');
});

let member; // { client, joined } of dr-rest in rest-room.A_1
let witness; // a second member that watches the first one leave

test('a token minted by POST /tokens joins over the WebSocket; GET participants lists it', { timeout: 30_000 }, async () => {
  member = await joinWithApiToken('rest-room.A_1', 'dr-rest', 'specialist');
  assert.equal(member.joined.room, 'rest-room.A_1', safeJson(member.joined));
  assert.equal(member.joined.participant.identity, 'dr-rest', safeJson(member.joined));
  assert.equal(member.joined.participant.role, 'specialist', safeJson(member.joined));
  assert.deepEqual(member.joined.participants, [], safeJson(member.joined));
  await member.client.next('subscribe_offer', { timeout: 5000 });

  witness = await joinWithApiToken('rest-room.A_1', 'nurse-witness', 'clinic');
  assert.deepEqual(witness.joined.participants.map((p) => [p.id, p.identity, p.role]), [[member.joined.participant.id, 'dr-rest', 'specialist']]);
  const pj = await member.client.next('participant_joined', { timeout: 5000 });
  assert.equal(pj.participant.id, witness.joined.participant.id, safeJson(pj));

  const list = await participants('rest-room.A_1');
  assert.equal(list.length, 2, safeJson(list));
  const me = list.find((p) => p.id === member.joined.participant.id);
  assert.ok(me, `dr-rest (${member.joined.participant.id}) in ${safeJson(list)}`);
  assert.equal(me.identity, 'dr-rest');
  assert.equal(me.role, 'specialist');
  assert.ok(Math.abs(me.joined_at_ms - Date.now()) < 60_000, safeJson(me));
  const w = list.find((p) => p.id === witness.joined.participant.id);
  assert.deepEqual([w?.identity, w?.role], ['nurse-witness', 'clinic'], safeJson(list));

  const rooms = await roomList();
  assert.equal(rooms.find((x) => x.name === 'rest-room.A_1')?.participants, 2, safeJson(rooms));
  await expectMetrics({ medrelay_rooms: 2, medrelay_participants: 2 }, 'two participants joined');

  // Unknown rooms are 404 not_found.
  const none = await api(server, 'GET', '/api/rooms/no-such-room/participants');
  assert.equal(none.status, 404, describeResponse(none));
  assert.equal(none.body?.code, 'not_found', describeResponse(none));

  // A token minted with a 1 s ttl expires like a CLI one.
  const short = await mintToken('rest-room.A_1', 'dr-late', 'clinic', 1);
  await sleep(2100);
  const c = await connect();
  c.send({ type: 'join', token: short, room: 'rest-room.A_1' });
  const err = await c.next((x) => x.type === 'error' || x.type === 'joined', { timeout: 5000 });
  assert.equal(err.code, 'token_expired', safeJson(err));
  // And one for another room is wrong_room here.
  const other = await mintToken('other-room', 'dr-elsewhere', 'clinic');
  const c2 = await connect();
  c2.send({ type: 'join', token: other, room: 'rest-room.A_1' });
  const err2 = await c2.next((x) => x.type === 'error' || x.type === 'joined', { timeout: 5000 });
  assert.equal(err2.code, 'wrong_room', safeJson(err2));
});

test('DELETE a participant: 204, it gets error `removed` and is closed, and leaves the list', { timeout: 30_000 }, async () => {
  assert.ok(member && witness, 'previous test joined both');
  const id = member.joined.participant.id;
  const from = member.client.messages.length;
  const wFrom = witness.client.messages.length;

  // The right id in the wrong room, or an unknown id, is 404 and removes nobody.
  const wrongRoom = await api(server, 'DELETE', `/api/rooms/y${'y'.repeat(127)}/participants/${id}`);
  assert.equal(wrongRoom.status, 404, describeResponse(wrongRoom));
  assert.equal(wrongRoom.body?.code, 'not_found', describeResponse(wrongRoom));
  for (const bogus of ['12345', 'not-an-id']) {
    const r = await api(server, 'DELETE', `/api/rooms/rest-room.A_1/participants/${bogus}`);
    assert.equal(r.status, 404, `${bogus}: ${describeResponse(r)}`);
    assert.equal(r.body?.code, 'not_found', describeResponse(r));
  }
  assert.equal(member.client.close, null, `nobody removed yet: ${member.client.describe()}`);

  const r = await api(server, 'DELETE', `/api/rooms/rest-room.A_1/participants/${id}`);
  assert.equal(r.status, 204, describeResponse(r));
  const err = await member.client.nextError('removed', { timeout: 5000, from });
  assert.equal(typeof err.message, 'string');
  const closed = await member.client.closed(5000);

  const left = await witness.client.next((m) => m.type === 'participant_left' && m.participant_id === id, { timeout: 5000, from: wFrom });
  assert.equal(left.reason, 'removed', safeJson(left));

  let list;
  await waitFor(
    async () => {
      list = await participants('rest-room.A_1');
      return !list.some((p) => p.id === id);
    },
    { timeout: 5000, message: 'the removed participant to leave GET participants' },
  );
  assert.deepEqual(list.map((p) => p.id), [witness.joined.participant.id], safeJson(list));
  await expectMetrics({ medrelay_participants: 1 }, 'one participant left after the removal');

  // Removing it again is 404.
  const again = await api(server, 'DELETE', `/api/rooms/rest-room.A_1/participants/${id}`);
  assert.equal(again.status, 404, describeResponse(again));
  // The witness was not affected.
  assert.equal(witness.client.close, null, witness.client.describe());
  assert.ok(!witness.client.messages.some((m) => m.type === 'error'), witness.client.describe());
  assert.equal(closed.code, 1008, `close after removed: ${safeJson(closed)}`);
});

test('a room with max_participants 1 refuses the second join with room_full', { timeout: 30_000 }, async () => {
  const r = await api(server, 'POST', '/api/rooms', { body: { name: 'rest-small', max_participants: 1 } });
  assert.equal(r.status, 201, describeResponse(r));
  assert.equal(r.body.max_participants, 1, describeResponse(r));
  const first = await joinWithApiToken('rest-small', 'dr-first', 'specialist');
  assert.equal(first.joined.participant.identity, 'dr-first');
  const refused = await expectJoinRefused('rest-small', 'dr-second', 'room_full');
  const list = await participants('rest-small');
  assert.deepEqual(list.map((p) => p.identity), ['dr-first'], safeJson(list));
  const rooms = await roomList();
  const small = rooms.find((x) => x.name === 'rest-small');
  assert.deepEqual([small?.participants, small?.max_participants], [1, 1], safeJson(rooms));
  // The first participant is untouched (no participant_joined for the refused one).
  await sleep(300);
  assert.equal(first.client.close, null, first.client.describe());
  assert.ok(!first.client.messages.some((m) => m.type === 'participant_joined'), first.client.describe());

  // Once the first leaves, the room (kept, it has a limit) admits one again.
  first.client.send({ type: 'leave' });
  await first.client.closed(5000);
  await waitFor(async () => (await participants('rest-small')).length === 0, { timeout: 5000, message: 'rest-small to empty' });
  const next = await joinWithApiToken('rest-small', 'dr-third', 'crew');
  assert.equal(next.joined.participant.role, 'crew');
  next.client.send({ type: 'leave' });
  await next.client.closed(5000);
  await expectMetrics({ medrelay_rooms: 3, medrelay_participants: 1 }, 'rest-room.A_1 (witness), y…, rest-small');
  // Last (so a failure here leaves the room as the next tests expect): the refusal was a
  // proper close 1008 after the error (see fatal_close.test.mjs).
  assert.equal(refused.closed.code, 1008, `close after room_full: ${safeJson(refused.closed)}`);
});

test('DELETE a room: 204, members get room_closed and are closed, later joins get room_closed', { timeout: 30_000 }, async () => {
  const room = 'rest-closing';
  const created = await api(server, 'POST', '/api/rooms', { body: { name: room } });
  assert.equal(created.status, 201, describeResponse(created));
  const a = await joinWithApiToken(room, 'dr-a', 'specialist');
  const b = await joinWithApiToken(room, 'crew-b', 'crew');
  await expectMetrics({ medrelay_rooms: 4, medrelay_participants: 3 }, 'two joined rest-closing');

  const r = await api(server, 'DELETE', `/api/rooms/${room}`);
  assert.equal(r.status, 204, describeResponse(r));
  const closes = [];
  for (const m of [a, b]) {
    const err = await m.client.nextError('room_closed', { timeout: 5000 });
    assert.equal(typeof err.message, 'string');
    closes.push(await m.client.closed(5000));
  }
  const rooms = await roomList();
  assert.ok(!rooms.some((x) => x.name === room), `closed room still listed: ${safeJson(rooms)}`);
  const gone = await api(server, 'GET', `/api/rooms/${room}/participants`);
  assert.equal(gone.status, 404, describeResponse(gone));
  assert.equal(gone.body?.code, 'not_found', describeResponse(gone));

  await expectJoinRefused(room, 'dr-latecomer', 'room_closed');
  // The other rooms are untouched.
  assert.equal(witness.client.close, null, witness.client.describe());
  await expectMetrics({ medrelay_rooms: 3, medrelay_participants: 1 }, 'rest-closing closed and emptied');

  const unknown = await api(server, 'DELETE', '/api/rooms/never-existed');
  assert.equal(unknown.status, 404, describeResponse(unknown));
  assert.equal(unknown.body?.code, 'not_found', describeResponse(unknown));
  assert.deepEqual(closes.map((c) => c.code), [1008, 1008], `close codes after room_closed: ${safeJson(closes)}`);
});

test('/openapi.json (no key needed) documents every REST path, the X-Api-Key and Bearer schemes', { timeout: 10_000 }, async () => {
  const res = await fetch(`${server.url}/openapi.json`);
  assert.equal(res.status, 200);
  const doc = await res.json();
  assert.match(String(doc.openapi), /^3\./, `openapi version: ${doc.openapi}`);
  const paths = doc.paths || {};
  const want = {
    '/api/rooms': ['get', 'post'],
    '/api/rooms/{room}': ['delete'],
    '/api/rooms/{room}/participants': ['get'],
    '/api/rooms/{room}/participants/{participant}': ['delete'],
    '/api/rooms/{room}/tokens': ['post'],
    '/api/rooms/{room}/recording': ['put'],
    '/recordings': ['get'],
    '/recordings/{id}': ['get'],
    '/recordings/{id}/tracks/{track}': ['get'],
    '/recordings/{id}/consult': ['get'],
    '/api/recordings/{id}/hold': ['put'],
    '/api/recordings/expire': ['post'],
    '/telemetry/streams': ['get'],
    '/telemetry/streams/{id}/consult': ['post'],
    '/telemetry/streams/{id}/record.edf': ['get'],
  };
  for (const [p, methods] of Object.entries(want)) {
    assert.ok(paths[p], `${p} missing from /openapi.json (has ${Object.keys(paths).join(', ')})`);
    for (const m of methods) assert.ok(paths[p][m], `${m.toUpperCase()} ${p} missing from /openapi.json`);
  }
  const extra = Object.keys(paths).filter((p) => !(p in want));
  assert.deepEqual(extra, [], 'no undocumented-by-the-router paths');
  const scheme = doc.components?.securitySchemes?.api_key;
  assert.equal(scheme?.type, 'apiKey', safeJson(scheme));
  assert.equal(scheme?.in, 'header', safeJson(scheme));
  assert.equal(String(scheme?.name).toLowerCase(), 'x-api-key', safeJson(scheme));
  const bearer = doc.components?.securitySchemes?.bearer;
  assert.equal(bearer?.type, 'http', safeJson(bearer));
  assert.equal(bearer?.scheme, 'bearer', safeJson(bearer));
  assert.ok(paths['/telemetry/streams'].get.security?.some((s) => 'bearer' in s), 'telemetry paths need the bearer token');
});

test('/metrics agrees with what happened: rooms, participants, joins and error counters', { timeout: 15_000 }, async () => {
  // Open rooms now: rest-room.A_1 (the witness), y×128 (created, empty), rest-small (has a limit).
  const rooms = await roomList();
  assert.deepEqual(rooms.map((x) => x.name).sort(), ['rest-room.A_1', 'rest-small', 'y'.repeat(128)].sort(), safeJson(rooms));
  const text = await metricsText(server);
  assert.equal(metricValue(text, 'medrelay_rooms'), rooms.length, 'medrelay_rooms = GET /api/rooms length');
  const inRooms = rooms.reduce((a, x) => a + x.participants, 0);
  assert.equal(inRooms, 1);
  assert.equal(metricValue(text, 'medrelay_participants'), inRooms, 'medrelay_participants = sum of participants');
  assert.equal(metricValue(text, 'medrelay_joins_total'), acceptedJoins, `medrelay_joins_total = ${acceptedJoins} accepted joins`);
  for (const [code, n] of [['removed', 1], ['room_full', 1], ['room_closed', 3], ['token_expired', 1], ['wrong_room', 1]]) {
    assert.equal(metricValue(text, 'medrelay_ws_errors_total', { code }), n, `medrelay_ws_errors_total{code="${code}"}`);
  }

  // The last one leaves: the room without a limit disappears, the others stay.
  witness.client.send({ type: 'leave' });
  await witness.client.closed(5000);
  await expectMetrics({ medrelay_participants: 0, medrelay_rooms: 2 }, 'the witness left');
  const after = (await roomList()).map((x) => x.name).sort();
  assert.deepEqual(after, ['rest-small', 'y'.repeat(128)].sort());
});
