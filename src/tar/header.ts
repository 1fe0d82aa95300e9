/**
 * POSIX ustar headers with pax extended records (and GNU long names / base-256 numbers
 * on read), the form GNU tar, Go's archive/tar (the engine's) and our bundle use.
 * References: POSIX.1-2001 pax, GNU tar manual "Basic Tar Format", Go src/archive/tar/format.go.
 */
import type { Xattr } from '../layer/entry.js';

export const BLOCK = 512;

export type TarType =
  | 'file' // '0' or '\0'
  | 'hardlink' // '1'
  | 'symlink' // '2'
  | 'char-device' // '3'
  | 'block-device' // '4'
  | 'directory' // '5'
  | 'fifo' // '6'
  | 'contiguous' // '7', read as a file
  | 'pax' // 'x'
  | 'pax-global' // 'g'
  | 'gnu-longname' // 'L'
  | 'gnu-longlink'; // 'K'

const TYPE_FLAGS: Record<string, TarType> = {
  '0': 'file',
  '\0': 'file',
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'char-device',
  '4': 'block-device',
  '5': 'directory',
  '6': 'fifo',
  '7': 'contiguous',
  x: 'pax',
  g: 'pax-global',
  L: 'gnu-longname',
  K: 'gnu-longlink',
};
const FLAG_OF: Record<TarType, string> = {
  file: '0',
  hardlink: '1',
  symlink: '2',
  'char-device': '3',
  'block-device': '4',
  directory: '5',
  fifo: '6',
  contiguous: '7',
  pax: 'x',
  'pax-global': 'g',
  'gnu-longname': 'L',
  'gnu-longlink': 'K',
};

export interface TarHeader {
  name: string;
  type: TarType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** ns since epoch */
  mtime: bigint;
  atime?: bigint;
  ctime?: bigint;
  linkname: string;
  uname: string;
  gname: string;
  devmajor: number;
  devminor: number;
  xattrs: Xattr[];
  /** Every pax record that applied to this entry, raw (keys as written). */
  pax: Map<string, Buffer>;
}

export function emptyHeader(): TarHeader {
  return {
    name: '',
    type: 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: 0,
    mtime: 0n,
    linkname: '',
    uname: '',
    gname: '',
    devmajor: 0,
    devminor: 0,
    xattrs: [],
    pax: new Map(),
  };
}

// ---- field codecs --------------------------------------------------------------------

function readString(block: Buffer, offset: number, length: number): string {
  let end = block.indexOf(0, offset);
  if (end < 0 || end > offset + length) end = offset + length;
  return block.toString('utf8', offset, end);
}

/** Octal, space/NUL terminated; or GNU base-256 when the high bit of the first byte is set. */
function readNumber(block: Buffer, offset: number, length: number): number {
  const first = block[offset];
  if (first & 0x80) {
    let value = BigInt(first & 0x3f);
    const negative = (first & 0x40) !== 0;
    for (let i = 1; i < length; i++) value = (value << 8n) | BigInt(block[offset + i]);
    if (negative) throw new Error('negative base-256 number in tar header');
    return Number(value);
  }
  const text = block.toString('latin1', offset, offset + length).replace(/[\0 ]+$/g, '').replace(/^[ ]+/, '');
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw new Error(`invalid octal number ${JSON.stringify(text)} in tar header`);
  return parseInt(text, 8);
}

function writeString(block: Buffer, offset: number, length: number, value: string): void {
  const bytes = Buffer.from(value, 'utf8');
  bytes.copy(block, offset, 0, Math.min(length, bytes.length));
}

function writeOctal(block: Buffer, offset: number, length: number, value: number): void {
  // length-1 digits then NUL, as Go and GNU tar write them.
  const text = value.toString(8).padStart(length - 1, '0');
  block.write(text, offset, length - 1, 'latin1');
  block[offset + length - 1] = 0;
}

function fitsOctal(value: number, length: number): boolean {
  return value >= 0 && value < 8 ** (length - 1);
}

function checksum(block: Buffer): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i];
  return sum;
}

export function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false;
  return true;
}

// ---- ns times --------------------------------------------------------------------------

/** "1500000000.987654321" (pax time) → ns */
export function parsePaxTime(text: string): bigint {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text.trim());
  if (!m) throw new Error(`invalid pax time ${JSON.stringify(text)}`);
  const frac = (m[3] ?? '').slice(0, 9).padEnd(9, '0');
  const ns = BigInt(m[2]) * 1_000_000_000n + BigInt(frac);
  return m[1] === '-' ? -ns : ns;
}

