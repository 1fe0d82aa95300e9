import type { ImageFile } from '../ext4/image-file.js';
import { parseSuperblock } from '../ext4/superblock.js';
import { crc32 } from './crc32.js';

/**
 * MBR and GPT partition tables of a disk image: reading, finding partitions by
 * label, and growing the last partition into a larger image file.
 * Formats: MBR / EBR chains as the Linux kernel reads them (block/partitions/msdos.c),
 * GPT per UEFI spec chapter 5 (block/partitions/efi.c, efi.h). 512-byte sectors.
 */
export const SECTOR = 512;

export interface MbrSlot {
  /** LBA of the sector holding the table (0 for the MBR, an EBR's LBA for logicals). */
  tableLba: number;
  /** Entry index 0..3 in that table. */
  slot: number;
}

export interface Partition {
  /** Number as Linux names it: 1–4 primary, 5… logical (MBR); entry index + 1 (GPT). */
  index: number;
  /** Byte offset and size in the image. */
  offset: number;
  size: number;
  /** MBR type byte (e.g. 0x83) or GPT type GUID. */
  type: string;
  /** GPT partition name. */
  name?: string;
  /** File-system label read from the superblock / boot sector. */
  label?: string;
  fsType?: 'ext4' | 'vfat';
  /** Where the MBR/EBR entry describing this partition lives. */
  mbr?: MbrSlot;
}

export interface GptInfo {
  entriesLba: number;
  entryCount: number;
  entrySize: number;
  firstUsableLba: number;
  lastUsableLba: number;
  backupLba: number;
}

export interface PartitionTable {
  kind: 'mbr' | 'gpt';
  partitions: Partition[];
  /** MBR: the extended partition's entry in the MBR, its start and size in sectors. */
  extended?: { slot: number; startLba: number; sectors: number };
  gpt?: GptInfo;
}

const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);

/** At most this many logical partitions are followed (the kernel's msdos.c stops at its partition limit too). */
export const MAX_LOGICAL = 128;
/**
 * Sane bounds for a GPT entry array (UEFI spec 5.3.2: at least 16 KiB is reserved, entry
 * size 128 × 2^n). Real tables hold 128 entries of 128 bytes; sgdisk allows a few thousand.
 */
export const MAX_GPT_ENTRIES = 16384;
export const MAX_GPT_ENTRY_SIZE = 4096;
export const MAX_GPT_ARRAY_BYTES = 4 * 1024 * 1024;

function mbrEntries(sector: Buffer): Array<{ type: number; start: number; sectors: number }> {
  const out = [];
  for (let i = 0; i < 4; i++) {
    const e = 446 + i * 16;
    out.push({ type: sector[e + 4], start: sector.readUInt32LE(e + 8), sectors: sector.readUInt32LE(e + 12) });
  }
  return out;
}

function hasBootSignature(sector: Buffer): boolean {
  return sector[510] === 0x55 && sector[511] === 0xaa;
}

/** One line naming the image: the partition table cannot be trusted. */
function damaged(image: ImageFile, why: string): Error {
  return new Error(`${image.path}: ${why}; the partition table is damaged, nothing was changed`);
}

/**
 * Reads and validates the partition table; undefined when the file has none. Throws (one
 * line) when the table cannot be trusted: checksums, partitions outside the file or
 * overlapping, logical partitions outside their extended partition, EBR chains that loop.
 * Every command reads tables through here, so nothing is written on a damaged one.
 */
export function readPartitionTable(image: ImageFile): PartitionTable | undefined {
  const size = image.size();
  if (size < 2 * SECTOR) return undefined;
  const mbr = image.read(0, SECTOR);
  if (!hasBootSignature(mbr)) return undefined;
  const entries = mbrEntries(mbr);
  const table = entries.some((e) => e.type === 0xee) ? readGpt(image, size) : readMbr(image, size, entries);
  if (!table) return undefined;
  checkOverlaps(image, table);
  for (const p of table.partitions) Object.assign(p, readFsLabel(image, p.offset));
  return table;
}

