/**
 * Run by test/ext4-resize.test.ts as an unprivileged user (setpriv) with a PATH that
 * holds no e2fsprogs program. Does nothing unless TRANSPLANT_GROW_MODE is set (node
 * --test also loads this file).
 *
 * - `fs`: grows the ext4 file system held in the plain file TRANSPLANT_GROW_FILE to
 *   TRANSPLANT_GROW_SIZE bytes with growExt4InPlace (TRANSPLANT_GROW_NOW: the time to
 *   stamp; TRANSPLANT_GROW_ZERO_FROM: where the file's sparse extension starts).
 * - `disk`: opens the balenaOS image TRANSPLANT_GROW_IMAGE as a disk target, asks for
 *   room for TRANSPLANT_GROW_BYTES bytes (which grows it) and commits.
 *
 * Prints one JSON line: the uid, the PATH, the e2fsprogs programs PATH reaches (none
 * expected), the time the growth took and its result. A refusal is one `error: …` line
 * on stderr and exit 1.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { growExt4InPlace, ResizeRefused } from '../../src/ext4/resize.js';
import { openDiskTarget } from '../../src/disk/disk-target.js';

const E2FSPROGS = ['e2fsck', 'resize2fs', 'mke2fs', 'mkfs.ext4', 'fsck.ext4', 'dumpe2fs', 'debugfs', 'tune2fs', 'e2image'];

function e2fsprogsOnPath(): string[] {
  const found: string[] = [];
  for (const dir of (process.env.PATH ?? '').split(':')) {
    for (const tool of E2FSPROGS) if (dir && fs.existsSync(path.join(dir, tool))) found.push(path.join(dir, tool));
  }
  return found;
}

async function main(mode: string): Promise<unknown> {
  if (mode === 'fs') {
    const file = process.env.TRANSPLANT_GROW_FILE!;
    const fd = fs.openSync(file, 'r+');
    try {
      const io = {
        read(offset: number, length: number): Buffer {
          const b = Buffer.alloc(length);
          fs.readSync(fd, b, 0, length, offset);
          return b;
        },
        write(data: Buffer, offset: number): void {
          for (let done = 0; done < data.length; ) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
        },
      };
      const now = process.env.TRANSPLANT_GROW_NOW ? Number(process.env.TRANSPLANT_GROW_NOW) : undefined;
      const zeroFrom = process.env.TRANSPLANT_GROW_ZERO_FROM ? Number(process.env.TRANSPLANT_GROW_ZERO_FROM) : undefined;
      return growExt4InPlace(io, Number(process.env.TRANSPLANT_GROW_SIZE), path.basename(file), { now, zeroFrom });
    } finally {
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    }
  }
  const target = await openDiskTarget(process.env.TRANSPLANT_GROW_IMAGE!);
  try {
    const room = await target.ensureRoom(Number(process.env.TRANSPLANT_GROW_BYTES), 100);
    await target.commit();
    return room;
  } catch (err) {
    await target.abort();
    throw err;
  }
}

const mode = process.env.TRANSPLANT_GROW_MODE;
if (mode) {
  const t0 = process.hrtime.bigint();
  main(mode).then(
    (result) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      process.stdout.write(JSON.stringify({ uid: process.getuid?.(), path: process.env.PATH, e2fsprogs: e2fsprogsOnPath(), ms, result }) + '\n');
    },
    (err: Error) => {
      process.stderr.write(err instanceof ResizeRefused ? `error: ${err.message}\n` : `error: ${err.message}\n${err.stack ?? ''}\n`);
      process.exit(1);
    },
  );
}
