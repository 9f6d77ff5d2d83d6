// Ambulance telemetry helpers (docs/telemetry.md): the real ECG record, a TLS certificate
// made with openssl, the agent (`medrelay ambulance`) with its log in the artefacts, a viewer
// client that decodes every binary frame and keeps every sample with its seq and flags, a
// raw ingest client and a frame encoder for protocol tests, and the checks the tests share
// (contiguity, file-prefix comparison, percentiles). Namespaces joined by veth pairs are in
// netns.mjs.

import { spawn, execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { ROOT, BIN, ARTIFACTS, safeJson } from './server.mjs';
import { Waiters } from './ws.mjs';

const execFileP = promisify(execFile);

// ----- wire constants ----------------------------------------------------------------------

export const KIND = { layout: 1, waveform: 2, numerics: 3 };
export const FLAG_LATE = 0x01;
export const FLAG_HISTORY = 0x02;
export const MAX_FRAME_BYTES = 65_536;
export const VITAL_CODES = {
  hr: 147842,
  spo2: 150456,
  nibp_sys: 150021,
  nibp_dia: 150022,
  nibp_mean: 150023,
  rr: 151562,
  temp: 150364,
  etco2: 151708,
  lat: 0xf0000001,
  lon: 0xf0000002,
};

/** Wall clock in ms with sub-ms resolution (same clock as the gateway's capture times). */
export const nowMs = () => performance.timeOrigin + performance.now();

// ----- the real record ---------------------------------------------------------------------

/** MIT-BIH record 208, lead MLII, 360 Hz, u16 LE, gain 200, baseline 1024 (shared/data). */
export const ECG_RELATIVE = path.join('..', 'shared', 'data', 'ecg', 'mitdb-208-mlii-360hz.u16le.raw');
export const ECG_FILE = path.join(ROOT, ECG_RELATIVE);
export const ECG = { rate: 360, gain: 200, baseline: 1024, label: 'MLII', unit: 'mV' };

/** The record's samples as numbers. Throws (the test fails, never skips) when missing. */
export function readEcg(file = ECG_FILE) {
  if (!fs.existsSync(file)) {
    throw new Error(`the real ECG record is missing: ${file} (expected ${ECG_RELATIVE} relative to the repository root)`);
  }
  const buf = fs.readFileSync(file);
  if (buf.length % 2 !== 0) throw new Error(`${file}: odd length ${buf.length}`);
  const out = new Array(buf.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = buf.readUInt16LE(2 * i);
  return out;
}

/** The agent's arguments replaying the real record (raw u16le, MLII, 360 Hz, mV). */
export function ecgSourceArgs(file = ECG_FILE) {
  return [
    '--source', file, '--format', 'raw', '--sample-type', 'u16le',
    '--rate', String(ECG.rate), '--gain', String(ECG.gain), '--baseline', String(ECG.baseline),
    '--labels', ECG.label, '--unit', ECG.unit,
  ];
}

// ----- TLS ---------------------------------------------------------------------------------

/**
 * A throwaway CA and a server certificate it signed for `ips` (and localhost), made with
 * openssl in a fresh temp dir: {dir, ca, cert, key} (paths). A CA plus a leaf is what every
 * verifying client (rustls/webpki, node) accepts; a bare self-signed CA:TRUE certificate is
 * refused by webpki as an end-entity certificate.
 */
export function makeTlsCert({ ips = ['127.0.0.1', '10.77.0.1'], name = 'medrelay-e2e' } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${name}-tls-`));
  const p = (f) => path.join(dir, f);
  const run = (args) => {
    try {
      execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
    } catch (e) {
      throw new Error(`openssl ${args.join(' ')} failed: ${e.stderr?.toString() || e.message}`);
    }
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  run(['req', '-x509', ...ec, '-keyout', p('ca.key'), '-out', p('ca.pem'), '-days', '2', '-subj', `/CN=${name} test CA`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  run(['req', ...ec, '-keyout', p('server.key'), '-out', p('server.csr'), '-subj', `/CN=${name}`]);
  const san = ['DNS:localhost', ...ips.map((ip) => `IP:${ip}`)].join(',');
  fs.writeFileSync(p('ext.cnf'), [
    `subjectAltName=${san}`,
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth',
    '',
  ].join('\n'));
  run(['x509', '-req', '-in', p('server.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'), '-CAcreateserial',
    '-out', p('server.pem'), '-days', '2', '-extfile', p('ext.cnf')]);
  return { dir, ca: p('ca.pem'), cert: p('server.pem'), key: p('server.key') };
}

// ----- frames ------------------------------------------------------------------------------

/**
 * Decodes one binary frame (docs/telemetry.md, little-endian). Throws on malformed input.
 * Returns {version, kind, flags, late, history, stream, seq, captureUs, size, ...payload}:
 * layout → channels, waveform → blocks [{channel, format, samples: number[]}],
 * numerics → values [{code, value}].
 */
export function decodeFrame(buf) {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let at = 0;
  const need = (n) => {
    if (at + n > buf.byteLength) throw new Error(`frame truncated at byte ${at} (+${n}) of ${buf.byteLength}`);
  };
  const u8 = () => (need(1), dv.getUint8(at++));
  const u16 = () => (need(2), (at += 2), dv.getUint16(at - 2, true));
  const u32 = () => (need(4), (at += 4), dv.getUint32(at - 4, true));
  const f64 = () => (need(8), (at += 8), dv.getFloat64(at - 8, true));
  const str = () => {
    const n = u8();
    need(n);
    at += n;
    return buf.subarray(at - n, at).toString('utf8');
  };
  const version = u8();
  const kind = u8();
  const flags = u8();
  const stream = str();
  need(16);
  const seq = Number(dv.getBigUint64(at, true));
  const captureUs = Number(dv.getBigInt64(at + 8, true));
  at += 16;
  const f = { version, kind, flags, late: (flags & FLAG_LATE) !== 0, history: (flags & FLAG_HISTORY) !== 0, stream, seq, captureUs, size: buf.byteLength };
  if (kind === KIND.layout) {
    const n = u8();
    f.channels = [];
    for (let i = 0; i < n; i++) {
      const index = u8();
      const mdc = u32();
      const rate_hz = f64();
      const gain = f64();
      const baseline = f64();
      const label = str();
      const unit = str();
      f.channels.push({ index, mdc, rate_hz, gain, baseline, label, unit });
    }
  } else if (kind === KIND.waveform) {
    const n = u8();
    f.blocks = [];
    for (let i = 0; i < n; i++) {
      const channel = u8();
      const format = u8();
      const count = u16();
      const width = format === 1 ? 2 : format === 2 ? 4 : 0;
      if (!width) throw new Error(`unknown sample format ${format}`);
      need(count * width);
      const samples = new Array(count);
      for (let k = 0; k < count; k++) samples[k] = width === 2 ? dv.getInt16(at + 2 * k, true) : dv.getInt32(at + 4 * k, true);
      at += count * width;
      f.blocks.push({ channel, format, samples });
    }
  } else if (kind === KIND.numerics) {
    const n = u8();
    f.values = [];
    for (let i = 0; i < n; i++) f.values.push({ code: u32(), value: f64() });
  } else {
    throw new Error(`unknown frame kind ${kind}`);
  }
  if (at !== buf.byteLength) throw new Error(`${buf.byteLength - at} bytes after the end of the frame`);
  return f;
}

/**
 * Encodes a frame: {kind: 'layout'|'waveform'|'numerics', flags, stream, seq, captureUs,
 * channels | blocks [{channel, samples, format?}] | values [{code, value}]}.
 */
export function encodeFrame({ kind, flags = 0, stream, seq, captureUs = Math.round(nowMs() * 1000), channels, blocks, values }) {
  const parts = [];
  const u8 = (v) => parts.push(Buffer.from([v]));
  const u16 = (v) => { const b = Buffer.alloc(2); b.writeUInt16LE(v); parts.push(b); };
  const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); parts.push(b); };
  const f64 = (v) => { const b = Buffer.alloc(8); b.writeDoubleLE(v); parts.push(b); };
  const str = (s) => { const b = Buffer.from(s, 'utf8'); u8(b.length); parts.push(b); };
  const k = typeof kind === 'string' ? KIND[kind] : kind;
  u8(1);
  u8(k);
  u8(flags);
  str(stream);
  const h = Buffer.alloc(16);
  h.writeBigUInt64LE(BigInt(seq));
  h.writeBigInt64LE(BigInt(captureUs), 8);
  parts.push(h);
  if (k === KIND.layout) {
    u8(channels.length);
    for (const c of channels) {
      u8(c.index);
      u32(c.mdc ?? 0);
      f64(c.rate_hz);
      f64(c.gain);
      f64(c.baseline);
      str(c.label);
      str(c.unit);
    }
  } else if (k === KIND.waveform) {
    u8(blocks.length);
    for (const b of blocks) {
      const format = b.format ?? (b.samples.every((s) => s >= -32768 && s <= 32767) ? 1 : 2);
      u8(b.channel);
      u8(format);
      u16(b.samples.length);
      const body = Buffer.alloc(b.samples.length * (format === 1 ? 2 : 4));
      b.samples.forEach((s, i) => (format === 1 ? body.writeInt16LE(s, 2 * i) : body.writeInt32LE(s, 4 * i)));
      parts.push(body);
    }
  } else if (k === KIND.numerics) {
    u8(values.length);
    for (const v of values) {
      u32(v.code);
      f64(v.value);
    }
  }
  return Buffer.concat(parts);
}

// ----- viewer ------------------------------------------------------------------------------

/**
 * A node viewer on /telemetry/view (the `ws` package): authenticates, subscribes, and keeps
 * everything: `json` [{msg, at}], `frames` (decoded waveform frames with `at`, receive time
 * in epoch ms), `binaryErrors` (undecodable binary messages), `close`.
 */
export class Viewer {
  static async open(server, token, { name = 'viewer', stream = null, timeout = 10_000 } = {}) {
    const v = new Viewer(`${server.wsBase}/telemetry/view`, { ca: server.ca, name });
    await v.opened(timeout);
    const welcome = await v.auth(token, { timeout });
    if (welcome.type !== 'welcome') throw new Error(`${name}: auth refused: ${safeJson(welcome)}`);
    if (stream) await v.subscribe(stream, { timeout });
    return v;
  }

  constructor(url, { ca = null, name = 'viewer' } = {}) {
    this.name = name;
    this.url = url;
    this.json = [];
    this.frames = [];
    this.binaryErrors = [];
    this.close = null;
    this.waits = new Waiters(this, () => this.json, { message: (j) => j.msg, label: `${name}: ` });
    const opts = { maxPayload: 16 * 1024 * 1024, handshakeTimeout: 10_000 };
    if (url.startsWith('wss:')) Object.assign(opts, ca ? { ca } : { rejectUnauthorized: false });
    this.ws = new WebSocket(url, opts);
    this.ws.on('message', (data, isBinary) => this._onMessage(data, isBinary));
    this.ws.on('close', (code, reason) => {
      this.close = { code, reason: reason.toString(), at: nowMs() };
      this.waits.check();
    });
    this.ws.on('error', (e) => (this.lastError = e));
  }

  _onMessage(data, isBinary) {
    const at = nowMs();
    if (isBinary) {
      try {
        const f = decodeFrame(Buffer.isBuffer(data) ? data : Buffer.concat(data));
        f.at = at;
        this.frames.push(f);
      } catch (e) {
        this.binaryErrors.push({ error: e.message, at });
      }
    } else {
      let msg;
      try {
        msg = JSON.parse(data.toString('utf8'));
      } catch {
        msg = { type: '__unparsable__', text: data.toString('utf8') };
      }
      this.json.push({ msg, at });
    }
    this.waits.check();
  }

  opened(timeout = 10_000) {
    return new Promise((resolve, reject) => {
      if (this.ws.readyState === WebSocket.OPEN) return resolve();
      const t = setTimeout(() => reject(new Error(`${this.name}: ${this.url} did not open within ${timeout} ms`)), timeout);
      this.ws.once('open', () => (clearTimeout(t), resolve()));
      this.ws.once('error', (e) => (clearTimeout(t), reject(new Error(`${this.name}: ${this.url}: ${e.message}`))));
    });
  }

  send(msg) {
    this.ws.send(typeof msg === 'string' || Buffer.isBuffer(msg) ? msg : JSON.stringify(msg));
  }

  /** Sends auth; resolves with `welcome` or the `error` received. */
  auth(token, { timeout = 10_000 } = {}) {
    const from = this.json.length;
    this.send({ type: 'auth', token });
    return this.next((m) => m.type === 'welcome' || m.type === 'error', { timeout, from });
  }

  /**
   * Subscribes; resolves with the stream's `limits` message (always sent on subscribe),
   * throws with the error received instead.
   */
  async subscribe(stream, { timeout = 10_000 } = {}) {
    const from = this.json.length;
    this.send({ type: 'subscribe', stream });
    const m = await this.next((x) => (x.type === 'limits' && x.stream === stream) || x.type === 'error', { timeout, from });
    if (m.type === 'error') throw new Error(`${this.name}: subscribe ${stream} refused: ${safeJson(m)}`);
    this.subscribedAt = nowMs();
    return m;
  }

  /** Messages (JSON) of `type`. */
  of(type) {
    return this.json.filter((j) => j.msg.type === type).map((j) => j.msg);
  }

  /** Alarm events as received [{...alarm, stream, at}]. */
  alarmEvents() {
    return this.json.filter((j) => j.msg.type === 'alarm').map((j) => ({ ...j.msg.alarm, stream: j.msg.stream, at: j.at }));
  }

  /** Waits for a JSON message matching `pred` (type string or function) at index ≥ `from`. */
  next(pred, { timeout = 10_000, from = 0 } = {}) {
    return this.waits.next(pred, { timeout, from });
  }

  closed(timeout = 10_000) {
    if (this.close) return Promise.resolve(this.close);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${this.name}: not closed within ${timeout} ms; received: ${this.describe()}`)), timeout);
      this.ws.once('close', () => (clearTimeout(t), resolve(this.close)));
    });
  }

  /** A short account of what arrived (for failure messages). */
  describe() {
    const types = {};
    for (const j of this.json) types[j.msg.type] = (types[j.msg.type] || 0) + 1;
    const lastJson = this.json.slice(-6).map((j) => j.msg);
    const seqs = this.frames.map((f) => f.seq);
    return `${this.frames.length} waveform frames (seq ${seqs[0] ?? '-'}..${seqs.at(-1) ?? '-'}), json ${safeJson(types)}, last json ${safeJson(lastJson).slice(0, 1500)}${this.binaryErrors.length ? `, undecodable binary: ${safeJson(this.binaryErrors.slice(0, 3))}` : ''}${this.close ? `, closed ${safeJson(this.close)}` : ''}`;
  }

  /** Frames of `stream` (all streams when null). */
  streamFrames(stream = null) {
    return stream ? this.frames.filter((f) => f.stream === stream) : this.frames;
  }

  terminate() {
    try {
      this.ws.terminate();
    } catch {
      /* gone */
    }
  }
}

