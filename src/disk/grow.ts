import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { onInterrupt } from '../cli/interrupt.js';

const CHUNK = 1024 * 1024;

const ZERO = Buffer.alloc(CHUNK);

function isZero(buf: Buffer, length: number): boolean {
  return buf.compare(ZERO, 0, length, 0, length) === 0;
}

/**
 * Copies `length` bytes from `from` at `fromOffset` to `to` at `toOffset`, leaving holes
 * where the source has zeros (unless `compare`, which writes only what differs from
 * what `to` already holds — for copying a file system back into an image; `to` is
 * known to hold zeros from byte `knownZeroFrom` on, which is then not read).
 */
async function copyRange(fromFd: number, fromOffset: number, toFd: number, toOffset: number, length: number, compare: boolean, knownZeroFrom = Infinity): Promise<void> {
  const a = Buffer.allocUnsafe(CHUNK);
  const b = compare ? Buffer.allocUnsafe(CHUNK) : undefined;
  for (let done = 0; done < length; ) {
    // Every 16 MiB the event loop runs: a signal stops a copy of gigabytes promptly (cli/interrupt.ts).
    if (done % (16 * CHUNK) === 0 && done > 0) await new Promise((resolve) => setImmediate(resolve));
    const n = Math.min(CHUNK, length - done);
    let got = 0;
    while (got < n) {
      const r = fs.readSync(fromFd, a, got, n - got, fromOffset + done + got);
      if (r === 0) {
        a.fill(0, got, n);
        break;
      }
      got += r;
    }
    let write: boolean;
    if (b && toOffset + done >= knownZeroFrom) {
      write = !isZero(a, n);
    } else if (b) {
      let have = 0;
      while (have < n) {
        const r = fs.readSync(toFd, b, have, n - have, toOffset + done + have);
        if (r === 0) {
          b.fill(0, have, n);
          break;
        }
        have += r;
      }
      write = a.compare(b, 0, n, 0, n) !== 0;
    } else {
      write = !isZero(a, n);
    }
    if (write) {
      let w = 0;
      while (w < n) w += fs.writeSync(toFd, a, w, n - w, toOffset + done + w);
    }
    done += n;
  }
}

/**
 * Copies an image file: a reflink where the file system allows (btrfs, xfs), else a
 * sparse copy (zero MiB runs become holes). Removes the partial copy on failure.
 */
export async function copyImageFile(from: string, to: string): Promise<void> {
  try {
    fs.copyFileSync(from, to, fs.constants.COPYFILE_EXCL | fs.constants.COPYFILE_FICLONE_FORCE);
    return;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new Error(`${to} already exists; remove it and try again`);
    fs.rmSync(to, { force: true });
  }
  const inFd = fs.openSync(from, 'r');
  let outFd: number | undefined;
  try {
    const size = fs.fstatSync(inFd).size;
    outFd = fs.openSync(to, 'wx', fs.fstatSync(inFd).mode & 0o666);
    fs.ftruncateSync(outFd, size);
    await copyRange(inFd, 0, outFd, 0, size, false);
    fs.fsyncSync(outFd);
  } catch (err) {
    if (outFd !== undefined) fs.closeSync(outFd);
    outFd = undefined;
    fs.rmSync(to, { force: true });
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOSPC') throw new Error(`no space left to copy ${from} to ${to}; free some space or choose an --output on another disk`);
    throw err;
  } finally {
    if (outFd !== undefined) fs.closeSync(outFd);
    fs.closeSync(inFd);
  }
}

function findTool(name: string): string {
  const dirs = ['/usr/sbin', '/sbin', '/usr/bin', '/bin', ...(process.env.PATH ?? '').split(':')];
  for (const d of dirs) {
    if (d && fs.existsSync(path.join(d, name))) return path.join(d, name);
  }
  throw new Error(`${name} (from e2fsprogs) is needed to grow the ext4 file system: install e2fsprogs`);
}

function runTool(tool: string, args: string[], where: string): { code: number; output: string } {
  const r = spawnSync(findTool(tool), args, { encoding: 'utf8', timeout: 30 * 60_000 });
  if (r.error) throw new Error(`${where}: cannot run ${tool}: ${r.error.message}`);
  return { code: r.status ?? 1, output: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

/**
 * Grows the ext4 file system at `offset` of an image to `newSize` bytes (its partition
 * has already been grown). resize2fs must not be given `image?offset=N` (it then
 * truncates the whole image to the file-system size, see shared/docs/balena-target.md),
 * so the file system is copied into a plain sparse file beside the image, checked,
 * resized there and copied back (only the blocks that changed are written).
 */
export async function growExt4(imagePath: string, offset: number, oldSize: number, newSize: number, oldImageSize: number, where: string): Promise<void> {
  const tmp = `${imagePath}.resize-${process.pid}`;
  const forget = onInterrupt(() => fs.rmSync(tmp, { force: true }));
  const imgFd = fs.openSync(imagePath, 'r+');
  try {
    const tmpFd = fs.openSync(tmp, 'w+', 0o600);
    try {
      fs.ftruncateSync(tmpFd, newSize);
      await copyRange(imgFd, offset, tmpFd, 0, oldSize, false);
    } finally {
      fs.closeSync(tmpFd);
    }
    const check = runTool('e2fsck', ['-fn', tmp], where);
    if (check.code !== 0) {
      throw new Error(`${where}: e2fsck finds problems in the file system, so it is not grown: ${check.output.split('\n').slice(-3).join(' ')}`);
    }
    // -f: the check above is the one resize2fs would ask for.
    const resize = runTool('resize2fs', ['-f', tmp], where);
    if (resize.code !== 0) throw new Error(`${where}: resize2fs failed: ${resize.output.split('\n').slice(-2).join(' ')}`);
    const backFd = fs.openSync(tmp, 'r');
    try {
      // Past the old end of the image file the image holds only the zeros of ftruncate.
      await copyRange(backFd, 0, imgFd, offset, newSize, true, oldImageSize);
    } finally {
      fs.closeSync(backFd);
    }
    fs.fsyncSync(imgFd);
  } finally {
    fs.closeSync(imgFd);
    fs.rmSync(tmp, { force: true });
    forget();
  }
}
