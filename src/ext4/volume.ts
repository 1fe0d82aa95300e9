import { crc32c } from './crc32c.js';
import {
  BG_BLOCK_UNINIT, BG_INODE_UNINIT, BG_INODE_ZEROED, groupDescChecksum, groupHasSuper, parseGroupDesc,
  storeBitmapChecksums, storeGroupCounts, type GroupDesc,
} from './group-desc.js';
import type { ImageFile } from './image-file.js';
import {
  EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, GOOD_OLD_INODE_SIZE, I_BLOCK, I_BLOCKS_HI, I_BLOCKS_LO, I_EXTRA_ISIZE,
  I_FILE_ACL_HI, I_FILE_ACL_LO, I_FLAGS, I_GENERATION, I_LINKS, I_MODE, I_SIZE_HIGH, I_SIZE_LO, S_IFDIR, S_IFLNK, S_IFMT,
  S_IFREG, inodeSeed, setInodeChecksum,
} from './inode.js';
import {
  COMPAT_HAS_JOURNAL, INCOMPAT_64BIT, INCOMPAT_RECOVER, RO_COMPAT_GDT_CSUM, RO_COMPAT_METADATA_CSUM,
  RO_COMPAT_SPARSE_SUPER, SUPERBLOCK_OFFSET, parseSuperblock, unsupportedFeatures, type Superblock,
} from './superblock.js';
import { XATTR_MAGIC } from './xattr.js';

/** One run of an extent tree: `len` blocks of file block `logical` on, at `start`. */
export interface Extent {
  logical: number;
  start: number;
  len: number;
  /** Allocated but not written: reads as zeros (ee_len > 32768). */
  uninit: boolean;
}

export interface FileMap {
  extents: Extent[];
  /** Index and leaf blocks of the extent tree, or indirect blocks of a block map. */
  treeBlocks: number[];
}

/** An error about the file system itself: the image is damaged or hostile. */
export class Ext4Damaged extends Error {}

const EXTENT_MAGIC = 0xf30a;
const MAX_EXTENT_DEPTH = 5; // fs/ext4/ext4_extents.h EXT4_MAX_EXTENT_DEPTH
const EXT4_HUGE_FILE_FL = 0x40000;

/**
 * An ext4 file system at a byte offset of an image file, read and (opened writable)
 * written in-process: superblock, group descriptors, bitmaps, inodes, extent trees.
 * Layouts from the kernel's fs/ext4/ext4.h and Documentation/filesystems/ext4/.
 * Paths and directories live one level up (src/ext4/tree.ts).
 */
export class Ext4Volume {
  readonly sb: Superblock;
  readonly bs: number;
  readonly groups: GroupDesc[] = [];
  private readonly sbRaw: Buffer;
  private readonly gdtRaw: Buffer;
  private readonly is64: boolean;
  /** Whole block-sized bitmap blocks, loaded on demand (all of them when writable). */
  private readonly blockBitmaps: Array<Buffer | undefined> = [];
  private readonly inodeBitmaps: Array<Buffer | undefined> = [];
  private readonly dirtyGroups = new Set<number>();
  private sbDirty = false;
  /** Next-fit cursors of the allocators. */
  private blockGoal = 0;
  private inodeGoal = 0;
  /** Per group: every inode below this index is in use (where allocInode looks first). */
  private readonly inodeHint: number[] = [];

  private constructor(readonly image: ImageFile, readonly fsOffset: number, readonly where: string, readonly writable: boolean, limit: number | undefined) {
    const raw = image.read(fsOffset + SUPERBLOCK_OFFSET, 1024);
    const sb = parseSuperblock(raw);
    if (!sb) throw new Ext4Damaged(`${where}: no ext4 file system there (bad superblock magic)`);
    this.sb = sb;
    this.sbRaw = raw;
    this.bs = sb.blockSize;
    this.is64 = (sb.featureIncompat & INCOMPAT_64BIT) !== 0;
    this.checkGeometry(limit);
    const gdtStart = (sb.firstDataBlock + 1) * this.bs;
    this.gdtRaw = image.read(fsOffset + gdtStart, sb.groupCount * sb.descSize);
    const firstMeta = sb.firstDataBlock;
    const itBlocks = Math.ceil((sb.inodesPerGroup * sb.inodeSize) / this.bs);
    for (let g = 0; g < sb.groupCount; g++) {
      const d = parseGroupDesc(this.gdtRaw, g * sb.descSize, this.is64);
      const inFs = (b: number, n = 1) => b >= firstMeta && b + n <= sb.blocksCount;
      if (!inFs(d.blockBitmap) || !inFs(d.inodeBitmap) || !inFs(d.inodeTable, itBlocks)) {
        throw new Ext4Damaged(`${where}: the descriptor of block group ${g} points outside the file system; the image is damaged`);
      }
      if (d.freeInodes > sb.inodesPerGroup || d.freeBlocks > sb.blocksPerGroup || d.itableUnused > sb.inodesPerGroup) {
        throw new Ext4Damaged(`${where}: the descriptor of block group ${g} has impossible counts; the image is damaged`);
      }
      const want = groupDescChecksum(this.gdtRaw.subarray(g * sb.descSize, (g + 1) * sb.descSize), g, this.csumOpts());
      if (want !== undefined && want !== this.gdtRaw.readUInt16LE(g * sb.descSize + 0x1e)) {
        throw new Ext4Damaged(`${where}: the descriptor of block group ${g} fails its checksum; the image is damaged`);
      }
      this.groups.push(d);
    }
  }

