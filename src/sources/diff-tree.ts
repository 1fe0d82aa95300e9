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
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { fsName, nameFromBytes, type EntryKind, type LayerEntry, type LayerItem } from '../layer/entry.js';
import { listXattrs } from '../fsx/index.js';

/** Bytes per read of file content: large sequential reads, never the whole file. */
const CHUNK = 1024 * 1024;
/**
 * Files up to this size are read whole, with synchronous calls, by the walker (in its worker
 * thread); larger ones are streamed in CHUNK reads when consumed. Synchronous calls because
 * for small files a thread-pool round trip per call costs more than the call. (Reading small
 * files ahead in the thread pool was measured too: more CPU, no faster on 2 cores.)
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
      yield readWhole(this.file, this.size);
      return;
    }
    const handle = await fs.open(fsName(this.file), constants.O_RDONLY | constants.O_NOFOLLOW);
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

  async abandon(): Promise<void> {
    if (this.iterator) await this.iterator.return(undefined);
  }
}

/** A symlink's target as a name (bytes kept, src/layer/entry.ts). */
function readlinkName(file: string): string {
  return nameFromBytes(readlinkSync(fsName(file), { encoding: 'buffer' }));
}

interface Frame {
  abs: string;
  /** '' for the layer root, else the directory's layer-relative path. */
  rel: string;
  names: string[];
  next: number;
}

/** The names in a directory in byte order (bytes kept, src/layer/entry.ts). */
function sortedNames(dir: string): string[] {
  const raw = readdirSync(fsName(dir), { encoding: 'buffer' });
  raw.sort(Buffer.compare);
  return raw.map((name) => nameFromBytes(name));
}

/** One entry as the walker produces it: small files carry their whole content. */
export interface WalkedItem {
  entry: LayerEntry;
  /** Absolute path (large regular files are read from it when consumed). */
  abs: string;
  /** The content of a regular file of at most SMALL_FILE bytes. */
  data?: Uint8Array;
}

/**
 * The synchronous walk behind readDiffTree, in batches: pre-order, names in byte order,
 * hard links resolved to the first name seen. Runs in a worker thread (diff-tree-worker.ts),
 * so that reading the source and writing the target use two cores, like `tar | tar`.
 */
export class DiffTreeWalker {
  private readonly firstPath = new Map<string, string>();
  private stack: Frame[] | undefined;
  private rootDone = false;

  constructor(private readonly root: string) {}

  private item(abs: string, rel: string, st: BigIntStats): WalkedItem {
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
      const first = this.firstPath.get(key);
      // A later name of an inode already yielded: its data and attributes are the first one's.
      if (first !== undefined) return { abs, entry: { ...base, kind: 'hardlink', size: 0, linkTarget: first, xattrs: [] } };
      this.firstPath.set(key, rel);
    }
    const entry: LayerEntry = { ...base, kind, size: 0, xattrs: listXattrs(fsName(abs)) };
    switch (kind) {
      case 'file':
        entry.size = Number(st.size);
        return entry.size > 0 && entry.size <= SMALL_FILE ? { abs, entry, data: readWhole(abs, entry.size) } : { abs, entry };
      case 'symlink':
        entry.linkTarget = readlinkName(abs);
        return { abs, entry };
      case 'char-device':
      case 'block-device': {
        const { major, minor } = deviceNumbers(st.rdev);
        entry.devMajor = major;
        entry.devMinor = minor;
        return { abs, entry };
      }
      default:
        return { abs, entry };
    }
  }

  /** The next entries (at most maxEntries, and stopping once maxBytes of content are held); [] at the end. */
  next(maxEntries: number, maxBytes: number): WalkedItem[] {
    const out: WalkedItem[] = [];
    let bytes = 0;
    if (!this.rootDone) {
      this.rootDone = true;
      let rootSt: BigIntStats;
      try {
        rootSt = lstatSync(fsName(this.root), { bigint: true });
      } catch (err) {
        throw new Error(`cannot read the layer directory ${this.root}: ${(err as Error).message}`);
      }
      if (!rootSt.isDirectory()) throw new Error(`${this.root} is not a directory (expected a layer's diff/ directory)`);
      out.push(this.item(this.root, '.', rootSt));
      this.stack = [{ abs: this.root, rel: '', names: sortedNames(this.root), next: 0 }];
    }
    const stack = this.stack as Frame[];
    while (stack.length > 0 && out.length < maxEntries && bytes < maxBytes) {
      const frame = stack[stack.length - 1];
      if (frame.next >= frame.names.length) {
        stack.pop();
        continue;
      }
      const name = frame.names[frame.next++];
      const abs = `${frame.abs}/${name}`;
      const rel = frame.rel === '' ? name : `${frame.rel}/${name}`;
      const it = this.item(abs, rel, lstatSync(fsName(abs), { bigint: true }));
      out.push(it);
      bytes += it.data?.length ?? 0;
      if (it.entry.kind === 'directory') stack.push({ abs, rel, names: sortedNames(abs), next: 0 });
    }
    return out;
  }
}

