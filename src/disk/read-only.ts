/**
 * Reading the resin-data file system of a disk image without changing a byte of it:
 * libext2fs may write while mounted (superblock state, mount counts), so every write
 * goes to an in-memory overlay that is thrown away.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mountExt2, umountExt2, errnoCode, type Ext2Disk, type Ext2Fs } from '../ext4/ext2fs-binding.js';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../ext4/inode.js';
import type { StoreReader } from '../sources/store-reader.js';
import { inspectBalenaImage, DATA_LABEL } from './disk-target.js';

const UNIT = 512;

/** Reads from the file; writes land in memory only. */
class OverlayDisk implements Ext2Disk {
  private readonly written = new Map<number, Buffer>();

  constructor(private readonly fd: number) {}

  async read(buf: Buffer, bufOffset: number, length: number, position: number): Promise<{ bytesRead: number; buffer: Buffer }> {
    fs.readSync(this.fd, buf, bufOffset, length, position);
    if (this.written.size > 0 && position % UNIT === 0 && length % UNIT === 0) {
      for (let i = 0; i < length / UNIT; i++) this.written.get(position / UNIT + i)?.copy(buf, bufOffset + i * UNIT);
    } else if (this.written.size > 0) {
      for (const [unit, data] of this.written) {
        const start = unit * UNIT;
        if (start + UNIT <= position || start >= position + length) continue;
        const from = Math.max(start, position);
        const to = Math.min(start + UNIT, position + length);
        data.copy(buf, bufOffset + from - position, from - start, to - start);
      }
    }
    return { bytesRead: length, buffer: buf };
  }

  async write(buf: Buffer, bufOffset: number, length: number, position: number): Promise<{ bytesWritten: number; buffer: Buffer }> {
    const first = Math.floor(position / UNIT);
    const last = Math.floor((position + length - 1) / UNIT);
    for (let u = first; u <= last; u++) {
      let data = this.written.get(u);
      if (!data) {
        data = Buffer.alloc(UNIT);
        fs.readSync(this.fd, data, 0, UNIT, u * UNIT);
        this.written.set(u, data);
      }
      const from = Math.max(u * UNIT, position);
      const to = Math.min((u + 1) * UNIT, position + length);
      buf.copy(data, from - u * UNIT, bufOffset + from - position, bufOffset + to - position);
    }
    return { bytesWritten: length, buffer: buf };
  }

  async discard(): Promise<void> {
    /* nothing reaches the file */
  }

  async flush(): Promise<void> {
    /* nothing reaches the file */
  }
}

/** A StoreReader over resin-data inside a balenaOS disk image, opened read-only. */
export class DiskImageReader implements StoreReader {
  readonly description: string;

  private constructor(
    private readonly fd: number,
    private readonly ext: Ext2Fs,
    imagePath: string,
  ) {
    this.description = `${path.basename(imagePath)}:${DATA_LABEL}`;
  }

  static async open(imagePath: string): Promise<DiskImageReader> {
    const { data } = inspectBalenaImage(imagePath);
    const fd = fs.openSync(imagePath, 'r');
    try {
      const ext = await mountExt2(new OverlayDisk(fd), data.offset);
      return new DiskImageReader(fd, ext, imagePath);
    } catch (e) {
      fs.closeSync(fd);
      throw new Error(`${imagePath}: cannot read ${DATA_LABEL} (${(e as Error).message})`);
    }
  }

  private abs(p: string): string {
    return '/' + p;
  }

  async readFile(p: string): Promise<Buffer | undefined> {
    const fsp = this.ext.promises;
    let st;
    try {
      st = await fsp.lstat(this.abs(p));
    } catch (e) {
      if (['ENOENT', 'ENOTDIR'].includes(errnoCode(e) ?? '')) return undefined;
      throw e;
    }
    if ((st.mode & S_IFMT) !== S_IFREG) return undefined;
    const { openExt2, O_RDONLY } = await import('../ext4/ext2fs-binding.js');
    const fd = await openExt2(this.ext, this.abs(p), O_RDONLY, 0);
    try {
      const out = Buffer.alloc(st.size);
      let off = 0;
      while (off < st.size) {
        const n = Math.min(1 << 20, st.size - off);
        const { bytesRead } = await fsp.read(fd, out, off, n, off);
        if (bytesRead === 0) break;
        off += bytesRead;
      }
      return out.subarray(0, off);
    } finally {
      await fsp.close(fd);
    }
  }

  async readdir(p: string): Promise<string[] | undefined> {
    try {
      return (await this.ext.promises.readdir(this.abs(p))).filter((n) => n !== '.' && n !== '..');
    } catch (e) {
      if (['ENOENT', 'ENOTDIR'].includes(errnoCode(e) ?? '')) return undefined;
      throw e;
    }
  }

  async kindOf(p: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined> {
    try {
      const m = (await this.ext.promises.lstat(this.abs(p))).mode & S_IFMT;
      return m === S_IFREG ? 'file' : m === S_IFDIR ? 'directory' : m === S_IFLNK ? 'symlink' : 'other';
    } catch {
      return undefined;
    }
  }

  async close(): Promise<void> {
    try {
      await umountExt2(this.ext);
    } finally {
      fs.closeSync(this.fd);
    }
  }
}