  /**
   * Opens the file system. Refuses, by name, features it does not handle; `limit` (the
   * partition size) bounds what the superblock may claim. A writable volume also refuses
   * an unclean file system and one whose bitmaps disagree with its files.
   */
  static open(image: ImageFile, fsOffset: number, opts: { where: string; writable: boolean; limit?: number; check?: boolean }): Ext4Volume {
    const v = new Ext4Volume(image, fsOffset, opts.where, opts.writable, opts.limit);
    if (opts.writable) v.prepareWrite(opts.check ?? true);
    return v;
  }

  private csumOpts() {
    return { csumSeed: this.sb.csumSeed, gdtCsum: (this.sb.featureRoCompat & RO_COMPAT_GDT_CSUM) !== 0, uuid: this.sb.uuid, is64: this.is64 };
  }

  private checkGeometry(limit: number | undefined): void {
    const { sb, where } = this;
    const bad = (what: string) => new Ext4Damaged(`${where}: the ext4 superblock looks damaged (${what})`);
    const logBs = this.sbRaw.readUInt32LE(0x18);
    if (logBs > 6) throw bad(`block size 2^${10 + logBs}`);
    if (sb.blocksPerGroup === 0 || sb.blocksPerGroup > 8 * this.bs || sb.blocksPerGroup % 8 !== 0) throw bad(`${sb.blocksPerGroup} blocks per group`);
    if (sb.inodesPerGroup === 0 || sb.inodesPerGroup > 8 * this.bs || sb.inodesPerGroup % 8 !== 0) throw bad(`${sb.inodesPerGroup} inodes per group`);
    if (sb.inodeSize < 128 || (sb.inodeSize & (sb.inodeSize - 1)) !== 0 || sb.inodeSize > this.bs) throw bad(`inode size ${sb.inodeSize}`);
    if (sb.firstDataBlock !== (this.bs === 1024 ? 1 : 0)) throw bad(`first data block ${sb.firstDataBlock}`);
    if (sb.blocksCount <= sb.firstDataBlock || sb.groupCount === 0) throw bad(`${sb.blocksCount} blocks`);
    if (sb.inodesCount !== sb.groupCount * sb.inodesPerGroup) throw bad(`${sb.inodesCount} inodes in ${sb.groupCount} groups of ${sb.inodesPerGroup}`);
    if (sb.freeBlocksCount > sb.blocksCount || sb.freeInodesCount > sb.inodesCount) throw bad('free counts larger than the totals');
    if (this.is64 && (sb.descSize < 64 || sb.descSize > 1024 || (sb.descSize & (sb.descSize - 1)) !== 0)) throw bad(`descriptor size ${sb.descSize}`);
    if (limit !== undefined && sb.blocksCount * this.bs > limit) throw bad(`${sb.blocksCount * this.bs} bytes in a ${limit}-byte partition`);
    const gdtBlocks = Math.ceil((sb.groupCount * sb.descSize) / this.bs);
    if (sb.firstDataBlock + 1 + gdtBlocks > sb.blocksCount) throw bad('descriptors past the end');
    const firstIno = this.sbRaw.readUInt32LE(0x4c) === 0 ? 11 : this.sbRaw.readUInt32LE(0x54);
    if (firstIno < 11 || firstIno > sb.inodesCount) throw bad(`first inode ${firstIno}`);
    const names = unsupportedFeatures(sb);
    if (names) throw new Ext4Damaged(`${where}: the ext4 file system uses features transplant does not handle (${names})`);
    if (sb.csumSeed !== undefined) {
      const want = crc32c(0xffffffff, this.sbRaw.subarray(0, 0x3fc));
      if (want !== this.sbRaw.readUInt32LE(0x3fc)) throw new Ext4Damaged(`${where}: the ext4 superblock fails its checksum; the image is damaged`);
    }
  }

  /**
   * How directory names are hashed for htree indexes: s_def_hash_version (0xFC), s_hash_seed
   * (0xEC, 4 le32 words) and the unsigned-char flag of s_flags (0x160, EXT2_FLAGS_UNSIGNED_HASH);
   * undefined without dir_index (compat 0x20).
   */
  hashInfo(): { version: number; seed: Uint32Array; unsigned: boolean } | undefined {
    if (!(this.sb.featureCompat & 0x20)) return undefined;
    const seed = new Uint32Array(4);
    for (let i = 0; i < 4; i++) seed[i] = this.sbRaw.readUInt32LE(0xec + i * 4);
    return { version: this.sbRaw[0xfc], seed, unsigned: (this.sbRaw.readUInt32LE(0x160) & 0x2) !== 0 };
  }

  get firstIno(): number {
    return this.sbRaw.readUInt32LE(0x4c) === 0 ? 11 : this.sbRaw.readUInt32LE(0x54);
  }

