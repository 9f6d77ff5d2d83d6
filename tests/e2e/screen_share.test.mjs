// Screen share through the consult page's own button (#btn-screen → getDisplayMedia).
// Headless Chromium with --use-fake-ui-for-media-stream and --use-fake-device-for-media-stream
// (the suite's default flags) answers getDisplayMedia at once with a fake 1280x720 "screen"
// (label screen:-3:0) on a secure origin, so the real UI path is exercised, no page hook.
// The other page must decode two video tracks from the sharer (camera 640x480 from the
// fake camera, screen 1280x720), and lose the second within 5 s of stopping.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, waitFor, safeJson } from './lib/server.mjs';
import { launchBrowser, openParticipant, expectMediaFrom, entriesFrom } from './lib/browser.mjs';

const ROOM = 'consult-screen-share';
let server;
let browser;
let sharer;
let viewer;

before(async () => {
  server = await startServer({ name: 'screen_share' });
  browser = await launchBrowser();
}, { timeout: 90_000 });

after(async () => {
  await sharer?.close();
  await viewer?.close();
  await browser?.close();
  await server?.stop();
});

/** Video entries of medrelayStats() from the sharer, by trackIdentifier. */
async function videoFromSharer() {
  const entries = entriesFrom(await viewer.stats(), 'dr-sharer', 'video');
  return new Map(entries.map((e) => [e.trackIdentifier, e]));
}

/**
 * Waits until the viewer decodes exactly `n` video tracks from the sharer, each of which has
 * decoded at least `minFrames` more frames than at its first sighting here.
 */
async function expectVideoTracks(n, { minFrames = 15, timeout = 20_000 } = {}) {
  const base = new Map();
  let last;
  return waitFor(
    async () => {
      last = await videoFromSharer();
      if (last.size !== n) return null;
      let ok = true;
      for (const [id, e] of last) {
        if (!base.has(id)) {
          base.set(id, e.framesDecoded);
          ok = false;
        } else if (e.framesDecoded - base.get(id) < minFrames || !(e.frameWidth > 0)) {
          ok = false;
        }
      }
      return ok ? last : null;
    },
    { timeout, interval: 250, message: `${viewer.identity} to decode ${n} growing video track(s) from dr-sharer` },
  ).catch(async (e) => {
    const tx = await sharer.outboundVideo().catch(() => null);
    throw new Error(`${e.message}; baselines ${safeJson([...base])}; last ${safeJson(last && [...last.values()])}; sharer outbound-rtp video ${safeJson(tx)}`);
  });
}

/** The screen tile(s) for the sharer on the viewer's page: [{videoWidth, videoHeight, label}]. */
function screenTiles(sharerId) {
  return viewer.page.evaluate((id) =>
    [...document.querySelectorAll(`figure.tile--screen[data-participant-id="${id}"]`)].map((f) => {
      const v = f.querySelector('video');
      return { videoWidth: v?.videoWidth ?? 0, videoHeight: v?.videoHeight ?? 0, label: f.querySelector('.tile-name')?.textContent ?? '' };
    }), sharerId);
}

async function clickScreenButton(p) {
  const btn = p.page.locator('#btn-screen');
  await waitFor(async () => (await btn.isVisible()) && (await btn.isEnabled()), {
    timeout: 10_000,
    message: `${p.identity}'s #btn-screen to be visible and enabled`,
  });
  await btn.click();
}

test('two pages decode each other\'s camera before any sharing', { timeout: 60_000 }, async () => {
  sharer = await openParticipant(browser, server, { room: ROOM, identity: 'dr-sharer', role: 'specialist' });
  viewer = await openParticipant(browser, server, { room: ROOM, identity: 'nurse-viewer', role: 'clinic' });
  await expectMediaFrom(viewer, 'dr-sharer', { timeout: 20_000 });
  const tracks = await expectVideoTracks(1);
  assert.equal(tracks.size, 1);
  assert.deepEqual(await screenTiles(sharer.initialState.participantId), [], 'no screen tile before sharing');
});

