/**
 * A TreeWriter over a directory of the host file system: a mounted `resin-data`, a
 * machine's `/var/lib/docker`, or a scratch directory. Layer entries are written with
 * every attribute (owner, mode with setuid/setgid/sticky, ns times, xattrs, device
 * nodes) through node:fs and the native helper (src/fsx/), which needs root.
 *
 * Safety: every relative path is checked (no absolute path, '..', '.', empty component
 * or NUL), every parent inside the root is lstat-ed and must be a real directory, and
 * files are created with O_NOFOLLOW|O_CREAT|O_EXCL, so nothing is ever written through
 * a symlink, whatever the layer or the target already holds. The root itself may be a
 * symlink (the user named it).
 */
import { writeChunked } from '../stream/chunked-write.js';
import { chmodSync, constants, lchownSync, mkdirSync } from 'node:fs';
import type { BigIntStats } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fsName, nameFromBytes, nameToBytes, type LayerEntry } from '../layer/entry.js';
import type { FreeSpace, TreeWriter } from './tree-writer.js';
import { createFile, errnoCode, fileAttrs, lutimes, mknod, setXattr, syncFs, type FileAttributes } from '../fsx/index.js';

/** Bytes per write of file content: small pieces are gathered into writes of this size. */
const CHUNK = 1024 * 1024;
/**
 * Files up to this size are gathered in memory and created with all their attributes in one
 * native call (open, write, fchown, fchmod, fsetxattr, futimens, close) on the main thread:
 * for small files the thread-pool round trip of each async call costs more than the call.
 */
const SMALL_FILE = 256 * 1024;

const { O_WRONLY, O_RDONLY, O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW, O_NONBLOCK } = constants;

interface DeferredTime {
  rel: string;
  depth: number;
  atime: bigint;
  mtime: bigint;
}

async function lstatOrUndefined(file: string | Buffer): Promise<BigIntStats | undefined> {
  try {
    return await fs.lstat(file, { bigint: true });
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw err;
  }
}

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

function depthOf(rel: string): number {
  if (rel === '') return 0;
  let n = 1;
  for (let i = 0; i < rel.length; i++) if (rel.charCodeAt(i) === 0x2f) n++;
  return n;
}

export class HostTreeWriter implements TreeWriter {
  readonly description: string;
  private readonly root: string;
  /** Relative paths ('' is the root) known to be real directories reached without symlinks. */
  private readonly realDirs = new Set<string>();
  /** Directory times deferred by writeEntry, by the `root` argument they were written under. */
  private readonly deferred = new Map<string, DeferredTime[]>();
  private readonly chunk = Buffer.allocUnsafe(CHUNK);
  private written = false;
  private closed = false;

  constructor(root: string) {
    this.root = path.resolve(root);
    this.description = this.root;
  }

  // ---- paths -----------------------------------------------------------------

  /** Validates a root-relative path; '' or '.' (the root itself) only when allowRoot. Returns '' for the root. */
  private check(rel: string, allowRoot: boolean): string {
    if (typeof rel !== 'string') throw new Error(`${this.description}: refusing a path that is not a string`);
    if (rel === '' || rel === '.') {
      if (allowRoot) return '';
      throw new Error(`${this.description}: refusing to use the root itself here`);
    }
    const bad = rel.includes('\0')
      ? 'it contains a NUL byte'
      : rel.startsWith('/')
        ? 'it is absolute'
        : rel.split('/').some((c) => c === '..')
          ? "it contains '..'"
          : rel.split('/').some((c) => c === '' || c === '.')
            ? "it has an empty or '.' component"
            : undefined;
    if (bad) throw new Error(`${this.description}: refusing path ${JSON.stringify(rel)}: ${bad}`);
    return rel;
  }

  /** The path for fs calls: a Buffer when the name is not UTF-8 (names are bytes, src/layer/entry.ts). */
  private abs(rel: string): string | Buffer {
    return fsName(rel === '' ? this.root : `${this.root}/${rel}`);
  }