export function formatPaxTime(ns: bigint): string {
  const negative = ns < 0n;
  const abs = negative ? -ns : ns;
  const sec = abs / 1_000_000_000n;
  const frac = abs % 1_000_000_000n;
  const text = frac === 0n ? `${sec}` : `${sec}.${frac.toString().padStart(9, '0').replace(/0+$/, '')}`;
  return negative ? `-${text}` : text;
}

// ---- decoding ----------------------------------------------------------------------------

export interface RawHeader {
  name: string;
  type: TarType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeSeconds: number;
  linkname: string;
  uname: string;
  gname: string;
  devmajor: number;
  devminor: number;
}

export function decodeBlock(block: Buffer): RawHeader {
  const stored = readNumber(block, 148, 8);
  if (stored !== checksum(block)) throw new Error('tar header checksum mismatch (not a tar archive, or corrupt)');
  const flag = String.fromCharCode(block[156]);
  const type = TYPE_FLAGS[flag];
  if (!type) throw new Error(`unsupported tar entry type ${JSON.stringify(flag)}`);
  const magic = block.toString('latin1', 257, 263);
  let name = readString(block, 0, 100);
  if (magic === 'ustar\0') {
    const prefix = readString(block, 345, 155);
    if (prefix) name = `${prefix}/${name}`;
  }
  return {
    name,
    type,
    mode: readNumber(block, 100, 8),
    uid: readNumber(block, 108, 8),
    gid: readNumber(block, 116, 8),
    size: readNumber(block, 124, 12),
    mtimeSeconds: readNumber(block, 136, 12),
    linkname: readString(block, 157, 100),
    uname: readString(block, 265, 32),
    gname: readString(block, 297, 32),
    devmajor: readNumber(block, 329, 8),
    devminor: readNumber(block, 337, 8),
  };
}

/** Parses pax records "LEN key=value\n"; values are kept as bytes (xattr values are binary). */
export function parsePaxRecords(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let pos = 0;
  while (pos < data.length) {
    if (data[pos] === 0) break; // some writers pad with NULs
    const space = data.indexOf(0x20, pos);
    if (space < 0) throw new Error('malformed pax record');
    const len = parseInt(data.toString('latin1', pos, space), 10);
    if (!Number.isSafeInteger(len) || len <= space - pos + 1 || pos + len > data.length) throw new Error('malformed pax record length');
    const record = data.subarray(space + 1, pos + len);
    if (record[record.length - 1] !== 0x0a) throw new Error('pax record not terminated by newline');
    const eq = record.indexOf(0x3d);
    if (eq < 0) throw new Error('pax record without "="');
    out.set(record.toString('utf8', 0, eq), Buffer.from(record.subarray(eq + 1, record.length - 1)));
    pos += len;
  }
  return out;
}

const XATTR_PREFIX = 'SCHILY.xattr.';

/** Applies pax records (global first, then local) on a decoded ustar block. */
export function applyPax(raw: RawHeader, pax: Map<string, Buffer>, longName?: string, longLink?: string): TarHeader {
  const h: TarHeader = {
    name: longName ?? raw.name,
    type: raw.type === 'contiguous' ? 'file' : raw.type,
    mode: raw.mode & 0o7777,
    uid: raw.uid,
    gid: raw.gid,
    size: raw.size,
    mtime: BigInt(raw.mtimeSeconds) * 1_000_000_000n,
    linkname: longLink ?? raw.linkname,
    uname: raw.uname,
    gname: raw.gname,
    devmajor: raw.devmajor,
    devminor: raw.devminor,
    xattrs: [],
    pax,
  };
  for (const [key, value] of pax) {
    const text = (): string => value.toString('utf8');
    switch (key) {
      case 'path':
        h.name = text();
        break;
      case 'linkpath':
        h.linkname = text();
        break;
      case 'size':
        h.size = Number(text());
        break;
      case 'uid':
        h.uid = Number(text());
        break;
      case 'gid':
        h.gid = Number(text());
        break;
      case 'uname':
        h.uname = text();
        break;
      case 'gname':
        h.gname = text();
        break;
      case 'mtime':
        h.mtime = parsePaxTime(text());
        break;
      case 'atime':
        h.atime = parsePaxTime(text());
        break;
      case 'ctime':
        h.ctime = parsePaxTime(text());
        break;
      default:
        if (key.startsWith(XATTR_PREFIX)) h.xattrs.push({ name: key.slice(XATTR_PREFIX.length), value });
    }
  }
  for (const n of ['size', 'uid', 'gid'] as const) {
    if (!Number.isSafeInteger(h[n]) || h[n] < 0) throw new Error(`invalid ${n} in tar header of ${h.name}`);
  }
  return h;
}

