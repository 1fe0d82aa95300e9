/**
 * Typed view of the parts of the `ext2fs` npm package (balena's WASM build of
 * libext2fs) this project uses. The package ships no type definitions.
 */
import { promisify } from 'node:util';

export interface Ext2Stats {
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  ino: number;
  size: number;
  /** i_blocks: 512-byte sectors allocated. */
  blocks: number;
}

export interface Ext2Promises {
  readdir(path: string): Promise<string[]>;
  mkdir(path: string, mode: number): Promise<void>;
  write(fd: number, buf: Buffer, offset: number, length: number, position: number | null): Promise<{ bytesWritten: number }>;
  read(fd: number, buf: Buffer, offset: number, length: number, position: number | null): Promise<{ bytesRead: number }>;
  close(fd: number): Promise<void>;
  fstat(fd: number): Promise<Ext2Stats>;
  lstat(path: string): Promise<Ext2Stats>;
  readlink(path: string): Promise<string>;
  symlink(target: string, path: string): Promise<void>;
  link(existing: string, newPath: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  rmdir(path: string): Promise<void>;
  fchmod(fd: number, mode: number): Promise<void>;
}

export interface Ext2Fs {
  promises: Ext2Promises;
  open(path: string, flags: number, mode: number, cb: (err: Error | null, fd: number) => void): void;
}

/** What the binding calls on the disk object it is given (ext2fs/lib/disk.js DiskWrapper). */
export interface Ext2Disk {
  read(buf: Buffer, bufOffset: number, length: number, position: number): Promise<{ bytesRead: number; buffer: Buffer }>;
  write(buf: Buffer, bufOffset: number, length: number, position: number): Promise<{ bytesWritten: number; buffer: Buffer }>;
  discard(position: number, length: number): Promise<void>;
  flush(): Promise<void>;
}

interface Ext2fsModule {
  mount(disk: Ext2Disk, offset: number): Promise<Ext2Fs>;
  umount(fs: Ext2Fs): Promise<void>;
}
interface Ext2fsBinding {
  stat_ino(fd: number): Promise<number>;
}

// The package is CommonJS without types; these are its documented entry point and
// the low-level call table its fs layer is built on (ext2fs/lib/binding.js).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const ext2fs = require('ext2fs') as Ext2fsModule;
// eslint-disable-next-line @typescript-eslint/no-require-imports
const binding = require('ext2fs/lib/binding.js') as Ext2fsBinding;

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_CREAT = 64;
export const O_EXCL = 128;
export const O_TRUNC = 512;
export const O_NOFOLLOW = 131072;

export async function mountExt2(disk: Ext2Disk, offset: number): Promise<Ext2Fs> {
  return ext2fs.mount(disk, offset);
}
export async function umountExt2(fs: Ext2Fs): Promise<void> {
  await ext2fs.umount(fs);
}
export function openExt2(fs: Ext2Fs, path: string, flags: number, mode: number): Promise<number> {
  return promisify(fs.open)(path, flags, mode);
}
export function inodeNumberOf(fd: number): Promise<number> {
  return binding.stat_ino(fd);
}

export function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

/** libext2fs error codes (e2fsprogs lib/ext2fs/ext2_err.et.in, base 2133571328) the writer meets. */
export const EXT2_ET_BLOCK_ALLOC_FAIL = 2133571400;
export const EXT2_ET_INODE_ALLOC_FAIL = 2133571401;

export function errnoNumber(err: unknown): number | undefined {
  return typeof err === 'object' && err !== null && 'errno' in err ? Number((err as { errno: unknown }).errno) : undefined;
}
