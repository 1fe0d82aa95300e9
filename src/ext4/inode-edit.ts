import type { Ext4Records } from './fs-records.js';
import {
  EXT4_EXTENTS_FL, EXT4_INDEX_FL, EXT4_INLINE_DATA_FL, GOOD_OLD_INODE_SIZE,
  I_ATIME, I_ATIME_EXTRA, I_BLOCKS_HI, I_BLOCKS_LO, I_CTIME, I_CTIME_EXTRA, I_EXTRA_ISIZE,
  I_BLOCK, I_FILE_ACL_HI, I_FILE_ACL_LO, I_FLAGS, I_MODE, I_MTIME, I_MTIME_EXTRA, I_SIZE_HIGH, I_SIZE_LO,
  S_IFBLK, S_IFCHR, S_IFIFO, S_IFMT, fileTypeOfMode, writeDeviceNumbers, writeOwner, writeTime,
} from './inode.js';
import { buildXattrBlock, inodeXattrBytes, writeInodeXattrs, type EncodedXattr } from './xattr.js';

/** What the ext2fs binding cannot set, recorded per inode and written after a clean unmount. */
export interface InodeEdit {
  /** Full i_mode: file type and permission bits. */
  mode: number;
  uid: number;
  gid: number;
  atime: bigint;
  mtime: bigint;
  ctime: bigint;
  /** Replaces the whole in-inode xattr region (empty: no attributes). */
  xattrs: EncodedXattr[];
  /** char/block devices. */
  devMajor?: number;
  devMinor?: number;
  /**
   * Attributes that do not fit in the inode go to an external block. The block was
   * allocated by the binding as the only data block of `holderIno`, an otherwise unused
   * file; the first application moves it (`block` is then set) and empties the holder,
   * which the writer unlinks in a later session.
   */
  xattrBlock?: { holderIno: number; block?: number; xattrs: EncodedXattr[] };
  /** Directory entries naming this inode whose file_type byte must follow a type change. */
  dirents: Array<{ dirIno: number; name: Buffer }>;
}

/** i_extra_isize the binding (and mke2fs' default s_want_extra_isize) uses; covers every *_extra time field. */
const WANT_EXTRA_ISIZE = 32;

/** Room for in-inode xattrs in a freshly written inode of this size. */
export function inodeXattrRoom(inodeSize: number): number {
  return Math.max(0, inodeSize - GOOD_OLD_INODE_SIZE - WANT_EXTRA_ISIZE);
}

export function xattrsFit(inodeSize: number, xattrs: EncodedXattr[]): boolean {
  return inodeXattrBytes(xattrs) <= inodeXattrRoom(inodeSize);
}

