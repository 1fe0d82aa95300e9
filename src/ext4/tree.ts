import { entryLinkTargetBytes, nameFromBytes, nameToBytes, type LayerEntry } from '../layer/entry.js';
import { writeChunkedOverlapped } from '../stream/chunked-write.js';
import { crc32c, crc32cU32 } from './crc32c.js';
import {
  EXT4_EXTENTS_FL, EXT4_INDEX_FL, FT_DIR, GOOD_OLD_INODE_SIZE, I_ATIME, I_ATIME_EXTRA, I_BLOCK, I_BLOCKS_HI, I_BLOCKS_LO,
  I_CRTIME, I_CRTIME_EXTRA, I_CTIME, I_CTIME_EXTRA, I_EXTRA_ISIZE, I_FILE_ACL_HI, I_FILE_ACL_LO, I_FLAGS, I_GID_HI, I_GID_LO,
  I_LINKS, I_MODE, I_MTIME, I_MTIME_EXTRA, I_SIZE_HIGH, I_SIZE_LO, I_UID_HI, I_UID_LO, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO,
  S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, fileTypeOfMode, writeDeviceNumbers, writeOwner, writeTime,
} from './inode.js';
import { RO_COMPAT_DIR_NLINK, RO_COMPAT_HUGE_FILE, RO_COMPAT_LARGE_FILE } from './superblock.js';
import { Ext4Damaged, Ext4Volume, type Extent } from './volume.js';
import { DX_HASH_HALF_MD4, buildHtree, halfMd4Hash } from './htree.js';
import { XATTR_MAGIC, blockXattrBytes, buildXattrBlock, inodeXattrBytes, writeInodeXattrs, type EncodedXattr } from './xattr.js';

/**
 * Names are bytes on disk. Paths arrive as JS strings; this is the one place they become
 * directory-entry bytes (and back): a directory's entries are keyed by the latin1 string
 * of their bytes, which maps bytes one to one.
 */
export function nameKey(component: string): string {
  return nameToBytes(component).toString('latin1');
}
export function keyBytes(key: string): Buffer {
  return Buffer.from(key, 'latin1');
}
export function keyName(key: string): string {
  return nameFromBytes(keyBytes(key));
}

export const ROOT_INO = 2;
const EXT4_LINK_MAX = 65000; // fs/ext4/ext4.h
const WANT_EXTRA_ISIZE = 32;
const MAX_EXTENT_LEN = 32768; // initialised extents (fs/ext4/ext4_extents.h EXT_INIT_MAX_LEN)
const DIR_TAIL = 12;
const WRITE_CHUNK = 4 * 1024 * 1024;
/** Files up to this size are written with synchronous calls, gathered by the image file. */
const SMALL_CONTENT = 64 * 1024;

interface DirEntry {
  ino: number;
  type: number;
}

interface Dir {
  ino: number;
  parent: number;
  /** Entries other than '.' and '..', in on-disk order. */
  entries: Map<string, DirEntry>;
  dirty: boolean;
}

export interface InodeInfo {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  links: number;
  allocated: number;
  atime: bigint;
  mtime: bigint;
  ctime: bigint;
  rdev: { major: number; minor: number };
}

function readTime(inode: Buffer, secOff: number, extraOff: number): bigint {
  let sec = BigInt(inode.readInt32LE(secOff));
  let ns = 0n;
  if (inode.length > GOOD_OLD_INODE_SIZE && GOOD_OLD_INODE_SIZE + inode.readUInt16LE(I_EXTRA_ISIZE) >= extraOff + 4) {
    const extra = inode.readUInt32LE(extraOff);
    sec += BigInt(extra & 3) << 32n;
    ns = BigInt(extra >>> 2);
  }
  return sec * 1_000_000_000n + ns;
}

/** Device numbers from i_block (fs/ext4/inode.c ext4_iget: old_decode_dev / new_decode_dev). */
function readDevice(inode: Buffer): { major: number; minor: number } {
  const old = inode.readUInt32LE(I_BLOCK);
  if (old !== 0) return { major: (old >>> 8) & 0xff, minor: old & 0xff };
  const v = inode.readUInt32LE(I_BLOCK + 4);
  return { major: (v & 0xfff00) >>> 8, minor: (v & 0xff) | ((v >>> 12) & 0xfff00) };
}

const NAME_INDEX_PREFIX: Record<number, string> = { 1: 'user.', 4: 'trusted.', 6: 'security.', 7: 'system.' };

/**
 * Paths, directories and inodes on top of an Ext4Volume. Directories are read whole and
 * written back whole (linear blocks with checksum tails, which e2fsck and the kernel accept
 * at any size) when they changed.
 */
export class Ext4Tree {
  private readonly dirs = new Map<number, Dir>();
  private dirtyCount = 0;
  private readonly now = BigInt(Date.now()) * 1_000_000n;
  private chunks: [Buffer, Buffer] | undefined;
  private zeros: Buffer | undefined;

  constructor(readonly vol: Ext4Volume) {}

  get where(): string {
    return this.vol.where;
  }

  // ---- reading ---------------------------------------------------------------

  inode(ino: number): Buffer {
    return this.vol.readInode(ino);
  }