function readWhole(file: string, size: number): Buffer {
  const buf = Buffer.allocUnsafe(size);
  const fd = openSync(fsName(file), constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    let done = 0;
    while (done < size) {
      const n = readSync(fd, buf, done, size - done, null);
      if (n === 0) throw new Error(`${file} shrank while being read (${done} of ${size} bytes): is something writing to this layer?`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return buf;
}

/** Entries and content bytes per batch a worker sends; two batches are asked for ahead. */
const BATCH_ENTRIES = 512;
const BATCH_BYTES = 4 << 20;

type WorkerReply = { id: number; items: WalkedItem[]; error?: undefined } | { id: number; error: string; items?: undefined };

/**
 * Workers that finished a walk, kept for the next one (starting a worker costs ~30 ms, which
 * an image of many small layers would pay per layer). Idle workers are unref'd, so they never
 * keep the process alive.
 */
const idleWorkers: Worker[] = [];
let sessions = 0;

/** Batches from a walker in a worker thread, two asked for ahead of the consumer. */
async function* workerBatches(root: string): AsyncGenerator<WalkedItem[]> {
  const worker = idleWorkers.pop() ?? new Worker(path.join(__dirname, 'diff-tree-worker.js'));
  worker.ref();
  const id = ++sessions;
  const replies: WorkerReply[] = [];
  let wake: (() => void) | undefined;
  let failure: Error | undefined;
  let finished = false;
  const onMessage = (m: WorkerReply): void => {
    if (m.id !== id) return; // a late answer to a 'more' of an earlier walk
    replies.push(m);
    wake?.();
  };
  const onError = (e: Error): void => {
    failure = e;
    wake?.();
  };
  const onExit = (code: number): void => {
    failure ??= new Error(`the reader of ${root} stopped (exit code ${code})`);
    wake?.();
  };
  worker.on('message', onMessage);
  worker.on('error', onError);
  worker.on('exit', onExit);
  try {
    worker.postMessage({ start: { root, maxEntries: BATCH_ENTRIES, maxBytes: BATCH_BYTES }, id });
    worker.postMessage({ id });
    worker.postMessage({ id });
    for (;;) {
      while (replies.length === 0) {
        if (failure) throw failure;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
      const reply = replies.shift() as WorkerReply;
      if (reply.error !== undefined) throw new Error(reply.error);
      if (reply.items.length === 0) {
        finished = true;
        return;
      }
      worker.postMessage({ id });
      yield reply.items;
    }
  } finally {
    worker.off('message', onMessage);
    worker.off('error', onError);
    worker.off('exit', onExit);
    if (finished && !failure) {
      worker.unref();
      idleWorkers.push(worker);
    } else {
      // Stopped midway (or failed): its walk state is of no use to anyone.
      await worker.terminate();
    }
  }
}

/** The same batches in this thread (reading and writing then share one core). */
async function* localBatches(root: string): AsyncGenerator<WalkedItem[]> {
  const walker = new DiffTreeWalker(root);
  for (;;) {
    const items = walker.next(BATCH_ENTRIES, BATCH_BYTES);
    if (items.length === 0) return;
    yield items;
  }
}

/**
 * Walks `root` (a layer's diff/ directory) and yields every entry; see the file comment for
 * the order. The walk and the reading of small files run in a worker thread unless
 * `inThread` is set; files over SMALL_FILE bytes are streamed here when consumed.
 */
export async function* readDiffTree(root: string, options: { inThread?: boolean } = {}): AsyncIterable<LayerItem> {
  const batches = options.inThread || process.env.TRANSPLANT_READ_IN_THREAD === '1' ? localBatches(root) : workerBatches(root);
  for await (const items of batches) {
    for (const { entry, abs, data } of items) {
      // Structured cloning turns Buffers into plain Uint8Arrays: view them as Buffers again.
      for (const x of entry.xattrs) x.value = asBuffer(x.value);
      if (entry.kind !== 'file') {
        yield { entry };
        continue;
      }
      const content = data ? new Whole(asBuffer(data)) : new FileContent(abs, entry.size);
      try {
        yield { entry, content };
      } finally {
        // The consumer asked for the next entry (or stopped): never leave a file open behind it.
        if (content instanceof FileContent) await content.abandon();
      }
    }
  }
}

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** Content already read whole. */
class Whole implements AsyncIterable<Buffer> {
  constructor(private readonly data: Buffer) {}
  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    yield this.data;
  }
}
