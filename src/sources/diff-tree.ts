/**
 * Reading a layer's `diff/` directory on the host as LayerItems, with every attribute
 * overlay2 keeps (see shared/docs/engine-on-disk.md): type, mode with setuid/setgid/
 * sticky, 32-bit owners, ns times, xattrs (`trusted.overlay.opaque`, `security.capability`,
 * …), symlink targets, device numbers, and hard links within the layer.
 *
 * Order: '.' first, then pre-order (a directory before its contents), names of each
 * directory sorted by byte order. Reading `trusted.*` xattrs needs root.
 */
import { closeSync, read, readSync, readdirSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import { fsName, nameFromBytes, type EntryKind, type LayerEntry, type LayerItem } from '../layer/entry.js';
import { closeFd, fstatOf, listXattrs, listXattrsFd, lstatAt, willNeed, type EntryStat } from '../fsx/index.js';
import { childPath, closeDir, openBelowRoot, openRegularBelow, openRegularChecked, openSubdir, type OpenDir } from '../fsx/beneath.js';

const readAsync = promisify(read);

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

function kindOf(st: EntryStat, file: string): Exclude<EntryKind, 'hardlink'> {
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
    /** The layer's diff/ directory, held open by readDiffTree. */
    private readonly diff: OpenDir,
    /** Layer-relative path. */
    private readonly rel: string,
    private readonly size: number,
  ) {}

  private get file(): string {
    return `${this.diff.path}/${this.rel}`;
  }

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    if (this.iterator) throw new Error(`${this.file}: content can only be read once`);
    this.iterator = this.read();
    return this.iterator;
  }

  private async *read(): AsyncGenerator<Buffer> {
    if (this.size === 0) return;
    // Opened again below diff/, never through a symlink, and only as a regular file.
    const opened = openRegularBelow(this.diff, fsName(this.rel), this.diff.path);
    if (!opened) throw new Error(`${this.file} disappeared while being read: is something writing to this layer?`);
    const fd = opened.fd;
    // Double buffering: the next read is in flight while the consumer writes this chunk.
    const readAt = async (pos: number): Promise<Buffer> => {
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, this.size - pos));
      let done = 0;
      while (done < buf.length) {
        const { bytesRead } = await readAsync(fd, buf, done, buf.length - done, pos + done);
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
      closeSync(fd);
    }
  }

  async abandon(): Promise<void> {
    if (this.iterator) await this.iterator.return(undefined);
  }
}

/** A symlink's target as a name (bytes kept, src/layer/entry.ts). */
function readlinkName(at: string | Buffer): string {
  return nameFromBytes(readlinkSync(at, { encoding: 'buffer' }));
}

interface Frame {
  /** The directory, held open while its entries are read. */
  dir: OpenDir;
  /** '' for the layer root, else the directory's layer-relative path. */
  rel: string;
  names: string[];
  next: number;
}

/** The names in a directory in byte order (bytes kept, src/layer/entry.ts). */
function sortedNames(dir: OpenDir): string[] {
  const raw = readdirSync(childPath(dir, '.'), { encoding: 'buffer' });
  raw.sort(Buffer.compare);
  return raw.map((name) => nameFromBytes(name));
}

/** One entry as the walker produces it: small files carry their whole content. */
export interface WalkedItem {
  entry: LayerEntry;
  /** The content of a regular file of at most SMALL_FILE bytes. */
  data?: Uint8Array;
}

/** An entry between the walker's two passes: a regular file is open, not yet read. */
interface Walking extends WalkedItem {
  opened?: { fd: number; shown: string };
}

/**
 * The synchronous walk behind readDiffTree, in batches: pre-order, names in byte order,
 * hard links resolved to the first name seen. Runs in a worker thread (diff-tree-worker.ts),
 * so that reading the source and writing the target use two cores, like `tar | tar`.
 */
export class DiffTreeWalker {
  private readonly firstPath = new Map<string, string>();
  private stack: Frame[] = [];
  private rootDone = false;
  /**
   * Where the small files of the batch being read go: one ArrayBuffer per batch, so a worker
   * hands the batch over by transferring it (no copy, and one allocation instead of one per file).
   */
  private arena: { buf: Buffer; used: number } | undefined;

