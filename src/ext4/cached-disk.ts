import * as fs from 'node:fs';
import type { Ext2Disk } from './ext2fs-binding.js';

/** Cache unit: the smallest ext4 block size; libext2fs reads and writes whole blocks. */
const UNIT = 1024;

/**
 * The disk the ext2fs binding runs on: synchronous positional I/O on one file
 * descriptor behind a bounded write-back cache of 1 KiB units.
 *
 * Why: the binding's I/O layer has no cache, and libext2fs writes every file block
 * twice and rewrites the inode-table block after each one (seen by tracing the calls),
 * so without a cache a 1 KiB-block file system costs ~8 system calls per block. The
 * cache holds at most `capacity` bytes (never a whole layer); the units loaded first are
 * written out in position order, contiguous runs in one call. `flush()` writes every
 * dirty unit; the binding calls it at unmount, and it must be called before the file is
 * read by anything else.
 */
export class CachedFileDisk implements Ext2Disk {
  /** unit index -> data; Map order is first-loaded first (FIFO eviction: re-ordering a large Map on every hit costs more than it saves). */
  private readonly units = new Map<number, { data: Buffer; dirty: boolean }>();
  private readonly maxUnits: number;

  constructor(private readonly fd: number, capacity = 16 * 1024 * 1024) {
    this.maxUnits = Math.floor(capacity / UNIT);
  }

  async read(buf: Buffer, bufOffset: number, length: number, position: number): Promise<{ bytesRead: number; buffer: Buffer }> {
    if (this.maxUnits === 0 || position % UNIT !== 0 || length % UNIT !== 0) {
      this.flushSync();
      this.readRaw(buf, bufOffset, length, position);
      return { bytesRead: length, buffer: buf };
    }
    const first = position / UNIT;
    const n = length / UNIT;
    let missStart = -1;
    for (let i = 0; i <= n; i++) {
      const u = i < n ? this.units.get(first + i) : undefined;
      if (i < n && !u) {
        if (missStart < 0) missStart = i;
        continue;
      }
      if (missStart >= 0) {
        // read the run of missing units in one call and keep them (clean)
        const off = bufOffset + missStart * UNIT;
        const len = (i - missStart) * UNIT;
        this.readRaw(buf, off, len, position + missStart * UNIT);
        for (let k = missStart; k < i; k++) {
          this.put(first + k, Buffer.from(buf.subarray(bufOffset + k * UNIT, bufOffset + (k + 1) * UNIT)), false);
        }
        missStart = -1;
      }
      if (u) {
        u.data.copy(buf, bufOffset + i * UNIT);
      }
    }
    return { bytesRead: length, buffer: buf };
  }

  async write(buf: Buffer, bufOffset: number, length: number, position: number): Promise<{ bytesWritten: number; buffer: Buffer }> {
    if (this.maxUnits === 0 || position % UNIT !== 0 || length % UNIT !== 0) {
      this.flushSync();
      this.dropRange(position, length);
      this.writeRaw(buf, bufOffset, length, position);
      return { bytesWritten: length, buffer: buf };
    }
    const first = position / UNIT;
    for (let i = 0; i < length / UNIT; i++) {
      const src = buf.subarray(bufOffset + i * UNIT, bufOffset + (i + 1) * UNIT);
      const u = this.units.get(first + i);
      if (u) {
        src.copy(u.data);
        u.dirty = true;
      } else {
        this.put(first + i, Buffer.from(src), true);
      }
    }
    return { bytesWritten: length, buffer: buf };
  }

  async discard(): Promise<void> {}

  async flush(): Promise<void> {
    this.flushSync();
  }

  /** Writes every dirty unit (in position order, contiguous runs together). */
  flushSync(): void {
    const dirty = [...this.units.entries()].filter(([, u]) => u.dirty).sort((a, b) => a[0] - b[0]);
    this.writeUnits(dirty);
  }

  private put(index: number, data: Buffer, dirty: boolean): void {
    this.units.set(index, { data, dirty });
    if (this.units.size > this.maxUnits) this.evict();
  }

  /** Drops the oldest quarter of the cache, writing its dirty units first. */
  private evict(): void {
    const count = Math.floor(this.maxUnits / 4);
    const victims: Array<[number, { data: Buffer; dirty: boolean }]> = [];
    for (const e of this.units) {
      victims.push(e);
      if (victims.length >= count) break;
    }
    this.writeUnits(victims.filter(([, u]) => u.dirty).sort((a, b) => a[0] - b[0]));
    for (const [i] of victims) this.units.delete(i);
  }

  private writeUnits(sorted: Array<[number, { data: Buffer; dirty: boolean }]>): void {
    let i = 0;
    while (i < sorted.length) {
      let j = i + 1;
      while (j < sorted.length && sorted[j][0] === sorted[j - 1][0] + 1 && j - i < 1024) j++;
      const run = sorted.slice(i, j);
      const data = run.length === 1 ? run[0][1].data : Buffer.concat(run.map(([, u]) => u.data));
      this.writeRaw(data, 0, data.length, run[0][0] * UNIT);
      for (const [, u] of run) u.dirty = false;
      i = j;
    }
  }

  private dropRange(position: number, length: number): void {
    const first = Math.floor(position / UNIT);
    const last = Math.ceil((position + length) / UNIT);
    for (let k = first; k < last; k++) this.units.delete(k);
  }

  private readRaw(buf: Buffer, off: number, length: number, position: number): void {
    let done = 0;
    while (done < length) {
      const n = fs.readSync(this.fd, buf, off + done, length - done, position + done);
      if (n === 0) {
        buf.fill(0, off + done, off + length);
        break;
      }
      done += n;
    }
  }

  private writeRaw(buf: Buffer, off: number, length: number, position: number): void {
    let done = 0;
    while (done < length) done += fs.writeSync(this.fd, buf, off + done, length - done, position + done);
  }
}
