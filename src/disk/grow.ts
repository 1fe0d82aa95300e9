import * as fs from 'node:fs';
import { checkAborted, reportProgress } from '../run/abort.js';
import { dataRanges } from '../fsx/index.js';
import { ImageFile } from '../ext4/image-file.js';
import { growExt4InPlace, imagePartitionIo } from '../ext4/resize.js';

const CHUNK = 1024 * 1024;

const ZERO = Buffer.alloc(CHUNK);

function isZero(buf: Buffer, length: number): boolean {
  return buf.compare(ZERO, 0, length, 0, length) === 0;
}

/** Copies `length` bytes from `from` at `fromOffset` to `to` at `toOffset`, leaving holes where the source has zeros. */
async function copyRange(fromFd: number, fromOffset: number, toFd: number, toOffset: number, length: number, progress?: (bytes: number) => void): Promise<void> {
  const a = Buffer.allocUnsafe(CHUNK);
  for (let done = 0; done < length; ) {
    // Every 16 MiB the event loop runs: an abort stops a copy of gigabytes promptly (run/abort.ts).
    if (done % (16 * CHUNK) === 0 && done > 0) {
      await new Promise((resolve) => setImmediate(resolve));
      checkAborted();
      progress?.(done);
    }
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
    if (!isZero(a, n)) {
      let w = 0;
      while (w < n) w += fs.writeSync(toFd, a, w, n - w, toOffset + done + w);
    }
    done += n;
  }
}

/**
 * Copies an image file: a reflink where the file system allows (btrfs, xfs), else a
 * sparse copy of its data ranges (zero MiB runs become holes). Removes the partial copy on failure.
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
    // Only the data ranges are read (SEEK_DATA/SEEK_HOLE): a balenaOS image grown to gigabytes
    // is mostly holes. Where the file system cannot say, the whole file is read.
    let ranges: Array<[number, number]> | undefined;
    try {
      ranges = dataRanges(inFd, size);
    } catch {
      ranges = undefined;
    }
    const copy = ranges ?? [[0, size]];
    const total = copy.reduce((n, [start, end]) => n + end - start, 0);
    let copied = 0;
    for (const [start, end] of copy) {
      await copyRange(inFd, start, outFd, start, end - start, (n) => reportProgress('copy', copied + n, total));
      copied += end - start;
      reportProgress('copy', copied, total);
    }
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

/**
 * Grows the ext4 file system at `offset` of an image to `newSize` bytes (its partition
 * has already been grown), in place and in-process (src/ext4/resize.ts: the layout
 * resize2fs leaves). Bytes of the image from `oldImageSize` on are the zeros of
 * ftruncate, so inode tables that land there are not written. A file system that is not
 * clean, uses features the resizer does not handle, or has too few reserved GDT blocks
 * is refused before anything is written.
 */
export async function growExt4(imagePath: string, offset: number, newSize: number, oldImageSize: number, where: string): Promise<void> {
  const image = ImageFile.open(imagePath, true);
  try {
    const zeroFrom = Number.isFinite(oldImageSize) ? Math.max(0, oldImageSize - offset) : Infinity;
    // Growth writes only metadata (the new groups' bitmaps, descriptors, backups): reported as it starts and ends.
    reportProgress('grow', 0, null);
    const grown = growExt4InPlace(imagePartitionIo(image, offset), newSize, where, { zeroFrom });
    image.sync();
    const bytes = (grown.newBlocks - grown.oldBlocks) * grown.blockSize;
    reportProgress('grow', bytes, bytes);
  } finally {
    image.close();
  }
}
