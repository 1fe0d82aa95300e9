import { crc32c, crc32cU32 } from './crc32c.js';
import { crc16 } from './crc16.js';

/**
 * Block group descriptors (kernel fs/ext4/ext4.h `struct ext4_group_desc`,
 * Documentation/filesystems/ext4/group_descr.rst): 32 bytes, or s_desc_size (64) with
 * the 64bit feature, whose second half holds the high halves of every field.
 */
export const BG_INODE_UNINIT = 0x1;
export const BG_BLOCK_UNINIT = 0x2;
export const BG_INODE_ZEROED = 0x4;

export interface GroupDesc {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  freeBlocks: number;
  freeInodes: number;
  usedDirs: number;
  flags: number;
  itableUnused: number;
}

export function parseGroupDesc(raw: Buffer, off: number, is64: boolean): GroupDesc {
  const hi32 = (o: number) => (is64 ? raw.readUInt32LE(off + o) * 2 ** 32 : 0);
  const hi16 = (o: number) => (is64 ? raw.readUInt16LE(off + o) * 65536 : 0);
  return {
    blockBitmap: raw.readUInt32LE(off + 0x00) + hi32(0x20),
    inodeBitmap: raw.readUInt32LE(off + 0x04) + hi32(0x24),
    inodeTable: raw.readUInt32LE(off + 0x08) + hi32(0x28),
    freeBlocks: raw.readUInt16LE(off + 0x0c) + hi16(0x2c),
    freeInodes: raw.readUInt16LE(off + 0x0e) + hi16(0x2e),
    usedDirs: raw.readUInt16LE(off + 0x10) + hi16(0x30),
    flags: raw.readUInt16LE(off + 0x12),
    itableUnused: raw.readUInt16LE(off + 0x1c) + hi16(0x32),
  };
}

/** Writes the counters and flags of `d` (the locations never change here). */
export function storeGroupCounts(raw: Buffer, off: number, is64: boolean, d: GroupDesc): void {
  raw.writeUInt16LE(d.freeBlocks & 0xffff, off + 0x0c);
  raw.writeUInt16LE(d.freeInodes & 0xffff, off + 0x0e);
  raw.writeUInt16LE(d.usedDirs & 0xffff, off + 0x10);
  raw.writeUInt16LE(d.flags, off + 0x12);
  raw.writeUInt16LE(d.itableUnused & 0xffff, off + 0x1c);
  if (is64) {
    raw.writeUInt16LE(Math.floor(d.freeBlocks / 65536), off + 0x2c);
    raw.writeUInt16LE(Math.floor(d.freeInodes / 65536), off + 0x2e);
    raw.writeUInt16LE(Math.floor(d.usedDirs / 65536), off + 0x30);
    raw.writeUInt16LE(Math.floor(d.itableUnused / 65536), off + 0x32);
  }
}

/** Bitmap checksums (metadata_csum): crc32c(fs seed, bitmap bytes); lo 16 bits at 0x18/0x1A, hi at 0x38/0x3A (ext4 bitmap.c). */
export function storeBitmapChecksums(raw: Buffer, off: number, descSize: number, blockCsum: number, inodeCsum: number): void {
  raw.writeUInt16LE(blockCsum & 0xffff, off + 0x18);
  raw.writeUInt16LE(inodeCsum & 0xffff, off + 0x1a);
  if (descSize >= 0x3c) {
    raw.writeUInt16LE(blockCsum >>> 16, off + 0x38);
    raw.writeUInt16LE(inodeCsum >>> 16, off + 0x3a);
  }
}

/**
 * bg_checksum (fs/ext4/super.c ext4_group_desc_csum): with metadata_csum the low 16 bits
 * of crc32c(fs seed, le32 group, descriptor with bg_checksum zero); with gdt_csum
 * crc16(~0, uuid, le32 group, descriptor without bg_checksum (the 64-bit half only with 64bit)).
 */
export function groupDescChecksum(
  desc: Buffer,
  group: number,
  opts: { csumSeed?: number; gdtCsum: boolean; uuid: Buffer; is64: boolean },
): number | undefined {
  if (opts.csumSeed !== undefined) {
    const copy = Buffer.from(desc);
    copy.writeUInt16LE(0, 0x1e);
    return crc32c(crc32cU32(opts.csumSeed, group), copy) & 0xffff;
  }
  if (!opts.gdtCsum) return undefined;
  const g = Buffer.alloc(4);
  g.writeUInt32LE(group);
  let c = crc16(0xffff, opts.uuid);
  c = crc16(c, g);
  c = crc16(c, desc.subarray(0, 0x1e));
  if (opts.is64 && desc.length > 0x20) c = crc16(c, desc.subarray(0x20));
  return c;
}

/** Whether group `g` holds a backup superblock and descriptors (sparse_super: 0, 1 and powers of 3, 5, 7). */
export function groupHasSuper(g: number, sparse: boolean): boolean {
  if (!sparse || g <= 1) return true;
  for (const base of [3, 5, 7]) {
    let p = base;
    while (p < g) p *= base;
    if (p === g) return true;
  }
  return false;
}
