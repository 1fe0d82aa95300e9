import type { ImageFile } from './image-file.js';
import { inodeSeed, I_BLOCK, I_FLAGS, I_GENERATION, I_SIZE_LO, I_SIZE_HIGH, EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, setInodeChecksum } from './inode.js';
import { crc32c, crc32cU32 } from './crc32c.js';
import { readSuperblock, INCOMPAT_64BIT, type Superblock } from './superblock.js';

/**
 * Direct access to the on-disk records of an ext4 file system at a byte offset
 * of an image file: inodes by number, a directory's blocks, directory entries.
 * Used only while the file system is not mounted by anyone (the ext2fs binding
 * has unmounted cleanly).
 */
export class Ext4Records {
  readonly sb: Superblock;
  private readonly inodeTables: number[] = [];

  constructor(readonly image: ImageFile, readonly fsOffset: number) {
    const sb = readSuperblock(image, fsOffset);
    if (!sb) throw new Error(`${image.path}: no ext4 file system at byte ${fsOffset}`);
    this.sb = sb;
    // Group descriptors start in the block after the superblock's block:
    // block s_first_data_block + 1 (ext2fs_descriptor_block_loc without meta_bg).
    const gdt = image.read(fsOffset + (sb.firstDataBlock + 1) * sb.blockSize, sb.groupCount * sb.descSize);
    const is64 = (sb.featureIncompat & INCOMPAT_64BIT) !== 0 && sb.descSize >= 64;
    for (let g = 0; g < sb.groupCount; g++) {
      const d = g * sb.descSize;
      // bg_inode_table_lo at 0x08, bg_inode_table_hi at 0x28 (struct ext4_group_desc).
      const table = gdt.readUInt32LE(d + 0x08) + (is64 ? gdt.readUInt32LE(d + 0x28) * 2 ** 32 : 0);
      this.inodeTables.push(table);
    }
  }

  /** Byte position of inode `ino` in the image file. */
  inodePosition(ino: number): number {
    const { sb } = this;
    if (ino < 1 || ino > sb.inodesCount) throw new Error(`inode ${ino} out of range`);
    const group = Math.floor((ino - 1) / sb.inodesPerGroup);
    const index = (ino - 1) % sb.inodesPerGroup;
    return this.fsOffset + this.inodeTables[group] * sb.blockSize + index * sb.inodeSize;
  }

  readInode(ino: number): Buffer {
    return this.image.read(this.inodePosition(ino), this.sb.inodeSize);
  }

  writeInode(ino: number, inode: Buffer): void {
    if (this.sb.csumSeed !== undefined) setInodeChecksum(inode, ino, this.sb.csumSeed);
    this.image.write(this.inodePosition(ino), inode);
  }

  readBlock(block: number): Buffer {
    return this.image.read(this.fsOffset + block * this.sb.blockSize, this.sb.blockSize);
  }

  writeBlock(block: number, data: Buffer): void {
    this.image.write(this.fsOffset + block * this.sb.blockSize, data);
  }

  /** Physical block numbers of an inode's data, in logical order (holes skipped). */
  dataBlocks(inode: Buffer): number[] {
    const flags = inode.readUInt32LE(I_FLAGS);
    if (flags & EXT4_INLINE_DATA_FL) throw new Error('inline-data inodes are not supported');
    const size = inode.readUInt32LE(I_SIZE_LO) + inode.readUInt32LE(I_SIZE_HIGH) * 2 ** 32;
    const nBlocks = Math.ceil(size / this.sb.blockSize);
    const out: number[] = [];
    if (flags & EXT4_EXTENTS_FL) {
      this.walkExtents(inode.subarray(I_BLOCK, I_BLOCK + 60), out, 0);
    } else {
      // Classic block map (ext2): 12 direct, then single, double, triple indirect.
      for (let i = 0; i < 12 && out.length < nBlocks; i++) {
        const b = inode.readUInt32LE(I_BLOCK + i * 4);
        if (b) out.push(b);
      }
      for (let level = 1; level <= 3 && out.length < nBlocks; level++) {
        const b = inode.readUInt32LE(I_BLOCK + (11 + level) * 4);
        if (b) this.walkIndirect(b, level, out, nBlocks);
      }
    }
    return out.slice(0, Math.max(nBlocks, 0));
  }

