/**
 * Hashed (htree) directories: the name hash and the index blocks
 * (kernel fs/ext4/hash.c, fs/ext4/namei.c `struct dx_root`, `dx_node`, `dx_tail`;
 * Documentation/filesystems/ext4/directory.rst "Hash Tree Directories").
 */
import { crc32c } from './crc32c.js';

export const DX_HASH_LEGACY = 0;
export const DX_HASH_HALF_MD4 = 1;
export const DX_HASH_TEA = 2;

const rol = (x: number, s: number) => ((x << s) | (x >>> (32 - s))) >>> 0;
const F = (x: number, y: number, z: number) => (z ^ (x & (y ^ z))) >>> 0;
const G = (x: number, y: number, z: number) => (((x & y) >>> 0) + (((x ^ y) & z) >>> 0)) >>> 0;
const H = (x: number, y: number, z: number) => (x ^ y ^ z) >>> 0;
const K2 = 0o13240474631;
const K3 = 0o15666365641;

/** half_md4_transform (fs/ext4/hash.c): a cut-down MD4 round over 8 words. */
function halfMd4(buf: Uint32Array, inp: Uint32Array): void {
  let a = buf[0], b = buf[1], c = buf[2], d = buf[3];
  const r = (f: (x: number, y: number, z: number) => number, w: number, x: number, y: number, z: number, k: number, s: number) => rol((w + f(x, y, z) + k) >>> 0, s);
  a = r(F, a, b, c, d, inp[0], 3); d = r(F, d, a, b, c, inp[1], 7); c = r(F, c, d, a, b, inp[2], 11); b = r(F, b, c, d, a, inp[3], 19);
  a = r(F, a, b, c, d, inp[4], 3); d = r(F, d, a, b, c, inp[5], 7); c = r(F, c, d, a, b, inp[6], 11); b = r(F, b, c, d, a, inp[7], 19);
  a = r(G, a, b, c, d, (inp[1] + K2) >>> 0, 3); d = r(G, d, a, b, c, (inp[3] + K2) >>> 0, 5); c = r(G, c, d, a, b, (inp[5] + K2) >>> 0, 9); b = r(G, b, c, d, a, (inp[7] + K2) >>> 0, 13);
  a = r(G, a, b, c, d, (inp[0] + K2) >>> 0, 3); d = r(G, d, a, b, c, (inp[2] + K2) >>> 0, 5); c = r(G, c, d, a, b, (inp[4] + K2) >>> 0, 9); b = r(G, b, c, d, a, (inp[6] + K2) >>> 0, 13);
  a = r(H, a, b, c, d, (inp[3] + K3) >>> 0, 3); d = r(H, d, a, b, c, (inp[7] + K3) >>> 0, 9); c = r(H, c, d, a, b, (inp[2] + K3) >>> 0, 11); b = r(H, b, c, d, a, (inp[6] + K3) >>> 0, 15);
  a = r(H, a, b, c, d, (inp[1] + K3) >>> 0, 3); d = r(H, d, a, b, c, (inp[5] + K3) >>> 0, 9); c = r(H, c, d, a, b, (inp[0] + K3) >>> 0, 11); b = r(H, b, c, d, a, (inp[4] + K3) >>> 0, 15);
  buf[0] = (buf[0] + a) >>> 0;
  buf[1] = (buf[1] + b) >>> 0;
  buf[2] = (buf[2] + c) >>> 0;
  buf[3] = (buf[3] + d) >>> 0;
}

/** str2hashbuf_signed / _unsigned (fs/ext4/hash.c): name bytes folded into `num` words, padded with the length. */
function str2hashbuf(msg: Buffer, start: number, len: number, out: Uint32Array, num: number, unsigned: boolean): void {
  let pad = (len | (len << 8)) >>> 0;
  pad = (pad | (pad << 16)) >>> 0;
  let val = pad;
  if (len > num * 4) len = num * 4;
  let o = 0;
  for (let i = 0; i < len; i++) {
    const c = unsigned ? msg[start + i] : (msg[start + i] << 24) >> 24;
    val = (c + ((val << 8) >>> 0)) >>> 0;
    if (i % 4 === 3) {
      out[o++] = val;
      val = pad;
      num--;
    }
  }
  if (--num >= 0) out[o++] = val;
  while (--num >= 0) out[o++] = pad;
}

/** The major hash of a name with half_md4 (ext4fs_dirhash), low bit cleared. */
export function halfMd4Hash(name: Buffer, seed: Uint32Array | undefined, unsigned: boolean): number {
  const buf = new Uint32Array([0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476]);
  if (seed && seed.some((w) => w !== 0)) buf.set(seed);
  const inp = new Uint32Array(8);
  for (let p = 0, len = name.length; len > 0; len -= 32, p += 32) {
    str2hashbuf(name, p, len, inp, 8, unsigned);
    halfMd4(buf, inp);
  }
  let hash = buf[1] & ~1;
  if (hash >>> 0 === (0x7fffffff << 1) >>> 0) hash = (0x7fffffff - 1) << 1;
  return hash >>> 0;
}

export interface DxLayout {
  /** Directory blocks in logical order: root, leaves, then index nodes. */
  blocks: Buffer[];
}