  /**
   * `root` is the directory the user named (followed if a symlink: their choice); `rel`, the
   * diff/ directory below it, is opened one component at a time, never through a symlink,
   * and so is everything in it (fsx/beneath.ts).
   */
  constructor(
    private readonly root: string,
    private readonly rel: string = '',
  ) {}

  private get where(): string {
    return this.rel ? `${this.root}/${this.rel}` : this.root;
  }

  /**
   * One entry; `opened` is the entry itself when it is a directory the walk has opened. A
   * regular file comes back open (its xattrs and content are read by readOpened).
   */
  private item(dir: OpenDir, name: string, rel: string, st: EntryStat, opened?: OpenDir): Walking {
    const shown = `${dir.path}/${name}`;
    const kind = kindOf(st, shown);
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
      if (first !== undefined) return { entry: { ...base, kind: 'hardlink', size: 0, linkTarget: first, xattrs: [] } };
      this.firstPath.set(key, rel);
    }
    if (kind === 'file') {
      // Opened here, finished by readOpened once the batch's other files are opened too.
      const fd = openRegularChecked(dir, fsName(name), st, this.where);
      if (fd === undefined) throw new Error(`${shown} disappeared while being read: is something writing to this layer?`);
      const size = Number(st.size);
      // The kernel starts reading a small file's data now; with a whole batch asked for
      // before the first is read, a cold disk serves many reads at once (not one by one).
      if (size > 0 && size <= SMALL_FILE) willNeed(fd);
      return { entry: { ...base, kind, size, xattrs: [] }, opened: { fd, shown } };
    }
    const at = childPath(dir, fsName(name));
    const entry: LayerEntry = { ...base, kind, size: 0, xattrs: kind === 'directory' && opened ? listXattrsFd(opened.fd) : listXattrs(at) };
    switch (kind) {
      case 'symlink':
        entry.linkTarget = readlinkName(at);
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
  }

  /** `size` bytes of this batch's arena. */
  private space(size: number): Buffer {
    const a = this.arena as { buf: Buffer; used: number };
    const out = a.buf.subarray(a.used, a.used + size);
    a.used += size;
    return out;
  }

  /** The ArrayBuffer the small files of the last batch were read into (to transfer with it). */
  batchBuffer(): ArrayBuffer | undefined {
    return this.arena?.buf.buffer as ArrayBuffer | undefined;
  }

  /** A regular file's xattrs and (when small) content, from the descriptor item() opened; closes it. */
  private readOpened(w: Walking): WalkedItem {
    if (!w.opened) return w;
    const { fd, shown } = w.opened;
    w.opened = undefined;
    try {
      w.entry.xattrs = listXattrsFd(fd);
      const size = w.entry.size;
      return size > 0 && size <= SMALL_FILE ? { entry: w.entry, data: readWhole(fd, shown, size, this.space(size)) } : { entry: w.entry };
    } finally {
      closeFd(fd);
    }
  }

  /**
   * The next entries (at most maxEntries, and stopping once maxBytes of content are held); [] at
   * the end. Two passes: the tree walked and every file opened (and its reading started), then
   * each file read in order.
   */
  next(maxEntries: number, maxBytes: number): WalkedItem[] {
    const walked: Walking[] = [];
    try {
      this.walk(walked, maxEntries, maxBytes);
      return walked.map((w) => this.readOpened(w));
    } finally {
      // A failure midway: close what was opened and not read.
      for (const w of walked) if (w.opened) closeFd(w.opened.fd);
    }
  }

