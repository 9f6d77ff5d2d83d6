// Headless Chromium (Debian's /usr/bin/chromium driven by playwright-core) opening the
// consult page as one participant per browser context, and the stats helpers that prove
// media really flowed (framesDecoded, frameWidth, totalSamplesReceived), never just
// "connected".

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ARTIFACTS, waitFor, safeJson, sleep } from './server.mjs';
import { chromiumInNamespace } from './netns.mjs';

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

// Flags from shared/TESTING.md (playwright adds --headless and a fresh --user-data-dir).
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection',
  // Several participants share one browser: keep every page running at full speed and
  // let remote audio play (totalSamplesReceived only grows when audio is played out).
  '--autoplay-policy=no-user-gesture-required',
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
];

/**
 * Launches headless Chromium; `extraArgs` e.g. --use-file-for-fake-video-capture=…;
 * `netns` starts it inside that network namespace (netns.mjs).
 */
export async function launchBrowser({ extraArgs = [], netns = null } = {}) {
  return chromium.launch({
    executablePath: netns ? chromiumInNamespace(netns, CHROMIUM) : CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, ...extraArgs],
    timeout: 30_000,
  });
}

/** Open participants by identity (this process), so helpers can find a sender's page. */
export const participants = new Map();

/**
 * The consult page's URL. `camera` is the size the page asks the (fake) camera for: tests
 * default to 640x480 so that several publishing pages fit on two cores; a test that sends
 * a 720p clip asks for 1280x720.
 */
export function consultUrl(server, room, token, { relayOnly = false, camera = '640x480' } = {}) {
  const relay = relayOnly ? '&relay=1' : '';
  return `${server.url}/consult/#room=${encodeURIComponent(room)}&token=${encodeURIComponent(token)}${relay}&camera=${camera}`;
}

/**
 * Opens the consult page as a new participant in its own browser context.
 * Waits until medrelayState().joined (or an error, which throws unless `expectError`).
 */
