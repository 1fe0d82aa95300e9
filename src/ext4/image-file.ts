import * as fs from 'node:fs';
import { promisify } from 'node:util';

const writeAsync = promisify(fs.write);

/** Writes shorter than this may be gathered (inode table slots, small files' blocks, directory blocks). */
const GATHER_MAX = 64 * 1024;
/** Bytes one gathered run may grow to before it is written out. */
const RUN_CAP = 512 * 1024;
/** Runs gathered at once: a small file's data, its inode and its directory interleave. */
const RUNS = 8;

/** Consecutive bytes waiting to be written at `position`. */
interface GatheredRun {
  position: number;
  length: number;
  buf: Buffer;
  /** Tick of the last write into it: the least recently used run is written out first. */
  used: number;
}

/**
 * Positional, synchronous reads and writes on an image file. Synchronous on
 * purpose: record edits are many tiny I/Os where the async machinery costs more
 * than the I/O (see shared/docs/ext4-without-mounting.md, "Speed").
 *
 * With `gather`, small writes are held in a few runs of consecutive bytes and written out
 * as one pwrite each (tens of thousands of 256-byte inode slots and 4 KiB blocks otherwise
 * cost a system call each). Every read and large write first writes out the runs it
 * overlaps, so what is read is always what was written; sync() and close() write them all.
 */
export class ImageFile {
  private readonly runs: GatheredRun[] = [];
  /** Buffers of runs written out, for the next runs. */
  private readonly spare: Buffer[] = [];
  private tick = 0;

  private constructor(readonly path: string, readonly fd: number, readonly writable: boolean, private readonly gather: boolean) {}

  static open(path: string, writable: boolean, options: { gather?: boolean } = {}): ImageFile {
    return new ImageFile(path, fs.openSync(path, writable ? 'r+' : 'r'), writable, writable && options.gather === true);
  }

  read(position: number, length: number): Buffer {
    const buf = Buffer.alloc(length);
    this.readInto(buf, 0, length, position);
    return buf;
  }

  /** Reads exactly `length` bytes (zeros past the end of the file). */
  readInto(buf: Uint8Array, offset: number, length: number, position: number): number {
    this.flushOverlapping(position, length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(this.fd, buf, offset + done, length - done, position + done);
      if (n === 0) {
        buf.fill(0, offset + done, offset + length);
        break;
      }
      done += n;
    }
    return done;
  }

  write(position: number, data: Uint8Array, offset = 0, length = data.length - offset): void {
    if (this.gather && length < GATHER_MAX && this.gathered(position, data, offset, length)) return;
    this.flushOverlapping(position, length);
    this.writeNow(position, data, offset, length);
  }

  /**
   * The same write through the thread pool: the caller may go on (checksumming, copying the
   * next chunk) while the kernel copies this one. `data` must not change until it resolves.
   */
  async writeLater(position: number, data: Uint8Array, offset = 0, length = data.length - offset): Promise<void> {
    this.flushOverlapping(position, length);
    let done = 0;
    while (done < length) {
      const { bytesWritten } = await writeAsync(this.fd, data, offset + done, length - done, position + done);
      done += bytesWritten;
    }
  }

  size(): number {
    this.flush();
    return fs.fstatSync(this.fd).size;
  }

  /** Writes out every gathered run. */
  flush(): void {
    for (const r of [...this.runs]) this.flushRun(r);
  }

  sync(): void {
    this.flush();
    fs.fsyncSync(this.fd);
  }

  close(): void {
    try {
      this.flush();
    } finally {
      fs.closeSync(this.fd);
    }
  }

  private writeNow(position: number, data: Uint8Array, offset: number, length: number): void {
    let done = 0;
    while (done < length) {
      done += fs.writeSync(this.fd, data, offset + done, length - done, position + done);
    }
  }

  /** Takes a small write into a run: inside one, appended to one, or a new one. */
  private gathered(position: number, data: Uint8Array, offset: number, length: number): boolean {
    const end = position + length;
    let target: GatheredRun | undefined;
    for (const r of this.runs) {
      const rEnd = r.position + r.length;
      if (position >= r.position && end <= rEnd) {
        target = r;
        break;
      }
      if (position === rEnd && r.length + length <= RUN_CAP && !target) target = r;
    }
    // Any other run it overlaps goes out first, so that runs never overlap each other.
    for (const r of [...this.runs]) {
      if (r !== target && position < r.position + r.length && r.position < end) this.flushRun(r);
    }
    if (!target) {
      if (this.runs.length >= RUNS) {
        let oldest = this.runs[0] as GatheredRun;
        for (const r of this.runs) if (r.used < oldest.used) oldest = r;
        this.flushRun(oldest);
      }
      target = { position, length: 0, buf: this.spare.pop() ?? Buffer.allocUnsafe(RUN_CAP), used: 0 };
      this.runs.push(target);
    }
    Buffer.from(data.buffer, data.byteOffset + offset, length).copy(target.buf, position - target.position);
    target.length = Math.max(target.length, end - target.position);
    target.used = ++this.tick;
    return true;
  }

  private flushOverlapping(position: number, length: number): void {
    if (this.runs.length === 0) return;
    const end = position + length;
    for (const r of [...this.runs]) {
      if (position < r.position + r.length && r.position < end) this.flushRun(r);
    }
  }

  private flushRun(r: GatheredRun): void {
    this.runs.splice(this.runs.indexOf(r), 1);
    this.writeNow(r.position, r.buf, 0, r.length);
    this.spare.push(r.buf);
  }
}
