/**
 * The image file's gathered writes and the overlapped content writer: whatever the order of
 * small and large writes and reads, the file holds (and reads back) what a plain sequence of
 * pwrites would have left, judged by reading the file with fs after close.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ImageFile } from '../src/ext4/image-file.js';
import { writeChunkedOverlapped } from '../src/stream/chunked-write.js';
import { tempDir } from './harness/fixtures.js';

/** A deterministic generator (xorshift32), so a failure is reproducible. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

test('gathered writes: random small, large, overlapping writes and reads equal plain pwrites', async () => {
  const dir = tempDir('image-file-');
  const size = 8 << 20;
  for (const seed of [1, 2, 3, 4, 5]) {
    const file = path.join(dir, `img-${seed}`);
    fs.writeFileSync(file, Buffer.alloc(0));
    fs.truncateSync(file, size);
    const model = Buffer.alloc(size);
    const img = ImageFile.open(file, true, { gather: true });
    const r = rng(seed);
    for (let op = 0; op < 4000; op++) {
      const kind = r();
      // Mostly sequential small writes in a few streams (as inodes, blocks and directories are), some anywhere.
      const stream = Math.floor(r() * 3);
      const base = stream * (2 << 20) + (op % 600) * 256;
      const at = kind < 0.6 ? base : Math.floor(r() * (size - (1 << 17)));
      if (kind < 0.85) {
        const data = randomBytes(1 + Math.floor(r() * (kind < 0.6 ? 4096 : 70_000)));
        img.write(at, data);
        data.copy(model, at);
      } else if (kind < 0.95) {
        const len = 1 + Math.floor(r() * 9000);
        assert.deepEqual(img.read(at, len), model.subarray(at, at + len), `seed ${seed} op ${op}: a read sees every earlier write`);
      } else {
        const data = randomBytes(1 + Math.floor(r() * 100_000));
        await img.writeLater(at, data);
        data.copy(model, at);
      }
    }
    img.close();
    assert.ok(fs.readFileSync(file).equals(model), `seed ${seed}: the file holds what was written`);
  }
});

test('overlapped chunked writes: content in any piece sizes lands in order; a failing write or short content throws after every write finished', async () => {
  const content = randomBytes(3_000_003);
  const pieces = (sizes: number[]): Buffer[] => {
    const out: Buffer[] = [];
    let off = 0;
    for (let i = 0; off < content.length; i++) {
      const n = Math.min(sizes[i % sizes.length] as number, content.length - off);
      out.push(content.subarray(off, off + n));
      off += n;
    }
    return out;
  };
  for (const sizes of [[1], [4096], [65_536, 7], [1 << 20], [3_000_003]]) {
    const got = Buffer.alloc(content.length);
    let pos = 0;
    let inFlight = 0;
    let most = 0;
    await writeChunkedOverlapped(
      sizes[0] === 1 ? pieces([1000]) : pieces(sizes),
      content.length,
      [Buffer.alloc(256 << 10), Buffer.alloc(256 << 10)],
      async (buf, length) => {
        const at = pos;
        pos += length;
        inFlight++;
        most = Math.max(most, inFlight);
        await new Promise((resolve) => setTimeout(resolve, 1));
        buf.copy(got, at, 0, length);
        inFlight--;
      },
      'test',
    );
    assert.ok(got.equals(content), `pieces of ${sizes.join(',')}: content in order`);
    assert.equal(most, 2, 'two writes overlap (one per buffer), never more');
  }

  let pending = 0;
  await assert.rejects(
    writeChunkedOverlapped(pieces([100_000]), content.length, [Buffer.alloc(65_536), Buffer.alloc(65_536)], async (_buf, _length) => {
      pending++;
      await new Promise((resolve) => setTimeout(resolve, 2));
      pending--;
      if (pending === 0) throw new Error('disk full');
    }, 'test'),
    /disk full/,
  );
  assert.equal(pending, 0, 'no write is still running when it throws');
  await assert.rejects(
    writeChunkedOverlapped(pieces([100_000]).slice(0, 5), content.length, [Buffer.alloc(65_536), Buffer.alloc(65_536)], async () => {
      pending++;
      await new Promise((resolve) => setTimeout(resolve, 2));
      pending--;
    }, 'test'),
    /content is 500000 bytes, expected 3000003/,
  );
  assert.equal(pending, 0, 'no write is still running when it throws');
});
