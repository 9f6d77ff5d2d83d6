// `medrelay serve` as an operator starts it: --tls-self-signed serves HTTPS (and WSS) only,
// and plain HTTP on a non-loopback address is refused at start, before binding, unless
// --insecure is given.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import WebSocket from 'ws';
import { BIN, ARTIFACTS, freeTcpPort, freeUdpPort, waitFor, safeJson, sleep } from './lib/server.mjs';

const execFileP = promisify(execFile);
const children = new Set();
const dirs = [];

after(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** The environment without MEDRELAY_* settings, so only the flags given here count. */
function cleanEnv() {
  const env = { ...process.env, MEDRELAY_LOG: 'info', NO_COLOR: '1' };
  for (const k of Object.keys(env)) if (k.startsWith('MEDRELAY_') && k !== 'MEDRELAY_LOG') delete env[k];
  // As an operator would see it: the error, without an anyhow backtrace.
  delete env.RUST_BACKTRACE;
  delete env.RUST_LIB_BACKTRACE;
  return env;
}

/** Spawns `medrelay serve …`; collects output; `exited` resolves with {code, signal}. */
function spawnServe(args, name) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `medrelay-${name}-`));
  dirs.push(dataDir);
  const full = ['serve', ...args, '--data-dir', dataDir];
  const child = spawn(BIN, full, { stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv() });
  children.add(child);
  const out = { text: '' };
  child.stdout.on('data', (d) => (out.text += d));
  child.stderr.on('data', (d) => (out.text += d));
  const exited = new Promise((resolve) =>
    child.once('exit', (code, signal) => {
      children.delete(child);
      fs.mkdirSync(path.join(ARTIFACTS, 'logs'), { recursive: true });
      fs.writeFileSync(path.join(ARTIFACTS, 'logs', `tls_cli.${name}.server.log`), `# ${BIN} ${full.join(' ')}\n${out.text}`);
      resolve({ code, signal });
    }),
  );
  return { child, out, exited, dataDir, args: full };
}

async function stop(s) {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  s.child.kill('SIGTERM');
  const t = setTimeout(() => s.child.kill('SIGKILL'), 5000);
  await s.exited;
  clearTimeout(t);
}

/** GET over HTTPS without verifying the certificate: {status, body, cert}. */
function httpsGet(url) {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { rejectUnauthorized: false, timeout: 3000 }, (res) => {
      let body = '';
      const cert = res.socket?.getPeerCertificate?.(true) ?? null;
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body, cert }));
    });
    req.on('timeout', () => req.destroy(new Error('https request timed out')));
    req.on('error', reject);
  });
}

/** Whether anything accepts TCP connections on 127.0.0.1:port. */
function tcpOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