// ---- encoding ----------------------------------------------------------------------------

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len), 'latin1'), body]);
}

function isPortable(text: string, max: number): boolean {
  // eslint-disable-next-line no-control-regex
  return Buffer.byteLength(text) <= max && /^[\x20-\x7e]*$/.test(text);
}

function padTo(data: Buffer): Buffer {
  const rem = data.length % BLOCK;
  return rem === 0 ? data : Buffer.concat([data, Buffer.alloc(BLOCK - rem)]);
}

function ustarBlock(h: TarHeader, name: string, linkname: string, size: number, flag: string): Buffer {
  const block = Buffer.alloc(BLOCK);
  writeString(block, 0, 100, name);
  writeOctal(block, 100, 8, h.mode & 0o7777);
  writeOctal(block, 108, 8, fitsOctal(h.uid, 8) ? h.uid : 0);
  writeOctal(block, 116, 8, fitsOctal(h.gid, 8) ? h.gid : 0);
  writeOctal(block, 124, 12, fitsOctal(size, 12) ? size : 0);
  const sec = h.mtime / 1_000_000_000n - (h.mtime < 0n && h.mtime % 1_000_000_000n !== 0n ? 1n : 0n);
  writeOctal(block, 136, 12, sec >= 0n && fitsOctal(Number(sec), 12) ? Number(sec) : 0);
  block.write(flag, 156, 1, 'latin1');
  writeString(block, 157, 100, linkname);
  block.write('ustar\0', 257, 6, 'latin1');
  block.write('00', 263, 2, 'latin1');
  writeString(block, 265, 32, h.uname);
  writeString(block, 297, 32, h.gname);
  writeOctal(block, 329, 8, h.devmajor);
  writeOctal(block, 337, 8, h.devminor);
  writeOctal(block, 148, 7, checksum(block));
  block[155] = 0x20;
  return block;
}

/**
 * Encodes the header blocks of one entry: a pax extended header when anything does not
 * fit ustar exactly (long or non-ASCII names, ns times, large ids/sizes, xattrs), then
 * the ustar block. Content and its padding are written by the caller.
 */
export function encodeHeader(h: TarHeader): Buffer {
  const records: Buffer[] = [];
  let name = h.name;
  let linkname = h.linkname;
  if (!isPortable(h.name, 100)) {
    records.push(paxRecord('path', Buffer.from(h.name, 'utf8')));
    name = Buffer.from(h.name, 'utf8').subarray(0, 100).toString('latin1').replace(/[^\x20-\x7e]/g, '_');
  }
  if (!isPortable(h.linkname, 100)) {
    records.push(paxRecord('linkpath', Buffer.from(h.linkname, 'utf8')));
    linkname = '';
  }
  if (h.mtime % 1_000_000_000n !== 0n || h.mtime < 0n || h.mtime >= 8n ** 11n * 1_000_000_000n) {
    records.push(paxRecord('mtime', Buffer.from(formatPaxTime(h.mtime))));
  }
  if (h.atime !== undefined) records.push(paxRecord('atime', Buffer.from(formatPaxTime(h.atime))));
  if (!fitsOctal(h.uid, 8)) records.push(paxRecord('uid', Buffer.from(String(h.uid))));
  if (!fitsOctal(h.gid, 8)) records.push(paxRecord('gid', Buffer.from(String(h.gid))));
  if (!fitsOctal(h.size, 12)) records.push(paxRecord('size', Buffer.from(String(h.size))));
  if (!isPortable(h.uname, 32)) records.push(paxRecord('uname', Buffer.from(h.uname)));
  if (!isPortable(h.gname, 32)) records.push(paxRecord('gname', Buffer.from(h.gname)));
  for (const x of h.xattrs) records.push(paxRecord(XATTR_PREFIX + x.name, x.value));
  const entry = ustarBlock(h, name, linkname, h.size, FLAG_OF[h.type]);
  if (records.length === 0) return entry;
  const data = Buffer.concat(records);
  const paxHeader: TarHeader = { ...emptyHeader(), mode: 0o644, mtime: 0n, size: data.length };
  const paxName = `PaxHeaders/${name}`.slice(0, 100);
  return Buffer.concat([ustarBlock(paxHeader, paxName, '', data.length, 'x'), padTo(data), entry]);
}

export function paddingFor(size: number): number {
  const rem = size % BLOCK;
  return rem === 0 ? 0 : BLOCK - rem;
}
