/**
 * The ambulance telemetry viewer client (docs/telemetry.md, "Viewers"): one WebSocket to
 * /telemetry/view that authenticates, keeps its subscriptions across reconnects and turns
 * the binary frames into physical values.
 *
 * Events handed to `onEvent`:
 *   {type: 'open'}                          the socket opened (auth sent)
 *   {type: 'close', code, reconnectInMs}    the socket closed; reconnectInMs is null when
 *                                           it will not reconnect (closed, or auth refused)
 *   every server JSON message as received (welcome, streams, layout, numerics, alarm,
 *   limits, gap, error)
 *   {type: 'waveform', ...WaveformFrame}    a decoded binary waveform frame
 */

/** IEEE 11073 codes of the vitals (numerics payloads) → their JSON names. */
export const VITAL_CODES = new Map([
  [147842, 'hr'],
  [150456, 'spo2'],
  [150021, 'nibp_sys'],
  [150022, 'nibp_dia'],
  [150023, 'nibp_mean'],
  [151562, 'rr'],
  [150364, 'temp'],
  [151708, 'etco2'],
  [0xf0000001, 'lat'],
  [0xf0000002, 'lon'],
]);

/** Decimal places shown per vital. */
const DECIMALS = { temp: 1, lat: 5, lon: 5 };

/** A vital's value as shown on a monitor ("--" when unknown). */
export function formatVital(name, value) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return '--';
  return value.toFixed(DECIMALS[name] ?? 0);
}

const FRAME_KIND = { 1: 'layout', 2: 'waveform', 3: 'numerics' };
const FLAG_LATE = 0x01;
const FLAG_HISTORY = 0x02;
const MAX_BACKOFF_MS = 15_000;

