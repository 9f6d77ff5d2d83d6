// The ER dashboard (/er/) in headless Chromium while the agent simulates a patient at HR 151:
// the ambulance is listed, selecting it draws its trace (drawn counts grow), the HR alarm is
// shown and acknowledged from the page, the 12-lead view draws every lead, and the consult
// button opens a consult page whose ECG panel receives the same stream. Screenshots:
// er-dashboard.png, er-12lead.png, er-consult.png.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startServer, waitFor, safeJson, sleep, request, ARTIFACTS } from './lib/server.mjs';
import { launchBrowser } from './lib/browser.mjs';
import { spawnAgent, tempDir } from './lib/telemetry.mjs';

const STREAM = 'AMB-7';
const ER_NAME = 'Dr Wang';

let server;
let browser;
let context;
let page;
let agent;
let spool;
let erToken;
const consoleLines = [];
let hrAlarm;

before(async () => {
  server = await startServer({ name: 'er_dashboard' });
  spool = tempDir('medrelay-er-spool');
  const crew = await server.token({ ambulance: STREAM, role: 'crew' });
  erToken = await server.token({ identity: ER_NAME, role: 'er' });
  agent = spawnAgent({ name: 'er_dashboard', args: ['--gateway', server.wsBase, '--token', crew, '--simulate', '--sim-hr', '151', '--spool', spool] });
  await waitFor(
    async () => {
      const r = await request(`${server.url}/telemetry/streams`, { headers: { Authorization: `Bearer ${erToken}` } });
      return r.status === 200 && JSON.parse(r.body).some((s) => s.id === STREAM && s.link === 'up');
    },
    { timeout: 15_000, message: `${STREAM} listed up by GET /telemetry/streams` },
  ).catch((e) => {
    throw new Error(`${e.message}\n--- agent log ---\n${agent.logTail()}`);
  });
  browser = await launchBrowser();
  context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  context.on('page', (p) => {
    p.on('console', (m) => consoleLines.push(`[${new Date().toISOString()}] ${p.url().split('#')[0]} ${m.type()}: ${m.text()}`));
    p.on('pageerror', (e) => consoleLines.push(`[${new Date().toISOString()}] ${p.url().split('#')[0]} pageerror: ${e.message}`));
  });
  page = await context.newPage();
  await page.goto(`${server.url}/er/#token=${encodeURIComponent(erToken)}`, { waitUntil: 'load', timeout: 15_000 });
}, { timeout: 90_000 });

after(async () => {
  fs.mkdirSync(path.join(ARTIFACTS, 'logs'), { recursive: true });
  fs.writeFileSync(path.join(ARTIFACTS, 'logs', 'er_dashboard.console.log'), consoleLines.join('\n') + '\n');
  await context?.close().catch(() => {});
  await browser?.close().catch(() => {});
  agent?.kill('SIGKILL');
  await server?.stop();
  if (spool) fs.rmSync(spool, { recursive: true, force: true });
});

const snap = (p = page) => p.evaluate(() => (typeof window.medrelayEr === 'function' ? window.medrelayEr() : null));
const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);
const diag = async () => `\nmedrelayEr(): ${safeJson(await snap().catch((e) => e.message)).slice(0, 3000)}\n--- console ---\n${consoleLines.slice(-15).join('\n')}\n--- agent log ---\n${agent.logTail(10)}`;