  private walkIndirect(block: number, level: number, out: number[], limit: number): void {
    const data = this.readBlock(block);
    for (let i = 0; i < data.length && out.length < limit; i += 4) {
      const b = data.readUInt32LE(i);
      if (!b) continue;
      if (level === 1) out.push(b);
      else this.walkIndirect(b, level - 1, out, limit);
    }
  }

  /**
   * Extent tree (fs/ext4/ext4_extents.h): 12-byte header (magic 0xF30A, entries, max,
   * depth), then 12-byte index entries (depth > 0: ei_leaf_lo at 4, ei_leaf_hi at 8)
   * or leaf extents (ee_block, ee_len — above 32768 means uninitialised — ee_start_hi
   * at 6, ee_start_lo at 8).
   */
  private walkExtents(node: Buffer, out: number[], guard: number): void {
    if (guard > 8 || node.readUInt16LE(0) !== 0xf30a) throw new Error('damaged extent tree');
    const entries = node.readUInt16LE(2);
    const depth = node.readUInt16LE(6);
    for (let i = 0; i < entries; i++) {
      const e = 12 + i * 12;
      if (depth > 0) {
        const leaf = node.readUInt32LE(e + 4) + node.readUInt16LE(e + 8) * 2 ** 32;
        this.walkExtents(this.readBlock(leaf), out, guard + 1);
      } else {
        let len = node.readUInt16LE(e + 4);
        if (len > 32768) len -= 32768;
        const start = node.readUInt32LE(e + 8) + node.readUInt16LE(e + 6) * 2 ** 32;
        for (let k = 0; k < len; k++) out.push(start + k);
      }
    }
  }

  /**
   * Sets the file_type byte of the entry `name` in directory `dirIno` and refreshes
   * the leaf block's checksum tail (struct ext4_dir_entry_tail: inode 0, rec_len 12,
   * name_len 0, file_type 0xDE, le32 crc32c(dir seed, block without the tail)).
   * The type byte is not part of the htree name hash, so no index changes.
   * htree root and node blocks look like one empty entry covering the block and are
   * passed over naturally. Returns false when the name is not found.
   */
  setDirentType(dirIno: number, name: Buffer, fileType: number): boolean {
    const dir = this.readInode(dirIno);
    const bs = this.sb.blockSize;
    for (const block of this.dataBlocks(dir)) {
      const data = this.readBlock(block);
      let off = 0;
      while (off + 8 <= bs) {
        const ino = data.readUInt32LE(off);
        const recLen = data.readUInt16LE(off + 4);
        const nameLen = data[off + 6];
        if (recLen < 8 || off + recLen > bs) break; // damaged or an htree node; give up on this block
        if (ino !== 0 && nameLen === name.length && data.compare(name, 0, name.length, off + 8, off + 8 + nameLen) === 0) {
          if (data[off + 7] !== fileType) {
            data[off + 7] = fileType;
            this.refreshDirTail(data, dirIno, dir.readUInt32LE(I_GENERATION));
            this.writeBlock(block, data);
          }
          return true;
        }
        off += recLen;
      }
    }
    return false;
  }

  /** h_checksum of an external xattr block: crc32c(fs seed, le64 block number, block with h_checksum zero). */
  xattrBlockChecksum(block: number, data: Buffer): number | undefined {
    if (this.sb.csumSeed === undefined) return undefined;
    const copy = Buffer.from(data);
    copy.writeUInt32LE(0, 16);
    let crc = crc32cU32(this.sb.csumSeed, block % 2 ** 32);
    crc = crc32cU32(crc, Math.floor(block / 2 ** 32));
    return crc32c(crc, copy);
  }

  private refreshDirTail(data: Buffer, dirIno: number, generation: number): void {
    if (this.sb.csumSeed === undefined) return;
    const bs = data.length;
    const t = bs - 12;
    const isTail = data.readUInt32LE(t) === 0 && data.readUInt16LE(t + 4) === 12 && data[t + 6] === 0 && data[t + 7] === 0xde;
    if (!isTail) return; // no tail: not a leaf block this code edits under metadata_csum
    const seed = inodeSeed(this.sb.csumSeed, dirIno, generation);
    data.writeUInt32LE(crc32c(seed, data.subarray(0, t)), t + 8);
  }
}