  private shown(rel: string): string {
    return rel === '' ? this.description : `${this.description}/${rel}`;
  }

  /** True when rel is a directory and no component below the root is a symlink (each lstat-ed once, then cached). */
  private async isRealDir(rel: string): Promise<boolean> {
    if (this.realDirs.has(rel)) return true;
    if (rel === '') {
      // The root may be a symlink the user named: follow it, once.
      let ok = false;
      try {
        ok = (await fs.stat(this.root)).isDirectory();
      } catch (err) {
        const code = errnoCode(err);
        if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
      }
      if (ok) this.realDirs.add('');
      return ok;
    }
    if (!(await this.isRealDir(parentOf(rel)))) return false;
    const st = await lstatOrUndefined(this.abs(rel));
    if (!st || !st.isDirectory()) return false;
    this.realDirs.add(rel);
    return true;
  }

  /** Throws a clear error unless the parent of rel is a real directory. */
  private async requireParent(rel: string): Promise<void> {
    const parent = parentOf(rel);
    if (await this.isRealDir(parent)) return;
    // Find the first component that is wrong, for the message.
    if (!(await this.isRealDir(''))) throw new Error(`${this.description} does not exist or is not a directory`);
    let cur = '';
    for (const part of parent.split('/')) {
      cur = cur === '' ? part : `${cur}/${part}`;
      if (this.realDirs.has(cur)) continue;
      const st = await lstatOrUndefined(this.abs(cur));
      const why = !st ? 'does not exist' : st.isSymbolicLink() ? 'is a symlink (never followed when writing)' : 'is not a directory';
      throw new Error(`${this.shown(rel)}: cannot write it: ${this.shown(cur)} ${why}`);
    }
    throw new Error(`${this.shown(rel)}: cannot write it: its parent is not a directory`);
  }

  /** Drops cached knowledge about rel and everything below it. */
  private forget(rel: string): void {
    if (rel === '') {
      this.realDirs.clear();
      return;
    }
    this.realDirs.delete(rel);
    const prefix = rel + '/';
    for (const known of this.realDirs) if (known.startsWith(prefix)) this.realDirs.delete(known);
  }

  private usable(): void {
    if (this.closed) throw new Error(`${this.description}: writer already closed`);
  }

  // ---- reading ---------------------------------------------------------------