  // ---- blocks and inodes ----------------------------------------------------

  position(block: number): number {
    return this.fsOffset + block * this.bs;
  }

  readBlocks(block: number, count: number): Buffer {
    this.checkBlock(block, count);
    return this.image.read(this.position(block), count * this.bs);
  }

  writeBlocks(block: number, data: Uint8Array, offset = 0, length = data.length - offset): void {
    this.checkBlock(block, Math.ceil(length / this.bs));
    this.image.write(this.position(block), data, offset, length);
  }

  checkBlock(block: number, count = 1): void {
    if (!Number.isInteger(block) || block < this.sb.firstDataBlock || block + count > this.sb.blocksCount) {
      throw new Ext4Damaged(`${this.where}: block ${block} is outside the file system; the image is damaged`);
    }
  }

  inodePosition(ino: number): number {
    const { sb } = this;
    if (!Number.isInteger(ino) || ino < 1 || ino > sb.inodesCount) {
      throw new Ext4Damaged(`${this.where}: inode ${ino} is past the inode table (${sb.inodesCount} inodes); the image is damaged`);
    }
    const group = Math.floor((ino - 1) / sb.inodesPerGroup);
    const index = (ino - 1) % sb.inodesPerGroup;
    return this.position(this.groups[group].inodeTable) + index * sb.inodeSize;
  }

  readInode(ino: number): Buffer {
    const buf = this.image.read(this.inodePosition(ino), this.sb.inodeSize);
    if (buf.readUInt32LE(I_FLAGS) & EXT4_INLINE_DATA_FL) throw new Ext4Damaged(`${this.where}: inode ${ino} keeps its data inline (inline_data), which transplant does not handle`);
    return buf;
  }

  /** Writes a whole inode, with its checksum; keeps bg_itable_unused covering it. */
  writeInode(ino: number, inode: Buffer): void {
    this.assertWritable();
    const g = Math.floor((ino - 1) / this.sb.inodesPerGroup);
    const index = (ino - 1) % this.sb.inodesPerGroup;
    const d = this.groups[g];
    const used = this.sb.inodesPerGroup - d.itableUnused;
    if (index >= used) {
      // Slots between the old high-water mark and this inode may hold garbage when the
      // table was never zeroed (lazy_itable_init): zero them before e2fsck looks at them.
      if (!(d.flags & BG_INODE_ZEROED) && index > used) {
        this.image.write(this.inodePosition(g * this.sb.inodesPerGroup + used + 1), Buffer.alloc((index - used) * this.sb.inodeSize));
      }
      d.itableUnused = this.sb.inodesPerGroup - index - 1;
      this.dirtyGroups.add(g);
    }
    if (this.sb.csumSeed !== undefined) setInodeChecksum(inode, ino, this.sb.csumSeed);
    this.image.write(this.inodePosition(ino), inode);
  }

  // ---- reading files ----------------------------------------------------------

  static size(inode: Buffer): number {
    return inode.readUInt32LE(I_SIZE_LO) + inode.readUInt32LE(I_SIZE_HIGH) * 2 ** 32;
  }

  /** Bytes of i_blocks (512-byte sectors, or blocks with huge_file's EXT4_HUGE_FILE_FL). */
  allocatedBytes(inode: Buffer): number {
    const n = inode.readUInt32LE(I_BLOCKS_LO) + inode.readUInt16LE(I_BLOCKS_HI) * 2 ** 32;
    return inode.readUInt32LE(I_FLAGS) & EXT4_HUGE_FILE_FL ? n * this.bs : n * 512;
  }

  static xattrBlock(inode: Buffer): number {
    return inode.readUInt32LE(I_FILE_ACL_LO) + inode.readUInt16LE(I_FILE_ACL_HI) * 2 ** 32;
  }

  /** Size of a file, refused when it claims more than the whole file system holds (a forged i_size). */
  checkedSize(ino: number, inode: Buffer): number {
    const size = Ext4Volume.size(inode);
    const fsBytes = this.sb.blocksCount * this.bs;
    // A sparse file may exceed its blocks; never the addressable range of ext4 (2^32 blocks).
    if (size > 2 ** 32 * this.bs || ((inode.readUInt16LE(I_MODE) & S_IFMT) !== S_IFREG && size > fsBytes)) {
      throw new Ext4Damaged(`${this.where}: inode ${ino} claims ${size} bytes, more than the file system can hold; the image is damaged`);
    }
    return size;
  }

  /**
   * The file's extents in logical order (holes are gaps), and the blocks of its tree.
   * Every node is checked: magic, counts within the node, depth strictly decreasing
   * (so a loop cannot be followed), block numbers inside the file system, logical
   * order increasing (fs/ext4/extents.c ext4_valid_extent_entries).
   */
  fileMap(ino: number, inode: Buffer): FileMap {
    const out: FileMap = { extents: [], treeBlocks: [] };
    const flags = inode.readUInt32LE(I_FLAGS);
    if (flags & EXT4_EXTENTS_FL) {
      const root = inode.subarray(I_BLOCK, I_BLOCK + 60);
      const depth = root.readUInt16LE(6);
      if (depth > MAX_EXTENT_DEPTH) throw this.badTree(ino, `depth ${depth}`);
      this.walkExtentNode(ino, root, depth, out, { last: -1, nodes: 0 });
    } else {
      this.walkBlockMap(ino, inode, out);
    }
    return out;
  }

