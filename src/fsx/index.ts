/**
 * Typed access to the native file-system calls Node lacks (native/fsx.c, see
 * native/README.md): xattrs, mknod, ns-precise times, never following a final symlink.
 * The addon is loaded on first use, so code that never needs it runs without it.
 */
import * as path from 'node:path';
import * as fs from 'node:fs';
import type { Xattr } from '../layer/entry.js';

type PathLike = string | Buffer;

interface FsxAddon {
  listXattrs(path: PathLike): Array<[string, Buffer]>;
  setXattr(path: PathLike, name: string, value: Buffer): void;
  mknod(path: PathLike, mode: number, major: number, minor: number): void;
  lutimes(path: PathLike, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void;
  syncFs(path: PathLike): void;
  fileAttrs(fd: number, uid: number, gid: number, mode: number, names: string[], values: Buffer[], aSec: number, aNsec: number, mSec: number, mNsec: number): void;
  crc64Update(state: Buffer, data: Uint8Array): void;
  tryLock(fd: number): boolean;
  seekDataHole(fd: number, offset: number, hole: 0 | 1): number;
  boundMalloc(): boolean;
  createFile(path: PathLike, data: Buffer, uid: number, gid: number, mode: number, names: string[], values: Buffer[], aSec: number, aNsec: number, mSec: number, mNsec: number): void;
  listXattrsFd(fd: number): Array<[string, Buffer]>;
  lstatAt(dirfd: number, name: PathLike, out: BigInt64Array): void;
  fstatInto(fd: number, out: BigInt64Array): void;
  openAt(dirfd: number, name: PathLike, flags: number): number;
  willNeed(fd: number, offset: number, length: number): void;
  closeFd(fd: number): void;
}

/** build/Release/fsx.node relative to the package root (this file is dist/src/fsx/index.js). */
export const addonPath = path.resolve(__dirname, '..', '..', '..', 'build', 'Release', 'fsx.node');

let addon: FsxAddon | undefined;

function load(): FsxAddon {
  if (addon) return addon;
  if (!fs.existsSync(addonPath)) {
    throw new Error(`native helper not built: run npm run build (${addonPath} is missing)`);
  }
  try {
    addon = require(addonPath) as FsxAddon;
  } catch (err) {
    throw new Error(`native helper ${addonPath} cannot be loaded (${(err as Error).message}): run npm run build`);
  }
  return addon;
}

/** The errno code ('EPERM', 'ENOENT', …) of an error thrown by these calls or by node:fs. */
export function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'string'
    ? (err as { code: string }).code
    : undefined;
}

/** Every extended attribute of the file itself (a symlink's own), in the order the kernel lists them; [] where unsupported. */
export function listXattrs(file: PathLike): Xattr[] {
  return load().listXattrs(file).map(([name, value]) => ({ name, value }));
}

/** Every extended attribute of an open file or directory (flistxattr). */
export function listXattrsFd(fd: number): Xattr[] {
  return load().listXattrsFd(fd).map(([name, value]) => ({ name, value }));
}

// File type bits of st_mode (Linux and macOS agree: <sys/stat.h>).
const S_IFMT = 0o170000n;

/**
 * What lstat/fstat say about a layer entry: the fields of node:fs BigIntStats the walkers
 * use, with the same names and types, from one system call and no path walk.
 */
export class EntryStat {
  readonly dev: bigint;
  readonly ino: bigint;
  readonly mode: bigint;
  readonly nlink: bigint;
  readonly uid: bigint;
  readonly gid: bigint;
  readonly rdev: bigint;
  readonly size: bigint;
  readonly atimeNs: bigint;
  readonly mtimeNs: bigint;

  constructor(f: BigInt64Array) {
    this.dev = f[0] as bigint;
    this.ino = BigInt.asUintN(64, f[1] as bigint);
    this.mode = f[2] as bigint;
    this.nlink = f[3] as bigint;
    this.uid = f[4] as bigint;
    this.gid = f[5] as bigint;
    this.rdev = f[6] as bigint;
    this.size = f[7] as bigint;
    this.atimeNs = (f[8] as bigint) * NS + (f[9] as bigint);
    this.mtimeNs = (f[10] as bigint) * NS + (f[11] as bigint);
  }

  private type(): bigint {
    return this.mode & S_IFMT;
  }
  isFile(): boolean {
    return this.type() === 0o100000n;
  }
  isDirectory(): boolean {
    return this.type() === 0o040000n;
  }
  isSymbolicLink(): boolean {
    return this.type() === 0o120000n;
  }
  isCharacterDevice(): boolean {
    return this.type() === 0o020000n;
  }
  isBlockDevice(): boolean {
    return this.type() === 0o060000n;
  }
  isFIFO(): boolean {
    return this.type() === 0o010000n;
  }
  isSocket(): boolean {
    return this.type() === 0o140000n;
  }
}

const statFields = new BigInt64Array(12);

/** lstat of `name` in the directory open as `dirfd` (fstatat, AT_SYMLINK_NOFOLLOW). Throws like node:fs. */
export function lstatAt(dirfd: number, name: PathLike): EntryStat {
  load().lstatAt(dirfd, name, statFields);
  return new EntryStat(statFields);
}

/** fstat as an EntryStat. */
export function fstatOf(fd: number): EntryStat {
  load().fstatInto(fd, statFields);
  return new EntryStat(statFields);
}

/**
 * openat(2) of `name` in the directory open as `dirfd` (close-on-exec). Throws like node:fs.
 * Close the descriptor with closeFd: node:fs tracks the descriptors it opened, and warns on
 * stderr when it closes one it did not.
 */