/**
 * Builds an htree directory from entries sorted by hash: leaf blocks packed in hash order
 * (an entry run sharing one hash never split without the collision bit), a dx_root in
 * block 0 and, when the root cannot index every leaf, one level of dx_node blocks.
 * Returns undefined when two levels would be needed (large_dir), so the caller writes a
 * linear directory instead. `leafTail` adds the checksum tail to a leaf; `dxCsum` is the
 * directory's checksum seed when metadata_csum is on.
 */
export function buildHtree(
  bs: number,
  selfIno: number,
  parentIno: number,
  hashVersion: number,
  sorted: Array<{ hash: number; ino: number; name: Buffer; type: number }>,
  csumSeed: number | undefined,
): DxLayout | undefined {
  const tailLen = csumSeed !== undefined ? 12 : 0;
  const usable = bs - tailLen;
  // Leaves.
  const leaves: Array<{ block: Buffer; hash: number }> = [];
  let cur: Buffer | undefined;
  let off = 0;
  let lastOff = -1;
  let prevHash = -1;
  const closeLeaf = () => {
    if (!cur) return;
    cur.writeUInt16LE(usable - lastOff, lastOff + 4);
    if (csumSeed !== undefined) {
      const t = bs - 12;
      cur.writeUInt16LE(12, t + 4);
      cur[t + 7] = 0xde;
      cur.writeUInt32LE(crc32c(csumSeed, cur.subarray(0, t)), t + 8);
    }
  };
  for (const e of sorted) {
    const rec = 8 + ((e.name.length + 3) & ~3);
    if (!cur || off + rec > usable) {
      closeLeaf();
      cur = Buffer.alloc(bs);
      off = 0;
      // Continuing a run of equal hashes into a new leaf: the index hash carries the collision bit.
      leaves.push({ block: cur, hash: leaves.length === 0 ? 0 : e.hash === prevHash ? (e.hash | 1) >>> 0 : e.hash });
    }
    cur.writeUInt32LE(e.ino, off);
    cur.writeUInt16LE(rec, off + 4);
    cur[off + 6] = e.name.length;
    cur[off + 7] = e.type;
    e.name.copy(cur, off + 8);
    lastOff = off;
    off += rec;
    prevHash = e.hash;
  }
  closeLeaf();
  if (leaves.length === 0) return undefined;

  const rootLimit = Math.floor((bs - 0x20) / 8) - (csumSeed !== undefined ? 1 : 0);
  const nodeLimit = Math.floor((bs - 8) / 8) - (csumSeed !== undefined ? 1 : 0);
  const blocks: Buffer[] = [Buffer.alloc(bs)];
  for (const l of leaves) blocks.push(l.block);
  const root = blocks[0];
  root.writeUInt32LE(selfIno, 0);
  root.writeUInt16LE(12, 4);
  root[6] = 1;
  root[7] = 2;
  root.write('.', 8, 'latin1');
  root.writeUInt32LE(parentIno, 12);
  root.writeUInt16LE(bs - 12, 16);
  root[18] = 2;
  root[19] = 2;
  root.write('..', 20, 'latin1');
  // dx_root_info at 0x18: reserved_zero, hash_version, info_length 8, indirect_levels, unused_flags.
  root[0x1c] = hashVersion;
  root[0x1d] = 8;

  const writeIndex = (block: Buffer, countOff: number, limit: number, entries: Array<{ hash: number; block: number }>) => {
    block.writeUInt16LE(limit, countOff);
    block.writeUInt16LE(entries.length, countOff + 2);
    block.writeUInt32LE(entries[0].block, countOff + 4);
    for (let i = 1; i < entries.length; i++) {
      block.writeUInt32LE(entries[i].hash, countOff + i * 8);
      block.writeUInt32LE(entries[i].block, countOff + i * 8 + 4);
    }
    if (csumSeed !== undefined) {
      // struct dx_tail after `limit` entries: dt_reserved, dt_checksum (ext4_dx_csum).
      const t = countOff + limit * 8;
      let c = crc32c(csumSeed, block.subarray(0, countOff + entries.length * 8));
      c = crc32c(c, block.subarray(t, t + 4));
      c = crc32c(c, Buffer.alloc(4));
      block.writeUInt32LE(c, t + 4);
    }
  };
  const leafRefs = leaves.map((l, i) => ({ hash: l.hash, block: i + 1 }));
  if (leafRefs.length <= rootLimit) {
    root[0x1e] = 0;
    writeIndex(root, 0x20, rootLimit, leafRefs);
    return { blocks };
  }
  const nodes = Math.ceil(leafRefs.length / nodeLimit);
  if (nodes > rootLimit) return undefined;
  root[0x1e] = 1;
  const nodeRefs: Array<{ hash: number; block: number }> = [];
  for (let n = 0; n < nodes; n++) {
    const part = leafRefs.slice(n * nodeLimit, (n + 1) * nodeLimit);
    const node = Buffer.alloc(bs);
    node.writeUInt32LE(0, 0);
    node.writeUInt16LE(bs === 65536 ? 0 : bs, 4);
    writeIndex(node, 8, nodeLimit, part);
    nodeRefs.push({ hash: part[0].hash, block: blocks.length });
    blocks.push(node);
  }
  nodeRefs[0].hash = 0;
  writeIndex(root, 0x20, rootLimit, nodeRefs);
  return { blocks };
}