function readMbr(image: ImageFile, size: number, entries: ReturnType<typeof mbrEntries>): PartitionTable {
  const totalLba = Math.floor(size / SECTOR);
  const table: PartitionTable = { kind: 'mbr', partitions: [] };
  const inFile = (what: string, start: number, sectors: number) => {
    if (start === 0) throw damaged(image, `${what} starts at sector 0, over the MBR`);
    if (start + sectors > totalLba) throw damaged(image, `${what} (sectors ${start}–${start + sectors - 1}) ends beyond the end of the file (${totalLba} sectors)`);
  };
  entries.forEach((e, i) => {
    if (e.type === 0 || e.sectors === 0) return;
    inFile(`partition ${i + 1}`, e.start, e.sectors);
    if (EXTENDED_TYPES.has(e.type)) {
      if (table.extended) throw damaged(image, `the MBR holds two extended partitions (${table.extended.slot + 1} and ${i + 1})`);
      table.extended = { slot: i, startLba: e.start, sectors: e.sectors };
      return;
    }
    table.partitions.push({
      index: i + 1, offset: e.start * SECTOR, size: e.sectors * SECTOR,
      type: e.type.toString(16).padStart(2, '0'), mbr: { tableLba: 0, slot: i },
    });
  });
  if (table.extended) {
    // EBR chain (msdos.c parse_extended): entry 0 is the logical partition, its start
    // relative to this EBR; entry 1 links to the next EBR, relative to the extended
    // partition's start. Every EBR and logical must lie inside the extended partition.
    const ext = table.extended.startLba;
    const extEnd = ext + table.extended.sectors;
    let ebrLba = ext;
    const seen = new Set<number>();
    for (let index = 5; ; index++) {
      if (index >= 5 + MAX_LOGICAL) throw damaged(image, `the extended partition chains more than ${MAX_LOGICAL} logical partitions`);
      if (seen.has(ebrLba)) throw damaged(image, `the extended partition's EBR chain loops (back to sector ${ebrLba})`);
      seen.add(ebrLba);
      if (ebrLba < ext || ebrLba >= extEnd) throw damaged(image, `an EBR (sector ${ebrLba}) lies outside the extended partition`);
      const ebr = image.read(ebrLba * SECTOR, SECTOR);
      if (!hasBootSignature(ebr)) {
        if (index === 5) break; // an empty extended partition
        throw damaged(image, `the EBR at sector ${ebrLba} has no boot signature`);
      }
      const [logical, next] = mbrEntries(ebr);
      if (logical.sectors > 0 && logical.type !== 0) {
        const start = ebrLba + logical.start;
        if (logical.start === 0) throw damaged(image, `logical partition ${index} starts on its own EBR (sector ${ebrLba})`);
        if (start + logical.sectors > extEnd) {
          throw damaged(image, `logical partition ${index} (sectors ${start}–${start + logical.sectors - 1}) does not lie inside the extended partition (sectors ${ext}–${extEnd - 1})`);
        }
        table.partitions.push({
          index, offset: start * SECTOR, size: logical.sectors * SECTOR,
          type: logical.type.toString(16).padStart(2, '0'), mbr: { tableLba: ebrLba, slot: 0 },
        });
      }
      if (next.sectors === 0 || !EXTENDED_TYPES.has(next.type)) break;
      ebrLba = ext + next.start;
    }
  }
  return table;
}

function guidString(b: Buffer): string {
  const h = b.toString('hex');
  const le = (s: string) => s.match(/../g)!.reverse().join('');
  return `${le(h.slice(0, 8))}-${le(h.slice(8, 12))}-${le(h.slice(12, 16))}-${h.slice(16, 20)}-${h.slice(20)}`.toUpperCase();
}

/**
 * Checks one GPT header (UEFI spec 5.3.2, kernel efi.c is_gpt_valid) at `lba`: signature,
 * header size, CRC, MyLBA, and every claim bounded by the disk before anything is read
 * on its word: entry size ≥ 128 and a multiple of 8, the entry array within sane limits
 * and inside the disk, usable LBAs ordered and inside the disk.
 */