/** Applies one edit to inode `ino` (and its directory entries). Idempotent. */
export function applyInodeEdit(fs: Ext4Records, ino: number, edit: InodeEdit): void {
  const inode = fs.readInode(ino);
  const type = edit.mode & S_IFMT;
  const oldType = inode.readUInt16LE(I_MODE) & S_IFMT;

  // 128-byte inodes (old mke2fs "small" defaults) have no large part: whole-second times
  // only, and every extended attribute lives in an external block.
  const large = inode.length > GOOD_OLD_INODE_SIZE;
  let extra = large ? inode.readUInt16LE(I_EXTRA_ISIZE) : 0;
  if (large && extra < WANT_EXTRA_ISIZE) {
    // Too small to hold the *_extra times: widen it (only safe with no in-inode xattrs yet,
    // and the region is rewritten below anyway).
    extra = WANT_EXTRA_ISIZE;
    inode.writeUInt16LE(extra, I_EXTRA_ISIZE);
    inode.fill(0, GOOD_OLD_INODE_SIZE + 2, GOOD_OLD_INODE_SIZE + extra);
  }
  const region = inode.subarray(Math.min(inode.length, GOOD_OLD_INODE_SIZE + extra));
  if (inodeXattrBytes(edit.xattrs) > region.length) {
    throw new Error(`inode ${ino}: extended attributes need ${inodeXattrBytes(edit.xattrs)} bytes, the inode holds ${region.length}`);
  }

  const bs = fs.sb.blockSize;
  let fileAcl = inode.readUInt32LE(I_FILE_ACL_LO) + inode.readUInt16LE(I_FILE_ACL_HI) * 2 ** 32;
  let blocks = inode.readUInt32LE(I_BLOCKS_LO) + inode.readUInt16LE(I_BLOCKS_HI) * 2 ** 32;
  if (edit.xattrBlock) {
    const xb = edit.xattrBlock;
    if (xb.block === undefined) xb.block = takeHolderBlock(fs, xb.holderIno);
    if (fileAcl !== 0 && fileAcl !== xb.block) throw new Error(`inode ${ino} already has an extended attribute block`);
    const data = buildXattrBlock(xb.xattrs, bs, (b) => fs.xattrBlockChecksum(xb.block!, b) ?? 0);
    fs.writeBlock(xb.block, data);
    if (fileAcl !== xb.block) blocks += bs / 512; // i_blocks counts 512-byte sectors, the xattr block included
    fileAcl = xb.block;
    inode.writeUInt32LE(fileAcl % 2 ** 32, I_FILE_ACL_LO);
    inode.writeUInt16LE(Math.floor(fileAcl / 2 ** 32), I_FILE_ACL_HI);
  }

  inode.writeUInt16LE(edit.mode & 0xffff, I_MODE);
  writeOwner(inode, edit.uid, edit.gid);
  writeTime(inode, I_ATIME, large ? I_ATIME_EXTRA : undefined, edit.atime);
  writeTime(inode, I_MTIME, large ? I_MTIME_EXTRA : undefined, edit.mtime);
  writeTime(inode, I_CTIME, large ? I_CTIME_EXTRA : undefined, edit.ctime);

  if (type === S_IFCHR || type === S_IFBLK || type === S_IFIFO) {
    // Special files carry no data: no extent tree (an extents flag makes e2fsck call it
    // an illegal device), i_block zero except the device numbers, size and blocks 0
    // (e2fsck pass1 e2fsck_pass1_check_device_inode; fs/ext4/inode.c ext4_iget).
    if (blocks !== (fileAcl ? bs / 512 : 0)) {
      throw new Error(`inode ${ino}: a device node or FIFO must be created as an empty file`);
    }
    inode.writeUInt32LE(inode.readUInt32LE(I_FLAGS) & ~(EXT4_EXTENTS_FL | EXT4_INDEX_FL | EXT4_INLINE_DATA_FL), I_FLAGS);
    inode.fill(0, 0x28, 0x28 + 60);
    if (type !== S_IFIFO) writeDeviceNumbers(inode, edit.devMajor ?? 0, edit.devMinor ?? 0);
    inode.writeUInt32LE(0, I_SIZE_LO);
    inode.writeUInt32LE(0, I_SIZE_HIGH);
  }
  inode.writeUInt32LE(blocks % 2 ** 32, I_BLOCKS_LO);
  inode.writeUInt16LE(Math.floor(blocks / 2 ** 32), I_BLOCKS_HI);

  if (region.length > 0) writeInodeXattrs(region, edit.xattrs);
  fs.writeInode(ino, inode);

  if (type !== oldType || edit.dirents.length > 0) {
    const ft = fileTypeOfMode(edit.mode);
    for (const d of edit.dirents) {
      if (!fs.setDirentType(d.dirIno, d.name, ft)) {
        throw new Error(`directory inode ${d.dirIno} has no entry "${d.name.toString()}" for inode ${ino}`);
      }
    }
  }
}

/**
 * Takes the single data block of a holder file and leaves the holder an empty file:
 * an extent header with no entries (or an all-zero block map), size 0, no blocks.
 * The block stays marked in use in the bitmap, now owned through i_file_acl.
 */
function takeHolderBlock(fs: Ext4Records, holderIno: number): number {
  const holder = fs.readInode(holderIno);
  const blocks = fs.dataBlocks(holder);
  if (blocks.length !== 1) throw new Error(`xattr holder inode ${holderIno} has ${blocks.length} blocks, expected 1`);
  if (holder.readUInt32LE(I_FLAGS) & EXT4_EXTENTS_FL) {
    if (holder.readUInt16LE(I_BLOCK + 6) !== 0) throw new Error(`xattr holder inode ${holderIno} has a deep extent tree`);
    holder.writeUInt16LE(0, I_BLOCK + 2); // eh_entries
    holder.fill(0, I_BLOCK + 12, I_BLOCK + 60);
  } else {
    holder.fill(0, I_BLOCK, I_BLOCK + 60);
  }
  holder.writeUInt32LE(0, I_SIZE_LO);
  holder.writeUInt32LE(0, I_SIZE_HIGH);
  holder.writeUInt32LE(0, I_BLOCKS_LO);
  holder.writeUInt16LE(0, I_BLOCKS_HI);
  fs.writeInode(holderIno, holder);
  return blocks[0];
}
