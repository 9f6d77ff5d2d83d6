// Starts a real medrelay server for one test file and mints tokens with its CLI.
//
// Every address is 127.0.0.1: the suite runs inside `unshare -n` (see run.sh), and even
// outside it nothing here talks to anything but loopback.

import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const execFileP = promisify(execFile);

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const BIN = process.env.MEDRELAY_BIN || path.join(ROOT, 'target', 'debug', 'medrelay');
export const ARTIFACTS = process.env.E2E_ARTIFACTS || path.join(ROOT, 'target', 'e2e-artifacts');

/** Sleep for `ms` milliseconds. */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `fn` until it returns a truthy value (returned) or `timeout` ms pass (throws with
 * `message` and the last value / error seen, so failures say what was observed).
 */
export async function waitFor(fn, { timeout = 10_000, interval = 200, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  let lastErr;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() >= deadline) {
      const seen = lastErr ? `last error: ${lastErr.message}` : `last value: ${safeJson(last)}`;
      throw new Error(`timed out after ${timeout} ms waiting for ${message}; ${seen}`);
    }
    await sleep(interval);
  }
}

export function safeJson(v) {
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
}

/** A TCP port free on 127.0.0.1 right now. */
export function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A UDP port free on 127.0.0.1 right now. */
export function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * One HTTP(S) request without a global CA change: {status, headers, body} (body as text).
 * `ca` (PEM) is trusted for https; without it the certificate is not verified.
 */
export function request(url, { method = 'GET', headers = {}, body = null, ca = null, timeout = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    const opts = { method, headers, timeout };
    if (u.protocol === 'https:') Object.assign(opts, ca ? { ca } : { rejectUnauthorized: false });
    const req = mod.request(u, opts, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: text }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} timed out after ${timeout} ms`)));
    req.on('error', reject);
    if (body !== null) req.write(body);
    req.end();
  });
}

const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

/**
 * Starts `medrelay serve` on free ports in a fresh data dir and waits for /healthz.
 * Returns { url, wsUrl, port, mediaPort, dataDir, logPath, token(), apiKey(), stop() }.
 *
 * Options (all optional): `host` to listen on another local address (e.g. a veth's
 * 10.77.0.1); `tls: {cert, key, ca}` (PEM files; `ca` is what clients trust) to serve
 * https/wss with `--tls-cert/--tls-key`; `dataDir` to reuse a data dir (a restart: the log
 * is appended to); `port` to listen on that port.
 */
export async function startServer({ name = 'e2e', readyTimeout = 30_000, host = '127.0.0.1', tls = null, dataDir: reuseDir = null, port: fixedPort = null, extraArgs = [] } = {}) {
  if (!fs.existsSync(BIN)) throw new Error(`medrelay binary not found at ${BIN} (run cargo build --bin medrelay)`);
  const dataDir = reuseDir || fs.mkdtempSync(path.join(os.tmpdir(), `medrelay-${name}-`));
  fs.mkdirSync(path.join(ARTIFACTS, 'logs'), { recursive: true });
  const logPath = path.join(ARTIFACTS, 'logs', `${name}.server.log`);
  const scheme = tls ? 'https' : 'http';
  const ca = tls?.ca ? fs.readFileSync(tls.ca) : null;

  let lastErr;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = fixedPort || (await freeTcpPort());
    const mediaPort = await freeUdpPort();
    const log = fs.openSync(logPath, attempt === 0 && !reuseDir ? 'w' : 'a');
    const args = ['serve', '--listen', `${host}:${port}`, '--media-port', String(mediaPort), '--data-dir', dataDir];
    if (tls) args.push('--tls-cert', tls.cert, '--tls-key', tls.key);
    args.push(...extraArgs);
    fs.writeSync(log, `# ${BIN} ${args.join(' ')}\n`);
    const child = spawn(BIN, args, {
      stdio: ['ignore', log, log],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', RUST_BACKTRACE: '1', NO_COLOR: '1' },
    });
    fs.closeSync(log);
    running.add(child);
    let exited = null;
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      running.delete(child);
    });
    const url = `${scheme}://${host}:${port}`;
    try {
      await waitFor(
        async () => {
          if (exited) throw new Error(`server exited early: ${safeJson(exited)}`);
          const res = await request(`${url}/healthz`, { ca, timeout: 1000 });
          return res.status === 200;
        },
        { timeout: readyTimeout, interval: 100, message: `${url}/healthz to answer 200` },
      );
    } catch (e) {
      lastErr = e;
      child.kill('SIGKILL');
      // A port taken between probing and binding makes the server exit at once: retry.
      if (exited && !fixedPort) continue;
      break;
    }
    return makeHandle({ child, url, port, mediaPort, dataDir, logPath, name, isExited: () => exited, host, tls, ca });
  }
  let tail = '';
  try {
    tail = fs.readFileSync(logPath, 'utf8').split('\n').slice(-40).join('\n');
  } catch {
    /* no log */
  }
  throw new Error(`medrelay did not become ready: ${lastErr?.message}\n--- server log tail ---\n${tail}`);
}