test('clicking the screen-share button publishes a second video track the other page decodes', { timeout: 60_000 }, async () => {
  assert.ok(sharer && viewer, 'both joined');
  const cameraIds = [...(await videoFromSharer()).keys()];
  await clickScreenButton(sharer);
  // The sharer's page shows it is sharing (its own preview tile, the button is active).
  await waitFor(
    () => sharer.page.evaluate(() => document.querySelector('#btn-screen').classList.contains('is-active') && !!document.querySelector('figure.tile--local-screen')),
    { timeout: 10_000, message: 'the sharer page to show an active share (#btn-screen.is-active, .tile--local-screen)' },
  );
  const tracks = await expectVideoTracks(2, { minFrames: 15, timeout: 25_000 });
  const screenIds = [...tracks.keys()].filter((id) => !cameraIds.includes(id));
  assert.equal(screenIds.length, 1, `one new video track next to the camera ${safeJson(cameraIds)}: ${safeJson([...tracks.values()])}`);
  // A second independent window: both keep growing.
  await expectVideoTracks(2, { minFrames: 20, timeout: 15_000 });
  // The fake screen is 1280x720 (the fake camera 640x480): the new track is the screen.
  let last;
  await waitFor(
    async () => {
      last = (await videoFromSharer()).get(screenIds[0]);
      return last && last.frameWidth === 1280 && last.frameHeight === 720;
    },
    { timeout: 20_000, message: 'the screen track to be decoded at the fake screen\'s 1280x720' },
  ).catch((e) => {
    throw new Error(`${e.message}; last ${safeJson(last)}`);
  });
  // The viewer shows it in a screen tile labelled with the sharer's identity.
  const tiles = await waitFor(
    async () => {
      const t = await screenTiles(sharer.initialState.participantId);
      return t.length === 1 && t[0].videoWidth > 0 ? t : null;
    },
    { timeout: 10_000, message: 'one playing screen tile for dr-sharer on the viewer page' },
  );
  assert.match(tiles[0].label, /dr-sharer/, safeJson(tiles));
  await viewer.screenshot('screen-share-viewer');
});

test('stopping the share removes the second track within 5 s; the camera keeps decoding', { timeout: 60_000 }, async () => {
  assert.ok(sharer && viewer, 'both joined');
  assert.equal((await videoFromSharer()).size, 2, 'sharing before stopping');
  const started = Date.now();
  await clickScreenButton(sharer);
  let last;
  await waitFor(
    async () => {
      last = await videoFromSharer();
      return last.size === 1 && (await screenTiles(sharer.initialState.participantId)).length === 0;
    },
    { timeout: 5000, interval: 100, message: 'the screen track and tile to disappear from the viewer within 5 s' },
  ).catch((e) => {
    throw new Error(`${e.message}; last video entries ${safeJson(last && [...last.values()])}`);
  });
  const took = Date.now() - started;
  assert.ok(took <= 5000, `took ${took} ms`);
  assert.equal(await sharer.page.evaluate(() => document.querySelector('#btn-screen').classList.contains('is-active')), false);
  await expectVideoTracks(1, { minFrames: 20, timeout: 15_000 });
  await expectMediaFrom(viewer, 'dr-sharer', { timeout: 15_000 });
  const st = await viewer.state();
  assert.equal(st.error, null, `viewer error after the share stopped: ${safeJson(st.error)}`);
});

test('sharing again (the screen transceiver is reused) brings the second track back', { timeout: 60_000 }, async () => {
  assert.ok(sharer && viewer, 'both joined');
  await clickScreenButton(sharer);
  const tracks = await expectVideoTracks(2, { minFrames: 15, timeout: 25_000 });
  assert.equal(tracks.size, 2);
  await waitFor(
    async () => {
      const t = await screenTiles(sharer.initialState.participantId);
      return t.length === 1 && t[0].videoWidth > 0;
    },
    { timeout: 10_000, message: 'the screen tile to come back on the viewer page' },
  );
  for (const p of [sharer, viewer]) {
    const st = await p.state();
    assert.equal(st.error, null, `${p.identity} error: ${safeJson(st.error)}`);
  }
});
