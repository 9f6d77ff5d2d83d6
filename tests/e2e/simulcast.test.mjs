// Simulcast from a real Chromium: the clinic's 720p camera goes out in three layers; the
// server forwards the specialist the layer its tile needs, switches at keyframes when the
// tile shrinks and grows, pauses the video of a hidden tile and the layers nobody watches at
// the publisher, and reports its estimate and choices to the page and in /metrics.
// (Bandwidth-driven choices on a shaped link are in network_adapt.test.mjs.)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, waitFor, safeJson, sleep } from './lib/server.mjs';
import { launchBrowser, openParticipant, entriesFrom } from './lib/browser.mjs';
import { makeFakeCaptureFiles } from './lib/media.mjs';
import { metricsText, metricValue } from './lib/api.mjs';
import { RawClient } from './lib/ws.mjs';

const ROOM = 'consult-simulcast';
let server;
let browser;
let clips;
let clinic;
let specialist;

before(async () => {
  clips = await makeFakeCaptureFiles({ width: 1280, height: 720 });
  assert.ok(clips, 'ffmpeg must be installed (scripts/test.sh installs it)');
  server = await startServer({ name: 'simulcast' });
  browser = await launchBrowser({ extraArgs: clips.chromiumArgs });
  clinic = await openParticipant(browser, server, { room: ROOM, identity: 'clinic-sim', role: 'clinic', camera: '1280x720' });
  specialist = await openParticipant(browser, server, { room: ROOM, identity: 'specialist-sim', role: 'specialist' });
}, { timeout: 90_000 });

after(async () => {
  await clinic?.close();
  await specialist?.close();
  await browser?.close();
  await server?.stop();
  clips?.cleanup();
});

/** The specialist's view of the clinic's camera: {quality entry, inbound stats}. */
async function cameraAtSpecialist() {
  const state = await specialist.state();
  const stats = await specialist.page.evaluate(() => window.medrelayStats());
  const video = entriesFrom(stats, 'clinic-sim', 'video')[0] ?? null;
  const quality = state.quality?.tracks.find((t) => t.track_id === video?.trackIdentifier) ?? null;
  return { quality, video, estimate: state.quality?.estimate_bps ?? null };
}

/** Waits until the camera reaches the specialist as `pred` says, with frames still growing. */
async function expectCamera(pred, message, timeout = 20_000) {
  let last;
  await waitFor(
    async () => {
      const a = await cameraAtSpecialist();
      await sleep(500);
      const b = await cameraAtSpecialist();
      last = b;
      return b.video && a.video && b.video.framesDecoded > a.video.framesDecoded && pred(b);
    },
    { timeout, interval: 250, message },
  ).catch((e) => {
    throw new Error(`${e.message}; last ${safeJson(last)}`);
  });
  return last;
}

/** The clinic's camera encodings: [{rid, active}]. */
function clinicEncodings() {
  return clinic.page.evaluate(() => {
    for (const pc of window.__e2ePcs) {
      for (const t of pc.getTransceivers()) {
        const e = t.sender.getParameters().encodings;
        if (t.sender.track?.kind === 'video' && t.currentDirection === 'sendonly' && e?.length > 1) {
          return e.map(({ rid, active }) => ({ rid, active }));
        }
      }
    }
    return [];
  });
}

test('the camera goes out as three layers and the specialist gets one at full tile size', { timeout: 60_000 }, async () => {
  await waitFor(async () => (await clinicEncodings()).length === 3, { timeout: 10_000, message: 'three encodings (q, h, f) on the clinic\'s camera' });
  assert.deepEqual((await clinicEncodings()).map((e) => e.rid), ['q', 'h', 'f']);
  const got = await expectCamera((c) => c.quality && !c.quality.paused && c.quality.rid, 'the specialist to decode a layer of the camera');
  assert.ok(got.estimate > 0, `an estimate is reported: ${safeJson(got)}`);
  const text = await metricsText(server);
  const me = (await specialist.state()).participantId;
  assert.ok(metricValue(text, 'medrelay_subscriber_bandwidth_estimate_bps', { participant: me }) > 0, 'estimate in /metrics');
  const layers = ['q', 'h', 'f'].map((rid) => metricValue(text, 'medrelay_video_subscriptions', { layer: rid }) ?? 0);
  assert.ok(layers.reduce((a, b) => a + b) >= 2, `both video subscriptions are on a layer: ${safeJson(layers)}`);
});