  async readFile(rel: string): Promise<Buffer | undefined> {
    const r = this.check(rel, false);
    if (!(await this.isRealDir(parentOf(r)))) return undefined;
    let handle: fs.FileHandle;
    try {
      // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not a file).
      handle = await fs.open(this.abs(r), O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP') return undefined;
      throw err;
    }
    try {
      if (!(await handle.stat()).isFile()) return undefined;
      return await handle.readFile();
    } finally {
      await handle.close();
    }
  }

  async readdir(rel: string): Promise<string[] | undefined> {
    const r = this.check(rel, true);
    if (!(await this.isRealDir(r))) return undefined;
    return (await fs.readdir(this.abs(r), { encoding: 'buffer' })).map((n) => nameFromBytes(n));
  }

  async kindOf(rel: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined> {
    const r = this.check(rel, true);
    if (r === '') return (await this.isRealDir('')) ? 'directory' : undefined;
    if (!(await this.isRealDir(parentOf(r)))) return undefined;
    const st = await lstatOrUndefined(this.abs(r));
    if (!st) return undefined;
    if (st.isFile()) return 'file';
    if (st.isDirectory()) return 'directory';
    if (st.isSymbolicLink()) return 'symlink';
    return 'other';
  }

  async readlink(rel: string): Promise<string | undefined> {
    const r = this.check(rel, false);
    if (!(await this.isRealDir(parentOf(r)))) return undefined;
    const st = await lstatOrUndefined(this.abs(r));
    if (!st || !st.isSymbolicLink()) return undefined;
    return nameFromBytes(await fs.readlink(this.abs(r), { encoding: 'buffer' }));
  }

  async freeSpace(): Promise<FreeSpace | undefined> {
    try {
      const st = await fs.statfs(this.root);
      return { bytes: st.bavail * st.bsize, inodes: st.ffree };
    } catch (err) {
      if (errnoCode(err) === 'ENOSYS') return undefined;
      throw err;
    }
  }

  // ---- engine metadata -------------------------------------------------------

  async mkdirp(rel: string, mode: number): Promise<void> {
    this.usable();
    const r = this.check(rel, true);
    if (!(await this.isRealDir(''))) throw new Error(`${this.description} does not exist or is not a directory`);
    if (r === '') return;
    let cur = '';
    for (const part of r.split('/')) {
      cur = cur === '' ? part : `${cur}/${part}`;
      if (this.realDirs.has(cur)) continue;
      const abs = this.abs(cur);
      const st = await lstatOrUndefined(abs);
      if (st) {
        if (!st.isDirectory()) {
          const what = st.isSymbolicLink() ? 'a symlink (never followed when writing)' : 'not a directory';
          throw new Error(`${this.shown(cur)} exists and is ${what}; remove it or choose another target`);
        }
      } else {
        this.written = true;
        await fs.mkdir(abs, mode & 0o7777);
        await fs.chmod(abs, mode & 0o7777); // the umask applied to mkdir
      }
      this.realDirs.add(cur);
    }
  }

  async writeFile(rel: string, data: Buffer, mode: number): Promise<void> {
    this.usable();
    const r = this.check(rel, false);
    await this.requireParent(r);
    const abs = this.abs(r);
    const st = await lstatOrUndefined(abs);
    if (st && !st.isFile()) await this.removeExisting(r);
    this.written = true;
    const handle = await fs.open(abs, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode & 0o7777);
    try {
      await this.writeAll(handle, data, 0, data.length, r);
      if (process.getuid?.() === 0) await handle.chown(0, 0);
      await handle.chmod(mode & 0o7777);
    } finally {
      await handle.close();
    }
  }

  async symlink(target: string, rel: string): Promise<void> {
    this.usable();
    const r = this.check(rel, false);
    if (target.includes('\0')) throw new Error(`${this.shown(r)}: refusing a symlink target with a NUL byte`);
    await this.requireParent(r);
    await this.removeExisting(r);
    this.written = true;
    await fs.symlink(fsName(target), this.abs(r));
  }

  async rename(fromRel: string, toRel: string): Promise<void> {
    this.usable();
    const from = this.check(fromRel, false);
    const to = this.check(toRel, false);
    await this.requireParent(from);
    await this.requireParent(to);
    const src = await lstatOrUndefined(this.abs(from));
    if (!src) throw new Error(`${this.shown(from)}: cannot rename it: it does not exist`);
    const dst = await lstatOrUndefined(this.abs(to));
    if (dst && !(dst.ino === src.ino && dst.dev === src.dev)) {
      if (dst.isDirectory() && !src.isDirectory()) {
        throw new Error(`${this.shown(from)}: cannot rename it over the directory ${this.shown(to)}`);
      }
      // rename(2) replaces files atomically but not non-empty directories, nor a file by a directory.
      if (src.isDirectory()) await this.removeExisting(to);
    }
    this.written = true;
    await fs.rename(this.abs(from), this.abs(to));
    this.forget(from);
    this.forget(to);
  }

  async remove(rel: string): Promise<void> {
    this.usable();
    const r = this.check(rel, true);
    if (r === '') throw new Error(`${this.description}: refusing to remove the root`);
    if (!(await this.isRealDir(parentOf(r)))) return;
    await this.removeExisting(r);
  }

  /** Removes whatever is at rel (a whole tree for a directory), never following a symlink. No error if absent. */
  private async removeExisting(rel: string): Promise<void> {
    const abs = nameToBytes(rel === '' ? this.root : `${this.root}/${rel}`);
    const st = await lstatOrUndefined(abs);
    if (!st) return;
    this.written = true;
    if (st.isDirectory()) await this.removeTree(abs);
    else await fs.unlink(abs);
    this.forget(rel);
  }

  /** Depth-first removal by raw names (Buffers), so names that are not UTF-8 are removed too. */
  private async removeTree(dir: Buffer): Promise<void> {
    for (const name of await fs.readdir(dir, { encoding: 'buffer' })) {
      const child = Buffer.concat([dir, Buffer.from('/'), name]);
      const st = await lstatOrUndefined(child);
      if (!st) continue;
      if (st.isDirectory()) await this.removeTree(child);
      else await fs.unlink(child);
    }
    await fs.rmdir(dir);
  }

  // ---- layer content ---------------------------------------------------------

  async writeEntry(root: string, entry: LayerEntry, content?: AsyncIterable<Buffer>): Promise<void> {
    this.usable();
    const tree = this.check(root, true);
    const rel = entry.path === '.' ? tree : this.joinIn(tree, entry.path);
    const shown = this.shown(rel);
    // Everything that can be refused is checked before anything is written.
    for (const [v, what] of [[entry.uid, 'uid'], [entry.gid, 'gid']] as const) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`${shown}: ${what} ${v} is out of range`);
    }
    if (!Number.isInteger(entry.mode) || entry.mode < 0) throw new Error(`${shown}: invalid mode ${entry.mode}`);
    for (const x of entry.xattrs) {
      if (x.name === '' || x.name.includes('\0')) throw new Error(`${shown}: invalid extended attribute name ${JSON.stringify(x.name)}`);
    }
    if (entry.kind === 'hardlink') {
      if (!entry.linkTarget) throw new Error(`${shown}: hard link without a target`);
      await this.writeHardlink(rel, this.joinIn(tree, entry.linkTarget));
      return;
    }
    if (rel === '' && entry.kind !== 'directory') throw new Error(`${shown}: the root of a tree must be a directory, not a ${entry.kind}`);
    const abs = this.abs(rel);
    this.written = true;
    switch (entry.kind) {
      case 'directory':
        await this.writeDirectory(rel);
        break;
      case 'file':
        // Owner, mode, xattrs and times are applied on the open file, in writeRegular.
        await this.writeRegular(rel, entry, content);
        return;
      case 'symlink':
        if (entry.linkTarget === undefined) throw new Error(`${shown}: symlink without a target`);
        if (entry.linkTarget.includes('\0')) throw new Error(`${shown}: refusing a symlink target with a NUL byte`);
        await this.requireParent(rel);
        await this.removeExisting(rel);
        await fs.symlink(fsName(entry.linkTarget), abs);
        break;
      case 'char-device':
      case 'block-device':
      case 'fifo': {
        const kind = entry.kind;
        await this.requireParent(rel);
        await this.removeExisting(rel);
        // Created with no permission bits: the chmod below sets them exactly (mknod applies the umask).
        await this.attempt(shown, `create the ${kind}`, () => mknod(abs, kind, 0, entry.devMajor ?? 0, entry.devMinor ?? 0));
        break;
      }
      default:
        throw new Error(`${shown}: unknown entry kind ${String((entry as { kind: unknown }).kind)}`);
    }
    // Owner before mode: chown(2) clears setuid/setgid (and security.capability, so xattrs come after it).
    // Synchronous: tiny calls, cheaper on the main thread than a thread-pool round trip.
    await this.attempt(shown, `set its owner to ${entry.uid}:${entry.gid}`, () => lchownSync(abs, entry.uid, entry.gid));
    if (entry.kind !== 'symlink') await this.attempt(shown, 'set its mode', () => chmodSync(abs, entry.mode & 0o7777));
    for (const x of entry.xattrs) {
      await this.attempt(shown, `set the extended attribute ${x.name}`, () => setXattr(abs, x.name, x.value));
    }
    if (entry.kind === 'directory') {
      // Writing the contents changes a directory's times: set them in finishTree, deepest first.
      let list = this.deferred.get(tree);
      if (!list) this.deferred.set(tree, (list = []));
      list.push({ rel, depth: depthOf(rel), atime: entry.atime, mtime: entry.mtime });
    } else {
      await this.attempt(shown, 'set its times', () => lutimes(abs, entry.atime, entry.mtime));
    }
  }

