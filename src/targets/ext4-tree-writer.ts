import * as fs from 'node:fs';
import { writeChunked } from '../stream/chunked-write.js';
import * as path from 'node:path';
import { entryPathBytes, nameIsRaw, type LayerEntry } from '../layer/entry.js';
import type { FreeSpace, TreeWriter } from './tree-writer.js';
import {
  errnoCode, errnoNumber, inodeNumberOf, EXT2_ET_BLOCK_ALLOC_FAIL, EXT2_ET_INODE_ALLOC_FAIL, mountExt2, openExt2, umountExt2,
  O_CREAT, O_EXCL, O_NOFOLLOW, O_RDONLY, O_TRUNC, O_WRONLY,
  type Ext2Fs, type Ext2Promises,
} from '../ext4/ext2fs-binding.js';
import { ImageFile } from '../ext4/image-file.js';
import { CachedFileDisk } from '../ext4/cached-disk.js';
import { Ext4Records } from '../ext4/fs-records.js';
import { applyInodeEdit, inodeXattrRoom, type InodeEdit } from '../ext4/inode-edit.js';
import { checkWritable, parseSuperblock, type Superblock } from '../ext4/superblock.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG } from '../ext4/inode.js';
import { blockXattrBytes, encodeXattr, inodeXattrBytes } from '../ext4/xattr.js';

export interface Ext4TreeWriterOptions {
  /** For messages, e.g. `balena.img:resin-data`. */
  description?: string;
}

/** The WASM heap of the binding is 16 MiB: a single larger write aborts it (see the ext4 doc). */
const CHUNK = 1024 * 1024;
/** Write-back cache under the binding (src/ext4/cached-disk.ts); TRANSPLANT_EXT4_CACHE_MB overrides (0: none). */
const CACHE_BYTES = Number(process.env.TRANSPLANT_EXT4_CACHE_MB ?? '16') * 1024 * 1024;

const KIND_MODE: Record<string, number> = {
  file: S_IFREG,
  directory: S_IFDIR,
  symlink: S_IFLNK,
  'char-device': S_IFCHR,
  'block-device': S_IFBLK,
  fifo: S_IFIFO,
};

interface Session {
  fd: number;
  disk: CachedFileDisk;
  fs: Ext2Fs;
  p: Ext2Promises;
}

/**
 * A TreeWriter over the ext4 file system at byte `fsOffset` of an image file,
 * written in-process through the `ext2fs` binding (allocation, directories, file data,
 * symlinks, hard links). What the binding cannot set — exact ns times, 32-bit owners,
 * device nodes and FIFOs, xattrs, directory-entry types — is recorded per inode and
 * written into the on-disk records after each clean unmount (src/ext4/).
 *
 * The file system is mounted lazily on first use; `suspend()` unmounts and applies
 * the records (used before growing the partition or reading free space), and the
 * next call mounts again. Records persist across sessions and are re-applied each time,
 * because the binding may rewrite an inode it touches (e.g. its chown).
 */
export class Ext4TreeWriter implements TreeWriter {
  readonly description: string;
  private session: Session | undefined;
  private closed = false;
  private readonly edits = new Map<number, InodeEdit>();
  /** Full paths ('/a/b') known to be real directories (not symlinks), with their inode numbers. */
  private readonly dirs = new Map<string, number>();
  /** Special files written this session, by full path, for hard links to them. */
  private readonly specials = new Map<string, number>();
  private readonly chunk = Buffer.allocUnsafe(CHUNK);
  private readonly now = BigInt(Date.now()) * 1_000_000n;
  private inodeSize = 256;
  private blockSize = 4096;
  /** Files whose single block becomes an external xattr block (see makeXattrHolder). */
  private readonly holders: Array<{ path: string; ino: number }> = [];

  constructor(readonly imagePath: string, readonly fsOffset: number, options: Ext4TreeWriterOptions = {}) {
    this.description = options.description ?? `${imagePath}@${fsOffset}`;
  }

  // ---- lifecycle -------------------------------------------------------------

