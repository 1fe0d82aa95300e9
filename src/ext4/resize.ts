import { crc32c } from './crc32c.js';
import { crc16 } from './crc16.js';
import type { ImageFile } from './image-file.js';
import { setInodeChecksum, I_ATIME, I_BLOCK, I_BLOCKS_HI, I_BLOCKS_LO, I_CRTIME, I_EXTRA_ISIZE, I_MTIME, I_SIZE_HIGH, I_SIZE_LO } from './inode.js';
import {
  EXT4_MAGIC,
  INCOMPAT_64BIT,
  INCOMPAT_CSUM_SEED,
  INCOMPAT_FLEX_BG,
  INCOMPAT_HANDLED,
  INCOMPAT_NAMES,
  INCOMPAT_RECOVER,
  RO_COMPAT_GDT_CSUM,
  RO_COMPAT_HANDLED,
  RO_COMPAT_HUGE_FILE,
  RO_COMPAT_METADATA_CSUM,
  RO_COMPAT_NAMES,
  RO_COMPAT_SPARSE_SUPER,
  SUPERBLOCK_OFFSET,
} from './superblock.js';

/**
 * Offline growth of an ext4 file system, in place, leaving it as e2fsprogs' resize2fs
 * (1.47, run on the unmounted file system with no size argument) leaves it when the new
 * group descriptors fit in the blocks reserved for them: new block groups with their
 * descriptors, bitmaps and inode tables (placed as lib/ext2fs/alloc_tables.c places
 * them, flex_bg included), backup superblocks and descriptor tables in the groups that
 * carry them (sparse_super), fewer reserved GDT blocks and a rebuilt resize inode, free
 * counts recounted from the bitmaps, uninit flags and every checksum.
 *
 * The rules come from reading e2fsprogs: resize/main.c (size rounding, checks),
 * resize/resize2fs.c (adjust_fs_info, adjust_superblock, fix_uninit_block_bitmaps,
 * resize2fs_calculate_summary_stats, fix_resize_inode, fix_sb_journal_backup),
 * lib/ext2fs/alloc_tables.c (ext2fs_allocate_group_table, flexbg_offset),
 * lib/ext2fs/alloc.c (ext2fs_get_free_blocks2), lib/ext2fs/alloc_sb.c,
 * lib/ext2fs/closefs.c (ext2fs_flush2, ext2fs_super_and_bgd_loc2, ext2fs_bg_has_super),
 * lib/ext2fs/res_gdt.c (ext2fs_create_resize_inode), lib/ext2fs/rw_bitmaps.c
 * (write_bitmaps), lib/ext2fs/csum.c (ext2fs_set_gdt_csum and the checksums). No code
 * was copied; the order of the steps is kept because the placement depends on it.
 *
 * Inode tables of new groups are zeroed (known-zero ranges skipped) and marked
 * ITABLE_ZEROED, as resize2fs does when lazy inode-table init is off
 * (RESIZE2FS_FORCE_ITABLE_INIT=1); with it on, resize2fs leaves them to the kernel.
 */

/** Positional I/O on the partition holding the file system (offsets from its start). */
export interface PartitionIo {
  read(offset: number, length: number): Buffer;
  write(data: Buffer, offset: number): void;
}

/** A partition at byte `partOffset` of an image file. */
export function imagePartitionIo(image: ImageFile, partOffset: number): PartitionIo {
  return {
    read: (offset, length) => image.read(partOffset + offset, length),
    write: (data, offset) => image.write(partOffset + offset, data),
  };
}

export interface GrowOptions {
  /** From this byte of the partition on, it reads as zeros (a sparse extension): zeros need not be written there. */
  zeroFrom?: number;
  /** Seconds since the epoch for s_wtime and the resize inode's times (default: now; resize2fs 1.47.0 takes E2FSPROGS_FAKE_TIME). */
  now?: number;
}

export interface GrowResult {
  oldBlocks: number;
  newBlocks: number;
  oldGroups: number;
  newGroups: number;
  blockSize: number;
}

/** The file system was not touched: it is not one this code grows, or it is not clean. */
export class ResizeRefused extends Error {}

// s_feature_compat bits (ext2_fs.h)
const COMPAT_DIR_PREALLOC = 0x1;
const COMPAT_HAS_JOURNAL = 0x4;
const COMPAT_EXT_ATTR = 0x8;
const COMPAT_RESIZE_INODE = 0x10;
const COMPAT_DIR_INDEX = 0x20;
const COMPAT_STABLE_INODES = 0x800;
const COMPAT_NAMES: Record<number, string> = {
  0x2: 'imagic_inodes',
  0x40: 'lazy_bg',
  0x80: 'snapshot_bitmap',
  0x100: 'exclude_bitmap',
  0x200: 'sparse_super2',
  0x400: 'fast_commit',
  0x1000: 'orphan_file',
};
/** Features whose on-disk layout this code grows (and has been judged against resize2fs with). */
const COMPAT_OK = COMPAT_DIR_PREALLOC | COMPAT_HAS_JOURNAL | COMPAT_EXT_ATTR | COMPAT_RESIZE_INODE | COMPAT_DIR_INDEX | COMPAT_STABLE_INODES;

// Block group descriptor (struct ext4_group_desc) fields and bg_flags.
const BG_BLOCK_BITMAP = 0x00;
const BG_INODE_BITMAP = 0x04;
const BG_INODE_TABLE = 0x08;
const BG_FREE_BLOCKS = 0x0c;
const BG_FREE_INODES = 0x0e;
const BG_FLAGS = 0x12;
const BG_BLOCK_BITMAP_CSUM = 0x18;
const BG_INODE_BITMAP_CSUM = 0x1a;
const BG_ITABLE_UNUSED = 0x1c;
const BG_CHECKSUM = 0x1e;
const BG_INODE_UNINIT = 0x1;
const BG_BLOCK_UNINIT = 0x2;
const BG_ITABLE_ZEROED = 0x4;