function parseGptHeader(image: ImageFile, lba: number, totalLba: number, which: string): { gpt: GptInfo; arrayCrc: number; headerSize: number } {
  const hdr = image.read(lba * SECTOR, SECTOR);
  if (hdr.toString('latin1', 0, 8) !== 'EFI PART') throw damaged(image, `the ${which} GPT header has no "EFI PART" signature`);
  const headerSize = hdr.readUInt32LE(12);
  if (headerSize < 92 || headerSize > SECTOR) throw damaged(image, `the ${which} GPT header claims a size of ${headerSize} bytes (92–512 allowed)`);
  const check = Buffer.from(hdr.subarray(0, headerSize));
  check.writeUInt32LE(0, 16);
  if (crc32(check) !== hdr.readUInt32LE(16)) throw damaged(image, `the ${which} GPT header checksum is wrong`);
  const u64 = (at: number) => hdr.readBigUInt64LE(at);
  const limit = BigInt(totalLba);
  if (u64(24) !== BigInt(lba)) throw damaged(image, `the ${which} GPT header says it lies at sector ${u64(24)}, not ${lba}`);
  for (const [at, name] of [[32, 'alternate header'], [40, 'first usable'], [48, 'last usable'], [72, 'entry array']] as const) {
    if (u64(at) >= limit) throw damaged(image, `the ${which} GPT header's ${name} LBA ${u64(at)} is beyond the end of the file (${totalLba} sectors)`);
  }
  const gpt: GptInfo = {
    backupLba: Number(u64(32)),
    firstUsableLba: Number(u64(40)),
    lastUsableLba: Number(u64(48)),
    entriesLba: Number(u64(72)),
    entryCount: hdr.readUInt32LE(80),
    entrySize: hdr.readUInt32LE(84),
  };
  if (gpt.entrySize < 128 || gpt.entrySize % 8 !== 0 || gpt.entrySize > MAX_GPT_ENTRY_SIZE) {
    throw damaged(image, `the ${which} GPT header claims entries of ${gpt.entrySize} bytes (a multiple of 8, 128–${MAX_GPT_ENTRY_SIZE})`);
  }
  const arrayBytes = gpt.entryCount * gpt.entrySize;
  if (gpt.entryCount === 0 || gpt.entryCount > MAX_GPT_ENTRIES || arrayBytes > MAX_GPT_ARRAY_BYTES) {
    throw damaged(image, `the ${which} GPT header claims ${gpt.entryCount} entries of ${gpt.entrySize} bytes (at most ${MAX_GPT_ENTRIES} and ${MAX_GPT_ARRAY_BYTES} bytes)`);
  }
  const arraySectors = Math.ceil(arrayBytes / SECTOR);
  if (gpt.entriesLba < 2 || gpt.entriesLba + arraySectors > totalLba) {
    throw damaged(image, `the ${which} GPT entry array (sector ${gpt.entriesLba}, ${arraySectors} sectors) does not fit in the file`);
  }
  if (gpt.firstUsableLba > gpt.lastUsableLba) throw damaged(image, `the ${which} GPT header's first usable LBA is after its last`);
  return { gpt, arrayCrc: hdr.readUInt32LE(88), headerSize };
}

function readGpt(image: ImageFile, size: number): PartitionTable | undefined {
  const totalLba = Math.floor(size / SECTOR);
  if (image.read(SECTOR, 8).toString('latin1') !== 'EFI PART') return undefined;
  const { gpt, arrayCrc } = parseGptHeader(image, 1, totalLba, 'primary');
  const arraySectors = Math.ceil((gpt.entryCount * gpt.entrySize) / SECTOR);
  if (gpt.entriesLba + arraySectors > gpt.firstUsableLba) throw damaged(image, 'the primary GPT entry array overlaps the usable sectors');
  const array = image.read(gpt.entriesLba * SECTOR, gpt.entryCount * gpt.entrySize);
  if (crc32(array) !== arrayCrc) throw damaged(image, 'the GPT partition entries checksum is wrong');
  // The backup header (at the primary's AlternateLBA) must describe the same table.
  if (gpt.backupLba <= 1) throw damaged(image, `the GPT backup header LBA ${gpt.backupLba} is not after the primary`);
  const backup = parseGptHeader(image, gpt.backupLba, totalLba, 'backup');
  const backupArray = image.read(backup.gpt.entriesLba * SECTOR, backup.gpt.entryCount * backup.gpt.entrySize);
  if (crc32(backupArray) !== backup.arrayCrc || backup.arrayCrc !== arrayCrc || backup.gpt.entryCount !== gpt.entryCount || backup.gpt.entrySize !== gpt.entrySize) {
    throw damaged(image, 'the backup GPT does not match the primary one (repair it with sgdisk -e or gdisk)');
  }
  const table: PartitionTable = { kind: 'gpt', partitions: [], gpt };
  for (let i = 0; i < gpt.entryCount; i++) {
    const e = array.subarray(i * gpt.entrySize, (i + 1) * gpt.entrySize);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const first = e.readBigUInt64LE(32);
    const last = e.readBigUInt64LE(40);
    if (first > last) throw damaged(image, `GPT partition ${i + 1} ends (sector ${last}) before it starts (sector ${first})`);
    if (first < BigInt(gpt.firstUsableLba) || last > BigInt(gpt.lastUsableLba)) {
      throw damaged(image, `GPT partition ${i + 1} (sectors ${first}–${last}) lies outside the usable sectors ${gpt.firstUsableLba}–${gpt.lastUsableLba}`);
    }
    const nameRaw = e.toString('utf16le', 56, 128);
    const nul = nameRaw.indexOf('\0');
    table.partitions.push({
      index: i + 1, offset: Number(first) * SECTOR, size: (Number(last) - Number(first) + 1) * SECTOR,
      type: guidString(e.subarray(0, 16)), name: nul < 0 ? nameRaw : nameRaw.slice(0, nul),
    });
  }
  return table;
}

