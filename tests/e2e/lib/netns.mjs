// Network namespaces joined to the test's own by a veth pair or by an emulated link
// (tools/linkem.py: rate, delay, loss, cuts; this kernel has no netem), and headless
// Chromium started inside such a namespace.
// The suite itself runs in a private namespace with only `lo` (run.sh); these namespaces
// hang off it, so every packet still stays on this machine.

import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const execFileP = promisify(execFile);

async function run(cmd, args) {
  try {
    return (await execFileP(cmd, args, { timeout: 10_000 })).stdout;
  } catch (e) {
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr || e.message}`);
  }
}

const ip = (...args) => run('ip', args);

/**
 * Makes network namespace `ns` with a veth pair to ours: `hostIp` on `hostIf` here, `nsIp`
 * on `nsIf` there. Returns a link {ns, hostIf, nsIf, hostIp, nsIp, cut(), restore(),
 * destroy()}; cut/restore set `hostIf` down/up (the namespace's side loses its carrier).
 */
export async function makeVethNamespace({ ns = `mre2e-${process.pid}`, hostIf = 'mre2e-s', nsIf = 'mre2e-a', hostIp = '10.77.0.1', nsIp = '10.77.0.2', prefix = 30 } = {}) {
  await ip('netns', 'del', ns).catch(() => {});
  await ip('link', 'del', hostIf).catch(() => {});
  await ip('netns', 'add', ns);
  const link = {
    ns,
    hostIf,
    nsIf,
    hostIp,
    nsIp,
    cut: () => ip('link', 'set', hostIf, 'down'),
    restore: () => ip('link', 'set', hostIf, 'up'),
    async destroy() {
      await ip('netns', 'del', ns).catch(() => {});
      await ip('link', 'del', hostIf).catch(() => {});
    },
  };
  try {
    await ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
    await ip('link', 'set', nsIf, 'netns', ns);
    await ip('addr', 'add', `${hostIp}/${prefix}`, 'dev', hostIf);
    await ip('link', 'set', hostIf, 'up');
    await ip('netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up');
    await ip('netns', 'exec', ns, 'ip', 'addr', 'add', `${nsIp}/${prefix}`, 'dev', nsIf);
    await ip('netns', 'exec', ns, 'ip', 'link', 'set', nsIf, 'up');
  } catch (e) {
    await link.destroy();
    throw e;
  }
  return link;
}

const LINKEM = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'tools', 'linkem.py');
let linkCount = 0;

/**
 * Makes network namespace `ns` joined to ours by an emulated link (tools/linkem.py, two TUN
 * devices `<name>h` here with `hostIp`/30 and `<name>n` there with `nsIp`/30). Returns
 * { ns, hostIp, nsIp, hostIf, nsIf, shape({ rateKbit, delayMs, lossPct, jitterMs, queueMs,
 * dir }), unshape(), cut(), restore(), stats(), destroy() }. Each call resolves with the
 * emulator's answer (stats(): {down, up} counters; down = towards the namespace) and
 * rejects on an `error` answer. shape() applies to both directions unless dir is 'down' or
 * 'up'; settings left out are "none". cut() drops everything both ways until restore().
 * Two links in one process need different `name`s and addresses.
 */
export async function makeEmulatedLink({ ns = `mrlem-${process.pid}-${linkCount}`, hostIp = '10.78.0.1', nsIp = '10.78.0.2', name = `lem${linkCount}` } = {}) {
  linkCount++;
  await ip('netns', 'del', ns).catch(() => {});
  await ip('netns', 'add', ns);
  const child = spawn(process.env.PYTHON || 'python3', [LINKEM, '--ns', ns, '--name', name, '--host-ip', hostIp, '--ns-ip', nsIp], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  let exited = null;
  const pending = []; // {resolve, reject, cmd} in command order; the first is `ready`
  const fail = (err) => {
    while (pending.length) pending.shift().reject(err);
  };
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  child.on('error', (e) => fail(new Error(`linkem: ${e.message}`)));
  child.on('exit', (code, signal) => {
    exited = { code, signal };
    fail(new Error(`linkem exited (${code ?? signal}) ${stderr.trim()}`));
  });
  child.stdin.on('error', () => {}); // EPIPE after an early exit is reported by 'exit'
  let buf = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const p = pending.shift();
      if (!p) continue;
      if (line.startsWith('ok')) p.resolve(line.slice(2).trim());
      else p.reject(new Error(`linkem ${p.cmd}: ${line}`));
    }
  });
  const answer = (cmd) =>
    new Promise((resolve, reject) => {
      if (exited) return reject(new Error(`linkem exited (${exited.code ?? exited.signal}) ${stderr.trim()}`));
      pending.push({ resolve, reject, cmd });
      if (cmd !== 'ready') child.stdin.write(`${cmd}\n`);
    });
  const destroy = async () => {
    if (!exited) {
      const gone = new Promise((r) => child.once('exit', r));
      child.stdin.end();
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await gone;
      clearTimeout(t);
    }
    await ip('netns', 'del', ns).catch(() => {});
  };
  try {
    await answer('ready');
  } catch (e) {
    await destroy();
    throw e;
  }
  const num = (k, v) => (v === undefined || v === null ? [] : [`${k}=${Number(v)}`]);
  return {
    ns,
    hostIp,
    nsIp,
    hostIf: `${name}h`,
    nsIf: `${name}n`,
    shape: ({ rateKbit, delayMs, lossPct, jitterMs, queueMs, dir } = {}) =>
      answer(['shape', ...(dir ? [`dir=${dir}`] : []), ...num('rate', rateKbit), ...num('delay', delayMs), ...num('loss', lossPct), ...num('jitter', jitterMs), ...num('queue', queueMs)].join(' ')),
    unshape: () => answer('unshape'),
    cut: () => answer('cut'),
    restore: () => answer('restore'),
    stats: async () => JSON.parse(await answer('stats')),
    destroy,
  };
}

/**
 * A Chromium executable that starts inside network namespace `ns` (a wrapper script around
 * `ip netns exec`), used by launchBrowser({ netns }). Playwright's pipe to the browser
 * survives the exec.
 */
export function chromiumInNamespace(ns, chromium) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mre2e-chromium-'));
  const file = path.join(dir, 'chromium');
  fs.writeFileSync(file, `#!/bin/sh\nexec ip netns exec ${ns} ${chromium} "$@"\n`, { mode: 0o755 });
  return file;
}