  info(ino: number): InodeInfo {
    const b = this.inode(ino);
    const mode = b.readUInt16LE(I_MODE);
    const t = mode & S_IFMT;
    return {
      ino,
      mode,
      uid: b.readUInt16LE(I_UID_LO) | (b.readUInt16LE(I_UID_HI) << 16),
      gid: b.readUInt16LE(I_GID_LO) | (b.readUInt16LE(I_GID_HI) << 16),
      size: Ext4Volume.size(b),
      links: b.readUInt16LE(I_LINKS),
      allocated: this.vol.allocatedBytes(b),
      atime: readTime(b, I_ATIME, I_ATIME_EXTRA),
      mtime: readTime(b, I_MTIME, I_MTIME_EXTRA),
      ctime: readTime(b, I_CTIME, I_CTIME_EXTRA),
      rdev: t === S_IFCHR || t === S_IFBLK ? readDevice(b) : { major: 0, minor: 0 },
    };
  }

  /** Full xattr names and values of an inode. */
  xattrs(ino: number): Array<{ name: string; value: Buffer }> {
    const out: Array<{ name: string; value: Buffer }> = [];
    for (const x of this.vol.readXattrs(ino, this.inode(ino))) {
      const prefix = NAME_INDEX_PREFIX[x.index];
      if (x.index === 2) out.push({ name: 'system.posix_acl_access', value: x.value });
      else if (x.index === 3) out.push({ name: 'system.posix_acl_default', value: x.value });
      else if (prefix) out.push({ name: prefix + x.name.toString('utf8'), value: x.value });
    }
    return out;
  }

  private loadDir(ino: number): Dir {
    const cached = this.dirs.get(ino);
    if (cached) {
      // Most recently used last (Map order), so trimCache forgets the least recently used.
      this.dirs.delete(ino);
      this.dirs.set(ino, cached);
      return cached;
    }
    const inode = this.inode(ino);
    if ((inode.readUInt16LE(I_MODE) & S_IFMT) !== S_IFDIR) throw new Ext4Damaged(`${this.where}: inode ${ino} is named as a directory but is not one; the image is damaged`);
    const size = this.vol.checkedSize(ino, inode);
    const bs = this.vol.bs;
    const map = this.vol.fileMap(ino, inode);
    const entries = new Map<string, DirEntry>();
    let parent = 0;
    const nblocks = Math.ceil(size / bs);
    for (const e of map.extents) {
      if (e.uninit) continue;
      for (let k = 0; k < e.len && e.logical + k < nblocks; k++) {
        const data = this.vol.readBlocks(e.start + k, 1);
        let off = 0;
        while (off + 8 <= bs) {
          const child = data.readUInt32LE(off);
          const recLen = data.readUInt16LE(off + 4) || (bs === 65536 ? 65536 : 0);
          const nameLen = data[off + 6];
          if (recLen < 8 || recLen % 4 !== 0 || off + recLen > bs || 8 + nameLen > recLen) {
            throw new Ext4Damaged(`${this.where}: directory inode ${ino} has a damaged entry in block ${e.start + k}; the image is damaged`);
          }
          if (child !== 0) {
            const key = data.toString('latin1', off + 8, off + 8 + nameLen);
            if (child > this.vol.sb.inodesCount) {
              throw new Ext4Damaged(`${this.where}: directory inode ${ino} has an entry "${keyName(key)}" pointing to inode ${child}, past the inode table; the image is damaged`);
            }
            if (key === '..') parent = child;
            else if (key !== '.') entries.set(key, { ino: child, type: data[off + 7] });
          }
          off += recLen;
        }
      }
    }
    const dir: Dir = { ino, parent: parent || ino, entries, dirty: false };
    this.cacheDir(dir);
    return dir;
  }

  private cacheDir(dir: Dir): void {
    this.dirs.set(dir.ino, dir);
  }

  /**
   * Forgets clean directories beyond a bound. Called between operations only (never while
   * an operation holds a Dir), so a change can never land in a forgotten copy.
   */
  trimCache(): void {
    if (this.dirs.size > 4096) {
      for (const [k, d] of this.dirs) {
        if (this.dirs.size <= 3072) break;
        if (!d.dirty) this.dirs.delete(k);
      }
    }
  }

  /** Inode number at a relative path, following no symlink; undefined when absent or a parent is not a directory. */
  lookup(rel: string): number | undefined {
    let ino = ROOT_INO;
    if (rel === '' || rel === '.') return ino;
    const parts = rel.split('/');
    for (let i = 0; i < parts.length; i++) {
      if (i > 0 || ino !== ROOT_INO) {
        if ((this.inode(ino).readUInt16LE(I_MODE) & S_IFMT) !== S_IFDIR) return undefined;
      }
      const e = this.loadDir(ino).entries.get(nameKey(parts[i]));
      if (!e) return undefined;
      ino = e.ino;
    }
    return ino;
  }

  fileType(ino: number): number {
    return fileTypeOfMode(this.inode(ino).readUInt16LE(I_MODE));
  }

  isDir(ino: number): boolean {
    return (this.inode(ino).readUInt16LE(I_MODE) & S_IFMT) === S_IFDIR;
  }

  /** Names in a directory (not '.' and '..'). */
  list(ino: number): string[] {
    return [...this.loadDir(ino).entries.keys()].map(keyName);
  }

