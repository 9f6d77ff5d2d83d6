// A raw signaling client (the `ws` package) for protocol-level tests: it sends exactly the
// frames a test wants, records everything the server sends, and exposes the close code.

import WebSocket from 'ws';
import { safeJson } from './server.mjs';

/**
 * Promises on a client's growing list of received messages: `next` resolves with the first
 * message at index ≥ `from` matching `pred` (a type string or a function), and rejects after
 * `timeout` ms or when the socket closes first. `owner` has `close` (null while open) and
 * `describe()`; `items()` is the received list; `message(item)` the message of one item.
 */
export class Waiters {
  constructor(owner, items, { message = (x) => x, label = '' } = {}) {
    this.owner = owner;
    this.items = items;
    this.message = message;
    this.label = label;
    this.pending = [];
  }

  next(pred, { timeout, from = 0 }) {
    const match = typeof pred === 'string' ? (m) => m.type === pred : pred;
    return new Promise((resolve, reject) => {
      const w = { match, from, resolve, reject };
      w.timer = setTimeout(() => {
        this.pending = this.pending.filter((x) => x !== w);
        reject(new Error(`${this.label}no matching message within ${timeout} ms; received: ${this.owner.describe()}`));
      }, timeout);
      this.pending.push(w);
      this.check();
    });
  }

  /** Settles the waits that can be settled now (call after each message and on close). */
  check() {
    const items = this.items();
    for (const w of [...this.pending]) {
      const i = items.findIndex((x, idx) => idx >= w.from && w.match(this.message(x)));
      if (i < 0 && !this.owner.close) continue;
      clearTimeout(w.timer);
      this.pending = this.pending.filter((x) => x !== w);
      if (i >= 0) w.resolve(this.message(items[i]));
      else w.reject(new Error(`${this.label}socket closed ${safeJson(this.owner.close)} before a matching message; received: ${this.owner.describe()}`));
    }
  }
}

export class RawClient {
  static async connect(wsUrl, { timeout = 5000 } = {}) {
    const c = new RawClient(wsUrl, timeout);
    await c.opened(timeout);
    return c;
  }

  constructor(wsUrl, timeout = 5000) {
    this.messages = []; // every parsed server message, in order
    this.raw = []; // every raw server frame
    this.waits = new Waiters(this, () => this.messages);
    this.close = null; // { code, reason } once closed
    this.closeWaiters = [];
    this.ws = new WebSocket(wsUrl, { maxPayload: 16 * 1024 * 1024, handshakeTimeout: timeout });
    this.ws.on('message', (data, isBinary) => {
      const text = isBinary ? null : data.toString('utf8');
      this.raw.push(text ?? data);
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        msg = { type: '__unparsable__', text };
      }
      this.messages.push(msg);
      this.waits.check();
    });
    this.ws.on('close', (code, reason) => {
      this.close = { code, reason: reason.toString() };
      for (const w of this.closeWaiters.splice(0)) w.resolve(this.close);
      this.waits.check();
    });
    this.ws.on('error', (e) => {
      this.lastError = e;
    });
  }

  opened(timeout = 5000) {
    return new Promise((resolve, reject) => {
      if (this.ws.readyState === WebSocket.OPEN) return resolve();
      const t = setTimeout(() => reject(new Error(`websocket did not open within ${timeout} ms`)), timeout);
      this.ws.once('open', () => {
        clearTimeout(t);
        resolve();
      });
      this.ws.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  /** Sends an object as JSON, or a string / Buffer as is (a text frame for strings). */
  send(msg) {
    const data = typeof msg === 'string' || Buffer.isBuffer(msg) ? msg : JSON.stringify(msg);
    this.ws.send(data, { binary: Buffer.isBuffer(msg) });
  }

  /** See `Waiters.next`. */
  next(pred, { timeout = 5000, from = 0 } = {}) {
    return this.waits.next(pred, { timeout, from });
  }

  /** Waits for an `error` message with `code` after index `from`. */
  nextError(code, opts = {}) {
    return this.next((m) => m.type === 'error' && m.code === code, opts);
  }

  closed(timeout = 5000) {
    if (this.close) return Promise.resolve(this.close);
    return new Promise((resolve, reject) => {
      const w = { resolve };
      this.closeWaiters.push(w);
      setTimeout(() => {
        this.closeWaiters = this.closeWaiters.filter((x) => x !== w);
        reject(new Error(`socket not closed within ${timeout} ms; received: ${this.describe()}`));
      }, timeout);
    });
  }

  /** Sends `join` and waits for `joined` (or throws with the error received). */
  async join(token, room, { timeout = 5000 } = {}) {
    const from = this.messages.length;
    this.send({ type: 'join', token, room });
    const m = await this.next((x) => x.type === 'joined' || x.type === 'error', { timeout, from });
    if (m.type !== 'joined') throw new Error(`join refused: ${safeJson(m)}`);
    return m;
  }

  describe() {
    const msgs = this.messages.map((m) => (m.type === 'subscribe_offer' || m.type === 'publish_answer' ? { ...m, sdp: `<${(m.sdp || '').length} chars>` } : m));
    return `${safeJson(msgs)}${this.close ? ` then close ${safeJson(this.close)}` : ''}`;
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
 * A syntactically valid publisher offer (one VP8 video m-line, sendonly) for protocol tests
 * that need "a real-looking SDP" without a WebRTC stack.
 */
export function sampleOffer(trackId = 'e2e-video-track', streamId = 'e2e-stream') {
  return [
    'v=0',
    'o=- 4611731400430051336 2 IN IP4 127.0.0.1',
    's=-',
    't=0 0',
    'a=group:BUNDLE 0',
    'a=extmap-allow-mixed',
    'a=msid-semantic: WMS ' + streamId,
    'm=video 9 UDP/TLS/RTP/SAVPF 96',
    'c=IN IP4 0.0.0.0',
    'a=rtcp:9 IN IP4 0.0.0.0',
    'a=ice-ufrag:e2eU',
    'a=ice-pwd:e2epasswordpasswordpassw',
    'a=ice-options:trickle',
    'a=fingerprint:sha-256 8B:87:09:8A:5D:C2:F3:33:EF:C5:B1:F6:84:3A:3D:D6:A3:E2:9C:17:4C:E7:46:3B:1B:CE:84:98:DD:8E:AF:7B',
    'a=setup:actpass',
    'a=mid:0',
    'a=sendonly',
    `a=msid:${streamId} ${trackId}`,
    'a=rtcp-mux',
    'a=rtcp-rsize',
    'a=rtpmap:96 VP8/90000',
    'a=rtcp-fb:96 nack',
    'a=rtcp-fb:96 nack pli',
    'a=ssrc:1111111111 cname:e2ecname',
    `a=ssrc:1111111111 msid:${streamId} ${trackId}`,
    '',
  ].join('\r\n');
}

/** The raw clients one test file opens, so that its `after` hook can end them all. */
export class RawClientPool {
  constructor() {
    this.clients = [];
  }

  /** Opens a client on `wsUrl` and keeps it for `terminateAll`. */
  async connect(wsUrl) {
    const c = await RawClient.connect(wsUrl);
    this.clients.push(c);
    return c;
  }

  terminateAll() {
    for (const c of this.clients.splice(0)) c.terminate();
  }
}