  private badTree(ino: number, what: string): Ext4Damaged {
    return new Ext4Damaged(`${this.where}: the extent tree of inode ${ino} is damaged (${what}); the image is damaged`);
  }

  private walkExtentNode(ino: number, node: Buffer, depth: number, out: FileMap, st: { last: number; nodes: number }): void {
    if (node.readUInt16LE(0) !== EXTENT_MAGIC) throw this.badTree(ino, 'bad magic');
    const entries = node.readUInt16LE(2);
    const max = node.readUInt16LE(4);
    if (node.readUInt16LE(6) !== depth) throw this.badTree(ino, `depth ${node.readUInt16LE(6)} where ${depth} was expected (a loop?)`);
    if (entries > max || 12 + max * 12 > node.length) throw this.badTree(ino, `${entries} entries of ${max}`);
    if (++st.nodes > this.sb.blocksCount) throw this.badTree(ino, 'more nodes than blocks');
    for (let i = 0; i < entries; i++) {
      const e = 12 + i * 12;
      const logical = node.readUInt32LE(e);
      if (depth > 0) {
        const child = node.readUInt32LE(e + 4) + node.readUInt16LE(e + 8) * 2 ** 32;
        this.checkBlock(child);
        out.treeBlocks.push(child);
        this.walkExtentNode(ino, this.readBlocks(child, 1), depth - 1, out, st);
      } else {
        let len = node.readUInt16LE(e + 4);
        const uninit = len > 32768;
        if (uninit) len -= 32768;
        const start = node.readUInt32LE(e + 8) + node.readUInt16LE(e + 6) * 2 ** 32;
        if (len === 0 || logical <= st.last) throw this.badTree(ino, `extent at file block ${logical} out of order`);
        if (start < this.sb.firstDataBlock || start + len > this.sb.blocksCount) throw this.badTree(ino, `extent at block ${start} outside the file system`);
        st.last = logical + len - 1;
        out.extents.push({ logical, start, len, uninit });
      }
    }
  }

  /** Classic block map (ext2/3): 12 direct, then single, double, triple indirect blocks. */
  private walkBlockMap(ino: number, inode: Buffer, out: FileMap): void {
    const per = this.bs / 4;
    const push = (logical: number, b: number) => {
      if (b === 0) return;
      this.checkBlock(b);
      const last = out.extents[out.extents.length - 1];
      if (last && last.logical + last.len === logical && last.start + last.len === b && last.len < 32768) last.len++;
      else out.extents.push({ logical, start: b, len: 1, uninit: false });
    };
    for (let i = 0; i < 12; i++) push(i, inode.readUInt32LE(I_BLOCK + i * 4));
    let base = 12;
    for (let level = 1; level <= 3; level++) {
      const b = inode.readUInt32LE(I_BLOCK + (11 + level) * 4);
      if (b) this.walkIndirect(ino, b, level, base, out, push);
      base += per ** level;
    }
  }

  private walkIndirect(ino: number, block: number, level: number, base: number, out: FileMap, push: (l: number, b: number) => void): void {
    this.checkBlock(block);
    out.treeBlocks.push(block);
    if (out.treeBlocks.length > this.sb.blocksCount) throw this.badTree(ino, 'too many indirect blocks');
    const data = this.readBlocks(block, 1);
    const per = this.bs / 4;
    for (let i = 0; i < per; i++) {
      const b = data.readUInt32LE(i * 4);
      if (!b) continue;
      if (level === 1) push(base + i, b);
      else this.walkIndirect(ino, b, level - 1, base + i * per ** (level - 1), out, push);
    }
  }

  /**
   * Reads `length` bytes at byte `pos` of a file into `buf` (holes and uninitialised
   * extents are zeros). `map` from fileMap().
   */
  readFileRange(map: FileMap, pos: number, buf: Buffer, length: number): void {
    buf.fill(0, 0, length);
    const bs = this.bs;
    const first = Math.floor(pos / bs);
    const last = Math.floor((pos + length - 1) / bs);
    for (const e of map.extents) {
      if (e.logical + e.len <= first || e.logical > last || e.uninit) continue;
      const from = Math.max(e.logical * bs, pos);
      const to = Math.min((e.logical + e.len) * bs, pos + length);
      this.image.readInto(buf, from - pos, to - from, this.position(e.start) + (from - e.logical * bs));
    }
  }

  /** The content of a regular file, streamed in chunks of at most `chunk` bytes. */
  async *streamFile(ino: number, chunk = 1 << 20): AsyncGenerator<Buffer> {
    const inode = this.readInode(ino);
    const size = this.checkedSize(ino, inode);
    const map = this.fileMap(ino, inode);
    for (let pos = 0; pos < size; pos += chunk) {
      const n = Math.min(chunk, size - pos);
      const buf = Buffer.allocUnsafe(n);
      this.readFileRange(map, pos, buf, n);
      yield buf;
    }
  }