  listKeys(ino: number): Array<[string, DirEntry]> {
    return [...this.loadDir(ino).entries];
  }

  readlink(ino: number): string {
    const inode = this.inode(ino);
    const size = Ext4Volume.size(inode);
    if (size > 65536) throw new Ext4Damaged(`${this.where}: symlink inode ${ino} claims ${size} bytes; the image is damaged`);
    const dataBytes = this.vol.allocatedBytes(inode) - (Ext4Volume.xattrBlock(inode) ? this.vol.bs : 0);
    if (dataBytes === 0 && size < 60) return nameFromBytes(inode.subarray(I_BLOCK, I_BLOCK + size));
    const buf = Buffer.alloc(size);
    this.vol.readFileRange(this.vol.fileMap(ino, inode), 0, buf, size);
    return nameFromBytes(buf);
  }

  /** A whole (metadata) file; refused above `max` bytes rather than allocating what a forged i_size claims. */
  readWhole(ino: number, max = 256 * 1024 * 1024): Buffer {
    const inode = this.inode(ino);
    const size = this.vol.checkedSize(ino, inode);
    if (size > max) throw new Error(`${this.where}: inode ${ino} holds ${size} bytes, more than the ${max} transplant reads whole`);
    const buf = Buffer.alloc(size);
    this.vol.readFileRange(this.vol.fileMap(ino, inode), 0, buf, size);
    return buf;
  }

  // ---- writing: inodes ----------------------------------------------------------

  private newInode(mode: number, uid: number, gid: number, atime: bigint, mtime: bigint): Buffer {
    const b = Buffer.alloc(this.vol.sb.inodeSize);
    const large = b.length > GOOD_OLD_INODE_SIZE;
    if (large) b.writeUInt16LE(WANT_EXTRA_ISIZE, I_EXTRA_ISIZE);
    b.writeUInt16LE(mode & 0xffff, I_MODE);
    writeOwner(b, uid, gid);
    writeTime(b, I_ATIME, large ? I_ATIME_EXTRA : undefined, atime);
    writeTime(b, I_MTIME, large ? I_MTIME_EXTRA : undefined, mtime);
    writeTime(b, I_CTIME, large ? I_CTIME_EXTRA : undefined, this.now);
    if (large) writeTime(b, I_CRTIME, I_CRTIME_EXTRA, this.now);
    return b;
  }

  private setBlocks(inode: Buffer, blocks: number): void {
    const sectors = blocks * (this.vol.bs / 512);
    if (sectors >= 2 ** 32) this.vol.setRoCompat(RO_COMPAT_HUGE_FILE);
    if (sectors >= 2 ** 48) throw new Error(`${this.where}: file too large`);
    inode.writeUInt32LE(sectors % 2 ** 32, I_BLOCKS_LO);
    inode.writeUInt16LE(Math.floor(sectors / 2 ** 32), I_BLOCKS_HI);
  }

  private setSize(inode: Buffer, size: number): void {
    inode.writeUInt32LE(size % 2 ** 32, I_SIZE_LO);
    inode.writeUInt32LE(Math.floor(size / 2 ** 32), I_SIZE_HIGH);
    if (size >= 2 ** 31) this.vol.setRoCompat(RO_COMPAT_LARGE_FILE);
  }

  /** Runs of allocated blocks as extents from file block `logical` on. */
  private toExtents(runs: Array<{ start: number; len: number }>): Extent[] {
    const out: Extent[] = [];
    let logical = 0;
    for (const r of runs) {
      for (let o = 0; o < r.len; o += MAX_EXTENT_LEN) {
        const len = Math.min(MAX_EXTENT_LEN, r.len - o);
        out.push({ logical, start: r.start + o, len, uninit: false });
        logical += len;
      }
    }
    return out;
  }

