import type { Xattr } from '../layer/entry.js';

/**
 * Extended attributes stored inside the inode, after the fixed fields and
 * i_extra_isize (kernel fs/ext4/xattr.h, Documentation/filesystems/ext4/attributes.rst,
 * e2fsprogs lib/ext2fs/ext_attr.c).
 *
 * Layout of the in-inode region: le32 magic 0xEA020000, then entries
 * (struct ext4_xattr_entry, 16 bytes + name padded to 4), a 4-byte zero end marker,
 * then the values, each padded to 4. e_value_offs counts from the first entry
 * (just after the magic).
 */
export const XATTR_MAGIC = 0xea020000;
const ENTRY_HEADER = 16;
const pad4 = (n: number) => (n + 3) & ~3;

/** Name index and the prefix it stands for (fs/ext4/xattr.h EXT4_XATTR_INDEX_*); longest first. */
const PREFIXES: Array<[string, number]> = [
  ['system.posix_acl_access', 2],
  ['system.posix_acl_default', 3],
  ['system.richacl', 8],
  ['security.', 6],
  ['trusted.', 4],
  ['system.', 7],
  ['user.', 1],
];

export interface EncodedXattr {
  index: number;
  name: Buffer;
  value: Buffer;
}

/** Splits a full xattr name into (name index, suffix) and converts POSIX ACL values to ext4's disk format. */
export function encodeXattr(x: Xattr): EncodedXattr {
  for (const [prefix, index] of PREFIXES) {
    if (index === 2 || index === 3 || index === 8) {
      if (x.name !== prefix) continue;
      const value = index === 8 ? x.value : posixAclToDisk(x.value, x.name);
      return { index, name: Buffer.alloc(0), value };
    }
    if (x.name.startsWith(prefix) && x.name.length > prefix.length) {
      const name = Buffer.from(x.name.slice(prefix.length), 'utf8');
      if (name.length > 255) throw new Error(`extended attribute name too long: ${x.name}`);
      return { index, name, value: x.value };
    }
  }
  throw new Error(`extended attribute "${x.name}" has a namespace ext4 cannot store`);
}

/**
 * POSIX ACL xattr value (VFS format, include/uapi/linux/posix_acl_xattr.h: le32 version 2,
 * then {le16 tag, le16 perm, le32 id} entries) to ext4's compact disk format
 * (fs/ext4/acl.h, acl.c ext4_acl_to_disk: le32 version 1; USER_OBJ, GROUP_OBJ, MASK and
 * OTHER entries are 4 bytes without id, USER and GROUP entries 8 bytes).
 */
export function posixAclToDisk(value: Buffer, name: string): Buffer {
  if (value.length < 4 || (value.length - 4) % 8 !== 0 || value.readUInt32LE(0) !== 2) {
    throw new Error(`extended attribute ${name} is not a valid POSIX ACL (version 2)`);
  }
  const parts: Buffer[] = [];
  const head = Buffer.alloc(4);
  head.writeUInt32LE(1);
  parts.push(head);
  for (let off = 4; off < value.length; off += 8) {
    const tag = value.readUInt16LE(off);
    const perm = value.readUInt16LE(off + 2);
    const id = value.readUInt32LE(off + 4);
    const full = tag === 0x02 || tag === 0x08; // ACL_USER, ACL_GROUP
    const e = Buffer.alloc(full ? 8 : 4);
    e.writeUInt16LE(tag, 0);
    e.writeUInt16LE(perm, 2);
    if (full) e.writeUInt32LE(id, 4);
    parts.push(e);
  }
  return Buffer.concat(parts);
}

/** Bytes the attributes need in the in-inode region (magic, entries, end marker, values). */
export function inodeXattrBytes(xattrs: EncodedXattr[]): number {
  if (xattrs.length === 0) return 0;
  let n = 4 + 4; // magic + end marker
  for (const x of xattrs) n += ENTRY_HEADER + pad4(x.name.length) + pad4(x.value.length);
  return n;
}

/**
 * ext4_xattr_hash_entry (fs/ext4/xattr.c; e2fsprogs ext2fs_ext_attr_hash_entry):
 * name bytes (unsigned) mixed with shift 5, then the value as le32 words with shift 16.
 */
export function xattrHash(name: Buffer, value: Buffer): number {
  let hash = 0;
  for (const c of name) hash = ((hash << 5) ^ (hash >>> 27) ^ c) >>> 0;
  if (value.length > 0) {
    const padded = Buffer.alloc(pad4(value.length));
    value.copy(padded);
    for (let i = 0; i < padded.length; i += 4) {
      hash = ((hash << 16) ^ (hash >>> 16) ^ padded.readUInt32LE(i)) >>> 0;
    }
  }
  return hash >>> 0;
}

