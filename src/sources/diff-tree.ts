/**
 * Reading a layer's `diff/` directory on the host as LayerItems, with every attribute
 * overlay2 keeps (see shared/docs/engine-on-disk.md): type, mode with setuid/setgid/
 * sticky, 32-bit owners, ns times, xattrs (`trusted.overlay.opaque`, `security.capability`,
 * …), symlink targets, device numbers, and hard links within the layer.
 *
 * Order: '.' first, then pre-order (a directory before its contents), names of each
 * directory sorted by byte order. Reading `trusted.*` xattrs needs root.
 */
import { closeSync, constants, lstatSync, openSync, readSync, readdirSync, readlinkSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';
import type { EntryKind, LayerEntry, LayerItem } from '../layer/entry.js';
import { listXattrs } from '../fsx/index.js';

/** Bytes per read of file content: large sequential reads, never the whole file. */
const CHUNK = 1024 * 1024;
/**
 * Files up to this size are read whole with synchronous calls (open, read, close on the main
 * thread): for small files a thread-pool round trip per call costs more than the call. The
 * tree walk itself (readdir, lstat, readlink) is synchronous for the same reason. (Reading
 * small files ahead in the thread pool was measured too: more CPU, no faster on 2 cores.)
 */
const SMALL_FILE = 256 * 1024;

/**
 * Major/minor of a Linux dev_t (glibc sysdeps/unix/sysv/linux/sys/sysmacros.h,
 * gnu_dev_major/gnu_dev_minor); macOS packs 8 bits of major over 24 of minor (<sys/types.h>).
 */
export function deviceNumbers(rdev: bigint): { major: number; minor: number } {
  if (process.platform === 'darwin') {
    return { major: Number((rdev >> 24n) & 0xffn), minor: Number(rdev & 0xffffffn) };
  }
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return { major: Number(major & 0xffffffffn), minor: Number(minor & 0xffffffffn) };
}

function kindOf(st: BigIntStats, file: string): Exclude<EntryKind, 'hardlink'> {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char-device';
  if (st.isBlockDevice()) return 'block-device';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) {
    throw new Error(`${file} is a socket; sockets cannot be stored in a layer: remove it from the layer directory first`);
  }
  throw new Error(`${file} has an unknown file type (mode ${st.mode.toString(8)})`);
}

/**
 * The content of one regular file: opened on first iteration, read in CHUNK-sized
 * reads, exactly `size` bytes. `abandon()` closes it if the consumer stopped early.
 */
class FileContent implements AsyncIterable<Buffer> {
  private iterator: AsyncGenerator<Buffer> | undefined;

  constructor(
    private readonly file: string,
    private readonly size: number,
  ) {}

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    if (this.iterator) throw new Error(`${this.file}: content can only be read once`);
    this.iterator = this.read();
    return this.iterator;
  }

  private async *read(): AsyncGenerator<Buffer> {
    if (this.size === 0) return;
    if (this.size <= SMALL_FILE) {
      yield this.readSmall();
      return;
    }
    const handle = await fs.open(this.file, constants.O_RDONLY | constants.O_NOFOLLOW);
    // Double buffering: the next read is in flight while the consumer writes this chunk.
    const readAt = async (pos: number): Promise<Buffer> => {
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, this.size - pos));
      let done = 0;
      while (done < buf.length) {
        const { bytesRead } = await handle.read(buf, done, buf.length - done, pos + done);
        if (bytesRead === 0) {
          throw new Error(`${this.file} shrank while being read (${pos + done} of ${this.size} bytes): is something writing to this layer?`);
        }
        done += bytesRead;
      }
      return buf;
    };
    let pending: Promise<Buffer> | undefined;
    try {
      let pos = 0;
      let next: Promise<Buffer> = readAt(0);
      pending = next;
      while (pos < this.size) {
        const buf: Buffer = await next;
        pending = undefined;
        pos += buf.length;
        if (pos < this.size) pending = next = readAt(pos);
        yield buf;
      }
    } finally {
      // Never close under a read still in flight (the consumer stopped early).
      if (pending) await pending.catch(() => undefined);
      await handle.close();
    }
  }

  private readSmall(): Buffer {
    const buf = Buffer.allocUnsafe(this.size);
    const fd = openSync(this.file, constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      let done = 0;
      while (done < this.size) {
        const n = readSync(fd, buf, done, this.size - done, null);
        if (n === 0) {
          throw new Error(`${this.file} shrank while being read (${done} of ${this.size} bytes): is something writing to this layer?`);
        }
        done += n;
      }
    } finally {
      closeSync(fd);
    }
    return buf;
  }

  async abandon(): Promise<void> {
    if (this.iterator) await this.iterator.return(undefined);
  }
}

