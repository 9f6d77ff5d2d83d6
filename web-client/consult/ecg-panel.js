/**
 * The live ECG panel of the consult page. A consult link made by the ER dashboard carries
 * `&ambulance=ID`; its token also grants viewing that ambulance's telemetry, so the panel
 * shows that stream's ECG sweep (lead selectable) and vital signs beside the video.
 *
 * Test hook: window.medrelayTelemetry() → {
 *   connected: boolean,              // viewer socket open and `welcome` received
 *   stream: string | null,           // the ambulance from the link
 *   samples: {[label]: number},      // raw samples received per channel
 *   drawn: {[label]: number},        // samples drawn on the sweep
 *   numerics: {hr: 72, …},           // latest vital values
 * }
 */

import { onLanguageChange, t } from '../shared/i18n.js';
import { EcgSweep } from '../shared/ecg.js';
import { connectTelemetry, formatVital } from '../shared/telemetry.js';

/** The compact vitals row: tile id, shown vitals, unit. */
const VITALS = [
  ['hr', ['hr'], '/min'],
  ['spo2', ['spo2'], '%'],
  ['nibp', ['nibp_sys', 'nibp_dia'], 'mmHg'],
  ['rr', ['rr'], '/min'],
  ['temp', ['temp'], '°C'],
  ['etco2', ['etco2'], 'mmHg'],
];

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const stream = params.get('ambulance');
const token = params.get('token');

const state = {
  /** @type {'connecting' | 'live' | 'offline'} */
  phase: 'connecting',
  labels: [],
  numerics: {},
  numericsAt: {},
};
/** @type {import('../shared/telemetry.js').TelemetryClient | null} */
let client = null;
/** @type {EcgSweep | null} */
let ecg = null;

window.medrelayTelemetry = () => ({
  connected: Boolean(client?.connected),
  stream,
  samples: client && stream ? client.samplesOf(stream) : {},
  drawn: ecg ? ecg.stats().drawn : {},
  numerics: { ...state.numerics },
});

if (stream && token) mount();

function mount() {
  $('ecg-panel').hidden = false;
  $('stage').classList.add('stage--ecg');
  buildVitals();
  ecg = new EcgSweep($('ecg-panel-canvas'), { noSignalText: () => t('ecg.noSignal') });
  $('ecg-lead').addEventListener('change', (event) => ecg.setLead(event.target.value));
  onLanguageChange(render);
  client = connectTelemetry({ token, onEvent });
  client.subscribe(stream);
  ecg.start();
  render();
}

function onEvent(msg) {
  if ('stream' in msg && msg.stream !== stream) return;
  switch (msg.type) {
    case 'welcome':
      state.phase = 'live';
      return render();
    case 'error':
      // The subscription or the token was refused: there is nothing to show.
      state.phase = 'offline';
      return render();
    case 'close':
      state.phase = msg.reconnectInMs === null ? 'offline' : 'connecting';
      return render();
    case 'layout':
      state.labels = (msg.channels ?? []).map((c) => c.label);
      ecg.setChannels(state.labels);
      return render();
    case 'waveform':
      return ecg.push(msg);
    case 'numerics':
      for (const [vital, value] of Object.entries(msg.values ?? {})) {
        if (typeof value !== 'number' || (state.numericsAt[vital] ?? -Infinity) > (msg.t_ms ?? 0)) continue;
        state.numerics[vital] = value;
        state.numericsAt[vital] = msg.t_ms ?? 0;
      }
      return renderVitals();
  }
}

function buildVitals() {
  for (const [id] of VITALS) {
    const item = document.createElement('div');
    item.className = `ecg-vital ecg-vital--${id}`;
    item.dataset.vital = id;
    item.innerHTML = '<dt class="ecg-vital-label"></dt><dd class="ecg-vital-value"></dd>';
    $('ecg-vitals').append(item);
  }
}

function render() {
  $('ecg-panel-heading').textContent = t('ecg.live', { id: stream });
  const status = $('ecg-panel-status');
  status.dataset.phase = state.phase;
  status.textContent = t({ connecting: 'ecg.connecting', live: 'ecg.connected', offline: 'ecg.offline' }[state.phase]);
  const select = $('ecg-lead');
  if ([...select.options].map((o) => o.value).join('\n') !== state.labels.join('\n')) {
    select.replaceChildren(...state.labels.map((l) => new Option(l, l)));
  }
  select.value = ecg.lead ?? '';
  select.disabled = state.labels.length < 2;
  renderVitals();
}

function renderVitals() {
  for (const [id, vitals, unit] of VITALS) {
    const item = $('ecg-vitals').querySelector(`[data-vital="${id}"]`);
    item.querySelector('.ecg-vital-label').textContent = `${t(`vital.${id}`)} ${unit}`;
    item.querySelector('.ecg-vital-value').textContent = vitals.map((v) => formatVital(v, state.numerics[v])).join('/');
  }
}
