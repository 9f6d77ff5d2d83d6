/**
 * Staying in a consult across network changes and short outages (docs/signaling.md,
 * "Resume"): a heartbeat that notices a dead signaling socket (browsers cannot see
 * WebSocket pings), and the reconnection loop that opens new sockets until one of them
 * has sent `resume`.
 */

import { SignalingClient, signalingUrl } from '../shared/signaling.js';

/** How often a `heartbeat` is sent; the server answers each one. */
const HEARTBEAT_MS = 1000;
/** Silence after which the socket counts as dead (the server's own limit is 3 s). */
const DEAD_AFTER_MS = 3500;
/** Reconnection attempts start about this often (with ±20 % jitter). */
const RETRY_MS = 1000;
/** Beyond this the page stops trying (the server's window is 30 s by default). */
const GIVE_UP_MS = 120_000;

/** Sends `heartbeat` every second and reports a socket from which nothing arrives. */
export class Heartbeat {
  #timer = null;
  #lastHeard = 0;

  /**
   * @param {object} deps
   * @param {() => void} deps.send sends one `heartbeat`
   * @param {() => void} deps.onDead nothing was heard for DEAD_AFTER_MS (called once)
   */
  constructor({ send, onDead }) {
    this.send = send;
    this.onDead = onDead;
  }

  start() {
    this.stop();
    this.#lastHeard = Date.now();
    this.#timer = setInterval(() => {
      if (Date.now() - this.#lastHeard > DEAD_AFTER_MS) {
        this.stop();
        this.onDead();
        return;
      }
      this.send();
    }, HEARTBEAT_MS);
  }

  /** Something arrived from the server. */
  heard() {
    this.#lastHeard = Date.now();
  }

  stop() {
    clearInterval(this.#timer);
    this.#timer = null;
  }
}

/**
 * Opens a new signaling socket about once a second until one opens, then sends `resume`
 * on it. An attempt still connecting when the next one is due is abandoned (a browser
 * opens one connecting WebSocket per host at a time, and a lost SYN is not retried soon).
 */
export class Reconnector {
  #timer = null;
  #attempt = null;
  #since = 0;

  /**
   * @param {object} deps
   * @param {(client: SignalingClient) => void} deps.onOpen a socket opened: the caller makes
   *   it current and sends `resume` on it
   * @param {() => void} deps.onGiveUp no socket opened for GIVE_UP_MS
   * @param {(msg: object) => void} deps.onMessage handler of the new socket's messages
   * @param {(client: SignalingClient, event: CloseEvent) => void} deps.onClose handler of its close
   */
  constructor({ onOpen, onGiveUp, onMessage, onClose }) {
    this.onOpen = onOpen;
    this.onGiveUp = onGiveUp;
    this.onMessage = onMessage;
    this.onClose = onClose;
  }

  get active() {
    return this.#since !== 0;
  }

  /** Starts trying (no-op while already trying). */
  start() {
    if (this.active) return;
    this.#since = Date.now();
    this.#schedule(RETRY_MS / 2);
  }

  /** Stops trying and abandons a socket still connecting. */
  stop() {
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#attempt?.abandon();
    this.#attempt = null;
    this.#since = 0;
  }

  #schedule(ms) {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#try(), ms * (0.8 + Math.random() * 0.4));
  }

  #try() {
    this.#attempt?.abandon();
    this.#attempt = null;
    if (Date.now() - this.#since > GIVE_UP_MS) {
      this.stop();
      this.onGiveUp();
      return;
    }
    const client = new SignalingClient({
      onMessage: (msg) => this.onMessage(msg),
      onClose: (event) => this.onClose(client, event),
    });
    this.#attempt = client;
    this.#schedule(RETRY_MS);
    client.connect(signalingUrl()).then(
      () => {
        if (this.#attempt !== client) return;
        this.#attempt = null;
        this.stop();
        this.onOpen(client);
      },
      () => {},
    );
  }
}