  private walk(out: Walking[], maxEntries: number, maxBytes: number): void {
    let bytes = 0;
    // The loop stops once maxBytes are held, so the last file read fits in what is past them.
    // (Pages of it never written are never touched: a batch of few small files costs little.)
    this.arena = { buf: Buffer.from(new ArrayBuffer(maxBytes + SMALL_FILE)), used: 0 };
    if (!this.rootDone) {
      this.rootDone = true;
      let dir: OpenDir | undefined;
      try {
        dir = openBelowRoot(this.root, this.rel, this.root);
      } catch (err) {
        throw new Error(`cannot read the layer directory ${this.where}: ${(err as Error).message}`);
      }
      if (!dir) throw new Error(`${this.where} is not a directory (expected a layer's diff/ directory)`);
      this.stack = [{ dir, rel: '', names: [], next: 0 }];
      out.push(this.item(dir, '.', '.', fstatOf(dir.fd), dir));
      this.stack[0].names = sortedNames(dir);
    }
    const stack = this.stack;
    let open = 0;
    while (stack.length > 0 && out.length < maxEntries && bytes < maxBytes && open < MAX_OPEN_FILES) {
      const frame = stack[stack.length - 1];
      if (frame.next >= frame.names.length) {
        stack.pop();
        closeDir(frame.dir);
        continue;
      }
      const name = frame.names[frame.next++];
      const rel = frame.rel === '' ? name : `${frame.rel}/${name}`;
      const st = lstatAt(frame.dir.fd, fsName(name));
      if (st.isDirectory()) {
        const dir = openSubdir(frame.dir, fsName(name), st, this.where);
        stack.push({ dir, rel, names: [], next: 0 });
        out.push(this.item(frame.dir, name, rel, st, dir));
        stack[stack.length - 1].names = sortedNames(dir);
        continue;
      }
      const it = this.item(frame.dir, name, rel, st);
      out.push(it);
      if (it.opened) {
        open++;
        if (it.entry.size <= SMALL_FILE) bytes += it.entry.size;
      }
    }
  }

  /** Closes the directories still open (a walk stopped midway, or failed). */
  close(): void {
    for (const f of this.stack.splice(0)) closeDir(f.dir);
  }
}

/** A small regular file whole, from its descriptor (openRegularChecked). */
function readWhole(fd: number, shown: string, size: number, buf: Buffer): Buffer {
  let done = 0;
  while (done < size) {
    const n = readSync(fd, buf, done, size - done, null);
    if (n === 0) throw new Error(`${shown} shrank while being read (${done} of ${size} bytes): is something writing to this layer?`);
    done += n;
  }
  return buf;
}

/**
 * Inodes and content bytes of a layer's diff/ (readdir and lstat only), every directory opened
 * as the walker opens them. Synchronous calls: for tens of thousands of tiny lstats a
 * thread-pool round trip each costs more than the call.
 */
export function countDiffTree(root: string, rel: string): { entries: number; bytes: number } {
  const top = openBelowRoot(root, rel, root);
  if (!top) throw new Error(`${root}/${rel} is not a directory (expected a layer's diff/ directory)`);
  let entries = 1;
  let bytes = 0;
  const seen = new Set<bigint>();
  const stack = [top];
  try {
    while (stack.length > 0) {
      const d = stack.pop() as OpenDir;
      try {
        for (const name of readdirSync(childPath(d, '.'), { encoding: 'buffer' })) {
          entries++;
          const st = lstatAt(d.fd, name);
          if (st.isDirectory()) stack.push(openSubdir(d, name, st, root));
          else if (st.isFile()) {
            if (st.nlink > 1n) {
              if (seen.has(st.ino)) continue;
              seen.add(st.ino);
            }
            bytes += Number(st.size);
          }
        }
      } finally {
        closeDir(d);
      }
    }
  } finally {
    for (const d of stack) closeDir(d);
  }
  return { entries, bytes };
}

/** Files a batch holds open between the walker's two passes (well below any descriptor limit). */
const MAX_OPEN_FILES = 256;

/** Entries and content bytes per batch a worker sends; two batches are asked for ahead. */
const BATCH_ENTRIES = 512;
const BATCH_BYTES = 4 << 20;

type WorkerReply =
  | { id: number; items: WalkedItem[]; error?: undefined; closed?: undefined }
  | { id: number; error: string; items?: undefined; closed?: undefined }
  | { id: number; closed: true; items?: undefined; error?: undefined };

