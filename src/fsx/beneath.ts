/**
 * Reading a source tree without ever following a symlink below the directory the user named:
 * every component of a path under it is opened with O_NOFOLLOW (directories with
 * O_DIRECTORY), each relative to the directory opened before it, so that neither a symlink
 * nor a swapped directory can lead out of the tree; and only regular files are read (a FIFO
 * or a device where a file should be would block or never end).
 *
 * Node's fs has no openat(2). On Linux `/proc/self/fd/<fd>/<name>` is the same lookup: the
 * kernel resolves the fd's magic link to the open directory itself (fs/proc/base.c
 * proc_fd_link), never by its path again, then looks `name` up in it. Elsewhere (macOS) the
 * path is joined as text: every component is still opened with O_NOFOLLOW and checked,
 * but a component swapped between two calls is not noticed. The layer walkers' calls per
 * entry (openSubdir, openRegularChecked, and lstatAt in fsx/index.ts) use openat(2) and
 * fstatat(2) themselves through the native helper: the same lookup without a walk through
 * /proc for every name, which cost more than the call (sources/diff-tree.ts).
 */
import { closeSync, constants, fstatSync, lstatSync, openSync, readSync, readdirSync, type BigIntStats } from 'node:fs';
import { closeFd, errnoCode, fstatOf, openAt } from './index.js';

const PROC_FD = process.platform === 'linux' ? '/proc/self/fd' : undefined;
const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
/** O_NONBLOCK: opening a FIFO for reading would wait for a writer. */
const FILE_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** A directory held open; `path` names it in messages (and is how it is reached where there is no /proc). */
export interface OpenDir {
  fd: number;
  path: string;
  /** Opened by fsx's openAt (openSubdir): closed by closeFd, not node:fs. */
  byOpenAt?: boolean;
}

/** Something under a source tree that is not what it must be: a symlink, or not a regular file where one is read. */
export class UnsafeSourcePath extends Error {
  constructor(
    message: string,
    readonly rel: string,
  ) {
    super(message);
  }
}

/** A name or a relative path: text, or bytes (Linux names need not be UTF-8). */
export type Name = string | Buffer;

/** How `name` inside `dir` is reached by the calls that take a path (lstat, readlink, llistxattr, open). */
export function childPath(dir: OpenDir, name: string): string;
export function childPath(dir: OpenDir, name: Name): string | Buffer;
export function childPath(dir: OpenDir, name: Name): string | Buffer {
  const base = PROC_FD !== undefined ? `${PROC_FD}/${dir.fd}/` : `${dir.path}/`;
  return typeof name === 'string' ? base + name : Buffer.concat([Buffer.from(base), name]);
}

const text = (n: Name): string => (typeof n === 'string' ? n : n.toString('utf8'));

export function closeDir(dir: OpenDir | undefined): void {
  if (!dir) return;
  if (dir.byOpenAt) closeFd(dir.fd);
  else closeSync(dir.fd);
}