export async function openParticipant(browser, server, { room, identity, role, token, expectError = false, joinTimeout = 15_000, tag = server.name, relayOnly = false, initScript = null, camera = undefined }) {
  const tok = token || (await server.token({ room, identity, role }));
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  // Diagnostics only: remember the page's peer connections so a failure message can say
  // what the sender did (outbound-rtp: size, quality limitation). Behaviour is unchanged.
  await context.addInitScript(() => {
    const Orig = window.RTCPeerConnection;
    if (!Orig || window.__e2ePcs) return;
    window.__e2ePcs = [];
    window.RTCPeerConnection = class extends Orig {
      constructor(...args) {
        super(...args);
        window.__e2ePcs.push(this);
      }
    };
  });
  // A test's own page script (e.g. a network that blocks a protocol), before the page runs.
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  const consoleLines = [];
  const logFile = path.join(ARTIFACTS, 'logs', `${tag}.${identity}.console.log`);
  page.on('console', (m) => consoleLines.push(`[${new Date().toISOString()}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[${new Date().toISOString()}] pageerror: ${e.message}`));
  const p = {
    identity,
    role,
    room,
    token: tok,
    page,
    context,
    joinedAt: null,
    consoleLines,
    state: () => page.evaluate(() => window.medrelayState()),
    /** outbound-rtp video of this page's publisher (diagnostics for failure messages). */
    outboundVideo: () =>
      page.evaluate(async () => {
        const out = [];
        for (const pc of window.__e2ePcs || []) {
          if (pc.connectionState === 'closed') continue;
          (await pc.getStats()).forEach((s) => {
            if (s.type === 'outbound-rtp' && s.kind === 'video') {
              const { frameWidth, frameHeight, framesPerSecond, framesEncoded, qualityLimitationReason, qualityLimitationResolutionChanges, targetBitrate, keyFramesEncoded, pliCount, firCount, nackCount } = s;
              out.push({ frameWidth, frameHeight, framesPerSecond, framesEncoded, qualityLimitationReason, qualityLimitationResolutionChanges, targetBitrate, keyFramesEncoded, pliCount, firCount, nackCount });
            }
          });
        }
        return out;
      }),
    stats: () => page.evaluate(() => window.medrelayStats()),
    async screenshot(name) {
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      const file = path.join(ARTIFACTS, `${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      return file;
    },
    flushConsole() {
      try {
        fs.mkdirSync(path.dirname(logFile), { recursive: true });
        fs.writeFileSync(logFile, consoleLines.join('\n') + '\n');
      } catch {
        /* best effort */
      }
    },
    /** Keeps the console log and a last screenshot (artefacts/pages/) for post-mortems. */
    async close() {
      p.flushConsole();
      if (!page.isClosed()) {
        await page
          .screenshot({ path: path.join(ARTIFACTS, 'pages', `${tag}.${identity}.png`), timeout: 5000 })
          .catch(() => {});
      }
      await context.close().catch(() => {});
    },
  };
  await page.goto(consultUrl(server, room, tok, { relayOnly, camera }), { waitUntil: 'load', timeout: 15_000 });
  const st = await waitFor(
    async () => {
      const s = await page.evaluate(() => (typeof window.medrelayState === 'function' ? window.medrelayState() : null));
      return s && (s.joined || s.error) ? s : null;
    },
    { timeout: joinTimeout, interval: 100, message: `${identity} to join (medrelayState().joined or .error)` },
  ).catch((e) => {
    p.flushConsole();
    throw new Error(`${e.message}\n--- ${identity} console ---\n${consoleLines.slice(-20).join('\n')}\n--- server log ---\n${server.logTail(20)}`);
  });
  if (st.error && !expectError) {
    p.flushConsole();
    throw new Error(`${identity} got error instead of joining: ${safeJson(st.error)}`);
  }
  participants.set(identity, p);
  p.joinedAt = Date.now();
  p.initialState = st;
  return p;
}

/**
 * The selected ICE candidate pair of each connected peer connection of a page:
 * [{ local: {protocol, candidateType, relayProtocol}, remote: {protocol, port} }].
 */
export async function selectedPairs(participant) {
  return participant.page.evaluate(async () => {
    const out = [];
    for (const pc of window.__e2ePcs || []) {
      if (pc.connectionState !== 'connected') continue;
      const stats = await pc.getStats();
      let pairId = null;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
      });
      const pair = pairId && stats.get(pairId);
      const local = pair && stats.get(pair.localCandidateId);
      const remote = pair && stats.get(pair.remoteCandidateId);
      out.push({
        local: { protocol: local?.protocol, candidateType: local?.candidateType, relayProtocol: local?.relayProtocol },
        remote: { protocol: remote?.protocol, port: remote?.port },
      });
    }
    return out;
  });
}

/** The entries of medrelayStats() that came from `identity` and have `kind`. */
export function entriesFrom(stats, identity, kind) {
  return (stats || []).filter((s) => s.identity === identity && (!kind || s.kind === kind));
}

/** Sum of a numeric field over the entries from `identity` of `kind`. */
export function total(stats, identity, kind, field) {
  return entriesFrom(stats, identity, kind).reduce((a, s) => a + (Number(s[field]) || 0), 0);
}

/**
 * Waits until `receiver` decodes video (framesDecoded grows by `minFrames`, frameWidth > 0)
 * and, if `audio`, audio (totalSamplesReceived grows by `minSamples`) from `fromIdentity`.
 * The growth is measured from the first sample taken here, so it proves media is flowing
 * now, not that it flowed once.
 */
export async function expectMediaFrom(receiver, fromIdentity, { video = true, audio = true, minFrames = 15, minSamples = 4800, timeout = 15_000, sender = null } = {}) {
  let base = null;
  let last = null;
  try {
    return await waitFor(
      async () => {
        const st = await receiver.stats();
        last = st;
        const cur = {
          frames: total(st, fromIdentity, 'video', 'framesDecoded'),
          samples: total(st, fromIdentity, 'audio', 'totalSamplesReceived'),
          width: Math.max(0, ...entriesFrom(st, fromIdentity, 'video').map((s) => Number(s.frameWidth) || 0)),
        };
        if (!base) {
          base = cur;
          return null;
        }
        const vOk = !video || (cur.frames - base.frames >= minFrames && cur.width > 0);
        const aOk = !audio || cur.samples - base.samples >= minSamples;
        return vOk && aOk ? { base, cur, stats: st } : null;
      },
      { timeout, interval: 250, message: `${receiver.identity} to decode ${[video && 'video', audio && 'audio'].filter(Boolean).join('+')} from ${fromIdentity}` },
    );
  } catch (e) {
    sender ??= participants.get(fromIdentity);
    if (sender?.page.isClosed()) sender = null;
    const tx = sender ? await sender.outboundVideo().catch((err) => `n/a: ${err.message}`) : null;
    throw new Error(
      `${e.message}\nbaseline ${safeJson(base)}; last medrelayStats() of ${receiver.identity}: ${safeJson(last)}` +
        (tx ? `\nsender ${fromIdentity} outbound-rtp video: ${safeJson(tx)}` : ''),
    );
  }
}

export { sleep };
