// The emulated link itself (lib/netns.mjs makeEmulatedLink, tools/linkem.py): headless
// Chromium inside the namespace reaches a medrelay listening on the link's host address,
// through the emulator (its counters grow), a shaped link adds its delay to every round
// trip, a cut stops everything and a restore brings it back.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, safeJson } from './lib/server.mjs';
import { launchBrowser } from './lib/browser.mjs';
import { makeEmulatedLink } from './lib/netns.mjs';

let link;
let server;
let browser;
let page;

before(async () => {
  link = await makeEmulatedLink({ name: 'lemchk' });
  server = await startServer({ name: 'emulated_link', host: link.hostIp, extraArgs: ['--insecure'] });
  browser = await launchBrowser({ netns: link.ns });
  page = await (await browser.newContext()).newPage();
}, { timeout: 60_000 });

after(async () => {
  await browser?.close();
  await server?.stop();
  await link?.destroy();
});

/** Median wall time (ms) of `n` fetches of /healthz from the page, or the failure text. */
const timeFetches = (n, timeoutMs = 3000) =>
  page.evaluate(
    async ({ n, timeoutMs }) => {
      const times = [];
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        try {
          const res = await fetch('/healthz', { cache: 'no-store', signal: AbortSignal.timeout(timeoutMs) });
          await res.text();
          if (!res.ok) return { error: `status ${res.status}` };
        } catch (e) {
          return { error: String(e) };
        }
        times.push(performance.now() - t0);
      }
      times.sort((a, b) => a - b);
      return { median: times[Math.floor(n / 2)], times };
    },
    { n, timeoutMs },
  );

test('Chromium in the namespace reaches medrelay through the emulated link; delay, cut and restore work', { timeout: 60_000 }, async () => {
  await page.goto(`${server.url}/healthz`, { timeout: 10_000 });
  const clean = await timeFetches(5);
  const before = await link.stats();
  assert.ok(clean.median !== undefined, `fetch over the clean link failed: ${safeJson(clean)}`);
  assert.ok(before.down.forwarded > 0 && before.up.forwarded > 0, `the page's packets did not go through the emulator: ${safeJson(before)}`);

  await link.shape({ rateKbit: 2000, delayMs: 150, lossPct: 0 });
  const shaped = await timeFetches(5);
  console.log(`/healthz from the namespace: median ${clean.median.toFixed(1)} ms clean, ${shaped.median?.toFixed(1)} ms with 150 ms each way`);
  // One request and its response: at least one round trip of 2 x 150 ms.
  assert.ok(shaped.median >= 295 && shaped.median < 1500, `shaped round trip ${safeJson(shaped)}`);

  await link.unshape();
  await link.cut();
  const cut = await timeFetches(1, 1500);
  assert.ok(cut.error, `a fetch succeeded while the link was cut: ${safeJson(cut)}`);
  const during = await link.stats();
  assert.ok(during.up.dropped_cut > 0, `nothing was dropped by the cut: ${safeJson(during)}`);

  await link.restore();
  const back = await timeFetches(3);
  assert.ok(back.median !== undefined && back.median < 250, `after the restore: ${safeJson(back)}`);
});