  /**
   * Writes the extent tree of `extents` (fs/ext4/ext4_extents.h): up to 4 in the inode;
   * else leaves of (bs-12)/12 extents under as many index levels as needed, each block
   * ending with its checksum (ext4_extent_block_csum). Returns the number of tree blocks.
   */
  private writeExtentTree(ino: number, inode: Buffer, extents: Extent[], what: string): number {
    const bs = this.vol.bs;
    const perBlock = Math.floor((bs - 12) / 12);
    inode.writeUInt32LE(inode.readUInt32LE(I_FLAGS) | EXT4_EXTENTS_FL, I_FLAGS);
    inode.fill(0, I_BLOCK, I_BLOCK + 60);
    type Node = { logical: number; depth: number; leaf?: Extent[]; children?: Array<{ logical: number; block: number }> };
    let level: Node[] = [];
    if (extents.length <= 4) {
      writeNodeHeader(inode, I_BLOCK, extents.length, 4, 0);
      extents.forEach((e, i) => writeLeafEntry(inode, I_BLOCK + 12 + i * 12, e));
      return 0;
    }
    for (let i = 0; i < extents.length; i += perBlock) {
      const leaf = extents.slice(i, i + perBlock);
      level.push({ logical: leaf[0].logical, depth: 0, leaf });
    }
    // Count the blocks of every level first, then allocate them together (next to the data).
    const levels: number[] = [level.length];
    let n = level.length;
    while (n > 4) {
      n = Math.ceil(n / perBlock);
      levels.push(n);
    }
    // Every level is blocks; the inode's root indexes the last one (at most 4 nodes).
    const total = levels.reduce((a, b) => a + b, 0);
    const blocks: number[] = [];
    for (const r of this.vol.allocBlocks(total, what)) for (let k = 0; k < r.len; k++) blocks.push(r.start + k);
    let next = 0;
    const seed = this.vol.inodeCsumSeed(ino, inode);
    let depth = 0;
    const tail = 12 + 12 * perBlock;
    for (;;) {
      const written: Array<{ logical: number; block: number }> = [];
      for (const node of level) {
        const block = blocks[next++];
        const buf = Buffer.alloc(bs);
        if (node.leaf) {
          writeNodeHeader(buf, 0, node.leaf.length, perBlock, 0);
          node.leaf.forEach((e, i) => writeLeafEntry(buf, 12 + i * 12, e));
        } else {
          writeNodeHeader(buf, 0, node.children!.length, perBlock, node.depth);
          node.children!.forEach((c, i) => writeIndexEntry(buf, 12 + i * 12, c.logical, c.block));
        }
        if (seed !== undefined) buf.writeUInt32LE(crc32c(seed, buf.subarray(0, tail)), tail);
        this.vol.writeBlocks(block, buf);
        written.push({ logical: node.logical, block });
      }
      depth++;
      if (written.length <= 4) {
        writeNodeHeader(inode, I_BLOCK, written.length, 4, depth);
        written.forEach((c, i) => writeIndexEntry(inode, I_BLOCK + 12 + i * 12, c.logical, c.block));
        return total;
      }
      const up: Node[] = [];
      for (let i = 0; i < written.length; i += perBlock) {
        const children = written.slice(i, i + perBlock);
        up.push({ logical: children[0].logical, depth, children });
      }
      level = up;
    }
  }

  private encodeXattrsFor(ino: number, inode: Buffer, xattrs: EncodedXattr[], what: string): number {
    if (xattrs.length === 0) return 0;
    const start = GOOD_OLD_INODE_SIZE + (inode.length > GOOD_OLD_INODE_SIZE ? inode.readUInt16LE(I_EXTRA_ISIZE) : 0);
    const room = inode.length > GOOD_OLD_INODE_SIZE ? inode.length - start : 0;
    if (inodeXattrBytes(xattrs) <= room) {
      writeInodeXattrs(inode.subarray(start), xattrs);
      return 0;
    }
    const bs = this.vol.bs;
    if (blockXattrBytes(xattrs) > bs) throw new Error(`${this.where}:/${what}: its extended attributes need ${blockXattrBytes(xattrs)} bytes, more than one ${bs}-byte block holds`);
    const [run] = this.vol.allocBlocks(1, what);
    const block = buildXattrBlock(xattrs, bs, (b) => this.xattrBlockChecksum(run.start, b) ?? 0);
    this.vol.writeBlocks(run.start, block);
    inode.writeUInt32LE(run.start % 2 ** 32, I_FILE_ACL_LO);
    inode.writeUInt16LE(Math.floor(run.start / 2 ** 32), I_FILE_ACL_HI);
    void ino;
    return 1;
  }

  /** h_checksum of an xattr block: crc32c(fs seed, le64 block number, block with h_checksum zero) (ext4_xattr_block_csum). */
  private xattrBlockChecksum(block: number, data: Buffer): number | undefined {
    const seed = this.vol.sb.csumSeed;
    if (seed === undefined) return undefined;
    const copy = Buffer.from(data);
    copy.writeUInt32LE(0, 16);
    return crc32c(crc32cU32(crc32cU32(seed, block % 2 ** 32), Math.floor(block / 2 ** 32)), copy);
  }

  /**
   * Creates an inode for a layer entry (not a hard link) with all its attributes and content,
   * and returns its number; the caller adds the directory entry.
   */
  async createEntry(
    parentIno: number, entry: LayerEntry, xattrs: EncodedXattr[], content: AsyncIterable<Buffer> | undefined, what: string,
  ): Promise<number> {
    const kindBits: Record<string, number> = {
      file: S_IFREG, directory: S_IFDIR, symlink: S_IFLNK, 'char-device': S_IFCHR, 'block-device': S_IFBLK, fifo: S_IFIFO, socket: S_IFSOCK,
    };
    const type = kindBits[entry.kind];
    if (type === undefined) throw new Error(`${this.where}:/${what}: unknown entry kind ${entry.kind}`);
    const isDir = type === S_IFDIR;
    const ino = this.vol.allocInode(isDir, what, this.vol.groupOfInode(parentIno));
    const inode = this.newInode(type | (entry.mode & 0o7777), entry.uid, entry.gid, entry.atime, entry.mtime);
    let blocks = 0;
    try {
      blocks += this.encodeXattrsFor(ino, inode, xattrs, what);
      if (type === S_IFREG) {
        blocks += await this.writeContent(ino, inode, entry.size, content, what);
        inode.writeUInt16LE(1, I_LINKS);
      } else if (type === S_IFLNK) {
        const target = entryLinkTargetBytes(entry);
        if (target.length >= this.vol.bs) throw new Error(`${this.where}:/${what}: symlink target longer than a block`);
        if (target.length < 60) {
          target.copy(inode, I_BLOCK);
          this.setSize(inode, target.length);
        } else {
          blocks += await this.writeContent(ino, inode, target.length, [target], what);
        }
        inode.writeUInt16LE(1, I_LINKS);
      } else if (isDir) {
        inode.writeUInt16LE(2, I_LINKS);
        const dir: Dir = { ino, parent: parentIno, entries: new Map(), dirty: true };
        this.dirtyCount++;
        this.cacheDir(dir);
      } else {
        if (type === S_IFCHR || type === S_IFBLK) writeDeviceNumbers(inode, entry.devMajor ?? 0, entry.devMinor ?? 0);
        inode.writeUInt16LE(1, I_LINKS);
      }
      this.setBlocks(inode, blocks);
      this.vol.writeInode(ino, inode);
    } catch (err) {
      this.dirs.delete(ino);
      this.vol.freeInode(ino, isDir);
      throw err;
    }
    return ino;
  }