  /** Extended attributes of an inode: in-inode ones, then those of its xattr block. */
  readXattrs(ino: number, inode: Buffer): Array<{ index: number; name: Buffer; value: Buffer }> {
    const out: Array<{ index: number; name: Buffer; value: Buffer }> = [];
    const bad = () => new Ext4Damaged(`${this.where}: the extended attributes of inode ${ino} are damaged; the image is damaged`);
    if (inode.length > GOOD_OLD_INODE_SIZE) {
      const extra = inode.readUInt16LE(I_EXTRA_ISIZE);
      const start = GOOD_OLD_INODE_SIZE + extra;
      if (start + 4 <= inode.length && inode.readUInt32LE(start) === XATTR_MAGIC) {
        this.parseXattrEntries(inode.subarray(start + 4), 0, out, bad);
      }
    }
    const blk = Ext4Volume.xattrBlock(inode);
    if (blk) {
      const data = this.readBlocks(blk, 1);
      if (data.readUInt32LE(0) !== XATTR_MAGIC || data.readUInt32LE(8) !== 1) throw bad();
      this.parseXattrEntries(data, 32, out, bad, true);
    }
    return out;
  }

  private parseXattrEntries(
    region: Buffer, first: number, out: Array<{ index: number; name: Buffer; value: Buffer }>, bad: () => Error, fromBlockStart = false,
  ): void {
    let off = first;
    while (off + 4 <= region.length && region.readUInt32LE(off) !== 0) {
      if (off + 16 > region.length) throw bad();
      const nameLen = region[off];
      const index = region[off + 1];
      const valueOffs = region.readUInt16LE(off + 2);
      const valueInum = region.readUInt32LE(off + 4);
      const valueSize = region.readUInt32LE(off + 8);
      if (off + 16 + nameLen > region.length || valueInum !== 0) throw bad();
      const vStart = fromBlockStart ? valueOffs : valueOffs;
      if (valueSize > 0 && (vStart + valueSize > region.length || vStart < first)) throw bad();
      out.push({ index, name: Buffer.from(region.subarray(off + 16, off + 16 + nameLen)), value: Buffer.from(region.subarray(vStart, vStart + valueSize)) });
      off += 16 + ((nameLen + 3) & ~3);
    }
  }

  // ---- writing: bitmaps and allocation -----------------------------------------

  private assertWritable(): void {
    if (!this.writable) throw new Error(`${this.where}: opened read-only`);
  }

  /**
   * Checks before any write: clean, no journal to replay, no orphans, and the bitmaps
   * agree with the inodes in use (a block a file uses must not be free, an inode a
   * directory names must not be free) — else the allocator would hand them out twice.
   */
  private prepareWrite(check: boolean): void {
    const { sb, where } = this;
    if (sb.featureIncompat & INCOMPAT_RECOVER) {
      throw new Error(`${where}: the ext4 journal needs recovery (needs_recovery); run "e2fsck -f" on it (or boot the device once) and try again`);
    }
    if ((sb.state & 1) === 0 || (sb.state & 2) !== 0) {
      throw new Error(`${where}: the ext4 file system was not cleanly unmounted or has errors; run "e2fsck -f" on it and try again`);
    }
    if (this.sbRaw.readUInt32LE(0xe8) !== 0) throw new Error(`${where}: the ext4 file system has orphan inodes to clean up; run "e2fsck -f" on it and try again`);
    if ((sb.featureCompat & COMPAT_HAS_JOURNAL) && this.sbRaw.readUInt32LE(0xe0) === 0) {
      throw new Error(`${where}: the ext4 file system has an external journal (journal_dev), which transplant does not handle`);
    }
    for (let g = 0; g < sb.groupCount; g++) {
      this.loadBlockBitmap(g);
      this.loadInodeBitmap(g);
    }
    if (check) this.checkBitmaps();
  }

  private groupFirstBlock(g: number): number {
    return this.sb.firstDataBlock + g * this.sb.blocksPerGroup;
  }

  private groupBlocks(g: number): number {
    return Math.min(this.sb.blocksPerGroup, this.sb.blocksCount - this.groupFirstBlock(g));
  }

  /** Blocks of the superblock, descriptors and reserved descriptors a group holds (0 when none). */
  private superAndGdtBlocks(g: number): number {
    if (!groupHasSuper(g, (this.sb.featureRoCompat & RO_COMPAT_SPARSE_SUPER) !== 0)) return 0;
    const gdt = Math.ceil((this.sb.groupCount * this.sb.descSize) / this.bs);
    return 1 + gdt + this.sbRaw.readUInt16LE(0xce);
  }

