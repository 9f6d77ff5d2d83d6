/**
 * The start page: explains how to open a consult and builds the link
 * /consult/#room=ROOM&token=TOKEN from a small form. The token stays in the fragment,
 * which browsers never send to the server.
 */

import { applyTranslations, mountLanguageSwitch } from './shared/i18n.js';

/**
 * The consult link for `room` and `token` on this server.
 * @param {string} room
 * @param {string} token
 */
function consultLink(room, token) {
  const url = new URL('/consult/', location.origin);
  url.hash = new URLSearchParams({ room, token }).toString();
  return url.href;
}

const $ = (id) => document.getElementById(id);

applyTranslations();
mountLanguageSwitch($('lang'));

$('link-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const room = $('room').value.trim();
  const token = $('token').value.trim();
  const missing = !room || !token;
  $('form-error').hidden = !missing;
  $('result').hidden = missing;
  if (missing) return;
  const link = consultLink(room, token);
  $('result-link').value = link;
  $('result-open').href = link;
});
