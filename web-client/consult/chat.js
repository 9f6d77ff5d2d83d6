/**
 * The chat panel over the subscriber connection's `chat` data channel. We send
 * `{"text": "..."}` (at most 4 KiB of JSON); the server delivers
 * `{"from", "identity", "text", "ts"}` to everyone else, so our own messages are shown
 * locally when sent.
 */

import { t, getLanguage } from '../shared/i18n.js';

/** Largest `{"text": ...}` frame the server accepts, in bytes. */
export const MAX_CHAT_BYTES = 4096;

export class ChatPanel {
  /** @type {RTCDataChannel | null} */
  #channel = null;
  #els;

  /**
   * @param {object} els
   * @param {HTMLOListElement} els.log
   * @param {HTMLFormElement} els.form
   * @param {HTMLInputElement} els.input
   * @param {HTMLButtonElement} els.send
   * @param {HTMLElement} els.hint
   */
  constructor(els) {
    this.#els = els;
    els.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#sendInput();
    });
    els.input.addEventListener('input', () => this.#setHint(null));
    this.#setEnabled(false);
  }

  /**
   * Uses `channel` (the subscriber connection's `chat` channel) from now on.
   * @param {RTCDataChannel} channel
   */
  attach(channel) {
    this.#channel = channel;
    channel.addEventListener('open', () => this.#setEnabled(true));
    channel.addEventListener('close', () => this.#setEnabled(false));
    channel.addEventListener('message', (event) => this.#receive(event.data));
    this.#setEnabled(channel.readyState === 'open');
  }

  /** Stops sending (after leaving); the log stays readable. */
  detach() {
    this.#channel = null;
    this.#setEnabled(false);
  }

  /** Re-renders language-dependent text (message times, the hint). */
  renderLabels() {
    for (const time of this.#els.log.querySelectorAll('time')) time.textContent = formatTime(Number(time.dataset.ts));
    if (this.#els.hint.dataset.key) this.#els.hint.textContent = t(this.#els.hint.dataset.key);
  }

  #sendInput() {
    const text = this.#els.input.value.trim();
    if (!text || this.#channel?.readyState !== 'open') return;
    const frame = JSON.stringify({ text });
    if (new TextEncoder().encode(frame).length > MAX_CHAT_BYTES) {
      this.#setHint('chat.tooLong');
      return;
    }
    this.#channel.send(frame);
    this.#els.input.value = '';
    this.#append({ identity: t('consult.you'), text, ts: Date.now(), own: true });
  }

  #receive(data) {
    if (typeof data !== 'string') return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (typeof msg?.text !== 'string') return;
    this.#append({ identity: String(msg.identity ?? msg.from ?? '?'), text: msg.text, ts: Number(msg.ts) || Date.now(), own: false });
  }

  /** Appends one message; all text goes through textContent. */
  #append({ identity, text, ts, own }) {
    const item = document.createElement('li');
    item.className = own ? 'chat-msg chat-msg--own' : 'chat-msg';
    const meta = document.createElement('div');
    meta.className = 'chat-meta';
    const who = document.createElement('span');
    who.className = 'chat-who';
    who.textContent = identity;
    // Our own name is a label, re-rendered by applyTranslations().
    if (own) who.dataset.i18n = 'consult.you';
    const time = document.createElement('time');
    time.dataset.ts = String(ts);
    time.dateTime = new Date(ts).toISOString();
    time.textContent = formatTime(ts);
    meta.append(who, time);
    const body = document.createElement('p');
    body.className = 'chat-text';
    body.textContent = text;
    item.append(meta, body);
    this.#els.log.append(item);
    this.#els.log.scrollTop = this.#els.log.scrollHeight;
  }

  #setEnabled(enabled) {
    this.#els.input.disabled = !enabled;
    this.#els.send.disabled = !enabled;
    this.#setHint(enabled ? null : 'chat.unavailable');
  }

  #setHint(key) {
    const hint = this.#els.hint;
    if (key) hint.dataset.key = key;
    else delete hint.dataset.key;
    hint.textContent = key ? t(key) : '';
  }
}

function formatTime(ts) {
  return new Intl.DateTimeFormat(getLanguage(), { hour: '2-digit', minute: '2-digit' }).format(new Date(ts));
}