test('--tls-self-signed on 127.0.0.1 answers https /healthz (and wss joins); plain http fails', { timeout: 60_000 }, async () => {
  const port = await freeTcpPort();
  const mediaPort = await freeUdpPort();
  const s = spawnServe(['--tls-self-signed', '--listen', `127.0.0.1:${port}`, '--media-port', String(mediaPort)], 'self-signed');
  try {
    let res;
    await waitFor(
      async () => {
        if (s.child.exitCode !== null) throw new Error(`server exited: ${s.child.exitCode}; output: ${s.out.text.slice(-2000)}`);
        res = await httpsGet(`https://127.0.0.1:${port}/healthz`);
        return res.status === 200;
      },
      { timeout: 30_000, interval: 200, message: `https://127.0.0.1:${port}/healthz to answer 200` },
    ).catch((e) => {
      throw new Error(`${e.message}\n--- server output ---\n${s.out.text.slice(-3000)}`);
    });
    assert.equal(res.body.trim(), 'ok');
    assert.match(s.out.text, new RegExp(`https://127\\.0\\.0\\.1:${port}`), 'the log names the https URL');

    // The certificate is self-signed for the listen address (and localhost).
    const cert = res.cert;
    assert.ok(cert && cert.raw, 'a peer certificate');
    assert.match(cert.subjectaltname || '', /IP Address:127\.0\.0\.1/, `subjectaltname: ${cert.subjectaltname}`);
    assert.match(cert.subjectaltname || '', /DNS:localhost/, `subjectaltname: ${cert.subjectaltname}`);
    assert.equal(cert.fingerprint256, cert.issuerCertificate?.fingerprint256, 'self-signed: its own issuer');
    // A verifying client refuses it (not a publicly trusted certificate).
    await assert.rejects(
      () => new Promise((resolve, reject) => {
        const sock = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', timeout: 3000 }, () => {
          sock.destroy();
          resolve();
        });
        sock.once('error', reject);
      }),
      /self[- ]signed|unable to verify|certificate/i,
    );

    // Plain HTTP on the same port gets no HTTP answer.
    let plain;
    try {
      const r = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(3000) });
      plain = `HTTP ${r.status} ${(await r.text()).slice(0, 100)}`;
    } catch (e) {
      plain = null;
      assert.ok(e instanceof Error, String(e));
    }
    assert.equal(plain, null, `plain http to the TLS port must fail, got: ${plain}`);
    // Nor does a plain ws:// upgrade; wss:// joins with a CLI token.
    const wsPlain = new WebSocket(`ws://127.0.0.1:${port}/ws`, { handshakeTimeout: 3000 });
    const plainResult = await new Promise((resolve) => {
      wsPlain.once('open', () => resolve('open'));
      wsPlain.once('error', (e) => resolve(`error: ${e.message}`));
    });
    wsPlain.terminate();
    assert.match(plainResult, /^error/, `ws:// on the TLS port: ${plainResult}`);

    const { stdout } = await execFileP(BIN, ['token', '--data-dir', s.dataDir, '--room', 'tls-room', '--identity', 'dr-tls', '--role', 'specialist'], { timeout: 10_000, env: cleanEnv() });
    const token = stdout.trim().split('\n').pop();
    const ws = new WebSocket(`wss://127.0.0.1:${port}/ws`, { rejectUnauthorized: false, handshakeTimeout: 5000 });
    const joined = await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no joined over wss within 5 s')), 5000);
      ws.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
      ws.once('open', () => ws.send(JSON.stringify({ type: 'join', token, room: 'tls-room' })));
      ws.on('message', (d) => {
        const m = JSON.parse(d.toString());
        if (m.type === 'joined' || m.type === 'error') {
          clearTimeout(t);
          resolve(m);
        }
      });
    });
    ws.terminate();
    assert.equal(joined.type, 'joined', safeJson(joined));
    assert.equal(joined.participant.identity, 'dr-tls');
    assert.ok(s.child.exitCode === null, 'still serving');
  } finally {
    await stop(s);
  }
});

/** Expects `serve args…` to exit non-zero within 10 s, without ever accepting on `port`. */
async function expectRefusedAtStart(args, port, name) {
  const s = spawnServe(args, name);
  const started = Date.now();
  let listened = false;
  let result = null;
  s.exited.then((r) => (result = r));
  while (result === null && Date.now() - started < 10_000) {
    if (port && (await tcpOpen(port))) listened = true;
    await sleep(100);
  }
  if (result === null) {
    s.child.kill('SIGKILL');
    await s.exited;
    assert.fail(`medrelay ${s.args.join(' ')} still running after 10 s (killed)${listened ? ', and it accepted connections' : ''}; output: ${s.out.text.slice(-2000)}`);
  }
  assert.equal(result.signal, null, `exited by signal ${result.signal}; output: ${s.out.text}`);
  assert.notEqual(result.code, 0, `must exit non-zero; output: ${s.out.text}`);
  assert.ok(!listened, `it accepted connections on ${port} before exiting`);
  return { ...s, result, took: Date.now() - started };
}

