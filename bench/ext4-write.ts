/**
 * Write rate of the in-process ext4 writer into a balenaOS image:
 *   node dist/bench/ext4-write.js [big MB] [small files]
 * Phase 1: big files (MB/s); phase 2: many small files (files/s); then commit.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openDiskTarget } from '../src/disk/disk-target.js';
import type { LayerEntry } from '../src/layer/entry.js';
import { buildBalenaImage } from '../test/harness/balena-image.js';

/** Content without generation cost: one pseudo-random 256 KiB piece repeated. */
const PIECE = Buffer.alloc(256 * 1024);
for (let i = 0; i < PIECE.length; i++) PIECE[i] = (i * 2654435761) >>> 24;
async function* repeated(size: number): AsyncGenerator<Buffer> {
  for (let done = 0; done < size; done += PIECE.length) yield PIECE.subarray(0, Math.min(PIECE.length, size - done));
}

async function main(): Promise<void> {
  const bigMB = Number(process.argv[2] ?? '256');
  const smallFiles = Number(process.argv[3] ?? '5000');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'transplant-bench-'));
  try {
    const blockSize = process.env.BENCH_BLOCK_SIZE;
    const img = buildBalenaImage(dir, 'bench.img', { dataMiB: 32, dataMkfsArgs: blockSize ? ['-b', blockSize] : [] });
    const target = await openDiskTarget(img.path);
    const t0 = process.hrtime.bigint();
    const { grewBy } = await target.ensureRoom(bigMB * 1e6 + smallFiles * 8192, smallFiles + 100);
    const t1 = process.hrtime.bigint();
    const w = target.writer;
    const e = (p: string, kind: LayerEntry['kind'], size = 0): LayerEntry => ({
      path: p, kind, mode: kind === 'directory' ? 0o755 : 0o644, uid: 0, gid: 0, mtime: 1n, atime: 1n, size, xattrs: [],
    });
    const root = 'docker/overlay2/bench/diff';
    await w.mkdirp(root, 0o755);
    await w.writeEntry(root, e('big', 'directory'));
    const fileMB = 16;
    let written = 0;
    for (let i = 0; written < bigMB * 1e6; i++) {
      const size = Math.min(fileMB * 1e6, bigMB * 1e6 - written);
      await w.writeEntry(root, e(`big/f${i}`, 'file', size), repeated(size));
      written += size;
    }
    const t2 = process.hrtime.bigint();
    await w.writeEntry(root, e('small', 'directory'));
    let smallBytes = 0;
    for (let i = 0; i < smallFiles; i++) {
      if (i % 500 === 0) await w.writeEntry(root, e(`small/d${i / 500}`, 'directory'));
      const size = 200 + ((i * 7919) % 16000);
      smallBytes += size;
      await w.writeEntry(root, e(`small/d${Math.floor(i / 500)}/f${i}`, 'file', size), repeated(size));
    }
    const t3 = process.hrtime.bigint();
    await target.commit();
    const t4 = process.hrtime.bigint();
    const s = (a: bigint, b: bigint) => Number(b - a) / 1e9;
    console.log(JSON.stringify({
      grewByMB: +(grewBy / 1e6).toFixed(1), growSeconds: +s(t0, t1).toFixed(2),
      bigMB, bigSeconds: +s(t1, t2).toFixed(2), bigMBps: +(bigMB / s(t1, t2)).toFixed(1),
      smallFiles, smallMB: +(smallBytes / 1e6).toFixed(1), smallSeconds: +s(t2, t3).toFixed(2), smallFilesPerSec: Math.round(smallFiles / s(t2, t3)),
      commitSeconds: +s(t3, t4).toFixed(2),
    }));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  console.error(err.message);
  process.exit(1);
});