  private loadBlockBitmap(g: number): Buffer {
    let bm = this.blockBitmaps[g];
    if (bm) return bm;
    const d = this.groups[g];
    if (d.flags & BG_BLOCK_UNINIT) {
      // What the kernel's ext4_init_block_bitmap computes: the group's superblock copy and
      // descriptors, every group's bitmaps and inode table that fall in it, and the padding
      // past the last block.
      bm = Buffer.alloc(this.bs, 0xff);
      bm.fill(0, 0, this.sb.blocksPerGroup / 8);
      const first = this.groupFirstBlock(g);
      const n = this.groupBlocks(g);
      const set = (b: number) => {
        if (b >= first && b < first + n) bm![(b - first) >> 3] |= 1 << ((b - first) & 7);
      };
      for (let i = 0; i < this.superAndGdtBlocks(g); i++) set(first + i);
      const itBlocks = Math.ceil((this.sb.inodesPerGroup * this.sb.inodeSize) / this.bs);
      for (const o of this.groups) {
        set(o.blockBitmap);
        set(o.inodeBitmap);
        for (let i = 0; i < itBlocks; i++) set(o.inodeTable + i);
      }
      for (let i = n; i < this.sb.blocksPerGroup; i++) bm[i >> 3] |= 1 << (i & 7);
    } else {
      bm = this.readBlocks(d.blockBitmap, 1);
    }
    this.blockBitmaps[g] = bm;
    return bm;
  }

  private loadInodeBitmap(g: number): Buffer {
    let bm = this.inodeBitmaps[g];
    if (bm) return bm;
    const d = this.groups[g];
    if (d.flags & BG_INODE_UNINIT) {
      bm = Buffer.alloc(this.bs, 0xff);
      bm.fill(0, 0, this.sb.inodesPerGroup / 8);
    } else {
      bm = this.readBlocks(d.inodeBitmap, 1);
    }
    this.inodeBitmaps[g] = bm;
    return bm;
  }

  isBlockUsed(block: number): boolean {
    const rel = block - this.sb.firstDataBlock;
    const g = Math.floor(rel / this.sb.blocksPerGroup);
    const i = rel % this.sb.blocksPerGroup;
    return (this.loadBlockBitmap(g)[i >> 3] & (1 << (i & 7))) !== 0;
  }

  isInodeUsed(ino: number): boolean {
    const g = Math.floor((ino - 1) / this.sb.inodesPerGroup);
    const i = (ino - 1) % this.sb.inodesPerGroup;
    return (this.loadInodeBitmap(g)[i >> 3] & (1 << (i & 7))) !== 0;
  }