// ----- checks on received frames -----------------------------------------------------------

/** Samples of channel `channel` of `frames` in seq order, concatenated. */
export function samplesInSeqOrder(frames, channel = 0) {
  const out = [];
  for (const f of [...frames].sort((a, b) => a.seq - b.seq)) {
    for (const b of f.blocks) if (b.channel === channel) for (const s of b.samples) out.push(s);
  }
  return out;
}

/** Duplicate seqs and the seqs missing between the first and the last of `seqs`. */
export function seqReport(seqs) {
  const sorted = [...seqs].sort((a, b) => a - b);
  const dups = [];
  const missing = [];
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i] === sorted[i - 1]) dups.push(sorted[i]);
    else for (let s = sorted[i - 1] + 1; s < sorted[i] && missing.length < 1000; s++) missing.push(s);
  }
  return { first: sorted[0], last: sorted.at(-1), count: sorted.length, dups, missing };
}

/** First index where `got` differs from `want` (or -1), and a window around it. */
export function firstDifference(got, want) {
  const n = Math.max(got.length, want.length);
  for (let i = 0; i < n; i++) {
    if (got[i] !== want[i]) {
      return { index: i, got: got.slice(Math.max(0, i - 3), i + 5), want: want.slice(Math.max(0, i - 3), i + 5) };
    }
  }
  return null;
}