/**
 * Workers that finished a walk, kept for the next one (starting a worker costs ~30 ms, which
 * an image of many small layers would pay per layer). Idle workers are unref'd, so they never
 * keep the process alive.
 */
const idleWorkers: Worker[] = [];
let sessions = 0;

/** Batches from a walker in a worker thread, two asked for ahead of the consumer. */
async function* workerBatches(root: string, rel: string): AsyncGenerator<WalkedItem[]> {
  const worker = idleWorkers.pop() ?? new Worker(path.join(__dirname, 'diff-tree-worker.js'));
  worker.ref();
  const id = ++sessions;
  const replies: WorkerReply[] = [];
  let wake: (() => void) | undefined;
  let failure: Error | undefined;
  let finished = false;
  let closed = false;
  const onMessage = (m: WorkerReply): void => {
    if (m.id !== id) return; // a late answer to a 'more' of an earlier walk
    if (m.closed) closed = true;
    else replies.push(m);
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
    worker.postMessage({ start: { root, rel, maxEntries: BATCH_ENTRIES, maxBytes: BATCH_BYTES }, id });
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
      if (!reply.items) continue;
      if (reply.items.length === 0) {
        finished = true;
        return;
      }
      worker.postMessage({ id });
      yield reply.items;
    }
  } finally {
    if (!finished && !failure) {
      // Stopped midway: the walker holds directories open (descriptors are the process's, a
      // terminated thread would leak them). Ask it to close them, then reuse the worker.
      worker.postMessage({ id, close: true });
      while (!closed && !failure) {
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
      finished = closed;
    }
    worker.off('message', onMessage);
    worker.off('error', onError);
    worker.off('exit', onExit);
    if (finished && !failure) {
      worker.unref();
      idleWorkers.push(worker);
    } else {
      // Failed: its walk state is of no use to anyone (the worker closed its directories).
      await worker.terminate();
    }
  }
}

/** The same batches in this thread (reading and writing then share one core). */
async function* localBatches(root: string, rel: string): AsyncGenerator<WalkedItem[]> {
  const walker = new DiffTreeWalker(root, rel);
  try {
    for (;;) {
      const items = walker.next(BATCH_ENTRIES, BATCH_BYTES);
      if (items.length === 0) return;
      yield items;
    }
  } finally {
    walker.close();
  }
}

/**
 * Walks `rel` below `root` (a layer's diff/ directory; `root` is what the user named, `rel`
 * is never followed through a symlink, see DiffTreeWalker) and yields every entry; see the
 * file comment for the order. The walk and the reading of small files run in a worker thread
 * unless `inThread` is set; files over SMALL_FILE bytes are streamed here when consumed.
 */
export async function* readDiffTree(root: string, options: { inThread?: boolean; rel?: string } = {}): AsyncIterable<LayerItem> {
  const rel = options.rel ?? '';
  const inThread = options.inThread || process.env.TRANSPLANT_READ_IN_THREAD === '1';
  const batches = inThread ? localBatches(root, rel) : workerBatches(root, rel);
  // Large files are opened here, below this directory (held open for the walk).
  let diff: OpenDir | undefined;
  try {
    for await (const items of batches) {
      for (const { entry, data } of items) {
        // Structured cloning turns Buffers into plain Uint8Arrays: view them as Buffers again.
        for (const x of entry.xattrs) x.value = asBuffer(x.value);
        if (entry.kind !== 'file') {
          yield { entry };
          continue;
        }
        let content: Whole | FileContent;
        if (data) content = new Whole(asBuffer(data));
        else {
          diff ??= openBelowRoot(root, rel, root);
          if (!diff) throw new Error(`${root}/${rel} disappeared while being read: is something writing to this layer?`);
          content = new FileContent(diff, entry.path, entry.size);
        }
        try {
          yield { entry, content };
        } finally {
          // The consumer asked for the next entry (or stopped): never leave a file open behind it.
          if (content instanceof FileContent) await content.abandon();
        }
      }
    }
  } finally {
    closeDir(diff);
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