/** No two partitions (nor a partition and an EBR, nor a primary and the extended partition) share a sector. */
function checkOverlaps(image: ImageFile, table: PartitionTable): void {
  const ranges: Array<{ what: string; start: number; end: number }> = table.partitions.map((p) => ({
    what: `partition ${p.index}`, start: p.offset, end: p.offset + p.size,
  }));
  if (table.extended) {
    const ext = table.extended;
    // Primaries must not overlap the extended partition; logicals (inside it) are checked against each other and the EBRs.
    const extRange = { start: ext.startLba * SECTOR, end: (ext.startLba + ext.sectors) * SECTOR };
    for (const p of table.partitions) {
      if (p.mbr?.tableLba === 0 && p.offset < extRange.end && extRange.start < p.offset + p.size) {
        throw damaged(image, `partition ${p.index} overlaps the extended partition ${ext.slot + 1}`);
      }
    }
    for (const p of table.partitions) {
      if (p.mbr && p.mbr.tableLba !== 0) ranges.push({ what: `the EBR of partition ${p.index}`, start: p.mbr.tableLba * SECTOR, end: (p.mbr.tableLba + 1) * SECTOR });
    }
  }
  ranges.sort((a, b) => a.start - b.start);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i].start < ranges[i - 1].end) throw damaged(image, `${ranges[i - 1].what} and ${ranges[i].what} overlap`);
  }
}

/** The file-system label from an ext4 superblock or a FAT boot sector. */
export function readFsLabel(image: ImageFile, offset: number): { label?: string; fsType?: 'ext4' | 'vfat' } {
  const head = image.read(offset, 2048);
  const sb = parseSuperblock(head.subarray(1024));
  if (sb) return { label: sb.label || undefined, fsType: 'ext4' };
  if (hasBootSignature(head) && head.readUInt16LE(11) >= 512) {
    // FAT boot sector: FAT32 has "FAT32   " at 0x52 and the label at 0x47; FAT12/16 have
    // "FAT1x   " at 0x36 and the label at 0x2B (Microsoft FAT spec, BPB).
    let labelOff: number | undefined;
    if (head.toString('latin1', 0x52, 0x57) === 'FAT32') labelOff = 0x47;
    else if (head.toString('latin1', 0x36, 0x39) === 'FAT') labelOff = 0x2b;
    if (labelOff !== undefined) {
      const label = head.toString('latin1', labelOff, labelOff + 11).trim();
      return { label: label && label !== 'NO NAME' ? label : undefined, fsType: 'vfat' };
    }
  }
  return {};
}

/**
 * The one rule every command uses to find a partition: by GPT partition name when the
 * table is GPT and an entry carries that name, else by the file-system label (ext4
 * superblock s_volume_name, FAT boot sector BS_VolLab). Two partitions answering to the
 * same name are refused: writing into the wrong one would be silent.
 */
export function findPartition(table: PartitionTable, label: string, where = 'the image'): Partition | undefined {
  const byName = table.partitions.filter((p) => p.name === label);
  const matches = byName.length > 0 ? byName : table.partitions.filter((p) => p.label === label);
  if (matches.length > 1) {
    throw new Error(`${where}: partitions ${matches.map((p) => p.index).join(' and ')} are both labelled ${label}; refusing to guess which one is meant`);
  }
  return matches[0];
}

/**
 * Grows `part` — which must be the last partition on the disk — so that it ends at
 * (MBR) or near (GPT: before the backup table, 1 MiB aligned) the end of an image
 * of `newSize` bytes. The caller has already extended the file to `newSize`.
 * Partition starts never move, so their alignment stays.
 */
