/**
 * CRC32C (Castagnoli) as ext4 uses it: reflected polynomial 0x82F63B78, and
 * — unlike the usual crc32c — no pre- or post-inversion inside the function;
 * callers pass the running value (e2fsprogs lib/ext2fs/crc32c.c
 * `ext2fs_crc32c_le`, kernel fs/ext4/ext4.h `ext4_chksum`).
 */

const TABLES: Uint32Array[] = (() => {
  const tables: Uint32Array[] = [];
  const t0 = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t0[n] = c >>> 0;
  }
  tables.push(t0);
  // Slicing-by-4 tables for speed on 4 KiB directory blocks.
  for (let t = 1; t < 4; t++) {
    const prev = tables[t - 1];
    const cur = new Uint32Array(256);
    for (let n = 0; n < 256; n++) cur[n] = (prev[n] >>> 8) ^ t0[prev[n] & 0xff];
    tables.push(cur);
  }
  return tables;
})();

export function crc32c(crc: number, data: Uint8Array): number {
  const [t0, t1, t2, t3] = TABLES;
  let c = crc >>> 0;
  let i = 0;
  const n = data.length;
  for (; i + 4 <= n; i += 4) {
    c ^= data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24);
    c = t3[c & 0xff] ^ t2[(c >>> 8) & 0xff] ^ t1[(c >>> 16) & 0xff] ^ t0[c >>> 24];
  }
  for (; i < n; i++) c = t0[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return c >>> 0;
}

export function crc32cU32(crc: number, value: number): number {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value >>> 0);
  return crc32c(crc, b);
}
