/**
 * Connection quality from the peer connections' states and `getStats()`:
 *
 * - `disconnected`: the signaling socket is closed, the subscriber connection is not
 *   `connected`, or a connection is `disconnected`, `failed` or `closed`;
 * - otherwise the worse of round-trip time (the selected candidate pair's
 *   `currentRoundTripTime`, worst connection) and packet loss (inbound-rtp `packetsLost`
 *   since the previous sample, and the server-reported `fractionLost` of what we send):
 *   `good`, `fair` or `poor` by `THRESHOLDS`.
 */

/** @typedef {'good' | 'fair' | 'poor' | 'disconnected'} Quality */

/** Upper bounds (inclusive) of round-trip time in seconds and loss fraction per level. */
export const THRESHOLDS = {
  good: { rtt: 0.15, loss: 0.02 },
  fair: { rtt: 0.4, loss: 0.08 },
};

const BROKEN_STATES = new Set(['disconnected', 'failed', 'closed']);

/**
 * The quality level of a measurement.
 * @param {{rtt: number | null, loss: number}} m  rtt in seconds (null when unknown), loss in [0, 1]
 * @returns {Quality}
 */
export function classify({ rtt, loss }) {
  const within = (level) => (rtt === null || rtt <= THRESHOLDS[level].rtt) && loss <= THRESHOLDS[level].loss;
  if (within('good')) return 'good';
  if (within('fair')) return 'fair';
  return 'poor';
}

export class QualityMonitor {
  #source;
  #onChange;
  #intervalMs;
  #timer = null;
  #busy = false;
  /** inbound-rtp counters of the previous sample, by stats id. */
  #previous = new Map();
  /** @type {Quality} */
  quality = 'disconnected';

  /**
   * @param {object} options
   * @param {() => {signalingOpen: boolean, subscriber: RTCPeerConnection | null, publisher: RTCPeerConnection | null}} options.source
   *   the current connections
   * @param {(quality: Quality) => void} options.onChange called when the level changes
   * @param {number} [options.intervalMs]
   */
  constructor({ source, onChange, intervalMs = 2000 }) {
    this.#source = source;
    this.#onChange = onChange;
    this.#intervalMs = intervalMs;
  }

  start() {
    this.#timer ??= setInterval(() => this.refresh(), this.#intervalMs);
    this.refresh();
  }

  stop() {
    clearInterval(this.#timer);
    this.#timer = null;
    this.#set('disconnected');
  }

  /** Samples now (also called on every connection state change). */
  async refresh() {
    if (this.#busy) return;
    this.#busy = true;
    try {
      const quality = await this.#measure();
      if (this.#timer !== null) this.#set(quality);
    } catch (err) {
      console.warn('quality: getStats failed', err);
    } finally {
      this.#busy = false;
    }
  }

  /** @returns {Promise<Quality>} */
  async #measure() {
    const { signalingOpen, subscriber, publisher } = this.#source();
    if (!signalingOpen || subscriber?.connectionState !== 'connected') return 'disconnected';
    if (publisher && BROKEN_STATES.has(publisher.connectionState)) return 'disconnected';

    const subStats = await subscriber.getStats();
    const rtts = [selectedPairRtt(subStats)];
    let loss = this.#inboundLoss(subStats);
    if (publisher?.connectionState === 'connected') {
      const pubStats = await publisher.getStats();
      rtts.push(selectedPairRtt(pubStats));
      for (const s of pubStats.values()) {
        if (s.type === 'remote-inbound-rtp' && typeof s.fractionLost === 'number') loss = Math.max(loss, s.fractionLost);
      }
    }
    const known = rtts.filter((r) => r !== null);
    return classify({ rtt: known.length ? Math.max(...known) : null, loss });
  }

  /** Fraction of inbound packets lost since the previous sample. */
  #inboundLoss(report) {
    let lost = 0;
    let received = 0;
    const current = new Map();
    for (const s of report.values()) {
      if (s.type !== 'inbound-rtp') continue;
      const now = { lost: s.packetsLost ?? 0, received: s.packetsReceived ?? 0 };
      const before = this.#previous.get(s.id) ?? { lost: 0, received: 0 };
      lost += Math.max(0, now.lost - before.lost);
      received += Math.max(0, now.received - before.received);
      current.set(s.id, now);
    }
    this.#previous = current;
    return lost + received > 0 ? lost / (lost + received) : 0;
  }

  #set(quality) {
    if (quality === this.quality) return;
    this.quality = quality;
    this.#onChange(quality);
  }
}

/** `currentRoundTripTime` (seconds) of the selected candidate pair, or null. */
function selectedPairRtt(report) {
  let pair = null;
  for (const s of report.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) ?? null;
  }
  if (!pair) {
    for (const s of report.values()) {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
    }
  }
  return typeof pair?.currentRoundTripTime === 'number' ? pair.currentRoundTripTime : null;
}