/** Percentile `p` (0..100) of numbers. */
export function percentile(values, p) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

// ----- agent -------------------------------------------------------------------------------

const agents = new Set();
process.on('exit', () => {
  for (const a of agents) {
    try {
      a.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
});

/**
 * Spawns `medrelay ambulance ARGS` (inside network namespace `netns` if given), its output
 * into ARTIFACTS/logs/<name>.agent.log. Returns {child, pid, exited (Promise {code,
 * signal}), exit (null or {code, signal}), kill(sig), logTail(n), log(), waitExit(ms)}.
 */
export function spawnAgent({ name, args, netns = null }) {
  if (!fs.existsSync(BIN)) throw new Error(`medrelay binary not found at ${BIN} (run cargo build --bin medrelay)`);
  fs.mkdirSync(path.join(ARTIFACTS, 'logs'), { recursive: true });
  const logPath = path.join(ARTIFACTS, 'logs', `${name}.agent.log`);
  const full = ['ambulance', ...args];
  const [cmd, argv] = netns ? ['ip', ['netns', 'exec', netns, BIN, ...full]] : [BIN, full];
  const fd = fs.openSync(logPath, 'w');
  fs.writeSync(fd, `# ${new Date().toISOString()} ${cmd} ${argv.join(' ')}\n`);
  const child = spawn(cmd, argv, {
    stdio: ['ignore', fd, fd],
    env: { ...process.env, MEDRELAY_LOG: process.env.MEDRELAY_LOG || 'info', RUST_BACKTRACE: '1', NO_COLOR: '1' },
  });
  fs.closeSync(fd);
  agents.add(child);
  const a = {
    name,
    child,
    pid: child.pid,
    logPath,
    startedAt: nowMs(),
    exit: null,
    kill: (sig = 'SIGKILL') => {
      try {
        child.kill(sig);
      } catch {
        /* gone */
      }
    },
    log: () => {
      try {
        return fs.readFileSync(logPath, 'utf8');
      } catch {
        return '';
      }
    },
    logTail: (n = 30) => a.log().split('\n').slice(-n).join('\n'),
    /** Resolves with {code, signal} or throws after `ms` (the agent keeps running). */
    async waitExit(ms) {
      let timer;
      const r = await Promise.race([a.exited, new Promise((resolve) => (timer = setTimeout(() => resolve(null), ms)))]);
      clearTimeout(timer);
      if (!r) throw new Error(`agent ${name} still running after ${ms} ms; log tail:\n${a.logTail()}`);
      return r;
    },
  };
  a.exited = new Promise((resolve) =>
    child.once('exit', (code, signal) => {
      agents.delete(child);
      a.exit = { code, signal, at: nowMs() };
      resolve(a.exit);
    }),
  );
  return a;
}

/** `medrelay ambulance --help` (to report which flags exist). */
export async function agentHelp() {
  const { stdout, stderr } = await execFileP(BIN, ['ambulance', '--help'], { timeout: 10_000 }).catch((e) => e);
  return `${stdout || ''}${stderr || ''}`;
}

// ----- raw ingest client -------------------------------------------------------------------

/**
 * A raw agent connection to /telemetry/ingest with `Authorization: Bearer token` (no token
 * header when `token` is null). `connect` resolves with the client once the upgrade
 * succeeded, or with {refused: {status, body, json}} when the server answered HTTP instead.
 */
export class IngestClient {
  static connect(server, token, { timeout = 10_000 } = {}) {
    return new Promise((resolve, reject) => {
      const c = new IngestClient(`${server.wsBase}/telemetry/ingest`, token, server.ca);
      const t = setTimeout(() => reject(new Error(`ingest upgrade: nothing within ${timeout} ms`)), timeout);
      c.ws.once('open', () => (clearTimeout(t), resolve(c)));
      c.ws.once('unexpected-response', (req, res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => {
          clearTimeout(t);
          let json = null;
          try {
            json = JSON.parse(body);
          } catch {
            /* not JSON */
          }
          resolve({ refused: { status: res.statusCode, contentType: res.headers['content-type'], body, json } });
          req.destroy();
        });
      });
      c.ws.once('error', (e) => {
        if (c.ws.readyState !== WebSocket.OPEN) {
          clearTimeout(t);
          reject(e);
        }
      });
    });
  }

  constructor(url, token, ca) {
    this.messages = [];
    this.close = null;
    this.waits = new Waiters(this, () => this.messages, { label: 'ingest: ' });
    const opts = { maxPayload: 16 * 1024 * 1024, handshakeTimeout: 10_000, headers: token ? { Authorization: `Bearer ${token}` } : {} };
    if (url.startsWith('wss:')) Object.assign(opts, ca ? { ca } : { rejectUnauthorized: false });
    this.ws = new WebSocket(url, opts);
    this.ws.on('message', (data, isBinary) => {
      let msg;
      if (isBinary) msg = { type: '__binary__', bytes: data.length };
      else {
        try {
          msg = JSON.parse(data.toString('utf8'));
        } catch {
          msg = { type: '__unparsable__', text: data.toString('utf8') };
        }
      }
      this.messages.push(msg);
      this.waits.check();
    });
    this.ws.on('close', (code, reason) => {
      this.close = { code, reason: reason.toString() };
      this.waits.check();
    });
    this.ws.on('error', (e) => (this.lastError = e));
  }

  send(data) {
    this.ws.send(data, { binary: Buffer.isBuffer(data) });
  }

  next(pred, { timeout = 10_000, from = 0 } = {}) {
    return this.waits.next(pred, { timeout, from });
  }

  /** Waits until an `ack` with through ≥ `seq` arrived. */
  ackedThrough(seq, opts) {
    return this.next((m) => m.type === 'ack' && m.through >= seq, opts);
  }

  closed(timeout = 10_000) {
    if (this.close) return Promise.resolve(this.close);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`ingest: not closed within ${timeout} ms; received: ${this.describe()}`)), timeout);
      this.ws.once('close', () => (clearTimeout(t), resolve(this.close)));
    });
  }

  describe() {
    return `${safeJson(this.messages)}${this.close ? ` then close ${safeJson(this.close)}` : ''}`;
  }

  terminate() {
    try {
      this.ws.terminate();
    } catch {
      /* gone */
    }
  }
}

