/**
 * The boot splash logo in resin-boot (`--splash-image`, balena preload's option): the
 * plymouth theme of balenaOS shows `splash/balena-logo.png` of the boot partition; OS
 * versions before 2.53.0 name it `splash/resin-logo.png` (balena-preload lib/preload.js
 * `_getSplashImagePath`). Which name an image uses is read from what its boot partition
 * already holds, not guessed from a version. On a flasher image the installer shows the
 * logo of flash-boot, and the installed device that of the inner image's resin-boot: both
 * are written.
 */
import { promises as fsp } from 'node:fs';
import { bootPathKind, readBootFile, writeBootFile, checkBootFile, describeBoot, type BootLocation } from './boot-partition.js';
import type { UndoSteps } from '../inject/apply.js';
import * as path from 'node:path';

export const SPLASH_DIR = 'splash';
export const SPLASH_NAME = 'balena-logo.png';
/** The name before balenaOS 2.53.0. */
export const OLD_SPLASH_NAME = 'resin-logo.png';

/** PNG signature (PNG spec 5.2) and the first chunk, which must be IHDR of 13 bytes (5.6). */
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
/** A boot partition is tens of MiB: a logo beyond this is a mistake. */
export const MAX_SPLASH_BYTES = 8 * 1024 * 1024;

/** Checks that `data` is a PNG file (signature, then an IHDR chunk); returns the reason when not. */
export function pngProblem(data: Buffer): string | undefined {
  if (data.length < PNG_SIGNATURE.length || !data.subarray(0, 8).equals(PNG_SIGNATURE)) return 'it is not a PNG image (no PNG signature)';
  if (data.length < 8 + 8 + 13 + 4 || data.readUInt32BE(8) !== 13 || data.toString('latin1', 12, 16) !== 'IHDR') return 'it is not a PNG image (no IHDR chunk after the signature)';
  const width = data.readUInt32BE(16);
  const height = data.readUInt32BE(20);
  if (width === 0 || height === 0) return 'it is a PNG image of zero width or height';
  return undefined;
}

/** Reads and checks `--splash-image FILE`; one-line errors. */
export async function readSplashImage(file: string): Promise<Buffer> {
  let st;
  try {
    st = await fsp.stat(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(`--splash-image ${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : 'cannot read it'}`);
  }
  if (!st.isFile()) throw new Error(`--splash-image ${file}: is not a regular file`);
  if (st.size > MAX_SPLASH_BYTES) throw new Error(`--splash-image ${file}: ${st.size} bytes is too large for a boot logo (at most ${MAX_SPLASH_BYTES})`);
  let data: Buffer;
  try {
    data = await fsp.readFile(file);
  } catch (e) {
    throw new Error(`--splash-image ${file}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const problem = pngProblem(data);
  if (problem) throw new Error(`--splash-image ${file}: ${problem}`);
  return data;
}

export interface SplashPlan {
  loc: BootLocation;
  /** `splash/balena-logo.png` or `splash/resin-logo.png`. */
  rel: string;
  png: Buffer;
  /** What the file held before (undefined: there was none). */
  previous?: Buffer;
  /** The boot partition as messages name it (the user's image, not the work copy). */
  shownAs: string;
}

/**
 * Where the logo goes in one boot partition: the older name when only it exists there,
 * else balena-logo.png. Checks, without writing, that it can be written.
 */
export async function planSplash(loc: BootLocation, png: Buffer, shownAs: string = describeBoot(loc)): Promise<SplashPlan> {
  // Refused here, before anything is written, rather than when the logo is written last.
  if ((await bootPathKind(loc, SPLASH_DIR)) === 'file') throw new Error(`${shownAs}/${SPLASH_DIR} exists and is not a directory; the splash logo goes in it`);
  const current = `${SPLASH_DIR}/${SPLASH_NAME}`;
  const old = `${SPLASH_DIR}/${OLD_SPLASH_NAME}`;
  let previous = await readBootFile(loc, current);
  let rel = current;
  if (previous === undefined) {
    const oldContent = await readBootFile(loc, old);
    if (oldContent !== undefined) {
      rel = old;
      previous = oldContent;
    }
  }
  if ((await bootPathKind(loc, rel)) === 'directory') throw new Error(`${shownAs}/${rel} exists and is a directory`);
  await checkBootFile(loc, rel, png, { overwrite: true });
  return { loc, rel, png, previous, shownAs };
}

/** Writes the logo; with `undo`, a mounted resin-boot gets its old logo back if the run fails. */
export async function writeSplash(plan: SplashPlan, undo?: UndoSteps): Promise<string> {
  const r = await writeBootFile(plan.loc, plan.rel, plan.png, { overwrite: true });
  if (plan.loc.kind === 'directory' && !r.unchanged && undo) {
    const dir = plan.loc.path;
    const previous = plan.previous;
    undo.step(async () => {
      if (previous !== undefined) await writeBootFile({ kind: 'directory', path: dir }, plan.rel, previous, { overwrite: true });
      else await fsp.rm(path.join(dir, ...plan.rel.split('/')), { force: true });
    });
  }
  return `${plan.shownAs}/${plan.rel}`;
}