  /** Streams `size` bytes of content into newly allocated blocks with large positional writes; returns the blocks used (data and tree). */
  private async writeContent(ino: number, inode: Buffer, size: number, content: Iterable<Buffer> | AsyncIterable<Buffer> | undefined, what: string): Promise<number> {
    const bs = this.vol.bs;
    const nblocks = Math.ceil(size / bs);
    const runs = this.vol.allocBlocks(nblocks, what);
    try {
      let pos = 0;
      let runIdx = 0;
      let runLogical = 0; // byte offset of runs[runIdx] in the file
      // Each write goes to the runs in file order; the positions are taken when it is issued.
      const write = async (buf: Buffer, length: number, now = false): Promise<void> => {
        const pending: Promise<void>[] = [];
        let off = 0;
        while (off < length) {
          while (pos >= runLogical + runs[runIdx].len * bs) {
            runLogical += runs[runIdx].len * bs;
            runIdx++;
          }
          const r = runs[runIdx];
          const n = Math.min(length - off, runLogical + r.len * bs - pos);
          const at = this.vol.position(r.start) + (pos - runLogical);
          if (now) this.vol.image.write(at, buf, off, n);
          else pending.push(this.vol.image.writeLater(at, buf, off, n));
          off += n;
          pos += n;
        }
        await Promise.all(pending);
      };
      if (size <= SMALL_CONTENT) {
        // A small file: gathered with its neighbours by the image file (one write per run of blocks).
        let got = 0;
        for await (const piece of (content ?? []) as AsyncIterable<Buffer>) {
          got += piece.length;
          if (got > size) throw new Error(`${this.where}:/${what}: content is longer than its size ${size}`);
          await write(piece, piece.length, true);
        }
        if (got !== size) throw new Error(`${this.where}:/${what}: content is ${got} bytes, expected ${size}`);
      } else {
        // Large writes in the thread pool, one in flight while the next chunk is checked and gathered.
        this.chunks ??= [Buffer.allocUnsafe(WRITE_CHUNK), Buffer.allocUnsafe(WRITE_CHUNK)];
        await writeChunkedOverlapped(content, size, this.chunks, write, `${this.where}:/${what}`);
      }
      // The rest of the last block zeroed (written at once, so one shared block of zeros does).
      if (size % bs !== 0) await write((this.zeros ??= Buffer.alloc(bs)), bs - (size % bs), true);
      const tree = this.writeExtentTree(ino, inode, this.toExtents(runs), what);
      this.setSize(inode, size);
      return nblocks + tree;
    } catch (err) {
      for (const r of runs) this.vol.freeBlocks(r.start, r.len);
      throw err;
    }
  }

  /** Replaces the content of a regular file in place (same inode), for small metadata files. */
  async rewriteFile(ino: number, data: Buffer, mode: number, what: string): Promise<void> {
    const inode = this.inode(ino);
    this.releaseData(ino, inode);
    inode.writeUInt16LE(S_IFREG | (mode & 0o7777), I_MODE);
    writeTime(inode, I_MTIME, inode.length > GOOD_OLD_INODE_SIZE ? I_MTIME_EXTRA : undefined, this.now);
    const xb = Ext4Volume.xattrBlock(inode) ? 1 : 0;
    const blocks = await this.writeContent(ino, inode, data.length, [data], what);
    this.setBlocks(inode, blocks + xb);
    this.vol.writeInode(ino, inode);
  }

  /** Frees the data and tree blocks of an inode (not its xattr block) and leaves it empty. */
  private releaseData(ino: number, inode: Buffer): void {
    const t = inode.readUInt16LE(I_MODE) & S_IFMT;
    const dataBytes = this.vol.allocatedBytes(inode) - (Ext4Volume.xattrBlock(inode) ? this.vol.bs : 0);
    if (t === S_IFREG || t === S_IFDIR || (t === S_IFLNK && dataBytes > 0)) {
      const map = this.vol.fileMap(ino, inode);
      for (const e of map.extents) this.vol.freeBlocks(e.start, e.len);
      for (const b of map.treeBlocks) this.vol.freeBlocks(b, 1);
    }
    inode.fill(0, I_BLOCK, I_BLOCK + 60);
    inode.writeUInt32LE(inode.readUInt32LE(I_FLAGS) & ~(EXT4_EXTENTS_FL | EXT4_INDEX_FL), I_FLAGS);
    this.setSize(inode, 0);
    this.setBlocks(inode, Ext4Volume.xattrBlock(inode) ? 1 : 0);
  }