test('plain http on 0.0.0.0 is refused at start with a message naming --insecure', { timeout: 60_000 }, async () => {
  const port = await freeTcpPort();
  const mediaPort = await freeUdpPort();
  const r = await expectRefusedAtStart(['--listen', `0.0.0.0:${port}`, '--media-port', String(mediaPort)], port, 'refuse-any');
  assert.match(r.out.text, /--insecure/, `output: ${r.out.text}`);
  assert.match(r.out.text, /0\.0\.0\.0/, `the message names the address: ${r.out.text}`);
  assert.match(r.out.text, /--tls-self-signed|--tls-cert/, `the message names the TLS options: ${r.out.text}`);
  assert.ok(r.took < 10_000, `took ${r.took} ms`);
  // The configuration is checked before anything is created in the data dir.
  assert.deepEqual(fs.readdirSync(r.dataDir), [], 'nothing written to the data dir');
  // Other non-loopback addresses (IPv6 any, a routable IPv4) are refused the same way.
  for (const addr of ['[::]', '192.0.2.10']) {
    const r2 = await expectRefusedAtStart(['--listen', `${addr}:${port}`, '--media-port', String(mediaPort)], null, `refuse-${addr.replace(/[^0-9a-z]/gi, '')}`);
    assert.match(r2.out.text, /--insecure/, `${addr}: ${r2.out.text}`);
  }
  // The environment variable form is refused the same way.
  const envDir = fs.mkdtempSync(path.join(os.tmpdir(), 'medrelay-envlisten-'));
  dirs.push(envDir);
  const viaEnv = spawn(BIN, ['serve', '--media-port', String(mediaPort), '--data-dir', envDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...cleanEnv(), MEDRELAY_LISTEN: `0.0.0.0:${port}` },
  });
  children.add(viaEnv);
  let envOut = '';
  viaEnv.stderr.on('data', (d) => (envOut += d));
  viaEnv.stdout.on('data', (d) => (envOut += d));
  const envExit = await Promise.race([
    new Promise((resolve) => viaEnv.once('exit', (code) => resolve(code))),
    sleep(10_000).then(() => 'running'),
  ]);
  children.delete(viaEnv);
  if (envExit === 'running') viaEnv.kill('SIGKILL');
  assert.notEqual(envExit, 'running', `MEDRELAY_LISTEN=0.0.0.0:${port} kept running (killed)`);
  assert.notEqual(envExit, 0, envOut);
  assert.match(envOut, /--insecure/, envOut);
});

test('the same address with --insecure starts (control), and TLS on 0.0.0.0 is allowed', { timeout: 60_000 }, async () => {
  for (const [flags, scheme] of [[['--insecure'], 'http'], [['--tls-self-signed'], 'https']]) {
    const port = await freeTcpPort();
    const mediaPort = await freeUdpPort();
    const s = spawnServe(['--listen', `0.0.0.0:${port}`, '--media-port', String(mediaPort), ...flags], `any-${flags[0].slice(2)}`);
    try {
      await waitFor(
        async () => {
          if (s.child.exitCode !== null) throw new Error(`exited ${s.child.exitCode}: ${s.out.text.slice(-2000)}`);
          if (scheme === 'https') return (await httpsGet(`https://127.0.0.1:${port}/healthz`)).status === 200;
          return (await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(1000) })).status === 200;
        },
        { timeout: 30_000, interval: 200, message: `${scheme}://0.0.0.0:${port} with ${flags} to answer /healthz` },
      ).catch((e) => {
        throw new Error(`${e.message}\n--- output ---\n${s.out.text.slice(-2000)}`);
      });
    } finally {
      await stop(s);
    }
  }
});

test('--tls-self-signed together with --tls-cert/--tls-key is refused', { timeout: 30_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'medrelay-pem-'));
  dirs.push(dir);
  fs.writeFileSync(path.join(dir, 'c.pem'), 'not a cert');
  fs.writeFileSync(path.join(dir, 'k.pem'), 'not a key');
  const port = await freeTcpPort();
  const r = await expectRefusedAtStart(
    ['--listen', `127.0.0.1:${port}`, '--media-port', String(await freeUdpPort()), '--tls-self-signed', '--tls-cert', path.join(dir, 'c.pem'), '--tls-key', path.join(dir, 'k.pem')],
    port,
    'two-tls',
  );
  assert.match(r.out.text, /not both/, r.out.text);
});
