import * as fs from 'node:fs';

/**
 * Positional, synchronous reads and writes on an image file. Synchronous on
 * purpose: record edits are many tiny I/Os where the async machinery costs more
 * than the I/O (see shared/docs/ext4-without-mounting.md, "Speed").
 */
export class ImageFile {
  private constructor(readonly path: string, readonly fd: number, readonly writable: boolean) {}

  static open(path: string, writable: boolean): ImageFile {
    return new ImageFile(path, fs.openSync(path, writable ? 'r+' : 'r'), writable);
  }

  read(position: number, length: number): Buffer {
    const buf = Buffer.alloc(length);
    this.readInto(buf, 0, length, position);
    return buf;
  }

  /** Reads exactly `length` bytes (zeros past the end of the file). */
  readInto(buf: Uint8Array, offset: number, length: number, position: number): number {
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
    let done = 0;
    while (done < length) {
      done += fs.writeSync(this.fd, data, offset + done, length - done, position + done);
    }
  }

  size(): number {
    return fs.fstatSync(this.fd).size;
  }

  sync(): void {
    fs.fsyncSync(this.fd);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