/** What an lstat says, in a message's words. */
export function describeKind(st: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean; isFIFO(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean; isSocket(): boolean }): string {
  if (st.isFile()) return 'a regular file';
  if (st.isDirectory()) return 'a directory';
  if (st.isSymbolicLink()) return 'a symlink';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

function components(rel: Name): Name[] {
  let out: Name[];
  if (typeof rel === 'string') out = rel.split('/');
  else {
    out = [];
    let from = 0;
    for (let i = 0; i <= rel.length; i++) {
      if (i === rel.length || rel[i] === 0x2f) {
        out.push(rel.subarray(from, i));
        from = i + 1;
      }
    }
  }
  out = out.filter((c) => c.length > 0 && text(c) !== '.');
  if (out.some((c) => text(c) === '..')) throw new UnsafeSourcePath(`${JSON.stringify(text(rel))} leaves the tree it names (a '..' component)`, text(rel));
  return out;
}

function join(parts: Name[]): Name {
  if (parts.every((p) => typeof p === 'string')) return parts.join('/');
  const out: Buffer[] = [];
  parts.forEach((p, i) => {
    if (i > 0) out.push(Buffer.from('/'));
    out.push(typeof p === 'string' ? Buffer.from(p) : p);
  });
  return Buffer.concat(out);
}

/**
 * Opens the directory the user named (symlinks in that path are the user's choice and are
 * followed); undefined when it does not exist.
 */
export function openTop(root: string): OpenDir {
  return { fd: openSync(root, constants.O_RDONLY | constants.O_DIRECTORY), path: root };
}

/**
 * Opens `rel` below `top`, every component without following symlinks. Undefined when a
 * component is missing or not a directory; UnsafeSourcePath when one is a symlink.
 */
export function openDirBelow(top: OpenDir, rel: Name, where: string): OpenDir | undefined {
  const parts = components(rel);
  let dir: OpenDir = { fd: openSync(childPath(top, '.'), DIR_FLAGS), path: top.path };
  let sofar = '';
  for (const c of parts) {
    sofar = sofar ? `${sofar}/${text(c)}` : text(c);
    let fd: number;
    try {
      fd = openSync(childPath(dir, c), DIR_FLAGS);
    } catch (e) {
      const code = errnoCode(e);
      const kind = code === 'ENOTDIR' || code === 'ELOOP' ? lstatKind(dir, c) : undefined;
      closeSync(dir.fd);
      if (kind === 'a symlink') throw new UnsafeSourcePath(`${where}: ${sofar} is a symlink, never followed (nothing under a data root is read through a symlink)`, sofar);
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw e;
    }
    closeSync(dir.fd);
    dir = { fd, path: `${dir.path}/${text(c)}` };
  }
  return dir;
}

function lstatKind(dir: OpenDir, name: Name): string | undefined {
  try {
    return describeKind(lstatSync(childPath(dir, name)));
  } catch {
    return undefined;
  }
}

function split(rel: Name): { parent: Name; name: Name } {
  const c = components(rel);
  return { parent: join(c.slice(0, -1)), name: c[c.length - 1] ?? '.' };
}

/** lstat of `rel` below `top` (its parents opened without following symlinks); undefined when missing. */
export function lstatBelow(top: OpenDir, rel: Name, where: string): BigIntStats | undefined {
  const { parent, name } = split(rel);
  const dir = openDirBelow(top, parent, where);
  if (!dir) return undefined;
  try {
    return lstatSync(childPath(dir, name), { bigint: true });
  } catch (e) {
    if (errnoCode(e) === 'ENOENT' || errnoCode(e) === 'ENOTDIR') return undefined;
    throw e;
  } finally {
    closeSync(dir.fd);
  }
}

/**
 * Opens the regular file `name` in `dir` for reading: refused (UnsafeSourcePath) when it is a
 * symlink, a FIFO, a device or anything else; undefined when missing. Never blocks.
 */
export function openRegularIn(dir: OpenDir, name: Name, relName: Name, where: string): { fd: number; size: number } | undefined {
  const rel = text(relName);
  let st: BigIntStats;
  try {
    st = lstatSync(childPath(dir, name), { bigint: true });
  } catch (e) {
    if (errnoCode(e) === 'ENOENT' || errnoCode(e) === 'ENOTDIR') return undefined;
    throw e;
  }
  if (!st.isFile()) {
    throw new UnsafeSourcePath(
      st.isSymbolicLink()
        ? `${where}: ${rel} is a symlink, never followed (nothing under a data root is read through a symlink)`
        : `${where}: ${rel} is ${describeKind(st)}, not a regular file; only regular files are read`,
      rel,
    );
  }
  const fd = openSync(childPath(dir, name), FILE_FLAGS);
  const now = fstatSync(fd, { bigint: true });
  if (!now.isFile() || now.ino !== st.ino || now.dev !== st.dev) {
    closeSync(fd);
    throw new UnsafeSourcePath(`${where}: ${rel} changed while it was opened; is something writing to this data root?`, rel);
  }
  return { fd, size: Number(now.size) };
}

/**
 * The regular file `name` in `dir` that lstatAt saw as `expect`, opened without following a
 * symlink and without blocking on a FIFO swapped in; undefined when it vanished. Throws when
 * what opened is another inode or not a regular file. Close it with closeFd.
 */
export function openRegularChecked(dir: OpenDir, name: Name, expect: { ino: bigint; dev: bigint }, where: string): number | undefined {
  let fd: number;
  try {
    fd = openAt(dir.fd, name, FILE_FLAGS);
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return undefined;
    if (errnoCode(e) === 'ELOOP') throw new UnsafeSourcePath(`${where}: ${dir.path}/${text(name)} became a symlink while being read: is something writing to this layer?`, text(name));
    throw e;
  }
  const st = fstatOf(fd);
  if (!st.isFile() || st.ino !== expect.ino || st.dev !== expect.dev) {
    closeFd(fd);
    throw new UnsafeSourcePath(`${where}: ${dir.path}/${text(name)} changed while being read: is something writing to this layer?`, text(name));
  }
  return fd;
}

/** openRegularIn for a path below `top`. */
export function openRegularBelow(top: OpenDir, rel: Name, where: string): { fd: number; size: number } | undefined {
  const { parent, name } = split(rel);
  const dir = openDirBelow(top, parent, where);
  if (!dir) return undefined;
  try {
    return openRegularIn(dir, name, rel, where);
  } finally {
    closeSync(dir.fd);
  }
}

/**
 * Reads a whole regular file below `top`, at most `limit` bytes (an Error naming the limit
 * beyond); undefined when missing.
 */
export function readRegularBelow(top: OpenDir, rel: string, where: string, limit: { bytes: number; name: string }): Buffer | undefined {
  const f = openRegularBelow(top, rel, where);
  if (!f) return undefined;
  try {
    if (f.size > limit.bytes) throw new Error(`${where}: ${rel} is ${f.size} bytes, more than ${limit.name}`);
    return readFd(f.fd, f.size, limit, `${where}: ${rel}`);
  } finally {
    closeSync(f.fd);
  }
}

/**
 * Reads an fd to its end (`size` is what fstat said; undefined for a pipe), refusing more
 * than the limit. A pipe opened without blocking (readNamedFile) may have no data yet: its
 * EAGAIN is waited out in 10 ms steps.
 */
export function readFd(fd: number, size: number | undefined, limit: { bytes: number; name: string }, what: string): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  let pause: Int32Array | undefined;
  for (;;) {
    const want = size === undefined ? 64 * 1024 : Math.max(1, Math.min(Math.max(size - total, 0) + 1, 1 << 20));
    const buf = Buffer.allocUnsafe(want);
    let n: number;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      if (errnoCode(e) !== 'EAGAIN') throw e;
      Atomics.wait((pause ??= new Int32Array(new SharedArrayBuffer(4))), 0, 0, 10);
      continue;
    }
    if (n === 0) break;
    total += n;
    if (total > limit.bytes) throw new Error(`${what} is more than ${limit.name}`);
    parts.push(n === buf.length ? buf : buf.subarray(0, n));
  }
  return Buffer.concat(parts, total);
}

