// With resume off (`--resume-window 0s`), a participant whose network goes away (no close,
// no FIN: its socket simply stops reading and answering pings) disappears for the others
// within 5 seconds, through the server's liveness check, with reason `disconnected`. (With
// resume on it is suspended first: resume.test.mjs.)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, safeJson } from './lib/server.mjs';
import { RawClientPool } from './lib/ws.mjs';

let server;
const raws = new RawClientPool();

before(async () => {
  server = await startServer({ name: 'network_loss', extraArgs: ['--resume-window', '0s'] });
}, { timeout: 60_000 });

after(async () => {
  raws.terminateAll();
  await server?.stop();
});

async function joinAs(identity) {
  const c = await raws.connect(server.wsUrl);
  const token = await server.token({ room: 'netloss', identity, role: 'clinic' });
  c.send({ type: 'join', token, room: 'netloss' });
  const joined = await c.next((m) => m.type === 'joined' || m.type === 'error', { timeout: 5000 });
  assert.equal(joined.type, 'joined', c.describe());
  return { c, id: joined.participant.id };
}

test('a participant that goes silent is removed for the others within 5 s', { timeout: 30_000 }, async () => {
  const stays = await joinAs('stays');
  const vanishes = await joinAs('vanishes');
  await stays.c.next((m) => m.type === 'participant_joined' && m.participant.id === vanishes.id, { timeout: 5000 });

  // The network "drops": the client stops reading, so it neither sees pings nor answers them.
  const droppedAt = Date.now();
  vanishes.c.ws._socket.pause();

  const left = await stays.c.next(
    (m) => m.type === 'participant_left' && m.participant_id === vanishes.id,
    { timeout: 8000 },
  );
  const after = Date.now() - droppedAt;
  console.log(`silent participant removed ${after} ms after its network dropped`);
  assert.equal(left.reason, 'disconnected', safeJson(left));
  assert.ok(after <= 5000, `removed after ${after} ms, more than 5 s`);
  assert.equal(stays.c.close, null, 'the participant that stayed is still connected');
});