  private joinIn(tree: string, entryPath: string): string {
    const p = this.check(entryPath, false);
    return tree === '' ? p : `${tree}/${p}`;
  }

  /** Runs one attribute call, turning its failure into one line that says what to do. */
  private async attempt(shown: string, action: string, fn: () => unknown): Promise<void> {
    try {
      await fn();
    } catch (err) {
      throw this.failure(shown, action, err);
    }
  }

  /** A failed fileAttrs/createFile call as one line naming the attribute that could not be set. */
  private attrFailure(shown: string, entry: LayerEntry, err: unknown): Error {
    const e = err as NodeJS.ErrnoException & { xattr?: string };
    const action =
      e.syscall === 'fchown'
        ? `set its owner to ${entry.uid}:${entry.gid}`
        : e.syscall === 'fchmod'
          ? 'set its mode'
          : e.syscall === 'fsetxattr'
            ? `set the extended attribute ${e.xattr ?? '?'}`
            : e.syscall === 'futimens'
              ? 'set its times'
              : e.syscall === 'write' || e.syscall === 'close'
                ? 'write its content'
                : 'create it';
    return this.failure(shown, action, err);
  }

  private failure(shown: string, action: string, err: unknown): Error {
    {
      const code = errnoCode(err);
      const hint =
        code === 'EPERM' || code === 'EACCES'
          ? ': writing layer files needs root'
          : code === 'ENOTSUP' || code === 'EOPNOTSUPP'
            ? ': the file system does not support it'
            : '';
      const e = new Error(`${shown}: cannot ${action} (${code ?? (err as Error).message})${hint}`);
      (e as NodeJS.ErrnoException).code = code;
      return e;
    }
  }

