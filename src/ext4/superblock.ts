import { crc32c } from './crc32c.js';
import type { ImageFile } from './image-file.js';

/**
 * The ext4 superblock fields this project reads, at byte 1024 of the file system.
 * Offsets: kernel fs/ext4/ext4.h `struct ext4_super_block`,
 * Documentation/filesystems/ext4/super.rst; e2fsprogs lib/ext2fs/ext2_fs.h.
 */
export const SUPERBLOCK_OFFSET = 1024;
export const EXT4_MAGIC = 0xef53;

// s_feature_compat
export const COMPAT_HAS_JOURNAL = 0x4;
// s_feature_incompat
export const INCOMPAT_COMPRESSION = 0x1;
export const INCOMPAT_FILETYPE = 0x2;
export const INCOMPAT_RECOVER = 0x4;
export const INCOMPAT_JOURNAL_DEV = 0x8;
export const INCOMPAT_META_BG = 0x10;
export const INCOMPAT_EXTENTS = 0x40;
export const INCOMPAT_64BIT = 0x80;
export const INCOMPAT_MMP = 0x100;
export const INCOMPAT_FLEX_BG = 0x200;
export const INCOMPAT_EA_INODE = 0x400;
export const INCOMPAT_DIRDATA = 0x1000;
export const INCOMPAT_CSUM_SEED = 0x2000;
export const INCOMPAT_LARGEDIR = 0x4000;
export const INCOMPAT_INLINE_DATA = 0x8000;
export const INCOMPAT_ENCRYPT = 0x10000;
export const INCOMPAT_CASEFOLD = 0x20000;
// s_feature_ro_compat
export const RO_COMPAT_SPARSE_SUPER = 0x1;
export const RO_COMPAT_LARGE_FILE = 0x2;
export const RO_COMPAT_HUGE_FILE = 0x8;
export const RO_COMPAT_GDT_CSUM = 0x10;
export const RO_COMPAT_DIR_NLINK = 0x20;
export const RO_COMPAT_EXTRA_ISIZE = 0x40;
export const RO_COMPAT_QUOTA = 0x100;
export const RO_COMPAT_BIGALLOC = 0x200;
export const RO_COMPAT_METADATA_CSUM = 0x400;
export const RO_COMPAT_ORPHAN_PRESENT = 0x10000;

/** Features the engine (src/ext4/volume.ts, tree.ts) handles, and the resizer grows. */
export const INCOMPAT_HANDLED = INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG | INCOMPAT_CSUM_SEED;
export const RO_COMPAT_HANDLED =
  RO_COMPAT_SPARSE_SUPER |
  RO_COMPAT_LARGE_FILE |
  RO_COMPAT_HUGE_FILE |
  RO_COMPAT_GDT_CSUM |
  RO_COMPAT_DIR_NLINK |
  RO_COMPAT_EXTRA_ISIZE |
  RO_COMPAT_METADATA_CSUM;

export const INCOMPAT_NAMES: Record<number, string> = {
  [INCOMPAT_COMPRESSION]: 'compression',
  [INCOMPAT_RECOVER]: 'needs_recovery',
  [INCOMPAT_JOURNAL_DEV]: 'journal_dev',
  [INCOMPAT_META_BG]: 'meta_bg',
  [INCOMPAT_MMP]: 'mmp',
  [INCOMPAT_EA_INODE]: 'ea_inode',
  [INCOMPAT_DIRDATA]: 'dirdata',
  [INCOMPAT_LARGEDIR]: 'large_dir',
  [INCOMPAT_INLINE_DATA]: 'inline_data',
  [INCOMPAT_ENCRYPT]: 'encrypt',
  [INCOMPAT_CASEFOLD]: 'casefold',
};
export const RO_COMPAT_NAMES: Record<number, string> = {
  [RO_COMPAT_QUOTA]: 'quota',
  [RO_COMPAT_BIGALLOC]: 'bigalloc',
  0x80: 'has_snapshot',
  0x800: 'replica',
  0x1000: 'read-only',
  0x2000: 'project',
  0x4000: 'shared_blocks',
  0x8000: 'verity',
  [RO_COMPAT_ORPHAN_PRESENT]: 'orphan_present',
};

export interface Superblock {
  inodesCount: number;
  blocksCount: number;
  reservedBlocksCount: number;
  freeBlocksCount: number;
  freeInodesCount: number;
  firstDataBlock: number;
  blockSize: number;
  blocksPerGroup: number;
  inodesPerGroup: number;
  /** s_state: 1 = cleanly unmounted, 2 = errors detected, 4 = orphans being recovered. */
  state: number;
  inodeSize: number;
  featureCompat: number;
  featureIncompat: number;
  featureRoCompat: number;
  uuid: Buffer;
  label: string;
  /** Group descriptor size: s_desc_size with 64bit, else 32. */
  descSize: number;
  groupCount: number;
  /** Seed of every metadata checksum (see `checksumSeed`), or undefined without metadata_csum. */
  csumSeed: number | undefined;
}

/** The file-system checksum seed: s_checksum_seed with csum_seed, else crc32c(~0, s_uuid) (ext4.h, ext4_fill_super). */
function checksumSeed(raw: Buffer, incompat: number, roCompat: number): number | undefined {
  if (!(roCompat & RO_COMPAT_METADATA_CSUM)) return undefined;
  if (incompat & INCOMPAT_CSUM_SEED) return raw.readUInt32LE(0x270);
  return crc32c(0xffffffff, raw.subarray(0x68, 0x78));
}

