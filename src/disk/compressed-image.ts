/**
 * Compressed disk images, as balenaCloud and the OS release pages hand them out
 * (`balena.img.gz`, `.xz`, `.zst`, `.zip`; `.bz2` too), and compressed results
 * (`--output x.img.gz|.xz|.zst`).
 *
 * A compressed input (recognised by its magic bytes) is decompressed as a stream straight
 * into the work copy beside the destination, sparsely (runs of zero MiB become holes, as
 * the plain copy in grow.ts makes them); that work copy is then written in place like any
 * image, and on commit takes the destination's name (renamed), or is compressed into it as
 * a stream. The destination is --output, or the input's name without its compression
 * suffix. A compressed output from a plain input works the same way on a copy of it. The
 * input is only read.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { decompress, detectCompression, type Compression } from '../stream/decompress.js';
import { readSingleZipEntry, zipEntryContent } from '../stream/zip-entry.js';
import { compressFile, compressionForName } from '../stream/compress.js';
import { copyImageFile } from './grow.js';
import { workPathFor } from './disk-target.js';
import { checkAborted as checkInterrupted, onAbort as onInterrupt } from '../run/abort.js';

export type DiskCompression = Compression | 'zip';

const SUFFIXES = ['.gz', '.xz', '.zst', '.zstd', '.bz2', '.zip'];
const MiB = 1024 * 1024;
const ZERO = Buffer.alloc(MiB);

/** The compression of a file by its first bytes ('none' when it is not compressed or cannot be read). */
export function diskCompression(file: string): DiskCompression {
  let head: Buffer;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      head = Buffer.alloc(8);
      head = head.subarray(0, fs.readSync(fd, head, 0, 8, 0));
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return 'none';
  }
  // PKWARE APPNOTE 4.3.7: a zip starts with a local file header.
  if (head.length >= 4 && head.readUInt32LE(0) === 0x04034b50) return 'zip';
  return detectCompression(head);
}

/** `balena.img.gz` -> `balena.img`; undefined when the name has no compression suffix. */
export function decompressedName(file: string): string | undefined {
  const lower = file.toLowerCase();
  const s = SUFFIXES.find((x) => lower.endsWith(x));
  return s && file.length > s.length && !file.endsWith(`/${file.slice(-s.length)}`) ? file.slice(0, -s.length) : undefined;
}

/** Is this run one for openTranscoded: a compressed input, or a compressed --output? */
export function needsTranscoding(disk: string, output: string | undefined): boolean {
  return (fs.existsSync(disk) && diskCompression(disk) !== 'none') || (output !== undefined && compressionForName(output) !== undefined);
}

/** Streams the decompressed content of `file` into `to` (created), leaving holes for zero MiB. */
export async function decompressImage(file: string, compression: DiskCompression, to: string): Promise<number> {
  const chunks: AsyncIterable<Buffer> =
    compression === 'zip' ? zipEntryContent(file, readSingleZipEntry(file)) : decompress(fs.createReadStream(file, { highWaterMark: MiB }), compression);
  const fd = fs.openSync(to, 'wx', 0o644);
  let pos = 0;
  const block = Buffer.alloc(MiB);
  let fill = 0;
  const flush = (): void => {
    if (fill > 0 && block.compare(ZERO, 0, fill, 0, fill) !== 0) {
      for (let w = 0; w < fill; ) w += fs.writeSync(fd, block, w, fill - w, pos + w);
    }
    pos += fill;
    fill = 0;
  };
  let blocks = 0;
  try {
    for await (const chunk of chunks) {
      for (let at = 0; at < chunk.length; ) {
        const n = Math.min(chunk.length - at, MiB - fill);
        chunk.copy(block, fill, at, at + n);
        fill += n;
        at += n;
        if (fill === MiB) {
          flush();
          if (++blocks % 64 === 0) checkInterrupted();
        }
      }
    }
    flush();
    fs.ftruncateSync(fd, pos);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(to, { force: true });
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC') throw new Error(`no space left to decompress ${file} into ${path.dirname(to)}; free some space or choose an --output on another disk`);
    throw e;
  }
  fs.closeSync(fd);
  return pos;
}

export interface Committable {
  commit(): Promise<void>;
  abort(): Promise<void>;
}

export interface TranscodeRun {
  /** The image given (compressed or not). */
  disk: string;
  output?: string;
  dryRun?: boolean;
}

/**
 * Opens a target on a private work copy of `run.disk` (decompressed, or copied for a
 * compressed --output): `open(workCopy)` must write it in place. Commit gives the result
 * the destination's name (compressed on the way when --output asks for it); abort removes
 * the work copy. The input image is never written.
 */
export async function openTranscoded<T extends Committable>(run: TranscodeRun, open: (workCopy: string) => Promise<T>): Promise<T> {
  const { disk } = run;
  if (!fs.existsSync(disk)) throw new Error(`${disk}: no such file`);
  const inCompression = diskCompression(disk);
  let destination = run.output;
  if (destination === undefined) {
    destination = decompressedName(disk);
    if (destination === undefined) {
      throw new Error(`${disk} is ${inCompression}-compressed but its name has no compression suffix to drop; give --output <image> for the result`);
    }
    if (fs.existsSync(destination) && !run.dryRun) {
      throw new Error(`${disk} is compressed and the result would be ${destination}, which exists; give --output <image> (nothing was written)`);
    }
  }
  if (path.resolve(destination) === path.resolve(disk) || (fs.existsSync(destination) && fs.realpathSync(destination) === fs.realpathSync(disk))) {
    throw new Error(`--output ${destination} is the input image; the result of a compressed image goes to another file`);
  }
  const outCompression = compressionForName(destination);
  const workCopy = workPathFor(destination);
  const forget = onInterrupt(() => {
    fs.rmSync(workCopy, { force: true });
    fs.rmSync(`${workCopy}.out`, { force: true });
  });
  const cleanup = (): void => {
    fs.rmSync(workCopy, { force: true });
    fs.rmSync(`${workCopy}.out`, { force: true });
    forget();
  };
  let inner: T;
  try {
    if (inCompression !== 'none') await decompressImage(disk, inCompression, workCopy);
    else await copyImageFile(disk, workCopy);
    try {
      inner = await open(workCopy);
    } catch (e) {
      // Messages name the user's file, not the work copy.
      const err = e as Error;
      err.message = err.message.split(workCopy).join(inCompression !== 'none' ? `${disk} (decompressed)` : disk).split(path.basename(workCopy)).join(path.basename(disk));
      throw err;
    }
  } catch (e) {
    cleanup();
    throw e;
  }
  const dest = destination;
  let state: 'open' | 'done' = 'open';
  return {
    ...inner,
    commit: async () => {
      if (state !== 'open') return;
      try {
        await inner.commit();
        if (run.dryRun) return;
        checkInterrupted();
        if (outCompression) {
          // Compressed beside the destination, then renamed over it: never a half-written result.
          await compressFile(workCopy, `${workCopy}.out`, outCompression);
          checkInterrupted();
          fs.renameSync(`${workCopy}.out`, dest);
        } else {
          fs.renameSync(workCopy, dest);
        }
      } finally {
        state = 'done';
        cleanup();
      }
    },
    abort: async () => {
      if (state !== 'open') return;
      state = 'done';
      try {
        await inner.abort();
      } finally {
        cleanup();
      }
    },
  };
}
