/**
 * The ER dashboard: /er/#token=TOKEN (optionally &stream=AMB-7 to open that ambulance).
 * Lists the active ambulances; for the selected one shows the vital signs, the ECG sweep,
 * its alarms (with sound) and alarm limits, and opens a consult with its crew.
 *
 * Test hook: window.medrelayEr() → {
 *   connected: boolean,                  // socket open and `welcome` received
 *   welcome: object | null,              // the `welcome` message
 *   streams: object[],                   // the latest `streams` list, as received
 *   selected: string | null,             // the selected stream id
 *   layout: {stream, channels} | null,   // the selected stream's layout
 *   numerics: {hr: 72, …},               // latest values of the selected stream
 *   alarms: object[],                    // current alarms (as received, plus `stream`)
 *   samples: {[label]: number},          // raw samples received (selected stream)
 *   drawn: {[label]: number},            // samples drawn on the sweep
 *   lastFrameSeq: number | null,         // highest waveform seq received (selected stream)
 *   gaps: number,                        // messages dropped, summed over `gap` messages
 *   consult: object | null,              // the last consult response
 *   errors: [{code, message}],           // server and page errors, oldest first
 *   audible: 'high' | 'medium' | null,   // the alarm sound pattern wanted
 *   muted: boolean,
 * }
 */

import { applyTranslations, getLanguage, mountLanguageSwitch, onLanguageChange, roleLabel, t } from '../shared/i18n.js';
import { EcgSweep } from '../shared/ecg.js';
import { connectTelemetry, formatVital } from '../shared/telemetry.js';

/** The vital-sign tiles and the vitals each shows. */
const TILES = [
  { id: 'hr', vitals: ['hr'], unit: '/min' },
  { id: 'spo2', vitals: ['spo2'], unit: '%' },
  { id: 'nibp', vitals: ['nibp_sys', 'nibp_dia', 'nibp_mean'], unit: 'mmHg' },
  { id: 'rr', vitals: ['rr'], unit: '/min' },
  { id: 'temp', vitals: ['temp'], unit: '°C' },
  { id: 'etco2', vitals: ['etco2'], unit: 'mmHg' },
  { id: 'gps', vitals: ['lat', 'lon'], unit: '' },
];

/** Vitals whose limits the editor offers. */
const LIMIT_VITALS = ['hr', 'spo2', 'nibp_sys', 'nibp_dia', 'nibp_mean', 'rr', 'temp', 'etco2'];

const PRIORITY_RANK = { high: 3, medium: 2, low: 1 };
const MAX_ERRORS = 50;

/** Sound patterns: beeps of `beepS` every `stepS`, the burst repeated every `periodMs`. */
const TONES = {
  high: { freq: 960, beeps: 3, beepS: 0.12, stepS: 0.2, periodMs: 1500 },
  medium: { freq: 660, beeps: 3, beepS: 0.2, stepS: 0.4, periodMs: 5000 },
};

const $ = (id) => document.getElementById(id);
const els = {
  status: $('status'),
  mute: $('btn-mute'),
  soundHint: $('sound-hint'),
  lang: $('lang'),
  error: $('error'),
  errorCode: $('error-code'),
  errorMessage: $('error-message'),
  errorDismiss: $('error-dismiss'),
  streamList: $('stream-list'),
  streamsEmpty: $('streams-empty'),
  selectPrompt: $('select-prompt'),
  monitorBody: $('monitor-body'),
  monitorHeading: $('monitor-heading'),
  monitorLink: $('monitor-link'),
  monitorAge: $('monitor-age'),
  consult: $('btn-consult'),
  consultLinks: $('consult-links'),
  consultEr: $('consult-er'),
  consultSpecialist: $('consult-specialist'),
  consultCrew: $('consult-crew'),
  leadSelect: $('lead-select'),
  twelve: $('btn-12lead'),
  vitals: $('vitals'),
  alarmList: $('alarm-list'),
  alarmsEmpty: $('alarms-empty'),
  limitsPanel: $('limits-panel'),
  limitsBody: $('limits-body'),
};

const state = {
  token: null,
  connected: false,
  refused: false,
  /** @type {object | null} */
  welcome: null,
  streams: [],
  /** Local time (epoch ms) the latest `streams` list arrived. */
  streamsAt: 0,
  /** @type {string | null} */
  selected: null,
  /** @type {{stream: string, channels: object[]} | null} */
  layout: null,
  /** Latest value and its capture time (ms) per vital of the selected stream. */
  numerics: {},
  numericsAt: {},
  /** @type {Map<string, object>} alarms by `${stream}/${id}` */
  alarms: new Map(),
  /** Limits of the selected stream, {hr: {low, high}, …}. */
  limits: {},
  lastFrameSeq: null,
  gaps: 0,
  consult: null,
  consultBusy: false,
  /** @type {{code: string, message: string}[]} */
  errors: [],
  errorDismissed: false,
  muted: false,
};