export function parseSuperblock(raw: Buffer): Superblock | undefined {
  if (raw.length < 1024 || raw.readUInt16LE(0x38) !== EXT4_MAGIC) return undefined;
  const incompat = raw.readUInt32LE(0x60);
  const roCompat = raw.readUInt32LE(0x64);
  const is64 = (incompat & INCOMPAT_64BIT) !== 0;
  const hi = (off: number) => (is64 ? raw.readUInt32LE(off) * 2 ** 32 : 0);
  const blocksCount = raw.readUInt32LE(0x04) + hi(0x150);
  const firstDataBlock = raw.readUInt32LE(0x14);
  const blocksPerGroup = raw.readUInt32LE(0x20);
  const revLevel = raw.readUInt32LE(0x4c);
  const labelRaw = raw.subarray(0x78, 0x88);
  const nul = labelRaw.indexOf(0);
  return {
    inodesCount: raw.readUInt32LE(0x00),
    blocksCount,
    reservedBlocksCount: raw.readUInt32LE(0x08) + hi(0x154),
    freeBlocksCount: raw.readUInt32LE(0x0c) + hi(0x158),
    freeInodesCount: raw.readUInt32LE(0x10),
    firstDataBlock,
    blockSize: 1024 << raw.readUInt32LE(0x18),
    blocksPerGroup,
    inodesPerGroup: raw.readUInt32LE(0x28),
    state: raw.readUInt16LE(0x3a),
    // rev 0 file systems have 128-byte inodes and no s_inode_size.
    inodeSize: revLevel === 0 ? 128 : raw.readUInt16LE(0x58),
    featureCompat: raw.readUInt32LE(0x5c),
    featureIncompat: incompat,
    featureRoCompat: roCompat,
    uuid: Buffer.from(raw.subarray(0x68, 0x78)),
    label: labelRaw.subarray(0, nul < 0 ? 16 : nul).toString('utf8'),
    descSize: is64 ? raw.readUInt16LE(0xfe) : 32,
    groupCount: Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup),
    csumSeed: checksumSeed(raw, incompat, roCompat),
  };
}

export function readSuperblock(image: ImageFile, fsOffset: number): Superblock | undefined {
  return parseSuperblock(image.read(fsOffset + SUPERBLOCK_OFFSET, 1024));
}

function featureList(bits: number, names: Record<number, string>): string {
  const out: string[] = [];
  for (let b = 1; b !== 0 && b <= bits; b = (b << 1) >>> 0) {
    if (bits & b) out.push(names[b] ?? `0x${b.toString(16)}`);
  }
  return out.join(', ');
}

/**
 * Refuses a file system the in-process writer must not touch: not clean, journal
 * needing recovery, or features the engine (src/ext4/volume.ts) does not handle. `where` names it in the message.
 */
export function checkWritable(sb: Superblock, where: string): void {
  if (sb.featureIncompat & INCOMPAT_RECOVER) {
    throw new Error(`${where}: the ext4 journal needs recovery; run "e2fsck -f" on it (or boot the device once) and try again`);
  }
  if ((sb.state & 1) === 0 || (sb.state & 2) !== 0) {
    throw new Error(`${where}: the ext4 file system was not cleanly unmounted or has errors; run "e2fsck -f" on it and try again`);
  }
  const badIncompat = sb.featureIncompat & ~INCOMPAT_HANDLED;
  const badRo = sb.featureRoCompat & ~RO_COMPAT_HANDLED;
  if (badIncompat || badRo) {
    const names = [featureList(badIncompat, INCOMPAT_NAMES), featureList(badRo, RO_COMPAT_NAMES)].filter(Boolean).join(', ');
    throw new Error(`${where}: the ext4 file system uses features transplant cannot write (${names})`);
  }
  if (!(sb.featureIncompat & INCOMPAT_FILETYPE)) {
    throw new Error(`${where}: the ext4 file system lacks the filetype feature, which transplant needs`);
  }
  if (sb.inodeSize < 128 || (sb.inodeSize & (sb.inodeSize - 1)) !== 0) {
    throw new Error(`${where}: the ext4 superblock looks damaged (inode size ${sb.inodeSize})`);
  }
  if (sb.blockSize > 65536 || sb.blocksPerGroup === 0 || sb.inodesPerGroup === 0) {
    throw new Error(`${where}: the ext4 superblock looks damaged (block size ${sb.blockSize})`);
  }
}

/** s_feature_compat bits the engine cannot work with (sparse_super2 moves the backup superblocks). */
const COMPAT_SPARSE_SUPER2 = 0x200;

/**
 * Names of the features in `sb` the in-process engine (src/ext4/volume.ts) does not
 * handle, comma-separated, or '' when it handles them all. needs_recovery is left to
 * the writer (reading such a file system is allowed).
 */
export function unsupportedFeatures(sb: Superblock): string {
  const badIncompat = sb.featureIncompat & ~(INCOMPAT_HANDLED | INCOMPAT_RECOVER);
  const badRo = sb.featureRoCompat & ~RO_COMPAT_HANDLED;
  const names = [featureList(badIncompat, INCOMPAT_NAMES), featureList(badRo, RO_COMPAT_NAMES)];
  if (sb.featureCompat & COMPAT_SPARSE_SUPER2) names.push('sparse_super2');
  if (!(sb.featureIncompat & INCOMPAT_FILETYPE)) names.push('no filetype');
  return names.filter(Boolean).join(', ');
}
