/**
 * An ECG sweep on a <canvas>, drawn like a bedside monitor: a green trace on a dark
 * paper grid (1 mm / 5 mm), 25 mm/s and 10 mm/mV, the pen moving left to right and
 * wrapping, with an erase bar just ahead of it.
 *
 * Every sample is placed by its capture time (frame capture time + i / rate), so frames
 * arriving late or as history land where they belong while that part is on screen. The
 * whole picture is redrawn from the buffered samples on each animation frame.
 */

/** The standard 12 leads, in the order of the 12-lead grid (column by column). */
export const TWELVE_LEADS = ['I', 'II', 'III', 'aVR', 'aVL', 'aVF', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6'];

/** CSS pixels per millimetre (96 dpi). */
const PX_PER_MM = 96 / 25.4;
/** Width of the erase bar ahead of the pen, in mm. */
const ERASE_MM = 6;
/** How long a clock-offset probe is trusted, in ms. */
const PROBE_WINDOW_MS = 3000;
/** Without data for this long a trace shows the no-signal text. */
const NO_SIGNAL_MS = 2500;

const COLORS = {
  background: '#020a06',
  minor: 'rgba(40, 200, 110, 0.07)',
  major: 'rgba(40, 200, 110, 0.22)',
  separator: 'rgba(120, 160, 140, 0.45)',
  trace: '#39ff7a',
  label: '#8dffb4',
  muted: 'rgba(160, 200, 180, 0.75)',
};

/**
 * @typedef {{t0: number, dt: number, values: Float32Array, drawnTo: number}} Chunk
 *   t0: capture time of values[0] (gateway ms), dt: sample period (ms), drawnTo: how many
 *   of its samples have been on screen.
 * @typedef {{x: number, y: number, w: number, h: number, label: string | null}} Cell
 */

export class EcgSweep {
  #canvas;
  #ctx;
  #speed;
  #gain;
  #delayMs;
  #noSignalText;
  /** @type {Map<string, Chunk[]>} chunks per lead, sorted by t0 */
  #leads = new Map();
  /** @type {string[]} the leads of the layout, in layout order */
  #channels = [];
  #lead = null;
  #twelve = false;
  /** @type {{at: number, offset: number}[]} recent (gateway time − local time) probes */
  #probes = [];
  /** The largest recent probe; kept while no data arrives, so the pen sweeps on. */
  #offset = null;
  #pen = null;
  #raf = 0;
  #grid = null;
  #size = { w: 0, h: 0, dpr: 0 };
  /** @type {Map<string, number>} */
  #drawn = new Map();
  #lastDrawMs = null;

  /**
   * @param {HTMLCanvasElement} canvas sized by CSS; the backing store follows its size
   *   and devicePixelRatio.
   * @param {{speedMmPerS?: number, gainMmPerMv?: number, delayMs?: number,
   *   noSignalText?: () => string}} [options] delayMs: how far the pen runs behind the
   *   newest data, to absorb network jitter.
   */
  constructor(canvas, { speedMmPerS = 25, gainMmPerMv = 10, delayMs = 300, noSignalText = () => '' } = {}) {
    this.#canvas = canvas;
    this.#ctx = canvas.getContext('2d');
    this.#speed = speedMmPerS;
    this.#gain = gainMmPerMv;
    this.#delayMs = delayMs;
    this.#noSignalText = noSignalText;
  }

  /** Sets the leads the stream has (layout labels); keeps the lead if still present. */
  setChannels(labels) {
    this.#channels = [...labels];
    if (!this.#lead || !labels.includes(this.#lead)) this.#lead = labels[0] ?? null;
  }

  /** Shows lead `label` (single-trace mode). */
  setLead(label) {
    this.#lead = label;
  }

  get lead() {
    return this.#lead;
  }

  /** Switches between one large trace and the 12-lead grid. */
  setTwelveLead(on) {
    this.#twelve = Boolean(on);
  }

  get twelveLead() {
    return this.#twelve;
  }

  /**
   * Adds the samples of one decoded waveform frame (telemetry.js); blocks without
   * physical values (layout unknown) are skipped, a block already held is ignored.
   * @param {import('./telemetry.js').WaveformFrame} frame
   */
  push(frame) {
    let end = frame.captureMs;
    for (const block of frame.blocks) {
      if (!block.values || !block.rateHz || !block.values.length) continue;
      const dt = 1000 / block.rateHz;
      end = Math.max(end, frame.captureMs + block.values.length * dt);
      this.#insert(block.label, { t0: frame.captureMs, dt, values: block.values, drawnTo: 0 });
    }
    this.#probe(end);
  }

  /** Forgets every sample (another stream is shown). */
  clear() {
    this.#leads.clear();
    this.#probes = [];
    this.#offset = null;
    this.#pen = null;
    this.#drawn.clear();
  }

  /** Starts drawing on every animation frame. */
  start() {
    if (this.#raf) return;
    const tick = () => {
      this.#raf = requestAnimationFrame(tick);
      this.draw();
    };
    this.#raf = requestAnimationFrame(tick);
  }

  stop() {
    cancelAnimationFrame(this.#raf);
    this.#raf = 0;
  }

  /**
   * Counters for tests: samples put on screen per lead (each counted once) and the time
   * of the last draw (epoch ms).
   * @returns {{drawn: Record<string, number>, lastDrawMs: number | null, lead: string | null, twelveLead: boolean}}
   */
  stats() {
    return {
      drawn: Object.fromEntries(this.#drawn),
      lastDrawMs: this.#lastDrawMs,
      lead: this.#lead,
      twelveLead: this.#twelve,
    };
  }

  /** Draws one picture (called by the animation loop). */
  draw() {
    const { w, h } = this.#fit();
    if (!w || !h) return;
    const ctx = this.#ctx;
    ctx.setTransform(this.#size.dpr, 0, 0, this.#size.dpr, 0, 0);
    ctx.drawImage(this.#grid, 0, 0, w, h);
    const pen = this.#advancePen();
    const cells = this.#cells(w, h);
    for (const cell of cells) this.#drawCell(cell, pen);
    if (cells.length > 1) this.#drawSeparators(cells);
    this.#drawScale(w, h);
    this.#lastDrawMs = Date.now();
  }

  #insert(label, chunk) {
    let chunks = this.#leads.get(label);
    if (!chunks) this.#leads.set(label, (chunks = []));
    let i = chunks.length;
    while (i > 0 && chunks[i - 1].t0 > chunk.t0) i--;
    if (i > 0 && chunks[i - 1].t0 === chunk.t0) return;
    chunks.splice(i, 0, chunk);
  }

  /** Records how far the gateway clock is ahead of ours, judged by the newest data. */
  #probe(dataEndMs) {
    const now = performance.now();
    this.#probes = this.#probes.filter((p) => now - p.at < PROBE_WINDOW_MS);
    this.#probes.push({ at: now, offset: dataEndMs - now });
    this.#offset = Math.max(...this.#probes.map((p) => p.offset));
  }

  /**
   * The pen's time (gateway ms): local time plus the largest recent offset, less the
   * delay. When the offset shrinks a little (jitter) the pen waits rather than stepping
   * back; a step back of more than 2 s is taken as a new time base.
   */
  #advancePen() {
    if (this.#offset === null) return null;
    const target = performance.now() + this.#offset - this.#delayMs;
    if (this.#pen === null || target > this.#pen || this.#pen - target > 2000) this.#pen = target;
    this.#prune();
    return this.#pen;
  }

  /** Drops samples older than the widest window. */
  #prune() {
    const keepMs = ((this.#size.w / PX_PER_MM) / this.#speed) * 1000 + 2000;
    for (const chunks of this.#leads.values()) {
      let n = 0;
      while (n < chunks.length && chunks[n].t0 + chunks[n].values.length * chunks[n].dt < this.#pen - keepMs) n++;
      if (n) chunks.splice(0, n);
    }
  }

  /** The traces to draw: one, or the 12-lead grid (4 columns, filled column by column). */
  #cells(w, h) {
    if (!this.#twelve) return [{ x: 0, y: 0, w, h, label: this.#lead }];
    const standard = TWELVE_LEADS.flatMap((lead) => this.#channels.filter((c) => c.toLowerCase() === lead.toLowerCase()));
    const leads = [...standard, ...this.#channels.filter((c) => !standard.includes(c))].slice(0, 12);
    if (!leads.length) return [{ x: 0, y: 0, w, h, label: null }];
    const cols = Math.min(4, leads.length);
    const rows = Math.ceil(leads.length / cols);
    const cw = w / cols;
    const ch = h / rows;
    return leads.map((label, k) => ({ x: Math.floor(k / rows) * cw, y: (k % rows) * ch, w: cw, h: ch, label }));
  }

  #drawCell(cell, pen) {
    const ctx = this.#ctx;
    const chunks = (cell.label && this.#leads.get(cell.label)) || [];
    const windowMs = ((cell.w / PX_PER_MM) / this.#speed) * 1000;
    const start = pen - windowMs + ((ERASE_MM / this.#speed) * 1000);
    const xOf = (t) => cell.x + ((((t % windowMs) + windowMs) % windowMs) / windowMs) * cell.w;
    const mid = cell.y + cell.h / 2;
    const scale = this.#gain * PX_PER_MM;
    let newest = -Infinity;

    ctx.save();
    ctx.beginPath();
    ctx.rect(cell.x, cell.y, cell.w, cell.h);
    ctx.clip();
    if (pen !== null) {
      ctx.beginPath();
      let lastT = -Infinity;
      let lastX = Infinity;
      let head = null;
      for (const chunk of chunks) {
        const { t0, dt, values } = chunk;
        const n = values.length;
        if (t0 + n * dt < start || t0 > pen) continue;
        const from = Math.max(0, Math.ceil((start - t0) / dt));
        const to = Math.min(n, Math.floor((pen - t0) / dt) + 1);
        for (let i = from; i < to; i++) {
          const t = t0 + i * dt;
          const x = xOf(t);
          const y = mid - values[i] * scale;
          if (t - lastT > 1.5 * dt || x < lastX) ctx.moveTo(x, y);
          else ctx.lineTo(x, y);
          lastT = t;
          lastX = x;
          head = { x, y };
        }
        if (to > chunk.drawnTo) {
          this.#drawn.set(cell.label, (this.#drawn.get(cell.label) ?? 0) + to - Math.max(chunk.drawnTo, from));
          chunk.drawnTo = to;
        }
      }
      ctx.strokeStyle = COLORS.trace;
      ctx.lineWidth = this.#twelve ? 1.2 : 1.8;
      ctx.lineJoin = 'round';
      ctx.stroke();
      if (head && pen - lastT < 200) {
        ctx.fillStyle = '#d8ffe6';
        ctx.fillRect(head.x - 1.5, head.y - 1.5, 3, 3);
      }
      const last = chunks[chunks.length - 1];
      if (last) newest = last.t0 + last.values.length * last.dt;
    }
    ctx.fillStyle = COLORS.label;
    ctx.font = `600 ${this.#twelve ? 13 : 16}px system-ui, sans-serif`;
    ctx.textBaseline = 'top';
    ctx.fillText(cell.label ?? '', cell.x + 8, cell.y + 6);
    const noSignal = (pen === null || pen - newest > NO_SIGNAL_MS) && this.#noSignalText();
    if (noSignal) {
      // In the upper part of the trace, on a dark box so that no trace runs through it.
      ctx.font = `600 ${this.#twelve ? 12 : 16}px system-ui, sans-serif`;
      const width = ctx.measureText(noSignal).width + 16;
      const height = this.#twelve ? 20 : 26;
      const x = cell.x + (cell.w - width) / 2;
      const y = cell.y + cell.h * 0.22;
      ctx.fillStyle = COLORS.background;
      ctx.fillRect(x, y, width, height);
      ctx.fillStyle = COLORS.muted;
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText(noSignal, x + width / 2, y + height / 2);
    }
    ctx.restore();
  }

  #drawSeparators(cells) {
    const ctx = this.#ctx;
    ctx.strokeStyle = COLORS.separator;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (const c of cells) {
      if (c.x > 0) ctx.moveTo(Math.round(c.x) + 0.5, c.y), ctx.lineTo(Math.round(c.x) + 0.5, c.y + c.h);
      if (c.y > 0) ctx.moveTo(c.x, Math.round(c.y) + 0.5), ctx.lineTo(c.x + c.w, Math.round(c.y) + 0.5);
    }
    ctx.stroke();
  }

  #drawScale(w, h) {
    const ctx = this.#ctx;
    ctx.fillStyle = COLORS.muted;
    ctx.font = '11px system-ui, sans-serif';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'bottom';
    ctx.fillText(`${this.#speed} mm/s · ${this.#gain} mm/mV`, w - 6, h - 4);
    ctx.textAlign = 'start';
  }

  /** Matches the backing store to the CSS size × devicePixelRatio; redraws the grid. */
  #fit() {
    const w = this.#canvas.clientWidth;
    const h = this.#canvas.clientHeight;
    const dpr = globalThis.devicePixelRatio || 1;
    const size = this.#size;
    if (w !== size.w || h !== size.h || dpr !== size.dpr) {
      Object.assign(size, { w, h, dpr });
      this.#canvas.width = Math.round(w * dpr);
      this.#canvas.height = Math.round(h * dpr);
      this.#grid = paperGrid(this.#canvas.width, this.#canvas.height, PX_PER_MM * dpr);
    }
    return size;
  }
}

/** A canvas with the dark paper grid: 1 mm minor lines, 5 mm major lines. */
function paperGrid(width, height, pxPerMm) {
  const grid = document.createElement('canvas');
  grid.width = Math.max(1, width);
  grid.height = Math.max(1, height);
  const ctx = grid.getContext('2d');
  ctx.fillStyle = COLORS.background;
  ctx.fillRect(0, 0, width, height);
  for (const [every, color] of [[1, COLORS.minor], [5, COLORS.major]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let mm = 0; mm * pxPerMm <= width; mm += every) {
      const x = Math.round(mm * pxPerMm) + 0.5;
      ctx.moveTo(x, 0);
      ctx.lineTo(x, height);
    }
    for (let mm = 0; mm * pxPerMm <= height; mm += every) {
      const y = Math.round(mm * pxPerMm) + 0.5;
      ctx.moveTo(0, y);
      ctx.lineTo(width, y);
    }
    ctx.stroke();
  }
  return grid;
}