/** The viewer endpoint of the server that served this page. */
export function telemetryUrl(loc = location) {
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/telemetry/view`;
}

/**
 * @typedef {{index: number, label: string, unit: string, rate_hz: number, gain: number,
 *   baseline: number, mdc: number}} Channel
 * @typedef {{channel: number, label: string, unit: string, rateHz: number,
 *   raw: Int16Array | Int32Array, values: Float32Array | null}} Block
 *   `values` are physical ((raw - baseline) / gain); null while the layout is unknown.
 * @typedef {{stream: string, seq: number, captureMs: number, late: boolean,
 *   history: boolean, blocks: Block[]}} WaveformFrame
 */

/**
 * Decodes one binary frame (any kind). Throws on a malformed frame.
 * @param {ArrayBuffer} buffer
 * @returns {{kind: string, stream: string, seq: number, captureMs: number, late: boolean,
 *   history: boolean, channels?: object[], blocks?: object[], values?: Record<string, number>}}
 */
export function decodeFrame(buffer) {
  const view = new DataView(buffer);
  let at = 0;
  const u8 = () => view.getUint8(at++);
  const u16 = () => ((at += 2), view.getUint16(at - 2, true));
  const u32 = () => ((at += 4), view.getUint32(at - 4, true));
  const f64 = () => ((at += 8), view.getFloat64(at - 8, true));
  const str = () => {
    const len = u8();
    at += len;
    return new TextDecoder().decode(new Uint8Array(buffer, at - len, len));
  };

  const version = u8();
  if (version !== 1) throw new Error(`unsupported frame version ${version}`);
  const kind = FRAME_KIND[u8()];
  if (!kind) throw new Error('unknown frame kind');
  const flags = u8();
  const stream = str();
  const seq = u32() + u32() * 2 ** 32;
  const captureMs = Number(view.getBigInt64(at, true)) / 1000;
  at += 8;
  const frame = { kind, stream, seq, captureMs, late: Boolean(flags & FLAG_LATE), history: Boolean(flags & FLAG_HISTORY) };

  const n = u8();
  if (kind === 'layout') {
    frame.channels = [];
    for (let i = 0; i < n; i++) {
      const index = u8();
      const mdc = u32();
      const rate_hz = f64();
      const gain = f64();
      const baseline = f64();
      frame.channels.push({ index, mdc, rate_hz, gain, baseline, label: str(), unit: str() });
    }
  } else if (kind === 'waveform') {
    frame.blocks = [];
    for (let i = 0; i < n; i++) {
      const channel = u8();
      const format = u8();
      const count = u16();
      const width = format === 1 ? 2 : format === 2 ? 4 : 0;
      if (!width) throw new Error(`unknown sample format ${format}`);
      const raw = format === 1 ? new Int16Array(count) : new Int32Array(count);
      for (let j = 0; j < count; j++) {
        raw[j] = format === 1 ? view.getInt16(at + 2 * j, true) : view.getInt32(at + 4 * j, true);
      }
      at += count * width;
      frame.blocks.push({ channel, raw });
    }
  } else {
    frame.values = {};
    for (let i = 0; i < n; i++) {
      const code = u32();
      const value = f64();
      const name = VITAL_CODES.get(code);
      if (name) frame.values[name] = value;
    }
  }
  return frame;
}

/**
 * Opens the viewer socket and keeps it open: it reconnects with a growing backoff
 * (0.5 s doubling to 15 s) whenever it closes, except after `close()` or a refused auth.
 * @param {{token: string, onEvent: (event: object) => void, url?: string}} options
 */
export function connectTelemetry({ token, onEvent, url = telemetryUrl() }) {
  return new TelemetryClient(token, onEvent, url);
}

export class TelemetryClient {
  /** @type {WebSocket | null} */
  #ws = null;
  #token;
  #url;
  #onEvent;
  #backoffMs = 500;
  #timer = 0;
  #closed = false;
  /** Whether the server refused the token: no more reconnects. */
  authFailed = false;
  /** Whether the current socket got its `welcome`. */
  welcomed = false;
  /** @type {Set<string>} streams to (re)subscribe after every welcome */
  #subscriptions = new Set();
  /** @type {Map<string, Channel[]>} latest layout per stream */
  layouts = new Map();
  /** @type {Map<string, Map<string, number>>} raw samples received per stream per channel label */
  sampleCounts = new Map();

  constructor(token, onEvent, url) {
    this.#token = token;
    this.#onEvent = onEvent;
    this.#url = url;
    this.#open();
  }

  /** Whether the socket is open and authenticated. */
  get connected() {
    return this.welcomed && this.#ws?.readyState === WebSocket.OPEN;
  }

  /** Subscribes to `stream` (now, and again after every reconnect). */
  subscribe(stream) {
    this.#subscriptions.add(stream);
    if (this.welcomed) this.#send({ type: 'subscribe', stream });
  }

  /** Unsubscribes from `stream` and forgets its layout and counts. */
  unsubscribe(stream) {
    this.#subscriptions.delete(stream);
    this.layouts.delete(stream);
    this.sampleCounts.delete(stream);
    if (this.welcomed) this.#send({ type: 'unsubscribe', stream });
  }

  /** Acknowledges alarm `alarm` (its id) of `stream` (er role). */
  ackAlarm(stream, alarm) {
    this.#send({ type: 'ack_alarm', stream, alarm });
  }

  /** Sets the alarm limits of one vital; `null` is "no limit" (er role). */
  setLimits(stream, vital, low, high) {
    this.#send({ type: 'set_limits', stream, vital, low, high });
  }

  /** Raw samples received so far per channel label of `stream`. */
  samplesOf(stream) {
    return Object.fromEntries(this.sampleCounts.get(stream) ?? []);
  }

  /** Closes for good. */
  close() {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#ws?.close(1000);
  }

  #send(msg) {
    if (this.#ws?.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(msg));
  }

  #open() {
    const ws = new WebSocket(this.#url);
    ws.binaryType = 'arraybuffer';
    this.#ws = ws;
    this.welcomed = false;
    ws.addEventListener('open', () => {
      ws.send(JSON.stringify({ type: 'auth', token: this.#token }));
      this.#onEvent({ type: 'open' });
    });
    ws.addEventListener('message', (event) => {
      if (ws !== this.#ws) return;
      if (typeof event.data === 'string') this.#onText(event.data);
      else this.#onBinary(event.data);
    });
    ws.addEventListener('close', (event) => {
      if (ws !== this.#ws) return;
      // A policy close before `welcome` is the server refusing the token.
      if (!this.welcomed && event.code === 1008) this.authFailed = true;
      this.welcomed = false;
      const retry = !this.#closed && !this.authFailed;
      const delay = retry ? Math.round(this.#backoffMs * (0.8 + 0.4 * Math.random())) : null;
      if (retry) {
        this.#backoffMs = Math.min(this.#backoffMs * 2, MAX_BACKOFF_MS);
        this.#timer = setTimeout(() => this.#open(), delay);
      }
      this.#onEvent({ type: 'close', code: event.code, reconnectInMs: delay });
    });
  }

  #onText(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    switch (msg.type) {
      case 'welcome':
        this.welcomed = true;
        this.#backoffMs = 500;
        for (const stream of this.#subscriptions) this.#send({ type: 'subscribe', stream });
        break;
      case 'layout':
        this.layouts.set(msg.stream, msg.channels ?? []);
        break;
      case 'error':
        // Before `welcome` an error answers `auth`: the token is no good, do not retry.
        if (!this.welcomed || msg.code === 'unauthorized') this.authFailed = true;
        break;
    }
    this.#onEvent(msg);
  }

  #onBinary(buffer) {
    let frame;
    try {
      frame = decodeFrame(buffer);
    } catch (err) {
      this.#onEvent({ type: 'error', code: 'bad_frame', message: String(err.message ?? err) });
      return;
    }
    if (frame.kind === 'layout') {
      this.layouts.set(frame.stream, frame.channels);
      this.#onEvent({ type: 'layout', stream: frame.stream, channels: frame.channels });
    } else if (frame.kind === 'numerics') {
      const { stream, seq, captureMs, late, history, values } = frame;
      this.#onEvent({ type: 'numerics', stream, seq, t_ms: captureMs, late, history, values });
    } else {
      this.#onEvent({ type: 'waveform', ...this.#physical(frame) });
    }
  }

  /** Names the blocks' channels, converts to physical units and counts the samples. */
  #physical(frame) {
    const channels = this.layouts.get(frame.stream) ?? [];
    let counts = this.sampleCounts.get(frame.stream);
    if (!counts) this.sampleCounts.set(frame.stream, (counts = new Map()));
    const blocks = frame.blocks.map(({ channel, raw }) => {
      const ch = channels.find((c) => c.index === channel);
      const label = ch?.label || `ch${channel}`;
      counts.set(label, (counts.get(label) ?? 0) + raw.length);
      let values = null;
      if (ch && ch.gain) {
        values = new Float32Array(raw.length);
        for (let i = 0; i < raw.length; i++) values[i] = (raw[i] - ch.baseline) / ch.gain;
      }
      return { channel, label, unit: ch?.unit ?? '', rateHz: ch?.rate_hz ?? 0, raw, values };
    });
    const { stream, seq, captureMs, late, history } = frame;
    return { stream, seq, captureMs, late, history, blocks };
  }
}
