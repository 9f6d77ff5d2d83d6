// Chosen fake capture input, made at test time with Debian's ffmpeg (never committed):
// a 640x480 30 fps test pattern and a 440 Hz tone, looped by Chromium's fake devices.

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const execFileP = promisify(execFile);

/** Returns { dir, video, audio, chromiumArgs } or null when ffmpeg is not installed. */
export async function makeFakeCaptureFiles({ width = 640, height = 480, seconds = 4 } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'medrelay-clip-'));
  const video = path.join(dir, 'clip.y4m');
  const audio = path.join(dir, 'tone.wav');
  try {
    await execFileP('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', `testsrc2=size=${width}x${height}:rate=30`, '-t', String(seconds), '-pix_fmt', 'yuv420p', video], { timeout: 60_000 });
    await execFileP('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000', '-t', String(seconds), '-ac', '1', audio], { timeout: 60_000 });
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    if (e.code === 'ENOENT') return null;
    throw e;
  }
  return {
    dir,
    video,
    audio,
    width,
    height,
    chromiumArgs: [`--use-file-for-fake-video-capture=${video}`, `--use-file-for-fake-audio-capture=${audio}`],
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}