/** The names in directory `rel` below `top`; undefined when missing. */
export function readdirBelow(top: OpenDir, rel: Name, where: string): string[] | undefined {
  const dir = openDirBelow(top, rel, where);
  if (!dir) return undefined;
  try {
    return readdirSync(childPath(dir, '.'));
  } finally {
    closeSync(dir.fd);
  }
}

/** Runs fn with the top directory open, closing it after. */
export function withTop<T>(root: string, fn: (top: OpenDir) => T): T {
  const top = openTop(root);
  try {
    return fn(top);
  } finally {
    closeSync(top.fd);
  }
}

/**
 * Opens the subdirectory `name` of `dir` that lstat showed as `expect`: without following a
 * symlink, and refused if what was opened is not that directory any more (dev and inode).
 */
export function openSubdir(dir: OpenDir, name: Name, expect: { ino: bigint; dev: bigint }, where: string): OpenDir {
  const fd = openAt(dir.fd, name, DIR_FLAGS);
  const st = fstatOf(fd);
  if (st.ino !== expect.ino || st.dev !== expect.dev) {
    closeFd(fd);
    throw new UnsafeSourcePath(`${where}: ${dir.path}/${text(name)} changed while it was read; is something writing to this data root?`, text(name));
  }
  return { fd, path: `${dir.path}/${text(name)}`, byOpenAt: true };
}

/** `top`'s path below the user's directory, opened: openTop and openDirBelow together (undefined when missing). */
export function openBelowRoot(root: string, rel: Name, where: string): OpenDir | undefined {
  return withTop(root, (top) => openDirBelow(top, rel, where));
}

/**
 * Reads a file the user named (an --apps file): symlinks in its path are the user's choice,
 * but only a regular file is read (a FIFO would block, a device never end), at most `limit`.
 */
export function readNamedFile(file: string, limit: { bytes: number; name: string }, what: string, options: { pipe?: boolean } = {}): Buffer {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    throw new Error(`${what}: ${errnoCode(e) === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (options.pipe && st.isFIFO()) {
      // A pipe (`--apps <(curl …)`), opened without blocking: a named FIFO nobody writes to
      // reads as empty at once (pipe(7): end of file with no writer) instead of waiting forever.
      const data = readFd(fd, undefined, limit, what);
      if (data.length === 0) throw new Error(`${what} is a pipe that gave nothing (a FIFO nobody writes to?)`);
      return data;
    }
    if (!st.isFile()) throw new Error(`${what} is ${describeKind(st)}, not a regular file; only regular files are read`);
    if (st.size > limit.bytes) throw new Error(`${what} is ${st.size} bytes, more than ${limit.name}`);
    return readFd(fd, st.size, limit, what);
  } finally {
    closeSync(fd);
  }
}

