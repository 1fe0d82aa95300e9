import * as fs from 'node:fs';
import type { LayerEntry } from '../layer/entry.js';
import type { FreeSpace, TreeWriter } from './tree-writer.js';
import { ImageFile } from '../ext4/image-file.js';
import { Ext4Volume } from '../ext4/volume.js';
import { Ext4Tree, ROOT_INO, keyName, nameKey } from '../ext4/tree.js';
import { FT_DIR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../ext4/inode.js';
import { blockXattrBytes, encodeXattr, inodeXattrBytes, type EncodedXattr } from '../ext4/xattr.js';
import { ext4FileAccess } from '../ext4/file-access.js';
import type { LayerFileAccess } from '../verify/verify.js';

export interface Ext4TreeWriterOptions {
  /** For messages, e.g. `balena.img:resin-data`. */
  description?: string;
  /** Bytes the file system may span (its partition); bounds what the superblock claims. */
  limit?: number;
}

interface Session {
  image: ImageFile;
  vol: Ext4Volume;
  tree: Ext4Tree;
}

type Kind = 'file' | 'directory' | 'symlink' | 'other';

/** Directory-entry file_type of each layer entry kind (fs/ext4/ext4.h EXT4_FT_*). */
const FILE_TYPE: Record<LayerEntry['kind'], number> = {
  file: 1, directory: 2, 'char-device': 3, 'block-device': 4, fifo: 5, symlink: 7, hardlink: 0,
};

/** Directory paths remembered at most (a few hundred KB). */
const DIR_CACHE_MAX = 8192;

/**
 * A TreeWriter over the ext4 file system at byte `fsOffset` of an image file, written
 * in-process by transplant's own engine (src/ext4/volume.ts, tree.ts): blocks and inodes
 * from the bitmaps, extent trees, whole linear directories, every attribute set directly.
 *
 * The file system is opened lazily on first use; `suspend()` writes everything (bitmaps,
 * descriptors, superblock, changed directories) and closes it (before growing the
 * partition), the next call opens it again. The first open checks the bitmaps against the
 * inodes in use and refuses a file system that lies.
 */
export class Ext4TreeWriter implements TreeWriter {
  readonly description: string;
  private session: Session | undefined;
  private closed = false;
  private checked = false;
  private readonly limit: number | undefined;
  /**
   * Directories found by path (pre-order writing comes back to a parent after each
   * subdirectory); dropped whenever an entry is removed or replaced, and with the session.
   */
  private dirCache: { tree: Ext4Tree; inos: Map<string, number> } | undefined;

  constructor(readonly imagePath: string, readonly fsOffset: number, options: Ext4TreeWriterOptions = {}) {
    this.description = options.description ?? `${imagePath}@${fsOffset}`;
    this.limit = options.limit;
  }

  // ---- lifecycle -------------------------------------------------------------

  private queue: Promise<unknown> = Promise.resolve();
  private serial<T>(fn: () => Promise<T> | T): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private open(): Session {
    if (this.closed) throw new Error(`${this.description}: writer already closed`);
    if (this.session) {
      this.session.tree.trimCache();
      return this.session;
    }
    const image = ImageFile.open(this.imagePath, true, { gather: true });
    try {
      const vol = Ext4Volume.open(image, this.fsOffset, { where: this.description, writable: true, limit: this.limit, check: !this.checked });
      this.checked = true;
      this.session = { image, vol, tree: new Ext4Tree(vol) };
      return this.session;
    } catch (err) {
      image.close();
      throw err;
    }
  }

  /** Writes everything and closes the file system; the next call opens it again. */
  async suspend(): Promise<void> {
    return this.serial(() => this.suspendNow());
  }

  private suspendNow(): void {
    const s = this.session;
    if (!s) return;
    this.session = undefined;
    try {
      s.tree.flushDirs();
      s.vol.flush();
      s.image.sync();
    } finally {
      s.image.close();
    }
  }

  async close(): Promise<void> {
    return this.serial(() => {
      if (this.closed) return;
      this.suspendNow();
      this.closed = true;
    });
  }

  /** Drops the session without writing anything more (abandoning a work copy). */
  async discard(): Promise<void> {
    return this.serial(() => {
      const s = this.session;
      this.session = undefined;
      this.closed = true;
      s?.image.close();
    });
  }

  // ---- paths -----------------------------------------------------------------

  private parts(rel: string): string[] {
    if (rel === '' || rel === '.') return [];
    const comps = rel.split('/');
    if (rel.startsWith('/') || rel.includes('\0') || comps.some((c) => c === '..' || c === '' || c === '.')) {
      throw new Error(`${this.description}: refusing path ${JSON.stringify(rel)}`);
    }
    // A directory entry's name_len is one byte (EXT4_NAME_LEN 255, fs/ext4/ext4.h).
    if (comps.some((c) => Buffer.byteLength(c) > 255)) throw new Error(`${this.description}: refusing path ${JSON.stringify(rel.slice(0, 300))}: a name longer than 255 bytes`);
    return comps;
  }

  private join(root: string, entryPath: string): string {
    if (entryPath === '.' || entryPath === '') return root === '.' ? '' : root;
    return root === '' || root === '.' ? entryPath : `${root}/${entryPath}`;
  }

  /** Inode of the real directory at these components (no symlink followed), or undefined. */
  private dirAt(t: Ext4Tree, comps: string[]): number | undefined {
    if (comps.length === 0) return ROOT_INO;
    if (this.dirCache?.tree !== t || this.dirCache.inos.size > DIR_CACHE_MAX) this.dirCache = { tree: t, inos: new Map() };
    const joined = comps.join('/');
    const known = this.dirCache.inos.get(joined);
    if (known !== undefined) return known;
    const parent = this.dirAt(t, comps.slice(0, -1));
    if (parent === undefined) return undefined;
    // The entry's file_type byte says directory (filetype is required); loadDir checks the inode's mode.
    const e = t.entry(parent, nameKey(comps[comps.length - 1] as string));
    if (!e || e.type !== FT_DIR) return undefined;
    this.dirCache.inos.set(joined, e.ino);
    return e.ino;
  }

  /** (parent directory inode, key) of a path whose parent must exist. */
  private parentOf(t: Ext4Tree, rel: string): { dir: number; key: string } {
    const comps = this.parts(rel);
    if (comps.length === 0) throw new Error(`${this.description}: refusing to replace the root`);
    const dir = this.dirAt(t, comps.slice(0, -1));
    if (dir === undefined) throw new Error(`${this.description}: /${comps.slice(0, -1).join('/')} is not a directory`);
    return { dir, key: nameKey(comps[comps.length - 1]) };
  }

  private at(t: Ext4Tree, rel: string): number | undefined {
    const comps = this.parts(rel);
    if (comps.length === 0) return ROOT_INO;
    const dir = this.dirAt(t, comps.slice(0, -1));
    if (dir === undefined) return undefined;
    return t.entry(dir, nameKey(comps[comps.length - 1]))?.ino;
  }

  private kindOfIno(t: Ext4Tree, ino: number): Kind {
    switch (t.info(ino).mode & S_IFMT) {
      case S_IFREG: return 'file';
      case S_IFDIR: return 'directory';
      case S_IFLNK: return 'symlink';
      default: return 'other';
    }
  }

  // ---- reading ---------------------------------------------------------------

  /** Streaming layer-file access with device numbers and xattrs (for verify after a write). */
  fileAccess(): LayerFileAccess {
    return ext4FileAccess(() => this.open().tree);
  }

  async readFile(rel: string): Promise<Buffer | undefined> {
    return this.serial(() => {
      const { tree } = this.open();
      const ino = this.at(tree, rel);
      if (ino === undefined || this.kindOfIno(tree, ino) !== 'file') return undefined;
      return tree.readWhole(ino);
    });
  }

  async stat(rel: string): Promise<{ mode: number; uid: number; gid: number; size: number; allocated: number } | undefined> {
    return this.serial(() => {
      const { tree } = this.open();
      const ino = this.at(tree, rel);
      if (ino === undefined) return undefined;
      const i = tree.info(ino);
      return { mode: i.mode, uid: i.uid, gid: i.gid, size: i.size, allocated: i.allocated };
    });
  }

  /** Streams a regular file out to a new host file (all-zero MiB runs become holes). Returns its size. */
  async copyOut(rel: string, hostPath: string): Promise<number> {
    return this.serial(async () => {
      const { tree, vol } = this.open();
      const ino = this.at(tree, rel);
      if (ino === undefined || this.kindOfIno(tree, ino) !== 'file') throw new Error(`${this.description}: /${rel} is not a regular file`);
      const out = fs.openSync(hostPath, 'wx', 0o600);
      try {
        const size = tree.info(ino).size;
        fs.ftruncateSync(out, size);
        const zero = Buffer.alloc(1 << 20);
        let pos = 0;
        for await (const chunk of vol.streamFile(ino)) {
          if (chunk.compare(zero, 0, chunk.length, 0, chunk.length) !== 0) {
            let w = 0;
            while (w < chunk.length) w += fs.writeSync(out, chunk, w, chunk.length - w, pos + w);
          }
          pos += chunk.length;
        }
        fs.fsyncSync(out);
        return size;
      } finally {
        fs.closeSync(out);
      }
    });
  }

  async readdir(rel: string): Promise<string[] | undefined> {
    return this.serial(() => {
      const { tree } = this.open();
      const dir = this.dirAt(tree, this.parts(rel));
      return dir === undefined ? undefined : tree.list(dir);
    });
  }

  async kindOf(rel: string): Promise<Kind | undefined> {
    return this.serial(() => {
      const { tree } = this.open();
      const ino = this.at(tree, rel);
      return ino === undefined ? undefined : this.kindOfIno(tree, ino);
    });
  }

  async readlink(rel: string): Promise<string | undefined> {
    return this.serial(() => {
      const { tree } = this.open();
      const ino = this.at(tree, rel);
      if (ino === undefined || this.kindOfIno(tree, ino) !== 'symlink') return undefined;
      return tree.readlink(ino);
    });
  }

  /** Free blocks × block size and free inodes, as they are now. */
  async freeSpace(): Promise<FreeSpace | undefined> {
    return this.serial(() => {
      const { vol } = this.open();
      return { bytes: vol.sb.freeBlocksCount * vol.bs, inodes: vol.sb.freeInodesCount };
    });
  }

  // ---- engine metadata -------------------------------------------------------

  private meta(mode: number, kind: LayerEntry['kind'], path: string): LayerEntry {
    const now = BigInt(Date.now()) * 1_000_000n;
    return { path, kind, mode: mode & 0o7777, uid: 0, gid: 0, mtime: now, atime: now, size: 0, xattrs: [] };
  }

  async mkdirp(rel: string, mode: number): Promise<void> {
    return this.serial(async () => {
      const { tree } = this.open();
      let dir = ROOT_INO;
      const comps = this.parts(rel);
      for (let i = 0; i < comps.length; i++) {
        const key = nameKey(comps[i]);
        const e = tree.entry(dir, key);
        if (e) {
          if (!tree.isDir(e.ino)) throw new Error(`${this.description}: /${comps.slice(0, i + 1).join('/')} exists and is not a directory`);
          dir = e.ino;
          continue;
        }
        const ino = await tree.createEntry(dir, this.meta(mode, 'directory', comps[i]), [], undefined, comps.slice(0, i + 1).join('/'));
        tree.addEntry(dir, key, ino, FT_DIR);
        dir = ino;
      }
    });
  }

  async writeFile(rel: string, data: Buffer, mode: number): Promise<void> {
    return this.serial(async () => {
      const { tree } = this.open();
      const { dir, key } = this.parentOf(tree, rel);
      const e = tree.entry(dir, key);
      const what = rel;
      if (e && this.kindOfIno(tree, e.ino) === 'file' && tree.info(e.ino).links === 1) {
        await tree.rewriteFile(e.ino, data, mode, what);
        return;
      }
      if (e) {
        this.dirCache = undefined;
        tree.removeEntry(dir, key);
      }
      const entry = { ...this.meta(mode, 'file', rel), size: data.length };
      const ino = await tree.createEntry(dir, entry, [], [data] as unknown as AsyncIterable<Buffer>, what);
      tree.addEntry(dir, key, ino, 1);
    });
  }

  async symlink(target: string, rel: string): Promise<void> {
    return this.serial(async () => {
      const { tree } = this.open();
      const { dir, key } = this.parentOf(tree, rel);
      if (tree.entry(dir, key)) {
        this.dirCache = undefined;
        tree.removeEntry(dir, key);
      }
      const ino = await tree.createEntry(dir, { ...this.meta(0o777, 'symlink', rel), linkTarget: target }, [], undefined, rel);
      tree.addEntry(dir, key, ino, 7);
    });
  }

  async rename(fromRel: string, toRel: string): Promise<void> {
    return this.serial(() => {
      this.dirCache = undefined;
      const { tree } = this.open();
      const from = this.parentOf(tree, fromRel);
      const to = this.parentOf(tree, toRel);
      const src = tree.entry(from.dir, from.key);
      if (!src) throw new Error(`${this.description}: cannot rename /${fromRel}: it does not exist`);
      const dst = tree.entry(to.dir, to.key);
      if (dst && dst.ino === src.ino) return;
      if (dst) {
        if (tree.isDir(dst.ino) && !tree.isDir(src.ino)) throw new Error(`${this.description}: cannot rename /${fromRel} over the directory /${toRel}`);
        tree.removeEntry(to.dir, to.key);
      }
      tree.moveEntry(from.dir, from.key, to.dir, to.key);
    });
  }

  async remove(rel: string): Promise<void> {
    return this.serial(() => {
      this.dirCache = undefined;
      const { tree } = this.open();
      const comps = this.parts(rel);
      if (comps.length === 0) throw new Error(`${this.description}: refusing to remove the root`);
      const dir = this.dirAt(tree, comps.slice(0, -1));
      if (dir === undefined) return;
      tree.removeEntry(dir, nameKey(comps[comps.length - 1]));
    });
  }

  // ---- layer content ---------------------------------------------------------

  async writeEntry(root: string, entry: LayerEntry, content?: AsyncIterable<Buffer>): Promise<void> {
    return this.serial(() => this.writeEntryNow(root, entry, content));
  }

  private async writeEntryNow(root: string, entry: LayerEntry, content?: AsyncIterable<Buffer>): Promise<void> {
    const rel = this.join(root, entry.path);
    const where = `${this.description}:/${rel}`;
    this.parts(rel);
    // Everything that can be refused is checked before anything is written.
    let xattrs: EncodedXattr[];
    try {
      xattrs = entry.xattrs.map((x) => {
        if (x.name === '' || x.name.includes('\0')) throw new Error(`invalid extended attribute name ${JSON.stringify(x.name)}`);
        return encodeXattr(x);
      });
    } catch (err) {
      throw new Error(`${where}: ${(err as Error).message}`);
    }
    for (const [v, what] of [[entry.uid, 'uid'], [entry.gid, 'gid']] as const) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`${where}: ${what} ${v} out of range`);
    }
    if (!Number.isInteger(entry.mode) || entry.mode < 0) throw new Error(`${where}: invalid mode ${entry.mode}`);
    if (entry.kind === 'symlink' && (entry.linkTarget === undefined || entry.linkTarget === '' || entry.linkTarget.includes('\0'))) {
      throw new Error(`${where}: invalid symlink target`);
    }
    const isRoot = entry.path === '.' || entry.path === '';
    if (isRoot && entry.kind !== 'directory') throw new Error(`${where}: the root of a tree must be a directory, not a ${entry.kind}`);
    const { tree, vol } = this.open();
    if (inodeXattrBytes(xattrs) > Math.max(0, vol.sb.inodeSize - 160) && blockXattrBytes(xattrs) > vol.bs) {
      throw new Error(`${where}: its extended attributes need ${blockXattrBytes(xattrs)} bytes, more than one ${vol.bs}-byte block holds (values on their own inodes are not supported)`);
    }

    if (isRoot && rel === '') {
      tree.setAttributes(ROOT_INO, entry, xattrs, rel);
      return;
    }
    const { dir, key } = this.parentOf(tree, rel);
    const existing = tree.entry(dir, key);
    if (entry.kind === 'hardlink') {
      if (!entry.linkTarget) throw new Error(`${where}: hard link without a target`);
      const targetRel = this.join(root, entry.linkTarget);
      const tParent = this.dirAt(tree, this.parts(targetRel).slice(0, -1));
      if (tParent === undefined) throw new Error(`${where}: hard-link target /${targetRel} is not inside a directory`);
      const target = this.at(tree, targetRel);
      if (target === undefined) throw new Error(`${where}: hard-link target /${targetRel} does not exist`);
      if (tree.isDir(target)) throw new Error(`${where}: hard-link target /${targetRel} is a directory`);
      if (existing?.ino === target) return;
      if (existing) {
        this.dirCache = undefined;
        tree.removeEntry(dir, key);
      }
      tree.link(dir, key, target);
      return;
    }
    if (entry.kind === 'directory' && existing && tree.isDir(existing.ino)) {
      tree.setAttributes(existing.ino, entry, xattrs, rel);
      return;
    }
    if (existing) {
      this.dirCache = undefined;
      tree.removeEntry(dir, key);
    }
    const ino = await tree.createEntry(dir, entry, xattrs, content, rel);
    tree.addEntry(dir, key, ino, FILE_TYPE[entry.kind]);
    tree.maybeFlushDirs();
  }

  async finishTree(_root: string): Promise<void> {
    return this.serial(() => {
      this.session?.tree.flushDirs();
    });
  }
}

export { keyName };
