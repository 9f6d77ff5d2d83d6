// The plain HTTP surface the other tests rely on: health, metrics, the consult page.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';

let server;

before(async () => {
  server = await startServer({ name: 'http' });
}, { timeout: 60_000 });

after(async () => {
  await server?.stop();
});

test('/healthz answers 200', { timeout: 10_000 }, async () => {
  const res = await fetch(`${server.url}/healthz`);
  assert.equal(res.status, 200);
});

test('/metrics serves Prometheus text', { timeout: 10_000 }, async () => {
  const res = await fetch(`${server.url}/metrics`);
  assert.equal(res.status, 200);
  const body = await res.text();
  assert.match(body, /^# (HELP|TYPE) \S+/m, `not Prometheus text: ${body.slice(0, 300)}`);
});

test('the consult page is served as HTML', { timeout: 10_000 }, async () => {
  const res = await fetch(`${server.url}/consult/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') || '', /text\/html/);
  assert.match(await res.text(), /<html|<!doctype html/i);
});

test('the REST API key is written to the data dir', { timeout: 10_000 }, async () => {
  assert.ok(server.apiKey().length >= 16, 'api.key holds a key of at least 16 characters');
});