  private async writeDirectory(rel: string): Promise<void> {
    if (rel === '') {
      if (!(await this.isRealDir(''))) throw new Error(`${this.description} does not exist or is not a directory`);
      return;
    }
    await this.requireParent(rel);
    const abs = this.abs(rel);
    // mkdir first (synchronous: one tiny call): it never follows a symlink in its last
    // component, and EEXIST tells us to look at what is there.
    try {
      mkdirSync(abs, 0o700);
      this.realDirs.add(rel);
      return;
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw err;
    }
    const st = await lstatOrUndefined(abs);
    if (st?.isDirectory()) {
      this.realDirs.add(rel);
      return;
    }
    if (st) await this.removeExisting(rel);
    await fs.mkdir(abs, 0o700);
    this.realDirs.add(rel);
  }

  private async createExclusive(rel: string): Promise<fs.FileHandle> {
    const abs = this.abs(rel);
    const flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW;
    try {
      return await fs.open(abs, flags, 0o600);
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw err;
    }
    await this.removeExisting(rel);
    return fs.open(abs, flags, 0o600);
  }

  /** Exactly entry.size bytes of content in one Buffer (small files only). */
  private async gather(shown: string, entry: LayerEntry, content: AsyncIterable<Buffer> | undefined): Promise<Buffer> {
    let only: Buffer | undefined;
    let parts: Buffer[] | undefined;
    let total = 0;
    if (content) {
      for await (const piece of content) {
        total += piece.length;
        if (total > entry.size) throw new Error(`${shown}: content is longer than its size ${entry.size}`);
        if (piece.length === 0) continue;
        if (!only) only = piece;
        else (parts ??= [only]).push(piece);
      }
    }
    if (total !== entry.size) throw new Error(`${shown}: content is ${total} bytes, expected ${entry.size}`);
    return parts ? Buffer.concat(parts, total) : (only ?? Buffer.alloc(0));
  }