async function shot(name, p = page) {
  const file = path.join(ARTIFACTS, `${name}.png`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await p.screenshot({ path: file, fullPage: true });
  return file;
}

test('the dashboard connects as er and lists the ambulance', { timeout: 30_000 }, async () => {
  const s = await waitFor(
    async () => {
      const x = await snap();
      return x?.connected && x.streams.some((e) => e.id === STREAM) ? x : null;
    },
    { timeout: 15_000, message: `medrelayEr() connected and listing ${STREAM}` },
  ).catch(async (e) => {
    throw new Error(e.message + (await diag()));
  });
  assert.equal(s.welcome.role, 'er');
  assert.equal(s.welcome.identity, ER_NAME);
  assert.equal(s.welcome.can_acknowledge, true);
  const entry = s.streams.find((e) => e.id === STREAM);
  assert.equal(entry.link, 'up', safeJson(entry));
  const item = page.locator(`#stream-list button.stream-item[data-stream="${STREAM}"]`);
  await item.waitFor({ state: 'visible', timeout: 5000 });
  assert.match(await item.innerText(), new RegExp(STREAM));
});

test('selecting the ambulance draws its ECG and shows the HR alarm', { timeout: 40_000 }, async () => {
  await page.click(`#stream-list button.stream-item[data-stream="${STREAM}"]`);
  const s = await waitFor(
    async () => {
      const x = await snap();
      return x?.selected === STREAM && x.layout?.channels?.length && sum(x.drawn) > 0 ? x : null;
    },
    { timeout: 10_000, message: `${STREAM} selected, its layout known and samples drawn` },
  ).catch(async (e) => {
    throw new Error(e.message + (await diag()));
  });
  const labels = s.layout.channels.map((c) => c.label);
  assert.equal(labels.length, 12, `leads: ${labels}`);
  assert.equal(await page.getAttribute(`#stream-list button.stream-item[data-stream="${STREAM}"]`, 'aria-pressed'), 'true');
  assert.equal(await page.locator('#monitor-heading').innerText(), STREAM);
  // Drawing goes on: drawn and received sample counts grow over 2 s.
  await sleep(2000);
  const s2 = await snap();
  const drawnGrowth = sum(s2.drawn) - sum(s.drawn);
  const rxGrowth = sum(s2.samples) - sum(s.samples);
  console.log(`over 2 s: drawn +${drawnGrowth} (${safeJson(s2.drawn)}), received +${rxGrowth} samples`);
  const rate = s.layout.channels[0].rate_hz;
  assert.ok(drawnGrowth >= rate * 1.5, `drawn samples grew by ${drawnGrowth} in 2 s at ${rate} Hz`);
  assert.ok(rxGrowth >= rate * 1.5 * 12, `received samples grew by ${rxGrowth} in 2 s (12 leads at ${rate} Hz)`);
  // The HR alarm: in the page state, in the alarm list (high priority), on the HR tile.
  const withAlarm = await waitFor(
    async () => {
      const x = await snap();
      return x.alarms.find((a) => a.vital === 'hr' && a.condition === 'high' && a.state === 'active') ? x : null;
    },
    { timeout: 5000, message: 'the HR alarm in medrelayEr().alarms' },
  );
  hrAlarm = withAlarm.alarms.find((a) => a.vital === 'hr' && a.condition === 'high');
  assert.equal(hrAlarm.priority, 'high');
  assert.equal(withAlarm.numerics.hr, 151, safeJson(withAlarm.numerics));
  const li = page.locator(`#alarm-list li.alarm[data-alarm-id="${hrAlarm.id}"]`);
  await li.waitFor({ state: 'visible', timeout: 5000 });
  assert.equal(await li.getAttribute('data-priority'), 'high');
  assert.match(await li.innerText(), /151/);
  assert.equal(await page.getAttribute('#vitals [data-vital="hr"]', 'data-alarm'), 'high');
  assert.match(await page.locator('#vitals [data-vital="hr"] .vital-value').innerText(), /151/);
  assert.equal(withAlarm.audible, 'high', 'the high-priority alarm sound is wanted');
  await shot('er-dashboard');
});

test('the acknowledge button acknowledges the alarm (acked_by shown)', { timeout: 20_000 }, async () => {
  assert.ok(hrAlarm, 'needs the HR alarm');
  await page.click(`#alarm-list button.alarm-ack[data-alarm-id="${hrAlarm.id}"]`);
  const s = await waitFor(
    async () => {
      const x = await snap();
      const a = x.alarms.find((y) => y.id === hrAlarm.id);
      return a?.acked_by ? x : null;
    },
    { timeout: 5000, message: 'acked_by on the HR alarm' },
  ).catch(async (e) => {
    throw new Error(e.message + (await diag()));
  });
  const a = s.alarms.find((y) => y.id === hrAlarm.id);
  assert.equal(a.acked_by, ER_NAME);
  assert.equal(a.state, 'active', 'HR is still 151');
  const li = page.locator(`#alarm-list li.alarm[data-alarm-id="${hrAlarm.id}"]`);
  assert.match(await li.innerText(), new RegExp(ER_NAME));
  assert.equal(await page.locator(`#alarm-list button.alarm-ack[data-alarm-id="${hrAlarm.id}"]`).count(), 0, 'no acknowledge button left');
  assert.equal(s.audible, null, 'an acknowledged alarm is silent');
});

test('the 12-lead view draws every lead', { timeout: 20_000 }, async () => {
  await page.click('#btn-12lead');
  assert.equal(await page.getAttribute('#btn-12lead', 'aria-pressed'), 'true');
  await sleep(300);
  const s1 = await snap();
  await sleep(2000);
  const s2 = await snap();
  const grew = s2.layout.channels.map((c) => c.label).filter((l) => (s2.drawn[l] ?? 0) - (s1.drawn[l] ?? 0) > 0);
  console.log(`12-lead view: leads drawing in 2 s: ${grew.join(',')}; drawn ${safeJson(s2.drawn)}`);
  assert.equal(grew.length, 12, `leads drawn in the 12-lead view: ${grew}`);
  await shot('er-12lead');
});

test('open consult: links for er, specialist and crew; the consult page shows the live ECG', { timeout: 60_000 }, async () => {
  const popup = context.waitForEvent('page', { timeout: 15_000 });
  await page.click('#btn-consult');
  const c = await waitFor(async () => (await snap())?.consult, { timeout: 10_000, message: 'medrelayEr().consult' }).catch(async (e) => {
    throw new Error(e.message + (await diag()));
  });
  console.log(`consult: ${safeJson({ room: c.room, er_url: c.er_url.replace(/token=[^&]+/, 'token=…') })}`);
  assert.equal(typeof c.room, 'string');
  for (const k of ['er_url', 'specialist_url', 'crew_url']) {
    assert.match(c[k], /\/consult\/#room=/, `${k}: ${c[k]}`);
    assert.ok(c[k].includes(`ambulance=${STREAM}`), `${k} names the ambulance: ${c[k]}`);
    assert.ok(c[k].includes(`room=${c.room}`) || c[k].includes(`room=${encodeURIComponent(c.room)}`), `${k} names the room`);
  }
  assert.ok(await page.locator('#consult-links').isVisible(), 'the links are shown');
  assert.ok((await page.inputValue('#consult-crew')).includes(`ambulance=${STREAM}`));
  // The agent was told (it prints the crew link for the tablet).
  await waitFor(() => agent.log().includes(c.room), { timeout: 5000, message: `the agent's log to mention room ${c.room}` });

  const consult = await popup;
  await consult.waitForLoadState('load');
  assert.ok(consult.url().includes(`ambulance=${STREAM}`), consult.url());
  const tel = () => consult.evaluate(() => (typeof window.medrelayTelemetry === 'function' ? window.medrelayTelemetry() : null));
  const t1 = await waitFor(async () => {
    const x = await tel();
    return x?.connected && sum(x.samples) > 0 ? x : null;
  }, { timeout: 15_000, message: 'the consult page ECG panel connected and receiving' }).catch(async (e) => {
    throw new Error(`${e.message}; medrelayTelemetry(): ${safeJson(await tel().catch((err) => err.message))}\n--- console ---\n${consoleLines.slice(-15).join('\n')}`);
  });
  assert.equal(t1.stream, STREAM);
  await sleep(2000);
  const t2 = await tel();
  const growth = sum(t2.samples) - sum(t1.samples);
  const drawn = sum(t2.drawn) - sum(t1.drawn);
  console.log(`consult page ECG panel over 2 s: +${growth} samples received, +${drawn} drawn; numerics ${safeJson(t2.numerics)}`);
  assert.ok(growth >= 500 * 1.5, `consult page samples grew by ${growth} in 2 s`);
  assert.ok(drawn > 0, 'the consult page draws the ECG');
  assert.equal(t2.numerics.hr, 151, safeJson(t2.numerics));
  await shot('er-consult', consult);
});