  /** Frees an inode with everything it owns (its xattr block by refcount). */
  private releaseInode(ino: number): void {
    const inode = this.inode(ino);
    const isDir = (inode.readUInt16LE(I_MODE) & S_IFMT) === S_IFDIR;
    this.releaseData(ino, inode);
    const xb = Ext4Volume.xattrBlock(inode);
    if (xb) {
      const data = this.vol.readBlocks(xb, 1);
      const refs = data.readUInt32LE(0) === XATTR_MAGIC ? data.readUInt32LE(4) : 1;
      if (refs > 1) {
        // Shared with other inodes (h_refcount): one reference less.
        data.writeUInt32LE(refs - 1, 4);
        const c = this.xattrBlockChecksum(xb, data);
        if (c !== undefined) data.writeUInt32LE(c, 16);
        this.vol.writeBlocks(xb, data);
      } else {
        this.vol.freeBlocks(xb, 1);
      }
    }
    this.vol.freeInode(ino, isDir);
    const dead = Buffer.alloc(inode.length);
    if (dead.length > GOOD_OLD_INODE_SIZE) dead.writeUInt16LE(WANT_EXTRA_ISIZE, I_EXTRA_ISIZE);
    dead.writeUInt32LE(Number((this.now / 1_000_000_000n) & 0xffffffffn), 0x14); // i_dtime
    this.vol.writeInode(ino, dead);
    const d = this.dirs.get(ino);
    if (d?.dirty) this.dirtyCount--;
    this.dirs.delete(ino);
  }

  // ---- writing: directories ----------------------------------------------------

  addEntry(dirIno: number, key: string, ino: number, type: number): void {
    const dir = this.loadDir(dirIno);
    if (keyBytes(key).length > 255) throw new Error(`${this.where}: name longer than 255 bytes`);
    dir.entries.set(key, { ino, type });
    this.markDirty(dir);
  }

  private markDirty(dir: Dir): void {
    this.dirs.set(dir.ino, dir);
    if (!dir.dirty) {
      dir.dirty = true;
      this.dirtyCount++;
    }
  }

  entry(dirIno: number, key: string): DirEntry | undefined {
    return this.loadDir(dirIno).entries.get(key);
  }

  /** Adds a hard link to a non-directory inode. */
  link(dirIno: number, key: string, ino: number): void {
    const inode = this.inode(ino);
    const mode = inode.readUInt16LE(I_MODE);
    const links = inode.readUInt16LE(I_LINKS);
    if (links >= EXT4_LINK_MAX) throw new Error(`${this.where}: inode ${ino} has ${links} links, the most ext4 allows`);
    inode.writeUInt16LE(links + 1, I_LINKS);
    this.vol.writeInode(ino, inode);
    this.addEntry(dirIno, key, ino, fileTypeOfMode(mode));
  }

  /**
   * Removes the entry `key` of a directory and, when it was the last link, the inode and
   * (for a directory) everything below it. A directory met twice (a hard-link loop or a
   * directory with two parents) is refused before anything is changed.
   */
  removeEntry(dirIno: number, key: string): void {
    const dir = this.loadDir(dirIno);
    const e = dir.entries.get(key);
    if (!e) return;
    if (this.isDir(e.ino)) {
      const order: number[] = [];
      this.collectDirs(e.ino, new Set([dirIno]), order);
      dir.entries.delete(key);
      this.markDirty(dir);
      const dirs = new Set(order);
      for (const d of order.reverse()) {
        for (const [, c] of this.loadDir(d).entries) if (!dirs.has(c.ino)) this.dropLink(c.ino);
        this.releaseInode(d);
      }
      return;
    }
    dir.entries.delete(key);
    this.markDirty(dir);
    this.dropLink(e.ino);
  }

  private collectDirs(ino: number, seen: Set<number>, order: number[]): void {
    const stack = [ino];
    while (stack.length) {
      const d = stack.pop()!;
      if (seen.has(d)) throw new Ext4Damaged(`${this.where}: directory inode ${d} is reachable twice (a directory hard-link loop); the image is damaged`);
      seen.add(d);
      order.push(d);
      if (order.length > this.vol.sb.inodesCount) throw new Ext4Damaged(`${this.where}: directory tree larger than the inode table`);
      for (const [, c] of this.loadDir(d).entries) if (this.isDir(c.ino)) stack.push(c.ino);
    }
  }

  private dropLink(ino: number): void {
    const inode = this.inode(ino);
    const links = inode.readUInt16LE(I_LINKS);
    if (links <= 1) {
      this.releaseInode(ino);
      return;
    }
    inode.writeUInt16LE(links - 1, I_LINKS);
    this.vol.writeInode(ino, inode);
  }