export function growLastPartition(image: ImageFile, table: PartitionTable, part: Partition, newSize: number): Partition {
  if (newSize % SECTOR !== 0) throw new Error('image size must be a multiple of 512');
  const partEnd = part.offset + part.size;
  for (const p of table.partitions) {
    if (p !== part && p.offset + p.size > part.offset) {
      throw new Error(`partition ${part.index} is not the last one on the disk (partition ${p.index} follows it); it cannot be grown`);
    }
  }
  const totalLba = newSize / SECTOR;
  if (table.kind === 'mbr') {
    if (totalLba > 0xffffffff) throw new Error('an MBR disk cannot be larger than 2 TiB');
    const startLba = part.offset / SECTOR;
    const newSectors = totalLba - startLba;
    if (newSectors * SECTOR < part.size) throw new Error('the new image is smaller than the partition');
    const slot = part.mbr!;
    const table0 = image.read(slot.tableLba * SECTOR, SECTOR);
    table0.writeUInt32LE(newSectors, 446 + slot.slot * 16 + 12);
    image.write(slot.tableLba * SECTOR, table0);
    if (slot.tableLba !== 0) {
      // A logical partition: the extended partition in the MBR must reach the new end too.
      const ext = table.extended!;
      const mbr = image.read(0, SECTOR);
      mbr.writeUInt32LE(totalLba - ext.startLba, 446 + ext.slot * 16 + 12);
      image.write(0, mbr);
      ext.sectors = totalLba - ext.startLba;
    }
    return { ...part, size: newSectors * SECTOR };
  }

  const gpt = table.gpt!;
  const { lastUsable } = gptLayout(gpt, totalLba);
  // End the partition on a 1 MiB boundary (2048 sectors), as partitioning tools do.
  const lastLba = Math.floor((lastUsable + 1) / 2048) * 2048 - 1;
  if ((lastLba + 1) * SECTOR < partEnd) throw new Error('the new image is too small for the partition and the backup GPT');
  const array = image.read(gpt.entriesLba * SECTOR, gpt.entryCount * gpt.entrySize);
  array.writeBigUInt64LE(BigInt(lastLba), (part.index - 1) * gpt.entrySize + 40);
  writeGpt(image, table, array, totalLba);
  return { ...part, size: (lastLba + 1) * SECTOR - part.offset };
}

function gptLayout(gpt: GptInfo, totalLba: number): { backupLba: number; backupArrayLba: number; lastUsable: number } {
  const arraySectors = Math.ceil((gpt.entryCount * gpt.entrySize) / SECTOR);
  const backupLba = totalLba - 1;
  const backupArrayLba = backupLba - arraySectors;
  return { backupLba, backupArrayLba, lastUsable: backupArrayLba - 1 };
}

/**
 * Writes a changed GPT entry array with both headers for a disk of `totalLba` sectors:
 * primary header at LBA 1, backup header in the last sector with its array just before
 * it, last usable LBA before that, CRC32s of the array and of each header, and the
 * protective MBR's 0xEE entry covering the disk (capped at 32 bits).
 */
function writeGpt(image: ImageFile, table: PartitionTable, array: Buffer, totalLba: number): void {
  const gpt = table.gpt!;
  const hdr = image.read(SECTOR, SECTOR);
  const headerSize = hdr.readUInt32LE(12);
  const { backupLba, backupArrayLba, lastUsable } = gptLayout(gpt, totalLba);
  const arrayCrc = crc32(array);
  const writeHeader = (current: number, other: number, entries: number) => {
    const h = Buffer.from(hdr);
    h.writeBigUInt64LE(BigInt(current), 24);
    h.writeBigUInt64LE(BigInt(other), 32);
    h.writeBigUInt64LE(BigInt(lastUsable), 48);
    h.writeBigUInt64LE(BigInt(entries), 72);
    h.writeUInt32LE(arrayCrc, 88);
    h.writeUInt32LE(0, 16);
    h.writeUInt32LE(crc32(h.subarray(0, headerSize)), 16);
    image.write(current * SECTOR, h);
  };
  const oldBackup = gpt.backupLba;
  image.write(gpt.entriesLba * SECTOR, array);
  image.write(backupArrayLba * SECTOR, array);
  writeHeader(backupLba, 1, backupArrayLba);
  writeHeader(1, backupLba, gpt.entriesLba);
  if (oldBackup !== backupLba && oldBackup < backupArrayLba) image.write(oldBackup * SECTOR, Buffer.alloc(SECTOR));
  const mbr = image.read(0, SECTOR);
  for (let i = 0; i < 4; i++) {
    const e = 446 + i * 16;
    if (mbr[e + 4] === 0xee) mbr.writeUInt32LE(Math.min(totalLba - 1, 0xffffffff), e + 12);
  }
  image.write(0, mbr);
  gpt.backupLba = backupLba;
  gpt.lastUsableLba = lastUsable;
}

