/**
 * The WebSocket client of the medrelay signaling protocol (docs/signaling.md).
 *
 * Server messages are handed to one async handler strictly one after the other: the
 * handler of a message (e.g. applying a `subscribe_offer`) has finished before the next
 * message is handled, so the peer connections always see the server's order.
 */

/** The signaling endpoint of the server that served this page. */
export function signalingUrl(loc = location) {
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws`;
}

export class SignalingClient {
  /** @type {WebSocket | null} */
  #ws = null;
  #queue = Promise.resolve();
  #onMessage;
  #onClose;

  /**
   * @param {object} handlers
   * @param {(msg: {type: string} & Record<string, any>) => (void | Promise<void>)} handlers.onMessage
   *   called for every server message, in order, one at a time.
   * @param {(event: CloseEvent) => void} handlers.onClose called once the socket has closed;
   *   after every queued message has been handled.
   */
  constructor({ onMessage, onClose }) {
    this.#onMessage = onMessage;
    this.#onClose = onClose;
  }

  /**
   * Opens the socket. Resolves once it is open; rejects if it cannot be opened.
   * @param {string} url
   * @returns {Promise<void>}
   */
  connect(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      this.#ws = ws;
      let opened = false;
      ws.addEventListener('open', () => {
        opened = true;
        resolve();
      });
      ws.addEventListener('message', (event) => {
        if (typeof event.data !== 'string') return;
        let msg;
        try {
          msg = JSON.parse(event.data);
        } catch {
          console.warn('signaling: unparsable frame dropped');
          return;
        }
        this.#enqueue(() => this.#onMessage(msg));
      });
      ws.addEventListener('close', (event) => {
        if (!opened) reject(new Error(`WebSocket closed before opening (code ${event.code})`));
        this.#enqueue(() => this.#onClose(event));
      });
    });
  }

  /** Whether the socket is open and can send. */
  get isOpen() {
    return this.#ws?.readyState === WebSocket.OPEN;
  }

  /**
   * Sends one message; silently dropped once the socket is no longer open.
   * @param {string} type
   * @param {Record<string, unknown>} [fields]
   */
  send(type, fields = {}) {
    if (!this.isOpen) return;
    this.#ws.send(JSON.stringify({ type, ...fields }));
  }

  /** Closes the socket (normal closure: the server removes the participant at once). */
  close() {
    this.#ws?.close(1000);
  }

  /**
   * Gives the socket up (believed dead, or never opened): closes it with code 4000, which
   * the server treats as a lost socket (the participant stays, suspended, and may resume
   * on a new one). Its close is not reported to `onClose`.
   */
  abandon() {
    this.#onClose = () => {};
    this.#onMessage = () => {};
    this.#ws?.close(4000);
  }

  #enqueue(task) {
    this.#queue = this.#queue.then(task).catch((err) => console.error('signaling: handler failed', err));
  }
}