// Superblock fields (struct ext4_super_block) beyond those superblock.ts names.
const S_INODES_COUNT = 0x00;
const S_BLOCKS_COUNT_LO = 0x04;
const S_R_BLOCKS_COUNT_LO = 0x08;
const S_FREE_BLOCKS_LO = 0x0c;
const S_FREE_INODES = 0x10;
const S_WTIME = 0x30;
const S_STATE = 0x3a;
const S_BLOCK_GROUP_NR = 0x5a;
const S_RESERVED_GDT_BLOCKS = 0xce;
const S_JOURNAL_INUM = 0xe0;
const S_JOURNAL_DEV = 0xe4;
const S_LAST_ORPHAN = 0xe8;
const S_JNL_BACKUP_TYPE = 0xfd;
const S_JNL_BLOCKS = 0x10c;
const S_BLOCKS_COUNT_HI = 0x150;
const S_R_BLOCKS_COUNT_HI = 0x154;
const S_FREE_BLOCKS_HI = 0x158;
const S_RAID_STRIDE = 0x164;
const S_LOG_GROUPS_PER_FLEX = 0x174;
const S_CHECKSUM_TYPE = 0x175;
const S_KBYTES_WRITTEN = 0x178;
const S_OVERHEAD_CLUSTERS = 0x248;
const S_WTIME_HI = 0x274;
const S_CHECKSUM = 0x3fc;
const STATE_VALID = 1;
const STATE_ERROR = 2;

const RESIZE_INO = 7;
const I_DIND_BLOCK = I_BLOCK + 13 * 4;

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, n) => {
  let c = 0;
  for (let b = n; b; b >>>= 1) c += b & 1;
  return c;
});

/** A bitmap over a numbered range (blocks from s_first_data_block, or inodes from 1). */
class Bits {
  readonly bytes: Uint8Array;
  constructor(readonly size: number) {
    this.bytes = new Uint8Array(Math.ceil(size / 8));
  }
  test(i: number): boolean {
    return (this.bytes[i >>> 3] & (1 << (i & 7))) !== 0;
  }
  set(i: number): void {
    this.bytes[i >>> 3] |= 1 << (i & 7);
  }
  clear(i: number): void {
    this.bytes[i >>> 3] &= ~(1 << (i & 7));
  }
  setRange(from: number, count: number): void {
    this.fillRange(from, count, true);
  }
  clearRange(from: number, count: number): void {
    this.fillRange(from, count, false);
  }
  private fillRange(from: number, count: number, on: boolean): void {
    let i = from;
    const end = from + count;
    for (; i < end && i & 7; i++) on ? this.set(i) : this.clear(i);
    const whole = (end - i) >>> 3;
    if (whole) {
      this.bytes.fill(on ? 0xff : 0, i >>> 3, (i >>> 3) + whole);
      i += whole * 8;
    }
    for (; i < end; i++) on ? this.set(i) : this.clear(i);
  }
  /** First set bit in [from, to], or -1. */
  firstSet(from: number, to: number): number {
    let i = from;
    while (i <= to) {
      if ((i & 7) === 0 && this.bytes[i >>> 3] === 0) {
        i += 8;
        continue;
      }
      if (this.test(i)) return i;
      i++;
    }
    return -1;
  }
  /** First clear bit at or after `from` (below `limit`), else `limit`. */
  firstClear(from: number, limit: number): number {
    let i = from;
    while (i < limit) {
      if ((i & 7) === 0 && this.bytes[i >>> 3] === 0xff) {
        i += 8;
        continue;
      }
      if (!this.test(i)) return i;
      i++;
    }
    return limit;
  }
  count(from: number, n: number): number {
    let c = 0;
    let i = from;
    const end = from + n;
    for (; i < end && i & 7; i++) if (this.test(i)) c++;
    for (; i + 8 <= end; i += 8) c += POPCOUNT[this.bytes[i >>> 3]];
    for (; i < end; i++) if (this.test(i)) c++;
    return c;
  }
  /** Bits [from, from + n) packed into bytes, LSB first (n a multiple of 8 or the tail zero-padded). */
  extract(from: number, n: number, out: Buffer): void {
    if ((from & 7) === 0) {
      const start = from >>> 3;
      const len = Math.ceil(n / 8);
      out.set(this.bytes.subarray(start, start + len), 0);
      if (n & 7) out[len - 1] &= (1 << (n & 7)) - 1;
      return;
    }
    out.fill(0, 0, Math.ceil(n / 8));
    for (let i = 0; i < n; i++) if (this.test(from + i)) out[i >>> 3] |= 1 << (i & 7);
  }
  load(from: number, n: number, src: Buffer): void {
    let i = 0;
    if ((from & 7) === 0) {
      i = n & ~7;
      this.bytes.set(src.subarray(0, i >>> 3), from >>> 3);
    }
    for (; i < n; i++) {
      if (src[i >>> 3] & (1 << (i & 7))) this.set(from + i);
      else this.clear(from + i);
    }
  }
}

function isPowerOf(n: number, base: number): boolean {
  let x = base;
  while (x < n) x *= base;
  return x === n;
}

interface Geometry {
  bs: number;
  firstDataBlock: number;
  blocksPerGroup: number;
  inodesPerGroup: number;
  inodeSize: number;
  descSize: number;
  wideDesc: boolean;
  descPerBlock: number;
  inodeBlocksPerGroup: number;
  compat: number;
  incompat: number;
  roCompat: number;
  sparseSuper: boolean;
  csum: 'metadata' | 'gdt' | undefined;
  seed: number;
  uuid: Buffer;
  flexSize: number;
}

function u64(raw: Buffer, lo: number, hi: number, wide: boolean): number {
  return raw.readUInt32LE(lo) + (wide ? raw.readUInt32LE(hi) * 2 ** 32 : 0);
}

function setU64(raw: Buffer, lo: number, hi: number, wide: boolean, value: number): void {
  raw.writeUInt32LE(value % 2 ** 32, lo);
  if (wide) raw.writeUInt32LE(Math.floor(value / 2 ** 32), hi);
}

function names(bits: number, table: Record<number, string>): string[] {
  const out: string[] = [];
  for (let b = 1; b !== 0 && b <= bits; b = (b << 1) >>> 0) if (bits & b) out.push(table[b] ?? `0x${b.toString(16)}`);
  return out;
}

function superblockChecksum(raw: Buffer): number {
  return crc32c(0xffffffff, raw.subarray(0, S_CHECKSUM));
}

