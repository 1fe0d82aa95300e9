/**
 * The one file of a single-entry zip archive (what balenaCloud hands out as `.zip`), read
 * as a stream: the end-of-central-directory record (and its zip64 form) gives the central
 * directory, whose one entry gives the local header; the data after it is stored (method
 * 0) or raw deflate (method 8), inflated with zlib.inflateRaw. Sizes and the CRC-32 come
 * from the central directory (a streamed writer leaves them 0 in the local header and puts
 * them in a data descriptor), and are checked at the end. Layout: PKWARE APPNOTE.TXT 4.3.
 */
import * as fs from 'node:fs';
import { createInflateRaw, crc32 } from 'node:zlib';
import type { Readable } from 'node:stream';

const EOCD_SIG = 0x06054b50;
const EOCD64_LOCATOR_SIG = 0x07064b50;
const EOCD64_SIG = 0x06064b50;
const CENTRAL_SIG = 0x02014b50;
const LOCAL_SIG = 0x04034b50;

export interface ZipEntry {
  name: string;
  method: number;
  compressedSize: number;
  size: number;
  crc32: number;
  /** Where the entry's data starts in the archive. */
  dataOffset: number;
}

function readAt(fd: number, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const n = fs.readSync(fd, buf, got, length - got, offset + got);
    if (n === 0) break;
    got += n;
  }
  return buf.subarray(0, got);
}

function u64(buf: Buffer, at: number): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error('a zip64 size beyond 2^53');
  return Number(v);
}

/** The single file entry of the zip at `file`; throws one line naming `file` when it is not one. */
export function readSingleZipEntry(file: string): ZipEntry {
  const bad = (why: string): Error => new Error(`${file}: ${why}`);
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    // The EOCD is 22 bytes plus a comment of up to 65535 bytes, at the end.
    const tailLen = Math.min(size, 22 + 65535);
    const tail = readAt(fd, size - tailLen, tailLen);
    let eocd = -1;
    for (let i = tail.length - 22; i >= 0; i--) {
      if (tail.readUInt32LE(i) === EOCD_SIG && i + 22 + tail.readUInt16LE(i + 20) === tail.length) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw bad('is not a zip archive (no end of central directory record)');
    let entries = tail.readUInt16LE(eocd + 10);
    let cdSize = tail.readUInt32LE(eocd + 12);
    let cdOffset = tail.readUInt32LE(eocd + 16);
    const eocdAbs = size - tailLen + eocd;
    if (eocdAbs >= 20) {
      const loc = readAt(fd, eocdAbs - 20, 20);
      if (loc.readUInt32LE(0) === EOCD64_LOCATOR_SIG) {
        const rec = readAt(fd, u64(loc, 8), 56);
        if (rec.length < 56 || rec.readUInt32LE(0) !== EOCD64_SIG) throw bad('damaged zip64 end of central directory record');
        entries = u64(rec, 32);
        cdSize = u64(rec, 40);
        cdOffset = u64(rec, 48);
      }
    }
    if (cdOffset + cdSize > size) throw bad('damaged zip archive (central directory beyond the end)');
    const cd = readAt(fd, cdOffset, cdSize);
    const found: ZipEntry[] = [];
    let at = 0;
    for (let i = 0; i < entries; i++) {
      if (at + 46 > cd.length || cd.readUInt32LE(at) !== CENTRAL_SIG) throw bad('damaged zip archive (central directory entry)');
      const flags = cd.readUInt16LE(at + 8);
      const method = cd.readUInt16LE(at + 10);
      const crc = cd.readUInt32LE(at + 16);
      let compressedSize = cd.readUInt32LE(at + 20);
      let uncompressed = cd.readUInt32LE(at + 24);
      const nameLen = cd.readUInt16LE(at + 28);
      const extraLen = cd.readUInt16LE(at + 30);
      const commentLen = cd.readUInt16LE(at + 32);
      let localOffset = cd.readUInt32LE(at + 42);
      const name = cd.toString(flags & 0x800 ? 'utf8' : 'latin1', at + 46, at + 46 + nameLen);
      // zip64 extended information (header id 1): the fields that are 0xffffffff, in this order.
      const extra = cd.subarray(at + 46 + nameLen, at + 46 + nameLen + extraLen);
      for (let e = 0; e + 4 <= extra.length; ) {
        const id = extra.readUInt16LE(e);
        const len = extra.readUInt16LE(e + 2);
        if (id === 1) {
          let p = e + 4;
          if (uncompressed === 0xffffffff) (uncompressed = u64(extra, p)), (p += 8);
          if (compressedSize === 0xffffffff) (compressedSize = u64(extra, p)), (p += 8);
          if (localOffset === 0xffffffff) localOffset = u64(extra, p);
        }
        e += 4 + len;
      }
      at += 46 + nameLen + extraLen + commentLen;
      if (name.endsWith('/')) continue; // a directory entry
      if (flags & 0x1) throw bad(`${name} in the zip is encrypted`);
      found.push({ name, method, compressedSize, size: uncompressed, crc32: crc, dataOffset: localOffset });
    }
    if (found.length !== 1) throw bad(`the zip archive holds ${found.length} files; expected exactly one (the disk image)`);
    const entry = found[0] as ZipEntry;
    if (entry.method !== 0 && entry.method !== 8) throw bad(`${entry.name} in the zip uses compression method ${entry.method}; only stored (0) and deflate (8) are read`);
    const local = readAt(fd, entry.dataOffset, 30);
    if (local.length < 30 || local.readUInt32LE(0) !== LOCAL_SIG) throw bad('damaged zip archive (no local header where the central directory points)');
    entry.dataOffset += 30 + local.readUInt16LE(26) + local.readUInt16LE(28);
    if (entry.dataOffset + entry.compressedSize > size) throw bad('the zip archive is truncated');
    return entry;
  } finally {
    fs.closeSync(fd);
  }
}

/** The entry's content as a stream of chunks; its size and CRC-32 are checked at the end. */
export async function* zipEntryContent(file: string, entry: ZipEntry): AsyncGenerator<Buffer> {
  const raw = entry.compressedSize === 0
    ? null
    : fs.createReadStream(file, { start: entry.dataOffset, end: entry.dataOffset + entry.compressedSize - 1, highWaterMark: 1 << 20 });
  let source: Readable | null = raw;
  if (raw && entry.method === 8) {
    const inflate = createInflateRaw();
    raw.on('error', (e) => inflate.destroy(e));
    source = raw.pipe(inflate);
  }
  let crc = 0;
  let total = 0;
  try {
    if (source) {
      for await (const chunk of source) {
        const b = chunk as Buffer;
        crc = crc32(b, crc);
        total += b.length;
        yield b;
      }
    }
  } catch (e) {
    throw new Error(`${file}: ${entry.name} in the zip cannot be inflated (${(e as Error).message})`);
  } finally {
    source?.destroy();
    raw?.destroy();
  }
  if (total !== entry.size) throw new Error(`${file}: ${entry.name} in the zip gave ${total} bytes, its directory says ${entry.size}; the archive is damaged`);
  if (crc >>> 0 !== entry.crc32 >>> 0) throw new Error(`${file}: ${entry.name} in the zip fails its CRC-32; the archive is damaged`);
}
