// A raw signaling client (the `ws` package) for protocol-level tests: it sends exactly the
// frames a test wants, records everything the server sends, and exposes the close code.

import WebSocket from 'ws';
import { safeJson } from './server.mjs';

export class RawClient {
  static async connect(wsUrl, { timeout = 5000 } = {}) {
    const c = new RawClient(wsUrl, timeout);
    await c.opened(timeout);
    return c;
  }

  constructor(wsUrl, timeout = 5000) {
    this.messages = []; // every parsed server message, in order
    this.raw = []; // every raw server frame
    this.waiters = [];
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
      this._check();
    });
    this.ws.on('close', (code, reason) => {
      this.close = { code, reason: reason.toString() };
      for (const w of this.closeWaiters.splice(0)) w.resolve(this.close);
      this._check();
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

  /**
   * Resolves with the first message (received at or after index `from`) matching `pred`
   * (a type string or a function). Rejects after `timeout` ms, or when the socket closes first.
   */
  next(pred, { timeout = 5000, from = 0 } = {}) {
    const match = typeof pred === 'string' ? (m) => m.type === pred : pred;
    return new Promise((resolve, reject) => {
      const w = { match, from, resolve, reject };
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`no matching message within ${timeout} ms; received: ${this.describe()}`));
      }, timeout);
      this.waiters.push(w);
      this._check();
    });
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

  _check() {
    for (const w of [...this.waiters]) {
      const i = this.messages.findIndex((m, idx) => idx >= w.from && w.match(m));
      if (i >= 0) {
        clearTimeout(w.timer);
        this.waiters = this.waiters.filter((x) => x !== w);
        w.resolve(this.messages[i]);
      } else if (this.close) {
        clearTimeout(w.timer);
        this.waiters = this.waiters.filter((x) => x !== w);
        w.reject(new Error(`socket closed ${safeJson(this.close)} before a matching message; received: ${this.describe()}`));
      }
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
