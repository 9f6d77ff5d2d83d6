// Chat through the consult page's UI (#chat-input, #chat-send) over the server's `chat`
// data channel: the other page shows the message under the sender's identity, as stamped
// by the server from the sender's token.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, waitFor, safeJson } from './lib/server.mjs';
import { launchBrowser, openParticipant } from './lib/browser.mjs';
import { metrics } from './lib/api.mjs';

const ROOM = 'consult-chat';
let server;
let browser;
let alice;
let bob;

before(async () => {
  server = await startServer({ name: 'chat' });
  browser = await launchBrowser();
}, { timeout: 90_000 });

after(async () => {
  await alice?.close();
  await bob?.close();
  await browser?.close();
  await server?.stop();
});

/** Every chat entry on a page: [{who, text, own, ts}]. */
function chatLog(p) {
  return p.page.evaluate(() =>
    [...document.querySelectorAll('#chat-log > li')].map((li) => ({
      who: li.querySelector('.chat-who')?.textContent ?? '',
      text: li.querySelector('.chat-text')?.textContent ?? '',
      html: li.querySelector('.chat-text')?.innerHTML ?? '',
      own: li.classList.contains('chat-msg--own'),
      ts: Number(li.querySelector('time')?.dataset.ts ?? 0),
    })),
  );
}

/** Waits until the page's chat input and button are enabled (its data channel is open). */
async function chatReady(p) {
  const input = p.page.locator('#chat-input');
  const button = p.page.locator('#chat-send');
  await waitFor(async () => (await input.isEnabled()) && (await button.isEnabled()), {
    timeout: 15_000,
    message: `${p.identity}'s chat to be enabled (data channel open)`,
  });
}

/** Types `text` into the chat input and presses the send button (once it is enabled). */
async function sendChat(p, text) {
  const input = p.page.locator('#chat-input');
  const button = p.page.locator('#chat-send');
  await chatReady(p);
  await input.fill(text);
  await button.click();
  // The page clears the input once the frame went out on the channel.
  await waitFor(async () => (await input.inputValue()) === '', { timeout: 5000, message: `${p.identity}'s chat input to clear after sending` });
}

async function expectShown(p, { who, text }) {
  let last;
  try {
    return await waitFor(
      async () => {
        last = await chatLog(p);
        return last.find((m) => !m.own && m.text === text && m.who === who);
      },
      { timeout: 10_000, message: `${p.identity}'s page to show ${safeJson(text)} from ${who}` },
    );
  } catch (e) {
    throw new Error(`${e.message}; chat log: ${safeJson(last)}`);
  }
}

test('a message typed on one page is shown on the other under the sender\'s identity', { timeout: 60_000 }, async () => {
  alice = await openParticipant(browser, server, { room: ROOM, identity: 'dr-alice', role: 'specialist' });
  bob = await openParticipant(browser, server, { room: ROOM, identity: 'medic-bob', role: 'crew' });
  // The server delivers only to chat channels that are open (there is no backlog), so wait
  // until the receiver's page has enabled its chat too before sending.
  await chatReady(bob);
  const text = 'BP 120/80, pulse 72 — please review the ECG';
  const before = Date.now();
  await sendChat(alice, text);
  const shown = await expectShown(bob, { who: 'dr-alice', text });
  // The server stamps ts (unix ms) on delivery.
  assert.ok(shown.ts >= before - 5000 && shown.ts <= Date.now() + 5000, `ts ${shown.ts} is about now`);
  // The sender sees its own message locally, marked as its own; never a copy back from the server.
  const own = await chatLog(alice);
  assert.deepEqual(
    own.map((m) => [m.own, m.text]),
    [[true, text]],
    `sender's log: ${safeJson(own)}`,
  );
  assert.equal((await chatLog(bob)).length, 1, 'exactly one entry on the receiver');
});

test('the other direction, in order, with markup shown as text', { timeout: 60_000 }, async () => {
  assert.ok(alice && bob, 'both joined');
  const msgs = ['copy that', '<b>not bold</b> & <img src=x onerror=alert(1)>', 'ETA 7 min'];
  for (const m of msgs) await sendChat(bob, m);
  for (const m of msgs) await expectShown(alice, { who: 'medic-bob', text: m });
  const received = (await chatLog(alice)).filter((m) => !m.own);
  assert.deepEqual(received.map((m) => m.text), msgs, 'received in the order sent');
  assert.ok(received.every((m) => m.who === 'medic-bob'), safeJson(received));
  // Text, not HTML: the markup is escaped in the DOM and no element was created from it.
  const markup = received[1];
  assert.ok(markup.html.includes('&lt;b&gt;'), `escaped: ${markup.html}`);
  assert.equal(await alice.page.evaluate(() => document.querySelectorAll('#chat-log b, #chat-log img').length), 0);
  // Nothing the pages sent was refused by the server.
  const m = await metrics(server, 'medrelay_dropped_chat_messages_total');
  assert.equal(m.medrelay_dropped_chat_messages_total, 0, safeJson(m));
  // Bob's log holds alice's message and his own three.
  const bobLog = await chatLog(bob);
  assert.deepEqual(bobLog.map((x) => [x.own, x.text]), [[false, 'BP 120/80, pulse 72 — please review the ECG'], ...msgs.map((t) => [true, t])], safeJson(bobLog));
});