  /** Moves an entry (rename(2) without replacement; the caller removed any target first). */
  moveEntry(fromDir: number, fromKey: string, toDir: number, toKey: string): void {
    const src = this.loadDir(fromDir);
    const e = src.entries.get(fromKey);
    if (!e) throw new Error(`${this.where}: nothing to rename`);
    if (this.isDir(e.ino)) {
      // Refuse moving a directory below itself.
      for (let p = toDir, n = 0; p !== ROOT_INO && n < 4096; n++) {
        if (p === e.ino) throw new Error(`${this.where}: cannot move a directory into itself`);
        p = this.loadDir(p).parent;
      }
      const moved = this.loadDir(e.ino);
      if (moved.parent !== toDir) {
        moved.parent = toDir;
        this.markDirty(moved);
      }
    }
    src.entries.delete(fromKey);
    this.markDirty(src);
    this.addEntry(toDir, toKey, e.ino, e.type);
  }

  /** Writes changed directories when many are pending (bounded memory). */
  maybeFlushDirs(): void {
    if (this.dirtyCount > 2048) this.flushDirs();
  }

  flushDirs(): void {
    for (const d of this.dirs.values()) if (d.dirty) this.writeDir(d);
    this.dirtyCount = 0;
  }

  /**
   * A directory as linear blocks (fs/ext4/namei.c; Documentation/filesystems/ext4/directory.rst):
   * '.' and '..' first, entries packed (8-byte header, name padded to 4), the last entry of a
   * block stretched to its end, a 12-byte checksum tail with metadata_csum. Link count 2 + its
   * subdirectories, or 1 above 65,000 (dir_nlink). Replaces an htree index (INDEX_FL cleared).
   */
  private writeDir(dir: Dir): void {
    const bs = this.vol.bs;
    const csum = this.vol.sb.csumSeed !== undefined;
    const usable = csum ? bs - DIR_TAIL : bs;
    const blocks: Buffer[] = [];
    let cur = Buffer.alloc(bs);
    let off = 0;
    let lastOff = -1;
    let subdirs = 0;
    const put = (ino: number, name: Buffer, type: number) => {
      const rec = 8 + ((name.length + 3) & ~3);
      if (off + rec > usable) {
        cur.writeUInt16LE(usable - lastOff, lastOff + 4);
        blocks.push(cur);
        cur = Buffer.alloc(bs);
        off = 0;
      }
      cur.writeUInt32LE(ino, off);
      cur.writeUInt16LE(rec, off + 4);
      cur[off + 6] = name.length;
      cur[off + 7] = type;
      name.copy(cur, off + 8);
      lastOff = off;
      off += rec;
    };
    put(dir.ino, Buffer.from('.'), FT_DIR);
    put(dir.parent, Buffer.from('..'), FT_DIR);
    for (const [key, e] of dir.entries) {
      if (e.type === FT_DIR) subdirs++;
      put(e.ino, keyBytes(key), e.type);
    }
    cur.writeUInt16LE(usable - lastOff, lastOff + 4);
    blocks.push(cur);

    const inode = this.inode(dir.ino);
    const seed = this.vol.inodeCsumSeed(dir.ino, inode);
    // More than one block: an htree index, as the kernel makes once a directory outgrows its
    // first block (namei.c make_indexed_dir); the kernel keeps dir_nlink's count of 1 only on
    // indexed directories (ext4_inc_count). half_md4 only; anything else stays linear.
    let indexed: Buffer[] | undefined;
    const hi = this.vol.hashInfo();
    if (blocks.length > 1 && hi && hi.version === DX_HASH_HALF_MD4) {
      const sorted = [...dir.entries].map(([key, e]) => {
        const name = keyBytes(key);
        return { hash: halfMd4Hash(name, hi.seed, hi.unsigned), ino: e.ino, name, type: e.type };
      });
      sorted.sort((a, b) => a.hash - b.hash);
      indexed = buildHtree(bs, dir.ino, dir.parent, hi.version, sorted, seed)?.blocks;
    }
    if (indexed) {
      blocks.length = 0;
      blocks.push(...indexed);
    } else if (seed !== undefined) {
      for (const b of blocks) {
        const t = bs - DIR_TAIL;
        b.writeUInt32LE(0, t);
        b.writeUInt16LE(DIR_TAIL, t + 4);
        b[t + 6] = 0;
        b[t + 7] = 0xde;
        b.writeUInt32LE(crc32c(seed, b.subarray(0, t)), t + 8);
      }
    }
    const what = `a directory (inode ${dir.ino})`;
    const flags = inode.readUInt32LE(I_FLAGS);
    const old = Ext4Volume.size(inode) > 0 && (flags & EXT4_EXTENTS_FL) ? this.vol.fileMap(dir.ino, inode) : undefined;
    const oldBlocks = old ? old.extents.reduce((n, e) => n + e.len, 0) : -1;
    let extents: Extent[];
    let treeBlocks: number;
    if (old && oldBlocks === blocks.length && old.treeBlocks.length === 0 && old.extents.every((e, i, a) => !e.uninit && e.logical === (i === 0 ? 0 : a[i - 1].logical + a[i - 1].len))) {
      extents = old.extents;
      treeBlocks = 0;
    } else {
      this.releaseData(dir.ino, inode);
      // Directory blocks near the directory's inode; file data goes on where it left off.
      const dataGoal = this.vol.setBlockGoal(this.vol.groupStart(this.vol.groupOfInode(dir.ino)));
      try {
        const runs = this.vol.allocBlocks(blocks.length, what);
        extents = this.toExtents(runs);
        treeBlocks = this.writeExtentTree(dir.ino, inode, extents, what);
      } finally {
        this.vol.setBlockGoal(dataGoal);
      }
    }
    let i = 0;
    for (const e of extents) {
      this.vol.writeBlocks(e.start, Buffer.concat(blocks.slice(i, i + e.len)));
      i += e.len;
    }
    inode.writeUInt32LE((inode.readUInt32LE(I_FLAGS) & ~EXT4_INDEX_FL) | EXT4_EXTENTS_FL | (indexed ? EXT4_INDEX_FL : 0), I_FLAGS);
    this.setSize(inode, blocks.length * bs);
    this.setBlocks(inode, blocks.length + treeBlocks + (Ext4Volume.xattrBlock(inode) ? 1 : 0));
    let links = 2 + subdirs;
    if (links > EXT4_LINK_MAX) {
      links = 1;
      this.vol.setRoCompat(RO_COMPAT_DIR_NLINK);
    }
    inode.writeUInt16LE(links, I_LINKS);
    this.vol.writeInode(dir.ino, inode);
    dir.dirty = false;
  }