/**
 * The alarm sound through WebAudio. Browsers only let audio start after a user gesture,
 * so the context is made on the first pointer or key press; until then it stays silent
 * (and `blocked` tells the page to ask for a click). Never throws.
 */
class AlarmTone {
  /** @type {AudioContext | null} */
  #ctx = null;
  #level = null;
  #timer = 0;

  constructor() {
    const unlock = () => this.#unlock();
    for (const type of ['pointerdown', 'keydown']) addEventListener(type, unlock, { capture: true });
  }

  /** Whether a wanted sound cannot play yet. */
  get blocked() {
    return this.#level !== null && this.#ctx?.state !== 'running';
  }

  /** Plays pattern `level` ('high' | 'medium') repeatedly, or nothing (null). */
  play(level) {
    if (level === this.#level) return;
    this.#level = level;
    clearInterval(this.#timer);
    this.#timer = 0;
    if (!level) return;
    this.#burst();
    this.#timer = setInterval(() => this.#burst(), TONES[level].periodMs);
  }

  #unlock() {
    try {
      this.#ctx ??= new (globalThis.AudioContext ?? globalThis.webkitAudioContext)();
      this.#ctx.resume().catch(() => {});
    } catch {
      this.#ctx = null;
    }
  }

  #burst() {
    const ctx = this.#ctx;
    if (!ctx || ctx.state !== 'running' || !this.#level) return;
    const { freq, beeps, beepS, stepS } = TONES[this.#level];
    try {
      for (let i = 0; i < beeps; i++) {
        const start = ctx.currentTime + i * stepS;
        const osc = ctx.createOscillator();
        const gain = ctx.createGain();
        osc.frequency.value = freq;
        gain.gain.setValueAtTime(0, start);
        gain.gain.linearRampToValueAtTime(0.25, start + 0.01);
        gain.gain.setValueAtTime(0.25, start + beepS - 0.01);
        gain.gain.linearRampToValueAtTime(0, start + beepS);
        osc.connect(gain).connect(ctx.destination);
        osc.start(start);
        osc.stop(start + beepS);
      }
    } catch {
      // An audio failure must never break the dashboard.
    }
  }
}

const tone = new AlarmTone();
const ecg = new EcgSweep($('ecg'), { noSignalText: () => t('ecg.noSignal') });
/** @type {import('../shared/telemetry.js').TelemetryClient | null} */
let client = null;

window.medrelayEr = () => ({
  connected: state.connected,
  welcome: state.welcome,
  streams: state.streams,
  selected: state.selected,
  layout: state.layout,
  numerics: { ...state.numerics },
  alarms: [...state.alarms.values()],
  samples: state.selected && client ? client.samplesOf(state.selected) : {},
  drawn: ecg.stats().drawn,
  lastFrameSeq: state.lastFrameSeq,
  gaps: state.gaps,
  consult: state.consult,
  errors: [...state.errors],
  audible: wantedTone(),
  muted: state.muted,
});

main();

function main() {
  applyTranslations();
  mountLanguageSwitch(els.lang);
  onLanguageChange(render);
  buildTiles();
  buildLimits();
  els.mute.addEventListener('click', () => {
    state.muted = !state.muted;
    render();
  });
  els.errorDismiss.addEventListener('click', () => {
    state.errorDismissed = true;
    render();
  });
  els.leadSelect.addEventListener('change', () => ecg.setLead(els.leadSelect.value));
  els.twelve.addEventListener('click', () => {
    ecg.setTwelveLead(!ecg.twelveLead);
    render();
  });
  els.consult.addEventListener('click', openConsult);
  for (const button of document.querySelectorAll('[data-copy]')) {
    button.addEventListener('click', () => copyField(button, $(button.dataset.copy)));
  }
  window.addEventListener('hashchange', () => location.reload());
  setInterval(renderAges, 1000);

  const params = new URLSearchParams(location.hash.slice(1));
  state.token = params.get('token');
  if (!state.token) {
    addError('missing_parameters', t('er.error.missingToken'));
    render();
    return;
  }
  client = connectTelemetry({ token: state.token, onEvent });
  if (params.get('stream')) select(params.get('stream'));
  ecg.start();
  render();
}

/** Handles one telemetry event (telemetry.js). */
function onEvent(msg) {
  switch (msg.type) {
    case 'close':
      state.connected = false;
      state.refused = client.authFailed;
      return render();
    case 'welcome':
      state.welcome = msg;
      state.connected = true;
      state.lastFrameSeq = null; // the history after the re-subscription counts anew
      return render();
    case 'streams':
      state.streams = Array.isArray(msg.streams) ? msg.streams : [];
      state.streamsAt = Date.now();
      seedNumerics();
      renderStreams();
      return renderVitals();
    case 'layout':
      if (msg.stream !== state.selected) return;
      state.layout = { stream: msg.stream, channels: msg.channels ?? [] };
      ecg.setChannels(state.layout.channels.map((c) => c.label));
      return render();
    case 'waveform':
      if (msg.stream !== state.selected) return;
      ecg.push(msg);
      state.lastFrameSeq = Math.max(state.lastFrameSeq ?? 0, msg.seq);
      return;
    case 'numerics':
      if (msg.stream !== state.selected) return;
      for (const [vital, value] of Object.entries(msg.values ?? {})) setNumeric(vital, value, msg.t_ms ?? 0);
      return renderVitals();
    case 'alarm':
      return onAlarm(msg.stream, msg.alarm);
    case 'limits':
      if (msg.stream !== state.selected) return;
      state.limits = msg.limits ?? {};
      renderLimits();
      return renderVitals();
    case 'gap':
      state.gaps += Number(msg.dropped) || 0;
      return;
    case 'error':
      addError(String(msg.code ?? 'error'), String(msg.message ?? ''));
      return render();
  }
}

/** Keeps a numeric unless a newer one is already shown (late data fills in behind). */
function setNumeric(vital, value, atMs) {
  if (typeof value !== 'number') return;
  if ((state.numericsAt[vital] ?? -Infinity) > atMs) return;
  state.numerics[vital] = value;
  state.numericsAt[vital] = atMs;
}

/** Fills the vitals not yet received from the streams list's summary. */
function seedNumerics() {
  const entry = selectedEntry();
  for (const [vital, value] of Object.entries(entry?.numerics ?? {})) {
    if (!(vital in state.numericsAt)) state.numerics[vital] = value;
  }
}

function onAlarm(stream, alarm) {
  if (!alarm || alarm.id === undefined) return;
  const key = `${stream}/${alarm.id}`;
  // An alarm stays listed until it is both cleared and acknowledged.
  if (alarm.state === 'cleared' && alarm.acked_by) state.alarms.delete(key);
  else state.alarms.set(key, { ...alarm, stream });
  render();
}

/** Shows ambulance `id`: unsubscribes from the previous one, subscribes to it. */
function select(id) {
  if (id === state.selected || !client) return;
  if (state.selected) {
    client.unsubscribe(state.selected);
    for (const [key, alarm] of state.alarms) if (alarm.stream === state.selected) state.alarms.delete(key);
  }
  Object.assign(state, {
    selected: id,
    layout: null,
    numerics: {},
    numericsAt: {},
    limits: {},
    lastFrameSeq: null,
    consult: null,
  });
  ecg.clear();
  ecg.setChannels([]);
  seedNumerics();
  for (const row of els.limitsBody.rows) delete row.dataset.dirty;
  client.subscribe(id);
  render();
}

/** Asks the server for a consult with the selected ambulance's crew and opens ours. */
async function openConsult() {
  const stream = state.selected;
  if (!stream || state.consultBusy) return;
  state.consultBusy = true;
  render();
  try {
    const response = await fetch(`/telemetry/streams/${encodeURIComponent(stream)}/consult`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${state.token}` },
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body?.message ?? t('er.consult.failed', { status: response.status });
      addError(String(body?.code ?? 'consult_failed'), String(message));
    } else if (stream === state.selected) {
      state.consult = body;
      const own = absolute(body?.er_url);
      if (own) window.open(own, '_blank', 'noopener');
    }
  } catch (err) {
    addError('consult_failed', String(err.message ?? err));
  } finally {
    state.consultBusy = false;
    render();
  }
}

/** Copies an input's text, through the clipboard API or the selection as a fallback. */
async function copyField(button, input) {
  let copied = true;
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    input.select(); // left selected for a manual copy if this fails too
    copied = document.execCommand('copy');
  }
  if (!copied) return;
  button.textContent = t('er.copied');
  setTimeout(() => (button.textContent = t('er.copy')), 1500);
}

function addError(code, message) {
  state.errors.push({ code, message });
  if (state.errors.length > MAX_ERRORS) state.errors.shift();
  state.errorDismissed = false;
}

function selectedEntry() {
  return state.streams.find((s) => s.id === state.selected) ?? null;
}

/** Alarms of the selected stream. */
function selectedAlarms() {
  return [...state.alarms.values()].filter((a) => a.stream === state.selected);
}

/** The sound wanted now: the top priority of active, unacknowledged high/medium alarms. */
function wantedTone() {
  let level = null;
  for (const a of state.alarms.values()) {
    if (a.state !== 'active' || a.acked_by || !TONES[a.priority]) continue;
    if (!level || PRIORITY_RANK[a.priority] > PRIORITY_RANK[level]) level = a.priority;
  }
  return level;
}

/** Relative link from the server → absolute URL on this origin (null if none). */
function absolute(url) {
  return url ? new URL(url, location.origin).href : null;
}

/** Age of a stream's last update in ms: `last_update_ms` is a time (epoch) or an age. */
function ageMs(entry) {
  const v = entry?.last_update_ms;
  if (typeof v !== 'number') return null;
  return Math.max(0, v > 1e11 ? Date.now() - v : v + (Date.now() - state.streamsAt));
}

function formatAge(ms) {
  if (ms === null) return t('er.noData');
  const s = Math.floor(ms / 1000);
  let age;
  if (s < 60) age = t('er.age.s', { s });
  else if (s < 3600) age = t('er.age.m', { m: Math.floor(s / 60), s: s % 60 });
  else age = t('er.age.h', { h: Math.floor(s / 3600), m: Math.floor((s % 3600) / 60) });
  return t('er.ago', { age });
}

/** Alarm limits as a monitor shows them beside a value: "↑140 ↓40". */
function formatLimits(limits) {
  const parts = [];
  if (typeof limits?.high === 'number') parts.push(`↑${limits.high}`);
  if (typeof limits?.low === 'number') parts.push(`↓${limits.low}`);
  return parts.join(' ');
}

function formatTime(ms) {
  return typeof ms === 'number' ? new Date(ms).toLocaleTimeString(getLanguage(), { hour12: false }) : '';
}

function buildTiles() {
  for (const tile of TILES) {
    const el = document.createElement('div');
    el.className = `vital vital--${tile.id}`;
    el.dataset.vital = tile.id;
    el.innerHTML =
      '<div class="vital-head"><span class="vital-label"></span><span class="vital-unit"></span></div>' +
      '<div class="vital-value"></div><div class="vital-sub"></div>';
    el.querySelector('.vital-unit').textContent = tile.unit;
    els.vitals.append(el);
  }
}

function buildLimits() {
  for (const vital of LIMIT_VITALS) {
    const row = els.limitsBody.insertRow();
    row.dataset.vital = vital;
    row.innerHTML =
      `<th scope="row" class="limit-name"></th>` +
      `<td><input id="limit-${vital}-low" class="limit-input" type="number" step="any" inputmode="decimal"></td>` +
      `<td><input id="limit-${vital}-high" class="limit-input" type="number" step="any" inputmode="decimal"></td>` +
      `<td><button type="button" class="button limit-apply" data-vital="${vital}"></button></td>`;
    const [low, high] = row.querySelectorAll('input');
    for (const input of [low, high]) input.addEventListener('input', () => (row.dataset.dirty = 'true'));
    row.querySelector('button').addEventListener('click', () => applyLimits(row, vital, low, high));
  }
}

function applyLimits(row, vital, lowInput, highInput) {
  const parse = (input) => {
    const text = input.value.trim();
    const value = text === '' ? null : Number(text);
    input.setAttribute('aria-invalid', String(Number.isNaN(value)));
    return value;
  };
  const low = parse(lowInput);
  const high = parse(highInput);
  if (Number.isNaN(low) || Number.isNaN(high) || !state.selected) return;
  client.setLimits(state.selected, vital, low, high);
  delete row.dataset.dirty;
}

function statusText() {
  if (state.refused) return t('er.status.refused');
  if (state.connected) {
    return t('er.status.connected', { identity: state.welcome?.identity ?? '', role: roleLabel(state.welcome?.role) });
  }
  if (state.welcome) return t('er.status.reconnecting');
  return state.token ? t('er.status.connecting') : '';
}

/** Renders everything that depends on state or language. */
function render() {
  document.title = `${t('er.title')} — ${t('app.name')}`;
  els.status.textContent = statusText();
  els.status.dataset.connected = String(state.connected);

  const error = state.errors.at(-1);
  els.error.hidden = !error || state.errorDismissed;
  if (error) {
    els.errorCode.textContent = error.code;
    els.errorMessage.textContent = error.message;
  }

  const level = state.muted ? null : wantedTone();
  tone.play(level);
  els.mute.textContent = t(state.muted ? 'er.unmute' : 'er.mute');
  els.mute.setAttribute('aria-pressed', String(state.muted));
  els.mute.classList.toggle('is-muted', state.muted);
  els.soundHint.hidden = !tone.blocked;

  const isEr = state.welcome?.role === 'er';
  els.selectPrompt.hidden = Boolean(state.selected);
  els.monitorBody.hidden = !state.selected;
  els.monitorHeading.textContent = state.selected ?? '';
  els.consult.hidden = !isEr;
  els.consult.disabled = state.consultBusy || !state.connected;
  els.consult.textContent = t(state.consultBusy ? 'er.consult.opening' : 'er.consult.open');
  els.consultLinks.hidden = !state.consult;
  if (state.consult) {
    els.consultEr.href = absolute(state.consult.er_url) ?? '';
    els.consultSpecialist.value = absolute(state.consult.specialist_url) ?? '';
    els.consultCrew.value = absolute(state.consult.crew_url) ?? '';
  }
  els.limitsPanel.hidden = !isEr || !state.selected;

  renderLeads();
  renderStreams();
  renderVitals();
  renderAlarms();
  renderLimits();
}

function renderLeads() {
  const labels = state.layout?.channels.map((c) => c.label) ?? [];
  const current = [...els.leadSelect.options].map((o) => o.value);
  if (current.join('\n') !== labels.join('\n')) els.leadSelect.replaceChildren(...labels.map((l) => new Option(l, l)));
  els.leadSelect.value = ecg.lead ?? '';
  els.leadSelect.disabled = ecg.twelveLead || labels.length < 2;
  els.twelve.setAttribute('aria-pressed', String(ecg.twelveLead));
  els.twelve.classList.toggle('is-active', ecg.twelveLead);
}

/** Updates the ambulance list in place (entries keep focus across updates). */
function renderStreams() {
  const existing = new Map([...els.streamList.children].map((li) => [li.dataset.stream, li]));
  const ids = new Set();
  for (const entry of state.streams) {
    ids.add(entry.id);
    let li = existing.get(entry.id);
    if (!li) {
      li = document.createElement('li');
      li.dataset.stream = entry.id;
      li.innerHTML =
        '<button type="button" class="stream-item"><span class="stream-id"></span><span class="stream-alarms"></span>' +
        '<span class="stream-link"></span><span class="stream-age"></span><span class="stream-vitals"></span></button>';
      const button = li.firstElementChild;
      button.dataset.stream = entry.id;
      button.addEventListener('click', () => select(entry.id));
    }
    els.streamList.append(li); // keeps the server's order
    const button = li.firstElementChild;
    const link = entry.link === 'up' ? 'up' : 'down';
    const alarms = Number(entry.active_alarms) || 0;
    button.dataset.link = link;
    button.dataset.alarms = String(alarms);
    button.setAttribute('aria-pressed', String(entry.id === state.selected));
    button.querySelector('.stream-id').textContent = entry.id;
    button.querySelector('.stream-link').textContent = t(`er.link.${link}`);
    const badge = button.querySelector('.stream-alarms');
    badge.hidden = alarms === 0;
    badge.textContent = String(alarms);
    badge.title = t('er.alarmCount', { n: alarms });
    const n = entry.numerics ?? {};
    button.querySelector('.stream-vitals').textContent =
      `${t('vital.hr')} ${formatVital('hr', n.hr)} · ${t('vital.spo2')} ${formatVital('spo2', n.spo2)}`;
  }
  for (const [id, li] of existing) if (!ids.has(id)) li.remove();
  els.streamsEmpty.hidden = state.streams.length > 0;
  renderAges();
}

/** The ticking "time since last update" texts and the selected stream's link badge. */
function renderAges() {
  for (const li of els.streamList.children) {
    const entry = state.streams.find((s) => s.id === li.dataset.stream);
    li.querySelector('.stream-age').textContent = formatAge(ageMs(entry));
  }
  const entry = selectedEntry();
  const link = entry ? (entry.link === 'up' ? 'up' : 'down') : 'unknown';
  els.monitorLink.dataset.link = link;
  els.monitorLink.textContent = entry ? t(`er.link.${link}`) : t('er.notListed');
  els.monitorAge.textContent = entry ? formatAge(ageMs(entry)) : '';
}

function renderVitals() {
  const n = state.numerics;
  const alarms = selectedAlarms().filter((a) => a.state === 'active');
  for (const tile of TILES) {
    const el = els.vitals.querySelector(`[data-vital="${tile.id}"]`);
    el.querySelector('.vital-label').textContent = t(`vital.${tile.id}`);
    let value;
    let sub = '';
    if (tile.id === 'nibp') {
      value = `${formatVital('nibp_sys', n.nibp_sys)}/${formatVital('nibp_dia', n.nibp_dia)}`;
      sub = `(${formatVital('nibp_mean', n.nibp_mean)}) ${formatLimits(state.limits.nibp_sys)}`;
    } else if (tile.id === 'gps') {
      value = `${formatVital('lat', n.lat)}, ${formatVital('lon', n.lon)}`;
    } else {
      value = formatVital(tile.id, n[tile.id]);
      sub = formatLimits(state.limits[tile.id]);
    }
    el.querySelector('.vital-value').textContent = value;
    el.querySelector('.vital-sub').textContent = sub;
    let top = '';
    for (const a of alarms) {
      if (tile.vitals.includes(a.vital) && (PRIORITY_RANK[a.priority] ?? 0) > (PRIORITY_RANK[top] ?? 0)) top = a.priority;
    }
    el.dataset.alarm = top;
  }
}

function renderAlarms() {
  const alarms = [...state.alarms.values()].sort(
    (a, b) =>
      (a.state === 'active' ? 0 : 1) - (b.state === 'active' ? 0 : 1) ||
      (PRIORITY_RANK[b.priority] ?? 0) - (PRIORITY_RANK[a.priority] ?? 0) ||
      (b.raised_at_ms ?? 0) - (a.raised_at_ms ?? 0),
  );
  const canAck = Boolean(state.welcome?.can_acknowledge);
  els.alarmList.replaceChildren(
    ...alarms.map((alarm) => {
      const li = document.createElement('li');
      li.className = 'alarm';
      Object.assign(li.dataset, { alarmId: alarm.id, stream: alarm.stream, priority: alarm.priority, state: alarm.state });
      li.innerHTML =
        '<div class="alarm-head"><span class="alarm-priority"></span><span class="alarm-stream"></span></div>' +
        '<p class="alarm-message"></p><p class="alarm-times"></p>';
      li.querySelector('.alarm-priority').textContent =
        alarm.priority in PRIORITY_RANK ? t(`er.alarm.${alarm.priority}`) : String(alarm.priority ?? '');
      li.querySelector('.alarm-stream').textContent = alarm.stream;
      li.querySelector('.alarm-message').textContent = alarm.message ?? '';
      let times = t('er.alarm.raised', { time: formatTime(alarm.raised_at_ms) });
      if (alarm.cleared_at_ms) times += ` · ${t('er.alarm.cleared', { time: formatTime(alarm.cleared_at_ms) })}`;
      if (alarm.acked_by) {
        times += ` · ${t('er.alarm.acked', { who: alarm.acked_by, time: formatTime(alarm.acked_at_ms) })}`;
      }
      li.querySelector('.alarm-times').textContent = times;
      if (canAck && !alarm.acked_by) {
        const ack = document.createElement('button');
        ack.type = 'button';
        ack.className = 'button alarm-ack';
        ack.dataset.alarmId = alarm.id;
        ack.textContent = t('er.alarm.ack');
        ack.addEventListener('click', () => {
          ack.disabled = true;
          client.ackAlarm(alarm.stream, alarm.id);
        });
        li.append(ack);
      }
      return li;
    }),
  );
  els.alarmsEmpty.hidden = alarms.length > 0;
}

/** Fills the limits editor from the server's limits, leaving rows being edited alone. */
function renderLimits() {
  for (const row of els.limitsBody.rows) {
    const vital = row.dataset.vital;
    row.querySelector('.limit-name').textContent = t(`vital.${vital}`);
    row.querySelector('.limit-apply').textContent = t('er.limits.apply');
    if (row.dataset.dirty) continue;
    const [low, high] = row.querySelectorAll('input');
    low.value = state.limits[vital]?.low ?? '';
    high.value = state.limits[vital]?.high ?? '';
  }
}