/** Fills `region` (the bytes from 128 + i_extra_isize to the inode's end) with the attributes, or zeros when none. */
export function writeInodeXattrs(region: Buffer, xattrs: EncodedXattr[]): void {
  region.fill(0);
  if (xattrs.length === 0) return;
  if (inodeXattrBytes(xattrs) > region.length) throw new Error('extended attributes do not fit in the inode');
  region.writeUInt32LE(XATTR_MAGIC, 0);
  const first = 4;
  let entryOff = first;
  let valueOff = first + xattrs.reduce((n, x) => n + ENTRY_HEADER + pad4(x.name.length), 0) + 4;
  for (const x of xattrs) {
    region.writeUInt8(x.name.length, entryOff);
    region.writeUInt8(x.index, entryOff + 1);
    region.writeUInt16LE(x.value.length ? valueOff - first : 0, entryOff + 2);
    region.writeUInt32LE(0, entryOff + 4); // e_value_inum
    region.writeUInt32LE(x.value.length, entryOff + 8);
    region.writeUInt32LE(xattrHash(x.name, x.value), entryOff + 12);
    x.name.copy(region, entryOff + ENTRY_HEADER);
    entryOff += ENTRY_HEADER + pad4(x.name.length);
    if (x.value.length) {
      x.value.copy(region, valueOff);
      valueOff += pad4(x.value.length);
    }
  }
  // The end marker (4 zero bytes at entryOff) is already zero.
}

/** Size of struct ext4_xattr_header at the start of an external xattr block. */
const BLOCK_HEADER = 32;

/** Bytes the attributes take in an external xattr block (header, entries, end marker, values). */
export function blockXattrBytes(xattrs: EncodedXattr[]): number {
  let n = BLOCK_HEADER + 4;
  for (const x of xattrs) n += ENTRY_HEADER + pad4(x.name.length) + pad4(x.value.length);
  return n;
}

/**
 * An external xattr block (fs/ext4/xattr.h struct ext4_xattr_header; xattr.c):
 * header { h_magic 0xEA020000, h_refcount 1, h_blocks 1, h_hash, h_checksum },
 * entries sorted by (name index, name length, name) — the kernel's lookup in a block
 * stops at the first entry that sorts after the name — then values packed from the
 * block's end, each padded to 4, e_value_offs counted from the block start.
 * h_hash combines the entry hashes (ext4_xattr_rehash). `checksum` fills h_checksum:
 * crc32c(fs seed, le64 block number, block with h_checksum zero) (ext4_xattr_block_csum).
 */
export function buildXattrBlock(
  xattrs: EncodedXattr[],
  blockSize: number,
  checksum?: (block: Buffer) => number,
): Buffer {
  if (blockXattrBytes(xattrs) > blockSize) throw new Error('extended attributes do not fit in one block');
  const sorted = [...xattrs].sort((a, b) => a.index - b.index || a.name.length - b.name.length || Buffer.compare(a.name, b.name));
  const block = Buffer.alloc(blockSize);
  block.writeUInt32LE(XATTR_MAGIC, 0);
  block.writeUInt32LE(1, 4); // h_refcount
  block.writeUInt32LE(1, 8); // h_blocks
  let entryOff = BLOCK_HEADER;
  let valueEnd = blockSize;
  let blockHash = 0;
  for (const x of sorted) {
    const hash = xattrHash(x.name, x.value);
    let valueOffs = 0;
    if (x.value.length) {
      valueEnd -= pad4(x.value.length);
      valueOffs = valueEnd;
      x.value.copy(block, valueEnd);
    }
    block.writeUInt8(x.name.length, entryOff);
    block.writeUInt8(x.index, entryOff + 1);
    block.writeUInt16LE(valueOffs, entryOff + 2);
    block.writeUInt32LE(0, entryOff + 4);
    block.writeUInt32LE(x.value.length, entryOff + 8);
    block.writeUInt32LE(hash, entryOff + 12);
    x.name.copy(block, entryOff + ENTRY_HEADER);
    entryOff += ENTRY_HEADER + pad4(x.name.length);
    blockHash = ((blockHash << 16) ^ (blockHash >>> 16) ^ hash) >>> 0;
  }
  block.writeUInt32LE(blockHash, 12);
  if (checksum) block.writeUInt32LE(checksum(block), 16);
  return block;
}