  /** Sets owner, mode bits and times of an existing inode (a directory written again by a later entry). */
  setAttributes(ino: number, entry: LayerEntry, xattrs: EncodedXattr[], what: string): void {
    const inode = this.inode(ino);
    const large = inode.length > GOOD_OLD_INODE_SIZE;
    if (large) {
      // Room for every *_extra time field; the in-inode xattrs after it are rewritten below.
      const extra = inode.readUInt16LE(I_EXTRA_ISIZE);
      if (GOOD_OLD_INODE_SIZE + extra > inode.length) throw new Ext4Damaged(`${this.where}: inode ${ino} has i_extra_isize ${extra}, past its end; the image is damaged`);
      if (extra < WANT_EXTRA_ISIZE) {
        inode.fill(0, GOOD_OLD_INODE_SIZE);
        inode.writeUInt16LE(WANT_EXTRA_ISIZE, I_EXTRA_ISIZE);
      } else {
        inode.fill(0, GOOD_OLD_INODE_SIZE + extra);
      }
    }
    inode.writeUInt16LE((inode.readUInt16LE(I_MODE) & S_IFMT) | (entry.mode & 0o7777), I_MODE);
    writeOwner(inode, entry.uid, entry.gid);
    writeTime(inode, I_ATIME, large ? I_ATIME_EXTRA : undefined, entry.atime);
    writeTime(inode, I_MTIME, large ? I_MTIME_EXTRA : undefined, entry.mtime);
    writeTime(inode, I_CTIME, large ? I_CTIME_EXTRA : undefined, this.now);
    const xb = Ext4Volume.xattrBlock(inode);
    if (xb) {
      // Drop the old block (as releaseInode does) and write the attributes anew.
      const data = this.vol.readBlocks(xb, 1);
      const refs = data.readUInt32LE(4);
      if (refs > 1) {
        data.writeUInt32LE(refs - 1, 4);
        const c = this.xattrBlockChecksum(xb, data);
        if (c !== undefined) data.writeUInt32LE(c, 16);
        this.vol.writeBlocks(xb, data);
      } else this.vol.freeBlocks(xb, 1);
      inode.writeUInt32LE(0, I_FILE_ACL_LO);
      inode.writeUInt16LE(0, I_FILE_ACL_HI);
      const sectors = this.vol.allocatedBytes(inode) / 512 - this.vol.bs / 512;
      inode.writeUInt32LE(sectors % 2 ** 32, I_BLOCKS_LO);
      inode.writeUInt16LE(Math.floor(sectors / 2 ** 32), I_BLOCKS_HI);
    }
    const added = this.encodeXattrsFor(ino, inode, xattrs, what);
    if (added) {
      const sectors = this.vol.allocatedBytes(inode) / 512 + this.vol.bs / 512;
      inode.writeUInt32LE(sectors % 2 ** 32, I_BLOCKS_LO);
      inode.writeUInt16LE(Math.floor(sectors / 2 ** 32), I_BLOCKS_HI);
    }
    this.vol.writeInode(ino, inode);
  }
}

function writeNodeHeader(buf: Buffer, off: number, entries: number, max: number, depth: number): void {
  buf.writeUInt16LE(0xf30a, off);
  buf.writeUInt16LE(entries, off + 2);
  buf.writeUInt16LE(max, off + 4);
  buf.writeUInt16LE(depth, off + 6);
  buf.writeUInt32LE(0, off + 8);
}

function writeLeafEntry(buf: Buffer, off: number, e: Extent): void {
  buf.writeUInt32LE(e.logical, off);
  buf.writeUInt16LE(e.len, off + 4);
  buf.writeUInt16LE(Math.floor(e.start / 2 ** 32), off + 6);
  buf.writeUInt32LE(e.start % 2 ** 32, off + 8);
}

function writeIndexEntry(buf: Buffer, off: number, logical: number, block: number): void {
  buf.writeUInt32LE(logical, off);
  buf.writeUInt32LE(block % 2 ** 32, off + 4);
  buf.writeUInt16LE(Math.floor(block / 2 ** 32), off + 8);
  buf.writeUInt16LE(0, off + 10);
}