/** Copies [from, from+length) to [to, to+length) with to > from, back to front (the ranges may overlap). */
function moveUp(image: ImageFile, from: number, to: number, length: number): void {
  const chunk = Buffer.allocUnsafe(1024 * 1024);
  for (let end = length; end > 0; ) {
    const n = Math.min(chunk.length, end);
    const start = end - n;
    image.readInto(chunk, 0, n, from + start);
    image.write(to + start, chunk, 0, n);
    end = start;
  }
}

/**
 * Grows a partition that is not the last one by `delta` bytes (a multiple of 1 MiB, so
 * alignment is kept): the image file grows by `delta`, everything after the partition
 * moves up by `delta` (data first, back to front), and the table follows — MBR primaries
 * and the extended partition start later (logical partitions and EBR links are relative
 * to the extended partition and need no change), GPT entries after it start later and the
 * backup GPT moves to the new end. Returns the grown partition.
 */
export function growPartitionInPlace(image: ImageFile, table: PartitionTable, part: Partition, delta: number): Partition {
  if (delta <= 0 || delta % (1024 * 1024) !== 0) throw new Error('growth must be a positive multiple of 1 MiB');
  const oldSize = image.size();
  const partEnd = part.offset + part.size;
  const d = delta / SECTOR;
  if (table.kind === 'mbr') {
    const ext = table.extended;
    if (ext && part.offset > ext.startLba * SECTOR) throw new Error('growing a logical partition that is not the last one is not supported');
    if (oldSize + delta > 0xffffffff * SECTOR) throw new Error('an MBR disk cannot be larger than 2 TiB');
  }
  // The data after the partition, to its new place (for GPT this includes the old backup
  // table, rewritten below).
  image.write(oldSize + delta - 1, Buffer.alloc(1)); // extend the file first
  moveUp(image, partEnd, partEnd + delta, oldSize - partEnd);

  if (table.kind === 'mbr') {
    const mbr = image.read(0, SECTOR);
    for (let i = 0; i < 4; i++) {
      const e = 446 + i * 16;
      const start = mbr.readUInt32LE(e + 8);
      const sectors = mbr.readUInt32LE(e + 12);
      if (mbr[e + 4] === 0 || sectors === 0) continue;
      if (start * SECTOR === part.offset) mbr.writeUInt32LE(sectors + d, e + 12);
      else if (start * SECTOR >= partEnd) mbr.writeUInt32LE(start + d, e + 8);
    }
    image.write(0, mbr);
    if (table.extended && table.extended.startLba * SECTOR >= partEnd) table.extended.startLba += d;
  } else {
    const gpt = table.gpt!;
    const array = image.read(gpt.entriesLba * SECTOR, gpt.entryCount * gpt.entrySize);
    for (let i = 0; i < gpt.entryCount; i++) {
      const e = i * gpt.entrySize;
      if (array.subarray(e, e + 16).every((b) => b === 0)) continue;
      const first = Number(array.readBigUInt64LE(e + 32));
      const last = Number(array.readBigUInt64LE(e + 40));
      if (first * SECTOR === part.offset) array.writeBigUInt64LE(BigInt(last + d), e + 40);
      else if (first * SECTOR >= partEnd) {
        array.writeBigUInt64LE(BigInt(first + d), e + 32);
        array.writeBigUInt64LE(BigInt(last + d), e + 40);
      }
    }
    // The old backup header moved up with the data: nothing to clear at its old place.
    gpt.backupLba = (oldSize + delta) / SECTOR - 1;
    writeGpt(image, table, array, (oldSize + delta) / SECTOR);
  }
  for (const p of table.partitions) {
    if (p.offset >= partEnd) {
      p.offset += delta;
      if (p.mbr && p.mbr.tableLba !== 0) p.mbr.tableLba += d;
    }
  }
  part.size += delta;
  return part;
}