/**
 * Opens and closes one bare agent connection so that the gateway knows the stream (viewers
 * can subscribe only to streams whose agent has connected since the gateway started:
 * `unknown_stream` otherwise). Returns the welcome.
 */
export async function touchStream(server, crewToken) {
  const c = await IngestClient.connect(server, crewToken);
  if (c.refused) throw new Error(`ingest refused: ${safeJson(c.refused)}`);
  try {
    return await c.next('welcome', { timeout: 5000 });
  } finally {
    c.ws.close();
    await c.closed(5000).catch(() => c.terminate());
  }
}

/**
 * Caps TCP socket buffers (net.ipv4.tcp_rmem / tcp_wmem, per network namespace) so that a
 * client that stops reading backs up its sender within seconds instead of the minutes that
 * loopback's autotuned buffers absorb. Only inside the suite's private namespace (run.sh
 * sets MEDRELAY_E2E_NETNS); returns a function restoring the old values, or null when not
 * applied. Applies to sockets created afterwards.
 */
export function capTcpBuffers({ rmem = '4096 16384 65536', wmem = '4096 16384 65536' } = {}) {
  if (!process.env.MEDRELAY_E2E_NETNS) return null;
  const files = { '/proc/sys/net/ipv4/tcp_rmem': rmem, '/proc/sys/net/ipv4/tcp_wmem': wmem };
  const old = {};
  for (const [f, v] of Object.entries(files)) {
    old[f] = fs.readFileSync(f, 'utf8').trim();
    fs.writeFileSync(f, v);
  }
  return () => {
    for (const [f, v] of Object.entries(old)) fs.writeFileSync(f, v);
  };
}

/** A temp dir that `after` hooks remove. */
export function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
}