/** Reads and checks the geometry; refuses (one line naming the reason) what this code does not grow. */
function readGeometry(raw: Buffer, where: string): Geometry {
  const refuse = (why: string): never => {
    throw new ResizeRefused(`${where}: ${why}`);
  };
  if (raw.readUInt16LE(0x38) !== EXT4_MAGIC) refuse('no ext4 file system (bad superblock magic)');
  if (raw.readUInt32LE(0x4c) < 1) refuse('the ext4 file system is revision 0, which cannot be grown here');
  const compat = raw.readUInt32LE(0x5c);
  const incompat = raw.readUInt32LE(0x60);
  const roCompat = raw.readUInt32LE(0x64);
  if (incompat & INCOMPAT_RECOVER) refuse('the ext4 journal needs recovery; run "e2fsck -f" on it (or boot the device once) and try again');
  const bad = [...names(compat & ~COMPAT_OK, COMPAT_NAMES), ...names(incompat & ~INCOMPAT_HANDLED, INCOMPAT_NAMES), ...names(roCompat & ~RO_COMPAT_HANDLED, RO_COMPAT_NAMES)];
  if (bad.length) refuse(`the ext4 file system uses features transplant cannot grow (${bad.join(', ')})`);
  const csum = roCompat & RO_COMPAT_METADATA_CSUM ? 'metadata' : roCompat & RO_COMPAT_GDT_CSUM ? 'gdt' : undefined;
  if (csum === 'metadata') {
    if (raw[S_CHECKSUM_TYPE] !== 1) refuse(`the ext4 superblock names an unknown checksum type ${raw[S_CHECKSUM_TYPE]}`);
    if (raw.readUInt32LE(S_CHECKSUM) !== superblockChecksum(raw)) refuse('the ext4 superblock checksum is wrong; run "e2fsck -f" on it');
  }
  const logBs = raw.readUInt32LE(0x18);
  if (logBs > 6 || raw.readUInt32LE(0x1c) !== logBs) refuse('the ext4 superblock looks damaged (block size)');
  const bs = 1024 << logBs;
  const firstDataBlock = raw.readUInt32LE(0x14);
  const blocksPerGroup = raw.readUInt32LE(0x20);
  const inodesPerGroup = raw.readUInt32LE(0x28);
  const inodeSize = raw.readUInt16LE(0x58);
  if (firstDataBlock !== (bs === 1024 ? 1 : 0)) refuse('the ext4 superblock looks damaged (first data block)');
  if (blocksPerGroup < 8 || blocksPerGroup > bs * 8 || blocksPerGroup % 8 || raw.readUInt32LE(0x24) !== blocksPerGroup) {
    refuse('the ext4 superblock looks damaged (blocks per group)');
  }
  if (inodesPerGroup < 8 || inodesPerGroup > bs * 8 || inodesPerGroup % 8) refuse('the ext4 superblock looks damaged (inodes per group)');
  if (inodeSize < 128 || inodeSize > bs || (inodeSize & (inodeSize - 1))) refuse(`the ext4 superblock looks damaged (inode size ${inodeSize})`);
  const wide = (incompat & INCOMPAT_64BIT) !== 0;
  const descSize = wide ? raw.readUInt16LE(0xfe) : 32;
  if (wide && (descSize < 64 || descSize > 1024 || (descSize & (descSize - 1)))) refuse(`the ext4 superblock looks damaged (descriptor size ${descSize})`);
  const flexLog = raw[S_LOG_GROUPS_PER_FLEX];
  if (flexLog > 31) refuse('the ext4 superblock looks damaged (flex_bg size)');
  const seed = csum === 'metadata' ? (incompat & INCOMPAT_CSUM_SEED ? raw.readUInt32LE(0x270) : crc32c(0xffffffff, raw.subarray(0x68, 0x78))) : 0;
  return {
    bs,
    firstDataBlock,
    blocksPerGroup,
    inodesPerGroup,
    inodeSize,
    descSize,
    wideDesc: descSize >= 64,
    descPerBlock: bs / descSize,
    inodeBlocksPerGroup: Math.ceil((inodesPerGroup * inodeSize) / bs),
    compat,
    incompat,
    roCompat,
    sparseSuper: (roCompat & RO_COMPAT_SPARSE_SUPER) !== 0,
    csum,
    seed,
    uuid: Buffer.from(raw.subarray(0x68, 0x78)),
    flexSize: incompat & INCOMPAT_FLEX_BG && flexLog ? 2 ** flexLog : 0,
  };
}

function hasSuperIn(g: Geometry, group: number): boolean {
  if (group <= 1 || !g.sparseSuper) return true;
  if (!(group & 1)) return false;
  return isPowerOf(group, 3) || isPowerOf(group, 5) || isPowerOf(group, 7);
}

/**
 * The size resize2fs settles on (resize2fs.c adjust_new_size): a last group too small
 * for its own metadata plus 50 blocks is dropped, and so is one that would overflow the
 * inode count.
 */
function adjustSize(g: Geometry, reservedGdt: number, size: number): number {
  for (;;) {
    const groups = Math.ceil((size - g.firstDataBlock) / g.blocksPerGroup);
    if (groups <= 0) return size;
    const descBlocks = Math.ceil(groups / g.descPerBlock);
    let overhead = 2 + g.inodeBlocksPerGroup;
    if (hasSuperIn(g, groups - 1)) overhead += 1 + descBlocks + reservedGdt;
    const rem = (size - g.firstDataBlock) % g.blocksPerGroup;
    if (groups === 1 && rem && rem < overhead) return size;
    if (groups > 1 && rem && rem < overhead + 50) {
      size -= rem;
      continue;
    }
    if (g.inodesPerGroup * groups > 0xffffffff) {
      if (g.inodesPerGroup * (groups - 1) > 0xffffffff) return size;
      size = g.blocksPerGroup * (groups - 1) + g.firstDataBlock;
      continue;
    }
    return size;
  }
}

/**
 * Grows the ext4 file system on `io` to fill `newSizeBytes` (rounded as resize2fs
 * rounds). Refuses with a ResizeRefused (nothing written) a file system that is not
 * clean, is damaged where this code looks, uses a feature it does not handle, or whose
 * new descriptors do not fit in the reserved GDT blocks (resize2fs would move blocks
 * and inode tables then; this code does not).
 */