test('a small tile gets the low layer and a large one a higher layer, switched without a freeze', { timeout: 90_000 }, async () => {
  // A thumbnail: the remote video shown 120 px high.
  const thumb = await specialist.page.addStyleTag({ content: 'figure.tile--remote video { height: 120px !important; width: auto !important; }' });
  const small = await expectCamera((c) => c.quality?.rid === 'q' && c.video.frameHeight <= 180, 'the low layer (180p) for a small tile');
  await thumb.evaluate((el) => el.remove());
  const large = await expectCamera((c) => c.quality?.rid !== 'q' && c.video.frameHeight > 180, 'a higher layer for a large tile');
  assert.ok(large.video.frameHeight > small.video.frameHeight, safeJson({ small, large }));
  // Switches between flowing layers are counted (a resize may pass through a moment of
  // "not visible", after which the new layer is a start, not a switch; /metrics takes the
  // router's counters every 250 ms).
  const switches = async () => metricValue(await metricsText(server), 'medrelay_layer_switches_total');
  await waitFor(async () => (await switches()) >= 1, { timeout: 5000, message: 'layer switches to be counted in /metrics' });
});

test('a hidden tile pauses its video and the layers nobody watches stop at the publisher', { timeout: 90_000 }, async () => {
  const hide = await specialist.page.addStyleTag({ content: 'figure.tile--remote { display: none !important; }' });
  await waitFor(
    async () => (await cameraAtSpecialist()).quality?.reason === 'not_visible',
    { timeout: 10_000, message: 'quality to report the camera paused as not_visible' },
  );
  // Only the lowest layer stays on (the fallback while someone subscribes).
  let encodings;
  await waitFor(
    async () => {
      encodings = await clinicEncodings();
      return encodings.length === 3 && encodings[0].active && !encodings[1].active && !encodings[2].active;
    },
    { timeout: 20_000, message: 'h and f paused at the clinic (q on)' },
  ).catch((e) => {
    throw new Error(`${e.message}; encodings ${safeJson(encodings)}`);
  });
  await hide.evaluate((el) => el.remove());
  await expectCamera((c) => c.quality && !c.quality.paused, 'the camera to come back when the tile shows again');
});

test('pinning a tile reaches the server; unknown tracks get a typed error', { timeout: 60_000 }, async () => {
  const pin = specialist.page.locator('figure.tile--remote .tile-pin').first();
  await pin.click();
  const { video } = await cameraAtSpecialist();
  await waitFor(async () => (await specialist.state()).pinned === video.trackIdentifier, { timeout: 5000, message: 'the page to show the pin' });
  assert.equal(await pin.getAttribute('aria-pressed'), 'true');
  assert.equal((await specialist.state()).error, null, 'the server accepted the pin');
  await expectCamera((c) => c.quality && !c.quality.paused, 'the pinned camera keeps decoding');

  const raw = await RawClient.connect(server.wsUrl);
  try {
    await raw.join(await server.token({ room: ROOM, identity: 'observer-sim', role: 'observer' }), ROOM);
    raw.send({ type: 'track_settings', track_id: 'no-such-track', height: 10 });
    await raw.nextError('unknown_track');
    raw.send({ type: 'pin', track_id: 'no-such-track' });
    await raw.nextError('unknown_track');
    raw.send({ type: 'pin', track_id: null });
    raw.send({ type: 'set_muted', track_id: 'x', muted: true });
    // Still served after the errors: no close, and the others are unaffected.
    await sleep(500);
    assert.equal(raw.ws.readyState, 1, 'the socket stays open after unknown_track');
  } finally {
    raw.terminate();
  }
  await expectCamera((c) => c.quality && !c.quality.paused, 'the specialist keeps decoding');
});