  /**
   * Every inode with links in the used part of each inode table: its inode must be marked
   * in use and every block it owns (data, tree, xattr block) too. Reads each group's used
   * table part in one call.
   */
  private checkBitmaps(): void {
    const { sb, where } = this;
    const chunkInodes = Math.max(1, Math.floor((4 << 20) / sb.inodeSize));
    for (let g = 0; g < sb.groupCount; g++) {
      const d = this.groups[g];
      if (d.flags & BG_INODE_UNINIT) continue;
      const used = (sb.featureRoCompat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM)) ? sb.inodesPerGroup - d.itableUnused : sb.inodesPerGroup;
      for (let start = 0; start < used; start += chunkInodes) {
        const n = Math.min(chunkInodes, used - start);
        const table = this.image.read(this.position(d.inodeTable) + start * sb.inodeSize, n * sb.inodeSize);
        for (let i = 0; i < n; i++) {
          const ino = g * sb.inodesPerGroup + start + i + 1;
          const inode = table.subarray(i * sb.inodeSize, (i + 1) * sb.inodeSize);
          const links = inode.readUInt16LE(I_LINKS);
          const mode = inode.readUInt16LE(I_MODE);
          if (!this.isInodeUsed(ino)) {
            if (links > 0 && mode !== 0 && ino >= this.firstIno && inode.readUInt32LE(0x14) === 0) {
              throw new Ext4Damaged(`${where}: the inode bitmap marks inode ${ino} free, but it is in use; the image is damaged (run e2fsck -f)`);
            }
            continue;
          }
          if (links === 0 || mode === 0) continue;
          if (ino < this.firstIno && ino !== 2 && ino !== 8 && ino !== 7) continue;
          const type = mode & S_IFMT;
          const blocks: number[] = [];
          if (type === S_IFREG || type === S_IFDIR || (type === S_IFLNK && this.allocatedBytes(inode) - (Ext4Volume.xattrBlock(inode) ? this.bs : 0) > 0) || ino === 7 || ino === 8) {
            if (ino === 7 && !(inode.readUInt32LE(I_FLAGS) & EXT4_EXTENTS_FL)) {
              // resize inode: its block map names the reserved GDT blocks (and their backups).
            } else {
              const map = this.fileMap(ino, Buffer.from(inode));
              for (const e of map.extents) for (let k = 0; k < e.len; k++) blocks.push(e.start + k);
              blocks.push(...map.treeBlocks);
            }
          }
          const xb = Ext4Volume.xattrBlock(inode);
          if (xb) blocks.push(xb);
          for (const b of blocks) {
            this.checkBlock(b);
            if (!this.isBlockUsed(b)) {
              throw new Ext4Damaged(`${where}: the block bitmap marks block ${b} free, but inode ${ino} uses it; the image is damaged (run e2fsck -f)`);
            }
          }
        }
      }
    }
  }

  private markBlocks(start: number, len: number, used: boolean): void {
    const { firstDataBlock, blocksPerGroup } = this.sb;
    // One group at a time: its bitmap, descriptor and counts are looked up once per run.
    for (let b = start; b < start + len; ) {
      const rel = b - firstDataBlock;
      const g = Math.floor(rel / blocksPerGroup);
      const first = rel % blocksPerGroup;
      const n = Math.min(start + len - b, blocksPerGroup - first);
      const bm = this.loadBlockBitmap(g);
      for (let i = first; i < first + n; i++) {
        const bit = 1 << (i & 7);
        if (((bm[i >> 3] & bit) !== 0) === used) {
          throw new Error(`${this.where}: block ${b + (i - first)} is already ${used ? 'in use' : 'free'} (allocator state damaged)`);
        }
        bm[i >> 3] ^= bit;
      }
      const d = this.groups[g];
      d.freeBlocks += used ? -n : n;
      d.flags &= ~BG_BLOCK_UNINIT;
      this.sb.freeBlocksCount += used ? -n : n;
      this.dirtyGroups.add(g);
      b += n;
    }
    this.sbDirty = true;
  }

  /** Sets where the next allocations start looking (the next-fit cursor), e.g. after a group's metadata. */
  setBlockGoal(block: number): number {
    const was = this.blockGoal;
    this.blockGoal = block;
    return was;
  }

  /**
   * Allocates `count` blocks as few contiguous runs as possible, next-fit from the cursor
   * so that what is written together lies together. Throws (allocating nothing) when the
   * file system has fewer free blocks.
   */
  allocBlocks(count: number, what: string): Array<{ start: number; len: number }> {
    this.assertWritable();
    if (count === 0) return [];
    if (count > this.sb.freeBlocksCount) throw this.noSpace(what, 'blocks');
    const runs: Array<{ start: number; len: number }> = [];
    const { firstDataBlock, blocksCount, blocksPerGroup } = this.sb;
    let need = count;
    let b = Math.max(firstDataBlock, Math.min(this.blockGoal, blocksCount - 1));
    let scanned = 0;
    const total = blocksCount - firstDataBlock;
    while (need > 0 && scanned < total) {
      const rel = b - firstDataBlock;
      const g = Math.floor(rel / blocksPerGroup);
      if (this.groups[g].freeBlocks === 0) {
        const next = this.groupFirstBlock(g + 1);
        scanned += next - b;
        b = next >= blocksCount ? firstDataBlock : next;
        continue;
      }
      const bm = this.loadBlockBitmap(g);
      const i = rel % blocksPerGroup;
      if (bm[i >> 3] === 0xff && (i & 7) === 0) {
        b += 8;
        scanned += 8;
        if (b >= blocksCount) b = firstDataBlock;
        continue;
      }
      if (bm[i >> 3] & (1 << (i & 7))) {
        b++;
        scanned++;
        if (b >= blocksCount) b = firstDataBlock;
        continue;
      }
      // A free block: extend the run as far as it goes (and need lasts).
      let len = 1;
      let bits = bm;
      let group = g;
      while (len < need && b + len < blocksCount) {
        const r = b + len - firstDataBlock;
        const gr = Math.floor(r / blocksPerGroup);
        if (gr !== group) {
          group = gr;
          bits = this.loadBlockBitmap(gr);
        }
        const k = r % blocksPerGroup;
        // Eight free blocks at once where a whole bitmap byte is free.
        if ((k & 7) === 0 && bits[k >> 3] === 0 && len + 8 <= need && k + 8 <= blocksPerGroup && b + len + 8 <= blocksCount) {
          len += 8;
          continue;
        }
        if (bits[k >> 3] & (1 << (k & 7))) break;
        len++;
      }
      this.markBlocks(b, len, true);
      runs.push({ start: b, len });
      need -= len;
      b += len;
      scanned += len;
      if (b >= blocksCount) b = firstDataBlock;
    }
    if (need > 0) {
      for (const r of runs) this.markBlocks(r.start, r.len, false);
      throw this.noSpace(what, 'blocks');
    }
    this.blockGoal = b;
    return runs;
  }

  freeBlocks(start: number, len: number): void {
    this.assertWritable();
    this.markBlocks(start, len, false);
  }

  noSpace(what: string, kind: 'blocks' | 'inodes'): Error {
    return new Error(`${this.where}: no space left for ${what} (out of ${kind}); the target must be grown first (ensureRoom)`);
  }

  /** Allocates an inode, preferring group `goalGroup` (next-fit from there). */
  allocInode(isDir: boolean, what: string, goalGroup?: number): number {
    this.assertWritable();
    const { sb } = this;
    if (sb.freeInodesCount === 0) throw this.noSpace(what, 'inodes');
    const start = goalGroup ?? this.inodeGoal;
    for (let k = 0; k < sb.groupCount; k++) {
      const g = (start + k) % sb.groupCount;
      const d = this.groups[g];
      if (d.freeInodes === 0) continue;
      const bm = this.loadInodeBitmap(g);
      // Below the hint every inode of the group is in use (next-fit: a layer's tens of
      // thousands of inodes would otherwise each rescan the group from its start).
      for (let i = this.inodeHint[g] ?? 0; i < sb.inodesPerGroup; i++) {
        if (bm[i >> 3] === 0xff && (i & 7) === 0) {
          i += 7;
          continue;
        }
        if (bm[i >> 3] & (1 << (i & 7))) continue;
        const ino = g * sb.inodesPerGroup + i + 1;
        if (ino < this.firstIno) continue;
        bm[i >> 3] |= 1 << (i & 7);
        this.inodeHint[g] = i + 1;
        if (d.flags & BG_INODE_UNINIT) {
          d.flags &= ~BG_INODE_UNINIT;
          d.itableUnused = sb.inodesPerGroup; // nothing in this table is in use yet
        }
        d.freeInodes--;
        if (isDir) d.usedDirs++;
        sb.freeInodesCount--;
        this.dirtyGroups.add(g);
        this.sbDirty = true;
        this.inodeGoal = g;
        return ino;
      }
    }
    throw this.noSpace(what, 'inodes');
  }

  freeInode(ino: number, isDir: boolean): void {
    this.assertWritable();
    const g = Math.floor((ino - 1) / this.sb.inodesPerGroup);
    const i = (ino - 1) % this.sb.inodesPerGroup;
    const bm = this.loadInodeBitmap(g);
    if (!(bm[i >> 3] & (1 << (i & 7)))) throw new Error(`${this.where}: inode ${ino} is already free`);
    bm[i >> 3] &= ~(1 << (i & 7));
    this.inodeHint[g] = Math.min(this.inodeHint[g] ?? 0, i);
    const d = this.groups[g];
    d.freeInodes++;
    if (isDir && d.usedDirs > 0) d.usedDirs--;
    this.sb.freeInodesCount++;
    this.dirtyGroups.add(g);
    this.sbDirty = true;
  }

  /** The group of an inode (to keep a directory's files near it). */
  groupOfInode(ino: number): number {
    return Math.floor((ino - 1) / this.sb.inodesPerGroup);
  }

  groupStart(g: number): number {
    return this.groupFirstBlock(g);
  }

  /** Sets a superblock feature bit (e.g. large_file, dir_nlink) when a write needs it. */
  setRoCompat(bit: number): void {
    if (this.sb.featureRoCompat & bit) return;
    this.sb.featureRoCompat |= bit;
    this.sbDirty = true;
  }

  /** The per-inode checksum seed of extent and directory blocks. */
  inodeCsumSeed(ino: number, inode: Buffer): number | undefined {
    if (this.sb.csumSeed === undefined) return undefined;
    return inodeSeed(this.sb.csumSeed, ino, inode.readUInt32LE(I_GENERATION));
  }

  /**
   * Writes the bitmaps of changed groups, their descriptors (with bitmap and descriptor
   * checksums) and the superblock (free counts, features, checksum). Inodes and data are
   * already on disk.
   */
  flush(): void {
    if (!this.writable) return;
    const { sb } = this;
    const ds = sb.descSize;
    for (const g of [...this.dirtyGroups].sort((a, b) => a - b)) {
      const d = this.groups[g];
      const off = g * ds;
      const bbm = this.blockBitmaps[g];
      const ibm = this.inodeBitmaps[g];
      if (bbm && !(d.flags & BG_BLOCK_UNINIT)) this.writeBlocks(d.blockBitmap, bbm);
      if (ibm && !(d.flags & BG_INODE_UNINIT)) this.writeBlocks(d.inodeBitmap, ibm);
      storeGroupCounts(this.gdtRaw, off, this.is64, d);
      if (sb.csumSeed !== undefined) {
        const bc = bbm && !(d.flags & BG_BLOCK_UNINIT) ? crc32c(sb.csumSeed, bbm.subarray(0, sb.blocksPerGroup / 8)) : undefined;
        const ic = ibm && !(d.flags & BG_INODE_UNINIT) ? crc32c(sb.csumSeed, ibm.subarray(0, sb.inodesPerGroup / 8)) : undefined;
        const cur = this.gdtRaw;
        storeBitmapChecksums(
          cur, off, ds,
          bc ?? (cur.readUInt16LE(off + 0x18) | (ds >= 0x3c ? cur.readUInt16LE(off + 0x38) << 16 : 0)),
          ic ?? (cur.readUInt16LE(off + 0x1a) | (ds >= 0x3c ? cur.readUInt16LE(off + 0x3a) << 16 : 0)),
        );
      }
      const desc = this.gdtRaw.subarray(off, off + ds);
      const c = groupDescChecksum(desc, g, this.csumOpts());
      if (c !== undefined) desc.writeUInt16LE(c, 0x1e);
      this.image.write(this.position(sb.firstDataBlock + 1) + off, desc);
    }
    this.dirtyGroups.clear();
    if (this.sbDirty) {
      const r = this.sbRaw;
      r.writeUInt32LE(sb.freeBlocksCount % 2 ** 32, 0x0c);
      if (this.is64) r.writeUInt32LE(Math.floor(sb.freeBlocksCount / 2 ** 32), 0x158);
      r.writeUInt32LE(sb.freeInodesCount, 0x10);
      r.writeUInt32LE(sb.featureRoCompat, 0x64);
      if (sb.csumSeed !== undefined) r.writeUInt32LE(crc32c(0xffffffff, r.subarray(0, 0x3fc)), 0x3fc);
      this.image.write(this.fsOffset + SUPERBLOCK_OFFSET, r);
      this.sbDirty = false;
    }
  }
}