export function growExt4InPlace(io: PartitionIo, newSizeBytes: number, where: string, options: GrowOptions = {}): GrowResult {
  const refuse = (why: string): never => {
    throw new ResizeRefused(`${where}: ${why}`);
  };
  const sb = io.read(SUPERBLOCK_OFFSET, 1024);
  const g = readGeometry(sb, where);
  const { bs, firstDataBlock: fdb, blocksPerGroup: bpg, inodesPerGroup: ipg } = g;
  const wideSb = (g.incompat & INCOMPAT_64BIT) !== 0;

  // --- the old file system, checked as resize/main.c checks before resizing ---
  const oldBlocks = u64(sb, S_BLOCKS_COUNT_LO, S_BLOCKS_COUNT_HI, wideSb);
  const state = sb.readUInt16LE(S_STATE);
  if (!(state & STATE_VALID) || state & STATE_ERROR) refuse('the ext4 file system was not cleanly unmounted or has errors; run "e2fsck -f" on it and try again');
  if (sb.readUInt32LE(S_LAST_ORPHAN) !== 0) refuse('the ext4 file system has orphan inodes to clean up; run "e2fsck -f" on it and try again');
  if (oldBlocks <= fdb) refuse('the ext4 superblock looks damaged (block count)');
  const oldGroups = Math.ceil((oldBlocks - fdb) / bpg);
  if (sb.readUInt32LE(S_INODES_COUNT) !== oldGroups * ipg) refuse('the ext4 superblock looks damaged (inode count)');
  if (u64(sb, S_FREE_BLOCKS_LO, S_FREE_BLOCKS_HI, wideSb) > oldBlocks || sb.readUInt32LE(S_FREE_INODES) > oldGroups * ipg) {
    refuse('the ext4 superblock free counts are impossible; run "e2fsck -f" on it');
  }
  const oldDescBlocks = Math.ceil(oldGroups / g.descPerBlock);
  const oldReserved = sb.readUInt16LE(S_RESERVED_GDT_BLOCKS);
  const hasResizeInode = (g.compat & COMPAT_RESIZE_INODE) !== 0;
  if (!hasResizeInode && oldReserved) refuse('the ext4 superblock reserves GDT blocks without the resize_inode feature');
  if (oldReserved > bs / 4) refuse('the ext4 superblock looks damaged (reserved GDT blocks)');
  if (oldDescBlocks + oldReserved + fdb + 1 >= bpg) refuse('the ext4 superblock looks damaged (descriptor blocks)');

  // --- the new size (resize/main.c with no size given: whole pages, at most 2^32 - 1 blocks without 64bit) ---
  let newBlocks = Math.floor(newSizeBytes / bs);
  if (bs < 4096) newBlocks -= newBlocks % (4096 / bs);
  if (!wideSb && newBlocks >= 2 ** 32) newBlocks = 2 ** 32 - 1;
  {
    const groups = Math.ceil((newBlocks - fdb) / bpg);
    if (Math.ceil(groups / g.descPerBlock) + fdb > bpg) refuse('the new size needs too many block group descriptors');
  }
  if (newBlocks < oldBlocks) refuse(`the partition (${newBlocks} blocks) is smaller than the file system (${oldBlocks} blocks); it is only ever grown`);
  newBlocks = adjustSize(g, oldReserved, newBlocks);
  // A new last group too small to keep: nothing to do at this size (resize2fs would shrink to
  // the end of the previous group; a larger partition is needed to grow at all).
  if (newBlocks <= oldBlocks) return { oldBlocks, newBlocks: oldBlocks, oldGroups, newGroups: oldGroups, blockSize: bs };
  const newGroups = Math.ceil((newBlocks - fdb) / bpg);
  if (newGroups * ipg > 0xffffffff) refuse('the new size would need more than 2^32 inodes');
  const newDescBlocks = Math.ceil(newGroups / g.descPerBlock);
  // adjust_reserved_gdt_blocks: the descriptor region (descriptors + reserved) keeps its size.
  let newReserved = oldReserved;
  if (newDescBlocks !== oldDescBlocks) {
    if (!hasResizeInode) {
      refuse(`growing to ${newBlocks} blocks needs ${newDescBlocks - oldDescBlocks} more group descriptor block(s) and the file system has no resize_inode to take them from`);
    }
    newReserved = oldReserved - (newDescBlocks - oldDescBlocks);
    if (newReserved < 0) {
      refuse(`growing to ${newBlocks} blocks needs ${newDescBlocks - oldDescBlocks} more group descriptor block(s) but only ${oldReserved} are reserved`);
    }
  }
  const gdtRegion = newDescBlocks + newReserved; // == oldDescBlocks + oldReserved

  // --- group descriptors, old ones read and checked ---
  const desc = Buffer.alloc(newDescBlocks * bs);
  io.read((fdb + 1) * bs, oldDescBlocks * bs).copy(desc, 0, 0, oldGroups * g.descSize);
  const D = (group: number) => group * g.descSize;
  const dget64 = (group: number, lo: number, hi: number) => desc.readUInt32LE(D(group) + lo) + (g.wideDesc ? desc.readUInt32LE(D(group) + hi) * 2 ** 32 : 0);
  const dset64 = (group: number, lo: number, hi: number, v: number) => {
    desc.writeUInt32LE(v % 2 ** 32, D(group) + lo);
    if (g.wideDesc) desc.writeUInt32LE(Math.floor(v / 2 ** 32), D(group) + hi);
  };
  const dget16 = (group: number, lo: number, hi: number) => desc.readUInt16LE(D(group) + lo) + (g.wideDesc ? desc.readUInt16LE(D(group) + hi) * 65536 : 0);
  const dset16 = (group: number, lo: number, hi: number, v: number) => {
    desc.writeUInt16LE(v & 0xffff, D(group) + lo);
    if (g.wideDesc) desc.writeUInt16LE(Math.floor(v / 65536), D(group) + hi);
  };
  const blockBitmapLoc = (group: number) => dget64(group, BG_BLOCK_BITMAP, 0x20);
  const inodeBitmapLoc = (group: number) => dget64(group, BG_INODE_BITMAP, 0x24);
  const inodeTableLoc = (group: number) => dget64(group, BG_INODE_TABLE, 0x28);
  const flags = (group: number) => desc.readUInt16LE(D(group) + BG_FLAGS);
  const setFlags = (group: number, f: number) => desc.writeUInt16LE(f, D(group) + BG_FLAGS);
  const clearFlag = (group: number, f: number) => setFlags(group, flags(group) & ~f);
  const descChecksum = (group: number): number => {
    const d = desc.subarray(D(group), D(group) + g.descSize);
    const groupLe = Buffer.alloc(4);
    groupLe.writeUInt32LE(group);
    if (g.csum === 'metadata') {
      const copy = Buffer.from(d);
      copy.writeUInt16LE(0, BG_CHECKSUM);
      return crc32c(crc32c(g.seed, groupLe), copy) & 0xffff;
    }
    let crc = crc16(0xffff, g.uuid);
    crc = crc16(crc, groupLe);
    crc = crc16(crc, d.subarray(0, BG_CHECKSUM));
    return crc16(crc, d.subarray(BG_CHECKSUM + 2));
  };

  // Geometry of the file system as it grows (ext2fs_group_first_block2 and friends).
  let blocks = oldBlocks;
  let groups = oldGroups;
  let descBlocks = oldDescBlocks;
  let reserved = oldReserved;
  const groupFirst = (group: number) => fdb + group * bpg;
  const groupLast = (group: number) => (group === groups - 1 ? blocks - 1 : fdb + (group + 1) * bpg - 1);
  const groupBlocks = (group: number) => (group === groups - 1 ? (blocks - fdb) % bpg || bpg : bpg);
  const groupOf = (block: number) => Math.floor((block - fdb) / bpg);
  const csumOn = g.csum !== undefined;

  const bmap = new Bits(newGroups * bpg); // bit i = block fdb + i
  const imap = new Bits(newGroups * ipg); // bit i = inode i + 1
  const mark = (block: number) => bmap.set(block - fdb);
  const markRange = (block: number, n: number) => bmap.setRange(block - fdb, n);

  /** ext2fs_reserve_super_and_bgd without meta_bg. */
  const reserveSuperAndBgd = (group: number) => {
    const first = groupFirst(group);
    if (hasSuperIn(g, group)) {
      mark(first);
      let n = descBlocks + reserved;
      if (first + 1 + n >= blocks) n = blocks - (first + 1);
      if (n > 0) markRange(first + 1, n);
    }
  };

  const fsEnd = oldBlocks;
  const inFs = (b: number, n = 1) => b >= fdb && b + n <= fsEnd;
  const gdtEnd = fdb + 1 + oldDescBlocks + oldReserved;
  const bitmapBuf = Buffer.alloc(bs);
  for (let gi = 0; gi < oldGroups; gi++) {
    if (csumOn && desc.readUInt16LE(D(gi) + BG_CHECKSUM) !== descChecksum(gi)) {
      refuse(`the ext4 group descriptor ${gi} has a wrong checksum; run "e2fsck -f" on it`);
    }
    const bb = blockBitmapLoc(gi);
    const ib = inodeBitmapLoc(gi);
    const it = inodeTableLoc(gi);
    if (!inFs(bb) || !inFs(ib) || !inFs(it, g.inodeBlocksPerGroup) || bb < gdtEnd || ib < gdtEnd || it < gdtEnd) {
      refuse(`the ext4 group descriptor ${gi} points outside the file system or into its descriptor table`);
    }
    const f = csumOn ? flags(gi) : 0;
    const first = groupFirst(gi);
    const n = groupBlocks(gi);
    if (f & BG_BLOCK_UNINIT) {
      // fix_uninit_block_bitmaps: such a group holds its own metadata only.
      reserveSuperAndBgd(gi);
      mark(bb);
      mark(ib);
      markRange(it, g.inodeBlocksPerGroup);
    } else {
      const raw = io.read(bb * bs, bs);
      if (g.csum === 'metadata') {
        const crc = crc32c(g.seed, raw.subarray(0, bpg / 8));
        const want = desc.readUInt16LE(D(gi) + BG_BLOCK_BITMAP_CSUM) + (g.wideDesc ? desc.readUInt16LE(D(gi) + 0x38) * 65536 : 0);
        if ((g.wideDesc ? crc >>> 0 : crc & 0xffff) !== want) refuse(`the ext4 block bitmap of group ${gi} has a wrong checksum; run "e2fsck -f" on it`);
      }
      bmap.load(first - fdb, n, raw);
    }
    if (n - bmap.count(first - fdb, n) !== dget16(gi, BG_FREE_BLOCKS, 0x2c)) {
      refuse(`the ext4 block bitmap of group ${gi} does not match its free block count; run "e2fsck -f" on it`);
    }
    if (!(f & BG_INODE_UNINIT)) {
      const raw = io.read(ib * bs, bs);
      if (g.csum === 'metadata') {
        const crc = crc32c(g.seed, raw.subarray(0, Math.ceil(ipg / 8)));
        const want = desc.readUInt16LE(D(gi) + BG_INODE_BITMAP_CSUM) + (g.wideDesc ? desc.readUInt16LE(D(gi) + 0x3a) * 65536 : 0);
        if ((g.wideDesc ? crc >>> 0 : crc & 0xffff) !== want) refuse(`the ext4 inode bitmap of group ${gi} has a wrong checksum; run "e2fsck -f" on it`);
      }
      imap.load(gi * ipg, ipg, raw);
    }
    if (ipg - imap.count(gi * ipg, ipg) !== dget16(gi, BG_FREE_INODES, 0x2e)) {
      refuse(`the ext4 inode bitmap of group ${gi} does not match its free inode count; run "e2fsck -f" on it`);
    }
  }
  bitmapBuf.fill(0);

  // determine_fs_stride (resize/main.c), from the old layout.
  let stride = sb.readUInt16LE(S_RAID_STRIDE);
  if (!stride) {
    const flexbgSize = 2 ** sb[S_LOG_GROUPS_PER_FLEX];
    let num = 0;
    let sum = 0;
    let prevHasSb = false;
    for (let gi = 0; gi < oldGroups; gi++) {
      const hasSb = hasSuperIn(g, gi);
      if (gi !== 0 && hasSb === prevHasSb) {
        const bStride = blockBitmapLoc(gi) - blockBitmapLoc(gi - 1) - bpg;
        const iStride = inodeBitmapLoc(gi) - inodeBitmapLoc(gi - 1) - bpg;
        if (bStride === iStride && bStride >= 0 && !(flexbgSize > 1 && gi % flexbgSize === 0)) {
          sum += bStride;
          num++;
        }
      }
      prevHasSb = hasSb;
    }
    if (oldGroups > 12 && num < 3) sum = 0;
    stride = num ? Math.floor(sum / num) : 0;
  }

  // --- adjust_fs_info ---
  blocks = newBlocks;
  groups = newGroups;
  descBlocks = newDescBlocks;
  reserved = newReserved;
  const oldR = u64(sb, S_R_BLOCKS_COUNT_LO, S_R_BLOCKS_COUNT_HI, wideSb);
  const percent = (oldR * 100.0) / oldBlocks;
  const newR = Math.floor((percent * newBlocks) / 100.0);

  /** ext2fs_get_free_blocks2: `num` free blocks from `start` towards `finish` (wrapping when finish <= start). */
  const getFreeBlocks = (start: number, finish: number, num: number): number | undefined => {
    let b = start || fdb;
    if (!finish) finish = start;
    if (!num) num = 1;
    const wrapAt = blocks - num + 1; // first b with b + num - 1 >= blocks
    for (;;) {
      if (b >= wrapAt) {
        if (finish > start) return undefined;
        b = fdb;
      }
      const hit = bmap.firstSet(b - fdb, b + num - 1 - fdb);
      if (hit < 0) return b;
      // Every start up to the end of the run of used blocks at the hit overlaps a used block;
      // the real loop would stop at `finish` or wrap on the way.
      const next = bmap.firstClear(hit + 1, bmap.size) + fdb;
      if (finish > b && finish <= next) return undefined;
      b = next >= wrapAt && wrapAt > b ? wrapAt : next;
    }
  };

  /** flexbg_offset (alloc_tables.c). */
  const flexbgOffset = (group: number, startBlk: number, remGroups: number, elemSize: number): number => {
    const flexSize = g.flexSize;
    const flexbg = Math.floor(group / flexSize);
    let size = remGroups * elemSize;
    if (size > Math.floor(bpg / 4)) size = Math.floor(bpg / 4);
    if (startBlk && startBlk < blocks) {
      const b = getFreeBlocks(startBlk, startBlk + size, elemSize);
      if (b !== undefined) return b;
    }
    const start = groupFirst(flexSize * flexbg);
    const lastGroup = Math.min(group | (flexSize - 1), groups - 1);
    const lastBlk = groupLast(lastGroup);
    return getFreeBlocks(start, lastBlk, size) ?? getFreeBlocks(start, lastBlk, elemSize) ?? getFreeBlocks(0, lastBlk, elemSize) ?? 0;
  };

  /** Flex_bg bookkeeping of ext2fs_allocate_group_table: the group a table block lands in is no longer BLOCK_UNINIT. */
  const landed = (block: number, n: number) => {
    for (let b = block; b < block + n; ) {
      const gr = groupOf(b);
      clearFlag(gr, BG_BLOCK_UNINIT);
      b = groupLast(gr) + 1;
    }
  };

  /** ext2fs_allocate_group_table for a new group (all three locations unset). */
  const allocateGroupTable = (group: number) => {
    let groupBlk = groupFirst(group);
    let lastBlk = groupLast(group);
    let lastGrp = 0;
    let remGrps = 0;
    let tableOffset = 0;
    const flexSize = g.flexSize;
    if (flexSize) {
      lastGrp = Math.min(group | (flexSize - 1), groups - 1);
      remGrps = lastGrp - group + 1;
    }
    let startBlk: number;
    if (stride && !flexSize) {
      const s = getFreeBlocks(groupBlk, lastBlk, 1);
      if (s === undefined) refuse(`no room for the bitmaps of new group ${group}`);
      startBlk = s! + g.inodeBlocksPerGroup;
      startBlk += (stride * group) % (lastBlk - startBlk + 1);
      if (startBlk >= lastBlk) startBlk = groupBlk;
    } else startBlk = groupBlk;

    if (flexSize) {
      let prev = 0;
      tableOffset = flexSize;
      if (group % flexSize) prev = blockBitmapLoc(group - 1) + 1;
      else if (lastGrp === groups - 1) {
        // The last flex group keeps its tables contiguous.
        tableOffset = lastGrp & (flexSize - 1);
        tableOffset = tableOffset === 0 ? flexSize : tableOffset + 1;
      }
      startBlk = flexbgOffset(group, prev, remGrps, 1);
      lastBlk = groupLast(lastGrp);
    }
    let nb = getFreeBlocks(startBlk, lastBlk, 1) ?? getFreeBlocks(groupBlk, lastBlk, 1);
    if (nb === undefined) refuse(`no room for the block bitmap of new group ${group}`);
    mark(nb!);
    dset64(group, BG_BLOCK_BITMAP, 0x20, nb!);
    if (flexSize) landed(nb!, 1);

    if (flexSize) {
      const prev = group % flexSize ? inodeBitmapLoc(group - 1) + 1 : blockBitmapLoc(group) + tableOffset;
      startBlk = flexbgOffset(group, prev, remGrps, 1);
      lastBlk = groupLast(lastGrp);
    }
    nb = getFreeBlocks(startBlk, lastBlk, 1) ?? getFreeBlocks(groupBlk, lastBlk, 1);
    if (nb === undefined) refuse(`no room for the inode bitmap of new group ${group}`);
    mark(nb!);
    dset64(group, BG_INODE_BITMAP, 0x24, nb!);
    if (flexSize) landed(nb!, 1);

    if (flexSize) {
      const prev = group % flexSize ? inodeTableLoc(group - 1) + g.inodeBlocksPerGroup : inodeBitmapLoc(group) + tableOffset;
      groupBlk = flexbgOffset(group, prev, remGrps, g.inodeBlocksPerGroup);
      lastBlk = groupLast(lastGrp);
    }
    nb = getFreeBlocks(groupBlk, lastBlk, g.inodeBlocksPerGroup);
    if (nb === undefined) refuse(`no room for the inode table of new group ${group}`);
    markRange(nb!, g.inodeBlocksPerGroup);
    if (flexSize) landed(nb!, g.inodeBlocksPerGroup);
    dset64(group, BG_INODE_TABLE, 0x28, nb!);
  };

  for (let gi = 0; gi < oldGroups; gi++) reserveSuperAndBgd(gi);
  for (let gi = oldGroups; gi < newGroups; gi++) {
    desc.fill(0, D(gi), D(gi) + g.descSize);
    let f = 0;
    if (csumOn) {
      f |= BG_INODE_UNINIT | BG_ITABLE_ZEROED;
      dset16(gi, BG_ITABLE_UNUSED, 0x32, ipg);
    }
    if (gi < newGroups - 1 && csumOn) f |= BG_BLOCK_UNINIT;
    setFlags(gi, f);
    if (hasSuperIn(g, gi)) {
      // ext2fs_block_alloc_stats2 on the backup superblock and descriptor region: marks
      // them and takes BLOCK_UNINIT away from the group.
      const first = groupFirst(gi);
      mark(first);
      markRange(first + 1, gdtRegion);
      clearFlag(gi, BG_BLOCK_UNINIT);
    }
    allocateGroupTable(gi);
  }

  // fix_uninit_block_bitmaps on the grown file system, then the last group is initialised.
  if (csumOn) {
    for (let gi = 0; gi < newGroups; gi++) {
      if (!(flags(gi) & BG_BLOCK_UNINIT)) continue;
      bmap.clearRange(groupFirst(gi) - fdb, groupBlocks(gi));
      reserveSuperAndBgd(gi);
      mark(blockBitmapLoc(gi));
      mark(inodeBitmapLoc(gi));
      markRange(inodeTableLoc(gi), g.inodeBlocksPerGroup);
    }
    clearFlag(newGroups - 1, BG_BLOCK_UNINIT);
  }

  // The resize inode and the journal inode, read (and checked) before anything is written.
  const inode = hasResizeInode ? io.read(inodeTableLoc(0) * bs + (RESIZE_INO - 1) * g.inodeSize, g.inodeSize) : Buffer.alloc(0);
  const dind = hasResizeInode ? inode.readUInt32LE(I_DIND_BLOCK) : 0;
  if (hasResizeInode && (!dind || dind < gdtEnd || dind >= oldBlocks || !bmap.test(dind - fdb))) refuse('the ext4 resize inode is damaged (its double-indirect block); run "e2fsck -f" on it');
  const journalIno = sb.readUInt32LE(S_JOURNAL_INUM);
  let jino: Buffer | undefined;
  if (g.compat & COMPAT_HAS_JOURNAL && !(sb.readUInt32LE(S_JOURNAL_DEV) && !journalIno)) {
    if (journalIno < 1 || journalIno > oldGroups * ipg) refuse('the ext4 superblock looks damaged (journal inode)');
    const grp = Math.floor((journalIno - 1) / ipg);
    jino = io.read(inodeTableLoc(grp) * bs + ((journalIno - 1) % ipg) * g.inodeSize, 128);
  }

  // From here on the file system is written. First the error flag, as resize2fs does,
  // so that a resize cut short is seen by e2fsck and the kernel.
  const now = options.now ?? Math.floor(Date.now() / 1000);
  const zeroFrom = options.zeroFrom ?? Infinity;
  const flag = Buffer.from(sb);
  flag.writeUInt16LE(state | STATE_ERROR, S_STATE);
  if (g.csum === 'metadata') flag.writeUInt32LE(superblockChecksum(flag), S_CHECKSUM);
  io.write(flag, SUPERBLOCK_OFFSET);

  // New inode tables: zeros (adjust_superblock without lazy itable init). Ranges that
  // already read as zeros (holes of a sparse image, blocks mke2fs never wrote) are left
  // alone, which also keeps them holes.
  {
    const zeros = Buffer.alloc(Math.min(g.inodeBlocksPerGroup * bs, 1024 * 1024));
    for (let gi = oldGroups; gi < newGroups; gi++) {
      const start = inodeTableLoc(gi) * bs;
      const end = Math.min(start + g.inodeBlocksPerGroup * bs, zeroFrom);
      for (let p = start; p < end; p += zeros.length) {
        const n = Math.min(zeros.length, end - p);
        if (!io.read(p, n).equals(zeros.subarray(0, n))) io.write(zeros.subarray(0, n), p);
      }
    }
  }

  // resize2fs_calculate_summary_stats: free counts from the bitmaps.
  let freeBlocks = 0;
  let freeInodes = 0;
  for (let gi = 0; gi < newGroups; gi++) {
    const n = groupBlocks(gi);
    const free = n - bmap.count(groupFirst(gi) - fdb, n);
    freeBlocks += free;
    dset16(gi, BG_FREE_BLOCKS, 0x2c, free);
    const freeI = csumOn && flags(gi) & BG_INODE_UNINIT ? ipg : ipg - imap.count(gi * ipg, ipg);
    freeInodes += freeI;
    dset16(gi, BG_FREE_INODES, 0x2e, freeI);
  }

  // fix_resize_inode / ext2fs_create_resize_inode: the reserved GDT blocks that are left,
  // and their backups in every group that has a superblock, listed again from scratch.
  if (hasResizeInode) {
    const apb = bs / 4;
    const dindBuf = Buffer.alloc(bs);
    let iblocks = 1;
    const backups: number[] = [];
    for (let three = 1, five = 5, seven = 7; ; ) {
      let grp: number;
      if (!g.sparseSuper) grp = three++;
      else {
        let min = three;
        let which = 3;
        if (five < min) {
          min = five;
          which = 5;
        }
        if (seven < min) {
          min = seven;
          which = 7;
        }
        grp = min;
        if (which === 3) three *= 3;
        else if (which === 5) five *= 5;
        else seven *= 7;
      }
      if (grp >= newGroups) break;
      backups.push(grp);
    }
    const gdtBuf = Buffer.alloc(bs);
    for (let rsv = 0; rsv < newReserved; rsv++) {
      const gdtOff = (newDescBlocks + rsv) % apb;
      const gdtBlk = fdb + 1 + newDescBlocks + rsv;
      dindBuf.writeUInt32LE(gdtBlk, gdtOff * 4);
      iblocks++;
      gdtBuf.fill(0);
      backups.forEach((grp, k) => {
        if (k < apb) gdtBuf.writeUInt32LE((gdtBlk + grp * bpg) % 2 ** 32, k * 4);
      });
      iblocks += backups.length;
      io.write(gdtBuf, gdtBlk * bs);
    }
    io.write(dindBuf, dind * bs);
    const out = Buffer.alloc(g.inodeSize);
    inode.copy(out, 0, 0, 128);
    const i512 = iblocks * (bs / 512);
    out.writeUInt32LE(i512 % 2 ** 32, I_BLOCKS_LO);
    if (g.roCompat & RO_COMPAT_HUGE_FILE) out.writeUInt16LE(Math.floor(i512 / 2 ** 32), I_BLOCKS_HI);
    out.writeUInt32LE(now % 2 ** 32, I_ATIME);
    out.writeUInt32LE(now % 2 ** 32, I_MTIME);
    if (g.inodeSize > 128) {
      out.writeUInt16LE(32, I_EXTRA_ISIZE); // sizeof(struct ext2_inode_large) - 128, as ext2fs_write_new_inode sets it
      out.writeUInt32LE(now % 2 ** 32, I_CRTIME);
    }
    if (g.csum === 'metadata') setInodeChecksum(out, RESIZE_INO, g.seed);
    io.write(out, inodeTableLoc(0) * bs + (RESIZE_INO - 1) * g.inodeSize);
  }

  // fix_sb_journal_backup: s_jnl_blocks mirrors the journal inode's block map and size.
  const newSb = Buffer.from(sb);
  if (jino) {
    jino.copy(newSb, S_JNL_BLOCKS, I_BLOCK, I_BLOCK + 60);
    newSb.writeUInt32LE(jino.readUInt32LE(I_SIZE_HIGH), S_JNL_BLOCKS + 15 * 4);
    newSb.writeUInt32LE(jino.readUInt32LE(I_SIZE_LO), S_JNL_BLOCKS + 16 * 4);
    newSb[S_JNL_BACKUP_TYPE] = 1; // EXT3_JNL_BACKUP_BLOCKS
  }

  // ext2fs_set_gdt_csum: uninit flags and the unused-inode watermark of every group.
  if (csumOn) {
    for (let gi = 0; gi < newGroups; gi++) {
      if (dget16(gi, BG_FREE_BLOCKS, 0x2c) === bpg && gi !== newGroups - 1) setFlags(gi, flags(gi) | BG_BLOCK_UNINIT);
      if (dget16(gi, BG_FREE_INODES, 0x2e) === ipg) {
        setFlags(gi, flags(gi) | BG_INODE_UNINIT);
        dset16(gi, BG_ITABLE_UNUSED, 0x32, ipg);
      } else {
        let last = ipg;
        for (let i = ipg - 1; i >= 0; i--) {
          if (imap.test(gi * ipg + i)) {
            last = i + 1;
            break;
          }
        }
        clearFlag(gi, BG_INODE_UNINIT);
        dset16(gi, BG_ITABLE_UNUSED, 0x32, ipg - last);
      }
    }
  }

  // write_bitmaps (rw_bitmaps.c): every initialised group's bitmaps, 0xff past the
  // group's bits and past the end of the file system, checksums into the descriptors.
  {
    const bbytes = bpg / 8;
    const ibytes = Math.ceil(ipg / 8);
    for (let gi = 0; gi < newGroups; gi++) {
      if (!(csumOn && flags(gi) & BG_BLOCK_UNINIT)) {
        bitmapBuf.fill(0xff);
        bmap.extract(gi * bpg, bpg, bitmapBuf);
        if (gi === newGroups - 1) {
          const nbits = (newBlocks - fdb) % bpg;
          if (nbits) for (let j = nbits; j < bs * 8; j++) bitmapBuf[j >>> 3] |= 1 << (j & 7);
        }
        if (g.csum === 'metadata') {
          const crc = crc32c(g.seed, bitmapBuf.subarray(0, bbytes));
          desc.writeUInt16LE(crc & 0xffff, D(gi) + BG_BLOCK_BITMAP_CSUM);
          if (g.wideDesc) desc.writeUInt16LE(crc >>> 16, D(gi) + 0x38);
        }
        io.write(bitmapBuf, blockBitmapLoc(gi) * bs);
      }
      if (!(csumOn && flags(gi) & BG_INODE_UNINIT)) {
        bitmapBuf.fill(0xff);
        imap.extract(gi * ipg, ipg, bitmapBuf);
        if (g.csum === 'metadata') {
          const crc = crc32c(g.seed, bitmapBuf.subarray(0, ibytes));
          desc.writeUInt16LE(crc & 0xffff, D(gi) + BG_INODE_BITMAP_CSUM);
          if (g.wideDesc) desc.writeUInt16LE(crc >>> 16, D(gi) + 0x3a);
        }
        io.write(bitmapBuf, inodeBitmapLoc(gi) * bs);
      }
    }
  }
  if (csumOn) for (let gi = 0; gi < newGroups; gi++) desc.writeUInt16LE(descChecksum(gi), D(gi) + BG_CHECKSUM);

  // The superblock.
  newSb.writeUInt32LE(newGroups * ipg, S_INODES_COUNT);
  setU64(newSb, S_BLOCKS_COUNT_LO, S_BLOCKS_COUNT_HI, wideSb, newBlocks);
  setU64(newSb, S_R_BLOCKS_COUNT_LO, S_R_BLOCKS_COUNT_HI, wideSb, newR);
  setU64(newSb, S_FREE_BLOCKS_LO, S_FREE_BLOCKS_HI, wideSb, freeBlocks);
  newSb.writeUInt32LE(freeInodes, S_FREE_INODES);
  newSb.writeUInt16LE(newReserved, S_RESERVED_GDT_BLOCKS);
  newSb.writeUInt32LE(0, S_OVERHEAD_CLUSTERS);
  newSb.writeUInt16LE(stride, S_RAID_STRIDE);
  newSb.writeUInt32LE(now % 2 ** 32, S_WTIME);
  newSb[S_WTIME_HI] = Math.floor(now / 2 ** 32) & 0xff;
  // s_kbytes_written counts what this run wrote, roughly as libext2fs's close does.
  const kb = newSb.readUInt32LE(S_KBYTES_WRITTEN) + newSb.readUInt32LE(S_KBYTES_WRITTEN + 4) * 2 ** 32;
  if (kb) {
    const written = kb + Math.ceil(((newGroups - oldGroups) * (2 + g.inodeBlocksPerGroup) + newDescBlocks + 1) * (bs / 1024));
    newSb.writeUInt32LE(written % 2 ** 32, S_KBYTES_WRITTEN);
    newSb.writeUInt32LE(Math.floor(written / 2 ** 32), S_KBYTES_WRITTEN + 4);
  }

  // ext2fs_flush2: backup superblocks (s_block_group_nr set) and descriptor tables in
  // every group that has a superblock, the primary superblock last.
  for (let gi = 0; gi < newGroups; gi++) {
    if (!hasSuperIn(g, gi)) continue;
    const first = groupFirst(gi);
    if (gi !== 0) {
      // Backups are written with the state not valid (ext2fs_flush2 restores it for the primary only).
      const copy = Buffer.from(newSb);
      copy.writeUInt16LE(state & ~STATE_VALID & ~STATE_ERROR, S_STATE);
      copy.writeUInt16LE(Math.min(gi, 65535), S_BLOCK_GROUP_NR);
      if (g.csum === 'metadata') copy.writeUInt32LE(superblockChecksum(copy), S_CHECKSUM);
      io.write(copy, first * bs);
    }
    io.write(desc, (first + 1) * bs);
  }
  newSb.writeUInt16LE(0, S_BLOCK_GROUP_NR);
  newSb.writeUInt16LE(state, S_STATE);
  if (g.csum === 'metadata') newSb.writeUInt32LE(superblockChecksum(newSb), S_CHECKSUM);
  io.write(newSb, SUPERBLOCK_OFFSET);
  return { oldBlocks, newBlocks, oldGroups, newGroups, blockSize: bs };
}
