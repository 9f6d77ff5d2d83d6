// Network namespaces joined to the test's own by a veth pair, and headless Chromium started
// inside such a namespace.
// The suite itself runs in a private namespace with only `lo` (run.sh); these namespaces
// hang off it, so every packet still stays on this machine.

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

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
