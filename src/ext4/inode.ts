import { crc32c, crc32cU32 } from './crc32c.js';

/**
 * Fields of the on-disk inode (kernel fs/ext4/ext4.h `struct ext4_inode`,
 * Documentation/filesystems/ext4/inodes.rst). Little-endian throughout.
 */
export const I_MODE = 0x00;
export const I_UID_LO = 0x02;
export const I_SIZE_LO = 0x04;
export const I_ATIME = 0x08;
export const I_CTIME = 0x0c;
export const I_MTIME = 0x10;
export const I_GID_LO = 0x18;
export const I_LINKS = 0x1a;
export const I_BLOCKS_LO = 0x1c;
export const I_FLAGS = 0x20;
export const I_BLOCK = 0x28; // 60 bytes: extent tree root, block map, fast symlink or device numbers
export const I_GENERATION = 0x64;
export const I_FILE_ACL_LO = 0x68;
export const I_SIZE_HIGH = 0x6c;
export const I_BLOCKS_HI = 0x74;
export const I_FILE_ACL_HI = 0x76;
export const I_UID_HI = 0x78;
export const I_GID_HI = 0x7a;
export const I_CHECKSUM_LO = 0x7c;
export const I_EXTRA_ISIZE = 0x80; // the "large inode" part starts at 128
export const I_CHECKSUM_HI = 0x82;
export const I_CTIME_EXTRA = 0x84;
export const I_MTIME_EXTRA = 0x88;
export const I_ATIME_EXTRA = 0x8c;
export const I_CRTIME = 0x90;
export const I_CRTIME_EXTRA = 0x94;
export const GOOD_OLD_INODE_SIZE = 128;

// i_flags
export const EXT4_INDEX_FL = 0x1000;
export const EXT4_EXTENTS_FL = 0x80000;
export const EXT4_INLINE_DATA_FL = 0x10000000;

// i_mode file types (include/uapi/linux/stat.h)
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

// Directory entry file_type byte (fs/ext4/ext4.h EXT4_FT_*).
export const FT_REG = 1;
export const FT_DIR = 2;
export const FT_CHRDEV = 3;
export const FT_BLKDEV = 4;
export const FT_FIFO = 5;
export const FT_SOCK = 6;
export const FT_SYMLINK = 7;

export function fileTypeOfMode(mode: number): number {
  switch (mode & S_IFMT) {
    case S_IFREG: return FT_REG;
    case S_IFDIR: return FT_DIR;
    case S_IFCHR: return FT_CHRDEV;
    case S_IFBLK: return FT_BLKDEV;
    case S_IFIFO: return FT_FIFO;
    case S_IFSOCK: return FT_SOCK;
    case S_IFLNK: return FT_SYMLINK;
    default: return 0;
  }
}

/**
 * Seconds as the signed 32-bit field plus the 2 epoch bits of the `_extra` field;
 * `_extra` = nanoseconds << 2 | epoch (fs/ext4/ext4.h ext4_encode_extra_time).
 */
export function encodeTime(ns: bigint): { seconds: number; extra: number } {
  let sec = ns / 1_000_000_000n;
  let nsec = ns % 1_000_000_000n;
  if (nsec < 0n) {
    nsec += 1_000_000_000n;
    sec -= 1n;
  }
  const lo = BigInt.asIntN(32, sec);
  const epoch = Number(((sec - lo) >> 32n) & 3n);
  return { seconds: Number(BigInt.asUintN(32, lo)), extra: ((Number(nsec) << 2) | epoch) >>> 0 };
}

/**
 * Writes a time; without an `_extra` field (128-byte inodes) only whole seconds, clamped
 * to the signed 32-bit range as the kernel does (fs/ext4/ext4.h EXT4_INODE_SET_XTIME).
 */
export function writeTime(inode: Buffer, secOff: number, extraOff: number | undefined, ns: bigint): void {
  if (extraOff === undefined) {
    let sec = ns / 1_000_000_000n;
    if (ns < 0n && ns % 1_000_000_000n !== 0n) sec -= 1n;
    if (sec > 0x7fffffffn) sec = 0x7fffffffn;
    if (sec < -0x80000000n) sec = -0x80000000n;
    inode.writeInt32LE(Number(sec), secOff);
    return;
  }
  const t = encodeTime(ns);
  inode.writeUInt32LE(t.seconds, secOff);
  inode.writeUInt32LE(t.extra, extraOff);
}

/** Owners: low 16 bits at i_uid/i_gid, high 16 bits in osd2 (l_i_uid_high, l_i_gid_high). */
export function writeOwner(inode: Buffer, uid: number, gid: number): void {
  inode.writeUInt16LE(uid & 0xffff, I_UID_LO);
  inode.writeUInt16LE(uid >>> 16, I_UID_HI);
  inode.writeUInt16LE(gid & 0xffff, I_GID_LO);
  inode.writeUInt16LE(gid >>> 16, I_GID_HI);
}

/**
 * Device numbers in i_block, the way fs/ext4/inode.c ext4_write_inode stores them:
 * the old 16-bit encoding in i_block[0] when major and minor both fit in 8 bits,
 * else 0 there and new_encode_dev (include/linux/kdev_t.h) in i_block[1].
 */
export function writeDeviceNumbers(inode: Buffer, major: number, minor: number): void {
  inode.fill(0, I_BLOCK, I_BLOCK + 60);
  if (major < 256 && minor < 256) {
    inode.writeUInt32LE(((major << 8) | minor) >>> 0, I_BLOCK);
  } else {
    const v = ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
    inode.writeUInt32LE(v, I_BLOCK + 4);
  }
}

/**
 * metadata_csum inode checksum (fs/ext4/inode.c ext4_inode_csum): crc32c over le32
 * inode number, le32 i_generation, then the whole inode with both checksum fields
 * zeroed; low 16 bits in l_i_checksum_lo, high 16 in i_checksum_hi when the large
 * part is big enough to hold it.
 */
export function setInodeChecksum(inode: Buffer, ino: number, fsSeed: number): void {
  const hasHi = inode.length > GOOD_OLD_INODE_SIZE && inode.readUInt16LE(I_EXTRA_ISIZE) >= 4;
  inode.writeUInt16LE(0, I_CHECKSUM_LO);
  if (hasHi) inode.writeUInt16LE(0, I_CHECKSUM_HI);
  let crc = crc32cU32(fsSeed, ino);
  crc = crc32cU32(crc, inode.readUInt32LE(I_GENERATION));
  crc = crc32c(crc, inode);
  inode.writeUInt16LE(crc & 0xffff, I_CHECKSUM_LO);
  if (hasHi) inode.writeUInt16LE(crc >>> 16, I_CHECKSUM_HI);
}

/** The per-inode seed of directory-block checksums: crc32c(crc32c(fs seed, le32 ino), le32 generation). */
export function inodeSeed(fsSeed: number, ino: number, generation: number): number {
  return crc32cU32(crc32cU32(fsSeed, ino), generation);
}
