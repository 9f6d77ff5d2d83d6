// REST API and /metrics helpers: requests with the server's X-Api-Key, and Prometheus
// gauge values read back as numbers.

import { safeJson } from './server.mjs';

/**
 * `method path` against the server's REST API. `key` defaults to the server's own API key;
 * pass `null` to send no X-Api-Key header at all. Returns { status, headers, body, text }
 * (`body` is the parsed JSON, or null when the response is not JSON).
 */
export async function api(server, method, path, { body, key } = {}) {
  const headers = {};
  const k = key === undefined ? server.apiKey() : key;
  if (k !== null) headers['X-Api-Key'] = k;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

/** A short description of a response for assertion messages. */
export function describeResponse(r) {
  return `${r.status} ${r.body !== null ? safeJson(r.body) : r.text.slice(0, 300)}`;
}

/** /metrics as text. */
export async function metricsText(server) {
  const res = await fetch(`${server.url}/metrics`, { signal: AbortSignal.timeout(5000) });
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return res.text();
}

/**
 * The value of the unlabelled sample `name` (e.g. `medrelay_rooms`) in Prometheus text, or
 * undefined when absent. With `labels` (e.g. {code: 'removed'}) the labelled sample.
 */
export function metricValue(text, name, labels = null) {
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = {};
    for (const [, k, v] of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) got[k] = v;
    if (labels) {
      if (!Object.entries(labels).every(([k, v]) => got[k] === v)) continue;
    } else if (Object.keys(got).length) {
      continue;
    }
    return Number(m[3]);
  }
  return undefined;
}

/** Reads /metrics and returns the named samples: metrics(server, 'medrelay_rooms', …). */
export async function metrics(server, ...names) {
  const text = await metricsText(server);
  return Object.fromEntries(names.map((n) => [n, metricValue(text, n)]));
}