export function openAt(dirfd: number, name: PathLike, flags: number): number {
  return load().openAt(dirfd, name, flags);
}

/** Closes a descriptor openAt gave. */
export function closeFd(fd: number): void {
  load().closeFd(fd);
}

/** Advice: start reading this range of the file now (posix_fadvise WILLNEED; length 0: to the end); never fails. */
export function willNeed(fd: number, offset = 0, length = 0): void {
  load().willNeed(fd, offset, length);
}

/** Sets one extended attribute on the file itself (lsetxattr). */
export function setXattr(file: PathLike, name: string, value: Buffer): void {
  load().setXattr(file, name, value);
}

// File type bits of st_mode (Linux and macOS agree: <sys/stat.h>).
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

export type SpecialKind = 'char-device' | 'block-device' | 'fifo';

/** Creates a device node or FIFO. The umask applies to `permissions`: chmod afterwards for exact bits. */
export function mknod(file: PathLike, kind: SpecialKind, permissions: number, major: number, minor: number): void {
  const type = kind === 'char-device' ? S_IFCHR : kind === 'block-device' ? S_IFBLK : kind === 'fifo' ? S_IFIFO : undefined;
  if (type === undefined) throw new Error(`mknod: unknown kind ${String(kind)}`);
  load().mknod(file, type | (permissions & 0o7777), kind === 'fifo' ? 0 : major, kind === 'fifo' ? 0 : minor);
}

const NS = 1_000_000_000n;

/** Splits ns since the epoch into whole seconds (floored, so negative times work) and 0..999999999 ns. */
export function splitNs(ns: bigint): [seconds: number, nanoseconds: number] {
  let sec = ns / NS;
  let rem = ns % NS;
  if (rem < 0n) {
    sec -= 1n;
    rem += NS;
  }
  return [Number(sec), Number(rem)];
}

/** Sets access and modification times to the nanosecond, on a symlink itself rather than its target. */
export function lutimes(file: PathLike, atimeNs: bigint, mtimeNs: bigint): void {
  const [as, ans] = splitNs(atimeNs);
  const [ms, mns] = splitNs(mtimeNs);
  load().lutimes(file, as, ans, ms, mns);
}

/** Flushes the whole file system holding `file` to its device (syncfs). */
export function syncFs(file: PathLike): void {
  load().syncFs(file);
}

/** What a regular file gets after its content: owner, mode (incl. setuid/setgid/sticky), xattrs, ns times. */
export interface FileAttributes {
  uid: number;
  gid: number;
  mode: number;
  xattrs: readonly Xattr[];
  atime: bigint;
  mtime: bigint;
}

/**
 * Applies every attribute to an open regular file in one native call: fchown, fchmod,
 * fsetxattr for each xattr, futimens (in that order: chown clears setuid and
 * security.capability). A failure carries `syscall` and, for fsetxattr, `xattr`.
 */
export function fileAttrs(fd: number, a: FileAttributes): void {
  const [as, ans] = splitNs(a.atime);
  const [ms, mns] = splitNs(a.mtime);
  load().fileAttrs(fd, a.uid, a.gid, a.mode & 0o7777, a.xattrs.map((x) => x.name), a.xattrs.map((x) => x.value), as, ans, ms, mns);
}

/**
 * Creates a regular file that must not exist yet (O_CREAT|O_EXCL|O_NOFOLLOW) with this
 * content and every attribute, in one native call (open, write, the fileAttrs calls, close).
 * EEXIST is thrown as is; on any other failure the file may exist, partly written.
 */
export function createFile(file: PathLike, data: Buffer, a: FileAttributes): void {
  const [as, ans] = splitNs(a.atime);
  const [ms, mns] = splitNs(a.mtime);
  load().createFile(file, data, a.uid, a.gid, a.mode & 0o7777, a.xattrs.map((x) => x.name), a.xattrs.map((x) => x.value), as, ans, ms, mns);
}

/**
 * The native CRC-64/ISO step (state: the complemented CRC, 8 bytes little-endian, updated in
 * place; about 2x the JavaScript slicing-by-8), or undefined when the addon is not built.
 */
export function nativeCrc64(): ((state: Buffer, data: Uint8Array) => void) | undefined {
  try {
    const a = load();
    return typeof a.crc64Update === 'function' ? a.crc64Update.bind(a) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Makes the C library return large freed buffers to the system instead of keeping them in
 * per-thread arenas (native/fsx.c, BoundMalloc). Process-wide: the CLI calls it at start;
 * the library leaves the host program's allocator alone. False where there is nothing to do.
 */
export function boundMalloc(): boolean {
  try {
    return load().boundMalloc();
  } catch {
    return false;
  }
}

/**
 * Takes an exclusive flock(2) on an open file or directory without waiting: true when
 * taken, false when another process holds it. It is released when the descriptor is
 * closed or the process dies, however it dies.
 */
export function tryLock(fd: number): boolean {
  return load().tryLock(fd);
}

/**
 * The data ranges of a file ([start, end) pairs) from lseek SEEK_DATA/SEEK_HOLE, or
 * undefined when the file system cannot tell (then all of it is data).
 */
export function dataRanges(fd: number, size: number): Array<[number, number]> | undefined {
  const ranges: Array<[number, number]> = [];
  for (let at = 0; at < size; ) {
    const start = load().seekDataHole(fd, at, 0);
    if (start === -2) return undefined;
    if (start === -1 || start >= size) break;
    const end = load().seekDataHole(fd, start, 1);
    if (end === -2) return undefined;
    const stop = end === -1 ? size : Math.min(end, size);
    ranges.push([start, stop]);
    at = stop;
  }
  return ranges;
}
