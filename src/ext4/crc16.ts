/**
 * CRC16 as ext4's `gdt_csum`/`uninit_bg` group descriptor checksum uses it: the
 * reflected polynomial 0xA001 (0x8005), no final inversion; callers pass the running
 * value, 0xFFFF to start (e2fsprogs lib/ext2fs/crc16.c, kernel lib/crc16.c,
 * fs/ext4/super.c ext4_group_desc_csum).
 */

const TABLE: Uint16Array = (() => {
  const t = new Uint16Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xa001 : c >>> 1;
    t[n] = c;
  }
  return t;
})();

export function crc16(crc: number, data: Uint8Array): number {
  let c = crc & 0xffff;
  for (let i = 0; i < data.length; i++) c = (c >>> 8) ^ TABLE[(c ^ data[i]) & 0xff];
  return c;
}