  private async writeRegular(rel: string, entry: LayerEntry, content: AsyncIterable<Buffer> | undefined): Promise<void> {
    const shown = this.shown(rel);
    await this.requireParent(rel);
    const attrs: FileAttributes = entry;
    if (entry.size <= SMALL_FILE) {
      const data = await this.gather(shown, entry, content);
      const abs = this.abs(rel);
      try {
        createFile(abs, data, attrs);
      } catch (err) {
        if (errnoCode(err) !== 'EEXIST' || (err as NodeJS.ErrnoException).syscall !== 'open') throw this.attrFailure(shown, entry, err);
        // Something is in the way (a file of a lower layer, a symlink): replace it, never follow it.
        await this.removeExisting(rel);
        try {
          createFile(abs, data, attrs);
        } catch (err2) {
          throw this.attrFailure(shown, entry, err2);
        }
      }
      return;
    }
    const handle = await this.createExclusive(rel);
    try {
      await writeChunked(content, entry.size, this.chunk, (buf, length) => this.writeAll(handle, buf, 0, length, rel), shown, { passLarge: true });
      try {
        fileAttrs(handle.fd, attrs);
      } catch (err) {
        throw this.attrFailure(shown, entry, err);
      }
    } finally {
      await handle.close();
    }
  }

  private async writeAll(handle: fs.FileHandle, buf: Buffer, offset: number, length: number, rel: string): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesWritten } = await handle.write(buf, offset + done, length - done, null);
      if (bytesWritten <= 0) throw new Error(`${this.shown(rel)}: short write (file system full?)`);
      done += bytesWritten;
    }
  }

  private async writeHardlink(rel: string, targetRel: string): Promise<void> {
    const shown = this.shown(rel);
    await this.requireParent(rel);
    if (!(await this.isRealDir(parentOf(targetRel)))) {
      throw new Error(`${shown}: hard-link target ${this.shown(targetRel)} is not inside a real directory`);
    }
    const target = await lstatOrUndefined(this.abs(targetRel));
    if (!target) throw new Error(`${shown}: hard-link target ${this.shown(targetRel)} does not exist`);
    if (target.isDirectory()) throw new Error(`${shown}: hard-link target ${this.shown(targetRel)} is a directory`);
    const existing = await lstatOrUndefined(this.abs(rel));
    if (existing && existing.ino === target.ino && existing.dev === target.dev) return;
    await this.removeExisting(rel);
    this.written = true;
    // link(2) does not follow a symlink target: the link is to the symlink itself.
    await fs.link(this.abs(targetRel), this.abs(rel));
  }

  async finishTree(root: string): Promise<void> {
    const tree = this.check(root, true);
    const list = this.deferred.get(tree);
    this.deferred.delete(tree);
    if (list) await this.applyTimes(list);
  }

  private async applyTimes(list: DeferredTime[]): Promise<void> {
    list.sort((a, b) => b.depth - a.depth);
    for (const d of list) {
      // Skip what a later entry replaced (a directory that became a symlink is never touched).
      if (!(await this.isRealDir(d.rel))) continue;
      await this.attempt(this.shown(d.rel), 'set its times', () => lutimes(this.abs(d.rel), d.atime, d.mtime));
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const pending = [...this.deferred.values()].flat();
    this.deferred.clear();
    if (pending.length > 0) await this.applyTimes(pending);
    // Everything on its device before we say it is done (the target may be an SD card about to be pulled).
    if (this.written) syncFs(this.root);
  }
}