  /** Public calls run one at a time: each is several binding calls that must not interleave. */
  private queue: Promise<unknown> = Promise.resolve();
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async mount(): Promise<Session> {
    if (this.closed) throw new Error(`${this.description}: writer already closed`);
    if (this.session) return this.session;
    const fd = fs.openSync(this.imagePath, 'r+');
    try {
      const sb = this.readSb(fd);
      checkWritable(sb, this.description);
      this.inodeSize = sb.inodeSize;
      this.blockSize = sb.blockSize;
      const disk = new CachedFileDisk(fd, CACHE_BYTES);
      const fsys = await mountExt2(disk, this.fsOffset);
      this.session = { fd, disk, fs: fsys, p: fsys.promises };
      return this.session;
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  private readSb(fd: number): Superblock {
    const raw = Buffer.alloc(1024);
    fs.readSync(fd, raw, 0, 1024, this.fsOffset + 1024);
    const sb = parseSuperblock(raw);
    if (!sb) throw new Error(`${this.description}: no ext4 file system there`);
    return sb;
  }

  /** Unmounts cleanly and writes the recorded inode edits. The next call mounts again. */
  async suspend(): Promise<void> {
    return this.serial(() => this.suspendNow());
  }

  private async suspendNow(): Promise<void> {
    const s = this.session;
    if (!s) return;
    this.session = undefined;
    try {
      await umountExt2(s.fs);
      s.disk.flushSync();
      this.applyEdits(s.fd);
      fs.fsyncSync(s.fd);
    } finally {
      fs.closeSync(s.fd);
    }
  }

  private applyEdits(fd: number): void {
    if (this.edits.size === 0) return;
    const image = ImageFile.open(this.imagePath, true);
    try {
      const rec = new Ext4Records(image, this.fsOffset);
      for (const ino of [...this.edits.keys()].sort((a, b) => a - b)) {
        applyInodeEdit(rec, ino, this.edits.get(ino)!);
      }
    } finally {
      image.close();
    }
    void fd;
  }

  async close(): Promise<void> {
    return this.serial(() => this.closeNow());
  }

  private async closeNow(): Promise<void> {
    if (this.closed) return;
    await this.suspendNow();
    if (this.holders.length > 0) {
      // The xattr blocks have moved to their inodes: unlink the emptied holders.
      const s = await this.mount();
      for (const h of this.holders) {
        if (await this.lstatIn(s, h.path)) await s.p.unlink(h.path);
      }
      this.holders.length = 0;
      await this.suspendNow();
    }
    this.closed = true;
  }

  /**
   * Drops the mounted session without writing anything more (for abandoning a work
   * copy after a failure). The file system on disk is then not consistent.
   */
  async discard(): Promise<void> {
    return this.serial(() => this.discardNow());
  }

  private async discardNow(): Promise<void> {
    const s = this.session;
    this.session = undefined;
    this.closed = true;
    if (!s) return;
    try {
      await umountExt2(s.fs);
    } catch {
      // the work copy is being thrown away
    } finally {
      fs.closeSync(s.fd);
    }
  }

  // ---- paths -----------------------------------------------------------------

  private full(rel: string): string {
    if (rel === '' || rel === '.') return '/';
    if (rel.startsWith('/') || rel.includes('\0') || rel.split('/').some((c) => c === '..' || c === '' || c === '.')) {
      throw new Error(`${this.description}: refusing path ${JSON.stringify(rel)}`);
    }
    // A directory entry's name_len is one byte (EXT4_NAME_LEN 255, fs/ext4/ext4.h); a longer
    // name was accepted without an error before this check.
    const long = rel.split('/').find((c) => Buffer.byteLength(c) > 255);
    if (long !== undefined) throw new Error(`${this.description}: refusing path ${JSON.stringify(rel.slice(0, 300))}: a name longer than 255 bytes`);
    return '/' + rel;
  }

  private join(root: string, entryPath: string): string {
    if (entryPath === '.' || entryPath === '') return this.full(root);
    return this.full(root === '' || root === '.' ? entryPath : `${root}/${entryPath}`);
  }

  /** Inode number of a real directory at full path `p` (no component a symlink), or undefined. */
  private async dirIno(s: Session, p: string): Promise<number | undefined> {
    const known = this.dirs.get(p);
    if (known !== undefined) return known;
    if (p !== '/') {
      const parent = path.posix.dirname(p);
      if ((await this.dirIno(s, parent)) === undefined) return undefined;
    }
    const st = await this.lstatIn(s, p);
    if (!st || (st.mode & S_IFMT) !== S_IFDIR) return undefined;
    this.dirs.set(p, st.ino);
    return st.ino;
  }

  private async parentIno(s: Session, p: string): Promise<number> {
    const parent = path.posix.dirname(p);
    const ino = await this.dirIno(s, parent);
    if (ino === undefined) throw new Error(`${this.description}: ${parent} is not a directory`);
    return ino;
  }

  private async lstatIn(s: Session, p: string) {
    try {
      return await s.p.lstat(p);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw err;
    }
  }

  private forgetPaths(p: string): void {
    for (const map of [this.dirs, this.specials]) {
      for (const k of [...map.keys()]) if (k === p || k.startsWith(p + '/')) map.delete(k);
    }
  }

  // ---- reading ---------------------------------------------------------------

  async readFile(rel: string): Promise<Buffer | undefined> {
    return this.serial(() => this.readFileNow(rel));
  }

  private async readFileNow(rel: string): Promise<Buffer | undefined> {
    const s = await this.mount();
    const p = this.full(rel);
    const parent = await this.dirIno(s, path.posix.dirname(p));
    if (parent === undefined) return undefined;
    const st = await this.lstatIn(s, p);
    if (!st || (st.mode & S_IFMT) !== S_IFREG || this.specials.has(p)) return undefined;
    const fd = await openExt2(s.fs, p, O_RDONLY | O_NOFOLLOW, 0);
    try {
      const out = Buffer.alloc(st.size);
      let done = 0;
      while (done < st.size) {
        const n = Math.min(CHUNK, st.size - done);
        const { bytesRead } = await s.p.read(fd, this.chunk, 0, n, null);
        if (bytesRead <= 0) break;
        this.chunk.copy(out, done, 0, bytesRead);
        done += bytesRead;
      }
      return out.subarray(0, done);
    } finally {
      await s.p.close(fd);
    }
  }

  /** lstat-like details of what is at `rel` (owner, mode with type bits, size, bytes allocated). */
  async stat(rel: string): Promise<{ mode: number; uid: number; gid: number; size: number; allocated: number } | undefined> {
    return this.serial(() => this.statNow(rel));
  }

  private async statNow(rel: string): Promise<{ mode: number; uid: number; gid: number; size: number; allocated: number } | undefined> {
    const s = await this.mount();
    const p = this.full(rel);
    if (p !== '/' && (await this.dirIno(s, path.posix.dirname(p))) === undefined) return undefined;
    const st = await this.lstatIn(s, p);
    if (!st) return undefined;
    return { mode: this.edits.get(st.ino)?.mode ?? st.mode, uid: st.uid, gid: st.gid, size: st.size, allocated: st.blocks * 512 };
  }

  /**
   * Streams a regular file out to a new host file (1 MiB reads; all-zero MiB runs become
   * holes). Returns its size.
   */
  async copyOut(rel: string, hostPath: string): Promise<number> {
    return this.serial(() => this.copyOutNow(rel, hostPath));
  }

  private async copyOutNow(rel: string, hostPath: string): Promise<number> {
    return this.guard(rel, async () => {
      const s = await this.mount();
      const p = this.full(rel);
      if ((await this.dirIno(s, path.posix.dirname(p))) === undefined) throw new Error(`${this.description}: ${p} does not exist`);
      const st = await this.lstatIn(s, p);
      if (!st || (st.mode & S_IFMT) !== S_IFREG) throw new Error(`${this.description}: ${p} is not a regular file`);
      const fd = await openExt2(s.fs, p, O_RDONLY | O_NOFOLLOW, 0);
      const out = fs.openSync(hostPath, 'wx', 0o600);
      try {
        fs.ftruncateSync(out, st.size);
        const zero = Buffer.alloc(CHUNK);
        for (let done = 0; done < st.size; ) {
          const n = Math.min(CHUNK, st.size - done);
          let got = 0;
          while (got < n) {
            const { bytesRead } = await s.p.read(fd, this.chunk, got, n - got, null);
            if (bytesRead <= 0) throw new Error(`${this.description}: ${p} ended early`);
            got += bytesRead;
          }
          if (this.chunk.compare(zero, 0, n, 0, n) !== 0) {
            let w = 0;
            while (w < n) w += fs.writeSync(out, this.chunk, w, n - w, done + w);
          }
          done += n;
        }
        fs.fsyncSync(out);
        return st.size;
      } finally {
        fs.closeSync(out);
        await s.p.close(fd);
      }
    });
  }

  async readdir(rel: string): Promise<string[] | undefined> {
    return this.serial(() => this.readdirNow(rel));
  }

  private async readdirNow(rel: string): Promise<string[] | undefined> {
    const s = await this.mount();
    const p = this.full(rel);
    if ((await this.dirIno(s, p)) === undefined) return undefined;
    return (await s.p.readdir(p)).filter((n) => n !== '.' && n !== '..');
  }

  async kindOf(rel: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined> {
    return this.serial(() => this.kindOfNow(rel));
  }

  private async kindOfNow(rel: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined> {
    const s = await this.mount();
    const p = this.full(rel);
    if (p !== '/' && (await this.dirIno(s, path.posix.dirname(p))) === undefined) return undefined;
    const st = await this.lstatIn(s, p);
    if (!st) return undefined;
    const type = this.edits.get(st.ino)?.mode ?? st.mode;
    switch (type & S_IFMT) {
      case S_IFREG: return 'file';
      case S_IFDIR: return 'directory';
      case S_IFLNK: return 'symlink';
      default: return 'other';
    }
  }

  async readlink(rel: string): Promise<string | undefined> {
    return this.serial(() => this.readlinkNow(rel));
  }

  private async readlinkNow(rel: string): Promise<string | undefined> {
    const s = await this.mount();
    const p = this.full(rel);
    if ((await this.dirIno(s, path.posix.dirname(p))) === undefined) return undefined;
    const st = await this.lstatIn(s, p);
    if (!st || (st.mode & S_IFMT) !== S_IFLNK) return undefined;
    return s.p.readlink(p);
  }

  /** Free blocks × block size and free inodes from the superblock (unmounts first so the counts are current). */
  async freeSpace(): Promise<FreeSpace | undefined> {
    return this.serial(() => this.freeSpaceNow());
  }

  private async freeSpaceNow(): Promise<FreeSpace | undefined> {
    await this.suspendNow();
    const fd = fs.openSync(this.imagePath, 'r');
    try {
      const sb = this.readSb(fd);
      return { bytes: sb.freeBlocksCount * sb.blockSize, inodes: sb.freeInodesCount };
    } finally {
      fs.closeSync(fd);
    }
  }

  // ---- engine metadata -------------------------------------------------------

  async mkdirp(rel: string, mode: number): Promise<void> {
    return this.serial(() => this.mkdirpNow(rel, mode));
  }

  private async mkdirpNow(rel: string, mode: number): Promise<void> {
    return this.guard(rel, () => this.mkdirpImpl(rel, mode));
  }

  private async mkdirpImpl(rel: string, mode: number): Promise<void> {
    const s = await this.mount();
    const p = this.full(rel);
    if (p === '/') return;
    let cur = '';
    for (const part of p.slice(1).split('/')) {
      cur += '/' + part;
      if (this.dirs.has(cur)) continue;
      const st = await this.lstatIn(s, cur);
      if (st) {
        if ((st.mode & S_IFMT) !== S_IFDIR) throw new Error(`${this.description}: ${cur} exists and is not a directory`);
        this.dirs.set(cur, st.ino);
        continue;
      }
      await this.parentIno(s, cur);
      await this.withDirRoom(s, cur, () => s.p.mkdir(cur, mode & 0o7777));
      const ino = await this.chmodPath(s, cur, mode, O_RDONLY);
      this.edits.delete(ino);
      this.dirs.set(cur, ino);
    }
  }

  private async chmodPath(s: Session, p: string, mode: number, flags: number): Promise<number> {
    const fd = await openExt2(s.fs, p, flags | O_NOFOLLOW, 0);
    try {
      await s.p.fchmod(fd, mode & 0o7777);
      return await inodeNumberOf(fd);
    } finally {
      await s.p.close(fd);
    }
  }

  async writeFile(rel: string, data: Buffer, mode: number): Promise<void> {
    return this.serial(() => this.writeFileNow(rel, data, mode));
  }

  private async writeFileNow(rel: string, data: Buffer, mode: number): Promise<void> {
    return this.guard(rel, () => this.writeFileImpl(rel, data, mode));
  }

  private async writeFileImpl(rel: string, data: Buffer, mode: number): Promise<void> {
    const s = await this.mount();
    const p = this.full(rel);
    await this.parentIno(s, p);
    const st = await this.lstatIn(s, p);
    if (st && (st.mode & S_IFMT) !== S_IFREG) await this.removeFull(s, p);
    const fd = await openExt2(s.fs, p, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode & 0o7777);
    try {
      await this.writeAll(s, fd, data);
      await s.p.fchmod(fd, mode & 0o7777);
      this.edits.delete(await inodeNumberOf(fd));
    } finally {
      await s.p.close(fd);
    }
  }

  private async writeAll(s: Session, fd: number, data: Buffer): Promise<void> {
    for (let off = 0; off < data.length; off += CHUNK) {
      const n = Math.min(CHUNK, data.length - off);
      const { bytesWritten } = await s.p.write(fd, data, off, n, null);
      if (bytesWritten !== n) throw new Error(`${this.description}: short write (file system full?)`);
    }
  }

  async symlink(target: string, rel: string): Promise<void> {
    return this.serial(() => this.symlinkNow(target, rel));
  }

  private async symlinkNow(target: string, rel: string): Promise<void> {
    return this.guard(rel, () => this.symlinkImpl(target, rel));
  }

  private async symlinkImpl(target: string, rel: string): Promise<void> {
    const s = await this.mount();
    const p = this.full(rel);
    await this.parentIno(s, p);
    if (await this.lstatIn(s, p)) await this.removeFull(s, p);
    await this.withDirRoom(s, p, () => s.p.symlink(target, p));
    const st = await s.p.lstat(p);
    this.edits.delete(st.ino);
  }

  async rename(fromRel: string, toRel: string): Promise<void> {
    return this.serial(() => this.renameNow(fromRel, toRel));
  }

  private async renameNow(fromRel: string, toRel: string): Promise<void> {
    return this.guard(fromRel, () => this.renameImpl(fromRel, toRel));
  }

  private async renameImpl(fromRel: string, toRel: string): Promise<void> {
    const s = await this.mount();
    const from = this.full(fromRel);
    const to = this.full(toRel);
    const fromParent = await this.parentIno(s, from);
    const toParent = await this.parentIno(s, to);
    const src = await this.lstatIn(s, from);
    if (!src) throw new Error(`${this.description}: cannot rename ${from}: it does not exist`);
    const dst = await this.lstatIn(s, to);
    if (dst && dst.ino !== src.ino) {
      if ((dst.mode & S_IFMT) === S_IFDIR && (src.mode & S_IFMT) !== S_IFDIR) {
        throw new Error(`${this.description}: cannot rename ${from} over the directory ${to}`);
      }
      await this.removeFull(s, to);
    }
    await this.withDirRoom(s, to, () => s.p.rename(from, to));
    const fromName = Buffer.from(path.posix.basename(from));
    const edit = this.edits.get(src.ino);
    if (edit) {
      for (const d of edit.dirents) {
        if (d.dirIno === fromParent && d.name.equals(fromName)) {
          d.dirIno = toParent;
          d.name = Buffer.from(path.posix.basename(to));
        }
      }
    }
    this.forgetPaths(from);
    this.forgetPaths(to);
  }

  async remove(rel: string): Promise<void> {
    return this.serial(() => this.removeNow(rel));
  }

  private async removeNow(rel: string): Promise<void> {
    return this.guard(rel, () => this.removeImpl(rel));
  }

  private async removeImpl(rel: string): Promise<void> {
    const s = await this.mount();
    const p = this.full(rel);
    if (p === '/') throw new Error(`${this.description}: refusing to remove the root`);
    if ((await this.dirIno(s, path.posix.dirname(p))) === undefined) return;
    if (!(await this.lstatIn(s, p))) return;
    await this.removeFull(s, p);
  }

  private async removeFull(s: Session, p: string): Promise<void> {
    const st = await s.p.lstat(p);
    const parentIno = await this.parentIno(s, p);
    if ((st.mode & S_IFMT) === S_IFDIR) {
      this.dirs.set(p, st.ino);
      for (const name of await s.p.readdir(p)) {
        if (name === '.' || name === '..') continue;
        await this.removeFull(s, `${p === '/' ? '' : p}/${name}`);
      }
      await s.p.rmdir(p);
      this.edits.delete(st.ino);
    } else {
      await s.p.unlink(p);
      const edit = this.edits.get(st.ino);
      if (st.nlink <= 1) this.edits.delete(st.ino);
      else if (edit) {
        const name = Buffer.from(path.posix.basename(p));
        edit.dirents = edit.dirents.filter((d) => !(d.dirIno === parentIno && d.name.equals(name)));
      }
    }
    this.forgetPaths(p);
  }

  // ---- layer content ---------------------------------------------------------

  async writeEntry(root: string, entry: LayerEntry, content?: AsyncIterable<Buffer>): Promise<void> {
    return this.serial(() => this.writeEntryNow(root, entry, content));
  }

  private async writeEntryNow(root: string, entry: LayerEntry, content?: AsyncIterable<Buffer>): Promise<void> {
    return this.guard(root === '' || root === '.' ? entry.path : `${root}/${entry.path}`, () => this.writeEntryImpl(root, entry, content));
  }

  /**
   * Turns the binding's errors into one line: libext2fs' allocation failures mean the
   * file system is full; anything else names the path and the failing call.
   */
  private async guard<T>(rel: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const n = errnoNumber(err);
      if (n === EXT2_ET_BLOCK_ALLOC_FAIL || n === EXT2_ET_INODE_ALLOC_FAIL) {
        throw new Error(
          `${this.description}: no space left for ${rel} (out of ${n === EXT2_ET_BLOCK_ALLOC_FAIL ? 'blocks' : 'inodes'}); the target must be grown first (ensureRoom)`,
        );
      }
      if (err instanceof Error && err.name === 'ErrnoException') {
        throw new Error(`${this.description}: cannot write ${rel}: ${err.message.replace(/ args: .*$/, '')}`);
      }
      throw err;
    }
  }

  private async writeEntryImpl(root: string, entry: LayerEntry, content?: AsyncIterable<Buffer>): Promise<void> {
    const p = this.join(root, entry.path);
    const where = `${this.description}:${p}`;
    // Everything that can be refused is checked before anything is written.
    const xattrs = entry.xattrs.map((x) => {
      try {
        return encodeXattr(x);
      } catch (err) {
        throw new Error(`${where}: ${(err as Error).message}`);
      }
    });
    for (const [v, what] of [[entry.uid, 'uid'], [entry.gid, 'gid']] as const) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`${where}: ${what} ${v} out of range`);
    }
    if (!Number.isInteger(entry.mode) || entry.mode < 0) throw new Error(`${where}: invalid mode ${entry.mode}`);
    for (const x of entry.xattrs) {
      if (x.name === '' || x.name.includes('\0')) throw new Error(`${where}: invalid extended attribute name ${JSON.stringify(x.name)}`);
    }
    if (entry.kind === 'symlink' && entry.linkTarget !== undefined && (entry.linkTarget === '' || entry.linkTarget.includes('\0'))) {
      throw new Error(`${where}: invalid symlink target`);
    }
    if ((entry.path === '.' || entry.path === '') && entry.kind !== 'directory') {
      throw new Error(`${where}: the root of a tree must be a directory, not a ${entry.kind}`);
    }
    // The ext2fs WASM binding takes names as JavaScript strings and stores them as UTF-8:
    // a name that is not UTF-8 would be stored as something else, so it is refused.
    if (nameIsRaw(entry.path) || (entry.linkTarget !== undefined && nameIsRaw(entry.linkTarget))) {
      throw new Error(`${where}: the name or link target is not UTF-8 (${entryPathBytes(entry).toString('hex')} in hex); the disk image writer cannot store it exactly, so it refuses it`);
    }
    const s = await this.mount();
    const need = inodeXattrBytes(xattrs);
    const external = need > inodeXattrRoom(this.inodeSize);
    if (external && blockXattrBytes(xattrs) > this.blockSize) {
      throw new Error(
        `${where}: its extended attributes need ${blockXattrBytes(xattrs)} bytes, more than one ${this.blockSize}-byte block holds (values on their own inodes are not supported)`,
      );
    }
    if (entry.kind === 'hardlink') {
      if (!entry.linkTarget) throw new Error(`${where}: hard link without a target`);
      await this.writeHardlink(s, p, this.join(root, entry.linkTarget));
      return;
    }
    const typeBits = KIND_MODE[entry.kind];
    if (typeBits === undefined) throw new Error(`${where}: unknown entry kind ${entry.kind}`);
    const edit: InodeEdit = {
      mode: typeBits | (entry.mode & 0o7777),
      uid: entry.uid,
      gid: entry.gid,
      atime: entry.atime,
      mtime: entry.mtime,
      ctime: this.now,
      xattrs: external ? [] : xattrs,
      dirents: [],
    };
    if (external) edit.xattrBlock = { holderIno: await this.makeXattrHolder(s), xattrs };
    let ino: number;
    switch (entry.kind) {
      case 'directory':
        ino = await this.writeDirectory(s, p);
        break;
      case 'file':
        ino = await this.writeRegular(s, p, entry, content, where);
        break;
      case 'symlink': {
        if (entry.linkTarget === undefined) throw new Error(`${where}: symlink without a target`);
        await this.parentIno(s, p);
        await this.replaceable(s, p);
        await this.withDirRoom(s, p, () => s.p.symlink(entry.linkTarget as string, p));
        ino = (await s.p.lstat(p)).ino;
        break;
      }
      default: {
        // char/block devices and FIFOs: an empty regular file now, turned into the
        // special file by the record edit after unmount.
        const parentIno = await this.parentIno(s, p);
        ino = await this.createEmpty(s, p);
        edit.devMajor = entry.devMajor ?? 0;
        edit.devMinor = entry.devMinor ?? 0;
        edit.dirents.push({ dirIno: parentIno, name: Buffer.from(path.posix.basename(p)) });
        this.specials.set(p, ino);
      }
    }
    this.edits.set(ino, edit);
  }

  /**
   * A hidden file at the root holding exactly one allocated block, which the record
   * edit after unmount turns into the external xattr block of an inode (the binding
   * has no xattr calls, but it allocates blocks). The emptied holder is unlinked in a
   * later session (close()).
   */
  private async makeXattrHolder(s: Session): Promise<number> {
    const p = `/.transplant-xattr-${process.pid}-${this.holders.length}-${Date.now()}`;
    const fd = await openExt2(s.fs, p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
    try {
      const zero = Buffer.alloc(this.blockSize);
      const { bytesWritten } = await s.p.write(fd, zero, 0, zero.length, null);
      if (bytesWritten !== zero.length) throw new Error(`${this.description}: short write (file system full?)`);
      const ino = await inodeNumberOf(fd);
      this.holders.push({ path: p, ino });
      return ino;
    } finally {
      await s.p.close(fd);
    }
  }

  /** Removes whatever is at p (a whole tree for a directory). */
  private async replaceable(s: Session, p: string): Promise<void> {
    const st = await this.lstatIn(s, p);
    if (st) await this.removeFull(s, p);
  }

  private async writeDirectory(s: Session, p: string): Promise<number> {
    if (p === '/') {
      const ino = await this.dirIno(s, '/');
      if (ino === undefined) throw new Error(`${this.description}: root is not a directory`);
      return ino;
    }
    await this.parentIno(s, p);
    const st = await this.lstatIn(s, p);
    if (st && (st.mode & S_IFMT) === S_IFDIR) {
      this.dirs.set(p, st.ino);
      return st.ino;
    }
    if (st) await this.removeFull(s, p);
    await this.withDirRoom(s, p, () => s.p.mkdir(p, 0o700));
    const ino = (await s.p.lstat(p)).ino;
    this.dirs.set(p, ino);
    return ino;
  }

  /**
   * Runs a call that adds an entry to p's parent directory. The binding's mkdir, symlink and
   * link fail with EXT2_ET_DIR_NO_SPACE (2133571366) when the parent's last block is full:
   * libext2fs 1.44's ext2fs_mkdir/ext2fs_symlink/ext2fs_link do not expand the directory,
   * while its file creation does. So a placeholder file is created (growing the directory
   * by a block), removed again, and the call retried.
   */
  private async withDirRoom(s: Session, p: string, call: () => Promise<void>): Promise<void> {
    try {
      await call();
      return;
    } catch (err) {
      if (!isDirNoSpace(err)) throw err;
    }
    const placeholder = `${p.slice(0, p.lastIndexOf('/'))}/.transplant-expand-${process.pid}`;
    const fd = await openExt2(s.fs, placeholder, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
    await s.p.close(fd);
    await s.p.unlink(placeholder);
    await call();
  }

  private async createEmpty(s: Session, p: string): Promise<number> {
    const fd = await this.createExclusive(s, p);
    try {
      return await inodeNumberOf(fd);
    } finally {
      await s.p.close(fd);
    }
  }

  /** Creates a new regular file at p, replacing whatever non-directory or tree was there. */
  private async createExclusive(s: Session, p: string): Promise<number> {
    await this.parentIno(s, p);
    try {
      return await openExt2(s.fs, p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw err;
    }
    await this.removeFull(s, p);
    return openExt2(s.fs, p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  }

  private async writeRegular(s: Session, p: string, entry: LayerEntry, content: AsyncIterable<Buffer> | undefined, where: string): Promise<number> {
    const fd = await this.createExclusive(s, p);
    try {
      // Always through the chunk buffer: one write larger than the binding's 16 MiB WASM heap aborts it.
      await writeChunked(content, entry.size, this.chunk, async (buf, length) => {
        const { bytesWritten } = await s.p.write(fd, buf, 0, length, null);
        if (bytesWritten !== length) throw new Error(`${where}: short write (file system full?)`);
      }, where);
      return await inodeNumberOf(fd);
    } finally {
      await s.p.close(fd);
    }
  }

  private async writeHardlink(s: Session, p: string, target: string): Promise<void> {
    const parentIno = await this.parentIno(s, p);
    if ((await this.dirIno(s, path.posix.dirname(target))) === undefined) {
      throw new Error(`${this.description}:${p}: hard-link target ${target} is not inside a directory`);
    }
    const st = await this.lstatIn(s, target);
    if (!st) throw new Error(`${this.description}:${p}: hard-link target ${target} does not exist`);
    if ((st.mode & S_IFMT) === S_IFDIR) throw new Error(`${this.description}:${p}: hard-link target ${target} is a directory`);
    if (p === target) return;
    await this.replaceable(s, p);
    await this.withDirRoom(s, p, () => s.p.link(target, p));
    const edit = this.edits.get(st.ino);
    if (edit && (this.specials.has(target) || edit.dirents.length > 0)) {
      edit.dirents.push({ dirIno: parentIno, name: Buffer.from(path.posix.basename(p)) });
      this.specials.set(p, st.ino);
    }
  }

  async finishTree(_root: string): Promise<void> {
    // Directory times are part of the per-inode records written after unmount, when
    // nothing can change them any more; there is nothing to defer here.
  }
}

/** libext2fs EXT2_ET_DIR_NO_SPACE (lib/ext2fs/ext2_err.et.in: EXT2_ET_BASE + 38). */
const EXT2_ET_DIR_NO_SPACE = 2133571366;

function isDirNoSpace(err: unknown): boolean {
  const e = err as { errno?: unknown; message?: unknown } | null;
  return e !== null && typeof e === 'object' && (e.errno === EXT2_ET_DIR_NO_SPACE || String(e.message).includes(String(EXT2_ET_DIR_NO_SPACE)));
}