function makeHandle({ child, url, port, mediaPort, dataDir, logPath, name, isExited, host = '127.0.0.1', tls = null, ca = null }) {
  const wsBase = `${tls ? 'wss' : 'ws'}://${host}:${port}`;
  return {
    url,
    wsUrl: `${wsBase}/ws`,
    /** ws(s)://host:port, for other WebSocket endpoints (/telemetry/view, /telemetry/ingest). */
    wsBase,
    host,
    /** The CA certificate (PEM Buffer) clients trust when serving TLS, else null. */
    ca,
    tls,
    port,
    mediaPort,
    dataDir,
    logPath,
    name,
    pid: child.pid,
    /** Is the server process still alive? */
    alive: () => !isExited(),
    /**
     * Mints a token with `medrelay token`. `ttl` is humantime ("2h", "1s"). `room` and
     * `identity` may be left out for telemetry tokens; `ambulance` names a stream.
     */
    async token({ room, identity, role, ttl = '2h', ambulance }) {
      const args = ['token', '--data-dir', dataDir];
      if (room !== undefined && room !== null) args.push('--room', room);
      if (ambulance !== undefined && ambulance !== null) args.push('--ambulance', ambulance);
      if (identity !== undefined && identity !== null) args.push('--identity', identity);
      args.push('--role', role, '--ttl', ttl);
      const { stdout } = await execFileP(BIN, args, { timeout: 10_000 });
      const tok = stdout.trim().split('\n').pop().trim();
      if (!tok) throw new Error(`medrelay token printed nothing for ${safeJson(args)}`);
      return tok;
    },
    /** The REST API key the server wrote into its data dir. */
    apiKey() {
      return fs.readFileSync(path.join(dataDir, 'api.key'), 'utf8').trim();
    },
    /** Last `n` lines of the server log (for failure messages). */
    logTail(n = 40) {
      try {
        return fs.readFileSync(logPath, 'utf8').split('\n').slice(-n).join('\n');
      } catch {
        return '';
      }
    },
    /** Sends a signal to the server process (e.g. SIGSTOP / SIGCONT). */
    signal(sig) {
      child.kill(sig);
    },
    /**
     * Saves /metrics next to the log, SIGTERM, then SIGKILL after 5 s; removes the data dir
     * unless `keepDataDir`. `kill: true` sends SIGKILL at once (a crash), without /metrics.
     */
    async stop({ keepDataDir = false, kill = false } = {}) {
      if (!isExited()) {
        if (!kill) {
          try {
            const res = await request(`${url}/metrics`, { ca, timeout: 2000 });
            fs.writeFileSync(logPath.replace(/\.server\.log$/, '.metrics.txt'), res.body);
          } catch {
            /* best effort */
          }
        }
        const gone = new Promise((r) => child.once('exit', r));
        child.kill(kill ? 'SIGKILL' : 'SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await gone;
        clearTimeout(t);
      }
      running.delete(child);
      if (!keepDataDir) fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