function readlinkUtf8(file: string): string {
  const raw = readlinkSync(file, { encoding: 'buffer' });
  const text = raw.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(raw)) {
    throw new Error(`${file}: its symlink target is not valid UTF-8 (${raw.toString('hex')} in hex); such targets are not supported`);
  }
  return text;
}

interface Frame {
  abs: string;
  /** '' for the layer root, else the directory's layer-relative path. */
  rel: string;
  names: string[];
  next: number;
}

function sortedNames(dir: string): string[] {
  const raw = readdirSync(dir, { encoding: 'buffer' });
  raw.sort(Buffer.compare);
  return raw.map((name) => {
    const text = name.toString('utf8');
    if (!Buffer.from(text, 'utf8').equals(name)) {
      throw new Error(`${dir}: a file name in it is not valid UTF-8 (${name.toString('hex')} in hex); such names are not supported`);
    }
    return text;
  });
}

/** Walks `root` (a layer's diff/ directory) and yields every entry; see the file comment for the order. */
export async function* readDiffTree(root: string): AsyncIterable<LayerItem> {
  let rootSt: BigIntStats;
  try {
    rootSt = await fs.lstat(root, { bigint: true });
  } catch (err) {
    throw new Error(`cannot read the layer directory ${root}: ${(err as Error).message}`);
  }
  if (!rootSt.isDirectory()) throw new Error(`${root} is not a directory (expected a layer's diff/ directory)`);

  /** dev:ino of multiply-linked non-directories → the first layer path seen. */
  const firstPath = new Map<string, string>();

  const entryOf = (abs: string, rel: string, st: BigIntStats): { entry: LayerEntry; content?: FileContent } => {
    const kind = kindOf(st, abs);
    const base = {
      path: rel,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtime: st.mtimeNs,
      atime: st.atimeNs,
    };
    if (kind !== 'directory' && st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      const first = firstPath.get(key);
      // A later name of an inode already yielded: its data and attributes are the first one's.
      if (first !== undefined) return { entry: { ...base, kind: 'hardlink', size: 0, linkTarget: first, xattrs: [] } };
      firstPath.set(key, rel);
    }
    const entry: LayerEntry = { ...base, kind, size: 0, xattrs: listXattrs(abs) };
    switch (kind) {
      case 'file':
        entry.size = Number(st.size);
        return { entry, content: new FileContent(abs, entry.size) };
      case 'symlink':
        return { entry };
      case 'char-device':
      case 'block-device': {
        const { major, minor } = deviceNumbers(st.rdev);
        entry.devMajor = major;
        entry.devMinor = minor;
        return { entry };
      }
      default:
        return { entry };
    }
  };

  const rootItem = entryOf(root, '.', rootSt);
  yield { entry: rootItem.entry };

  const stack: Frame[] = [{ abs: root, rel: '', names: sortedNames(root), next: 0 }];
  while (stack.length > 0) {
    const frame = stack[stack.length - 1];
    if (frame.next >= frame.names.length) {
      stack.pop();
      continue;
    }
    const name = frame.names[frame.next++];
    const abs = `${frame.abs}/${name}`;
    const rel = frame.rel === '' ? name : `${frame.rel}/${name}`;
    const st = lstatSync(abs, { bigint: true });
    const item = entryOf(abs, rel, st);
    if (item.entry.kind === 'symlink') item.entry.linkTarget = readlinkUtf8(abs);
    try {
      yield item.content ? { entry: item.entry, content: item.content } : { entry: item.entry };
    } finally {
      // The consumer asked for the next entry (or stopped): never leave a file open behind it.
      await item.content?.abandon();
    }
    if (item.entry.kind === 'directory') {
      stack.push({ abs, rel, names: sortedNames(abs), next: 0 });
    }
  }
}
