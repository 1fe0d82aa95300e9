/**
 * POSIX ustar headers with pax extended records (and GNU long names / base-256 numbers
 * on read), the form GNU tar, Go's archive/tar (the engine's) and our bundle use.
 * References: POSIX.1-2001 pax, GNU tar manual "Basic Tar Format", Go src/archive/tar/format.go.
 */
import { nameFromBytes, nameToBytes, type Xattr } from '../layer/entry.js';

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

// ---- field codecs (Go src/archive/tar/strconv.go) --------------------------------------

/** A NUL-terminated field's bytes (Go parser.parseString: up to the first NUL). */
function cstr(block: Buffer, offset: number, length: number): Buffer {
  const f = block.subarray(offset, offset + length);
  const nul = f.indexOf(0);
  return nul >= 0 ? f.subarray(0, nul) : f;
}

function readString(block: Buffer, offset: number, length: number): string {
  return nameFromBytes(cstr(block, offset, length));
}

/** Collects the first number that does not parse, like Go's `parser.err`. */
class NumberParser {
  bad?: string;

  /** Go parseNumeric: base-256 (two's complement) when the high bit is set, else octal. */
  numeric(block: Buffer, offset: number, length: number): bigint {
    const b = block.subarray(offset, offset + length);
    if (b.length > 0 && b[0] & 0x80) {
      const inv = b[0] & 0x40 ? 0xff : 0;
      let x = 0n;
      for (let i = 0; i < b.length; i++) {
        let c = b[i] ^ inv;
        if (i === 0) c &= 0x7f;
        if (x >> 56n > 0n) return this.fail('base-256 number out of range');
        x = (x << 8n) | BigInt(c);
      }
      if (x >> 63n > 0n) return this.fail('base-256 number out of range');
      return inv ? -x - 1n : x;
    }
    return this.octal(b);
  }

  /** Go parseOctal: leading/trailing spaces and NULs trimmed, then up to the first NUL. */
  octal(field: Buffer): bigint {
    let a = 0;
    let z = field.length;
    while (a < z && (field[a] === 0x20 || field[a] === 0)) a++;
    while (z > a && (field[z - 1] === 0x20 || field[z - 1] === 0)) z--;
    if (a === z) return 0n;
    const text = cstr(field, a, z - a).toString('latin1');
    if (!/^[0-7]+$/.test(text) || text.length > 22 || BigInt('0o' + text) >> 64n > 0n) return this.fail(`invalid octal number ${JSON.stringify(text)}`);
    return BigInt('0o' + text);
  }

  private fail(why: string): bigint {
    this.bad ??= why;
    return 0n;
  }
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

/** The checksum with bytes taken as signed, which Go also accepts (format.go computeChecksum). */
function signedChecksum(block: Buffer): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (block[i] << 24) >> 24;
  return sum;
}

export function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false;
  return true;
}

// ---- ns times --------------------------------------------------------------------------

/** "1500000000.987654321" (pax time) → ns */
export function parsePaxTime(text: string): bigint {
  // Go reader.go parsePAXTime: signed seconds, then optional '.' and digits (truncated to ns).
  const m = /^([+-]?)(\d+)(?:\.(\d*))?$/.exec(text);
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

// ---- decoding (Go src/archive/tar/reader.go readHeader, format.go getFormat) ------------

/** The header forms Go's reader tells apart (format.go): they differ in where prefix and times are. */
export type TarFormat = 'v7' | 'ustar' | 'star' | 'gnu';

export interface RawHeader {
  name: string;
  type: TarType;
  /** The typeflag was NUL (Go TypeRegA: a directory when the name ends in '/'). */
  typeflagNul: boolean;
  format: TarFormat;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeSeconds: bigint;
  /** From the old GNU and star header fields (whole seconds), when they hold one. */
  atimeSeconds?: bigint;
  linkname: string;
  uname: string;
  gname: string;
  devmajor: number;
  devminor: number;
}

/** Typeflags the engine cannot store, named for the error (moby pkg/archive createTarFile: "unhandled tar header type"). */
const FOREIGN_TYPES: Record<string, string> = {
  S: 'an old GNU sparse file',
  V: 'a GNU volume label',
  M: 'a GNU multi-volume continuation',
  D: 'a GNU dump directory',
  N: 'a GNU old long name',
};

function isAscii(b: Buffer): boolean {
  for (const c of b) if (c >= 0x80 || c === 0) return false;
  return true;
}

function safeNumber(v: bigint, what: string): number {
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${what} ${v} out of range in tar header`);
  return Number(v);
}

/**
 * Decodes one header block as Go's archive/tar does (the engine's reader): the checksum
 * (unsigned or signed sum), the format from magic/version/trailer, then the fields each
 * format has: v7 has no owner names, devices or prefix; ustar/pax a 155-byte prefix; star
 * a 131-byte prefix and atime/ctime; old GNU atime/ctime where ustar keeps the prefix,
 * read as a prefix only when they are not numbers and are ASCII (files of Go < 1.8).
 */
export function decodeBlock(block: Buffer): RawHeader {
  const p = new NumberParser();
  const stored = p.octal(block.subarray(148, 156));
  if (p.bad !== undefined || (Number(stored) !== checksum(block) && Number(stored) !== signedChecksum(block))) {
    throw new Error('tar header checksum mismatch (not a tar archive, or corrupt)');
  }
  const magic = block.toString('latin1', 257, 263);
  const version = block.toString('latin1', 263, 265);
  const format: TarFormat =
    magic === 'ustar\0' && block.toString('latin1', 508, 512) === 'tar\0' ? 'star' : magic === 'ustar\0' ? 'ustar' : magic === 'ustar ' && version === ' \0' ? 'gnu' : 'v7';
  const flag = String.fromCharCode(block[156]);
  const type = TYPE_FLAGS[flag];
  if (!type) {
    const what = FOREIGN_TYPES[flag] ?? `type ${JSON.stringify(flag)}`;
    throw new Error(`unsupported tar entry: ${what} (the engine refuses it: unhandled tar header type ${block[156]})`);
  }
  const nameBytes = cstr(block, 0, 100);
  const size = p.numeric(block, 124, 12);
  const mode = p.numeric(block, 100, 8);
  const uid = p.numeric(block, 108, 8);
  const gid = p.numeric(block, 116, 8);
  const mtime = p.numeric(block, 136, 12);
  let uname = '';
  let gname = '';
  let devmajor = 0n;
  let devminor = 0n;
  let prefix: Buffer = Buffer.alloc(0);
  let atimeSeconds: bigint | undefined;
  if (format !== 'v7') {
    uname = readString(block, 265, 32);
    gname = readString(block, 297, 32);
    devmajor = p.numeric(block, 329, 8);
    devminor = p.numeric(block, 337, 8);
    if (format === 'ustar') prefix = cstr(block, 345, 155);
    else if (format === 'star') {
      prefix = cstr(block, 345, 131);
      atimeSeconds = p.numeric(block, 476, 12);
      p.numeric(block, 488, 12); // ctime: parsed (and must parse), not kept
    } else {
      const p2 = new NumberParser();
      if (block[345] !== 0) atimeSeconds = p2.numeric(block, 345, 12);
      if (block[357] !== 0) p2.numeric(block, 357, 12);
      if (p2.bad !== undefined) {
        atimeSeconds = undefined;
        const s = cstr(block, 345, 155);
        if (isAscii(s)) prefix = s;
      }
    }
  }
  if (p.bad !== undefined) throw new Error(`${p.bad} in the tar header of ${JSON.stringify(nameFromBytes(nameBytes))}`);
  const name = prefix.length > 0 ? nameFromBytes(Buffer.concat([prefix, Buffer.from('/'), nameBytes])) : nameFromBytes(nameBytes);
  const headerOnly = ['hardlink', 'symlink', 'char-device', 'block-device', 'directory', 'fifo'].includes(type);
  if (size < 0n && !headerOnly) throw new Error(`negative size in the tar header of ${JSON.stringify(name)}`);
  return {
    name,
    type,
    typeflagNul: flag === '\0',
    format,
    mode: Number(BigInt.asUintN(32, mode)),
    uid: safeNumber(uid, 'uid'),
    gid: safeNumber(gid, 'gid'),
    size: size < 0n ? 0 : safeNumber(size, 'size'),
    mtimeSeconds: mtime,
    atimeSeconds,
    linkname: readString(block, 157, 100),
    uname,
    gname,
    devmajor: safeNumber(devmajor, 'device major'),
    devminor: safeNumber(devminor, 'device minor'),
  };
}

/**
 * Parses pax records "LEN key=value\n" as Go's parsePAXRecord does (strconv.go): anything
 * else, NUL padding included, is a malformed header. Values are kept as bytes (xattr values
 * are binary). The GNU sparse 0.0 offset/numbytes pairs are joined into GNU.sparse.map.
 */
export function parsePaxRecords(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const sparse: string[] = [];
  let pos = 0;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space < 0) throw new Error('malformed pax record');
    const lenText = data.toString('latin1', pos, space);
    const len = /^[+-]?\d+$/.test(lenText) ? Number(lenText) : NaN;
    if (!Number.isSafeInteger(len) || len < 5 || pos + len > data.length || len <= space - pos + 1) throw new Error('malformed pax record length');
    const record = data.subarray(space + 1, pos + len);
    if (record[record.length - 1] !== 0x0a) throw new Error('pax record not terminated by newline');
    const eq = record.indexOf(0x3d);
    if (eq <= 0) throw new Error('pax record without a key');
    const key = nameFromBytes(record.subarray(0, eq));
    const value = Buffer.from(record.subarray(eq + 1, record.length - 1));
    const nulInValue = ['path', 'linkpath', 'uname', 'gname'].includes(key);
    if ((nulInValue ? value : record.subarray(0, eq)).includes(0)) throw new Error(`pax record ${key} holds a NUL byte`);
    if (key === 'GNU.sparse.offset' || key === 'GNU.sparse.numbytes') {
      if ((sparse.length % 2 === 0) !== (key === 'GNU.sparse.offset') || value.includes(0x2c)) throw new Error('malformed GNU sparse pax records');
      sparse.push(value.toString('latin1'));
    } else out.set(key, value);
    pos += len;
  }
  if (sparse.length > 0) out.set('GNU.sparse.map', Buffer.from(sparse.join(','), 'latin1'));
  return out;
}

/**
 * True when pax records make a GNU sparse file (Go reader.go readGNUSparsePAXHeaders: format
 * 0.0, 0.1 or 1.0). The engine expands such a file, and its tar-split cannot give the tar back.
 */
export function isGnuSparse(pax: Map<string, Buffer>): boolean {
  const major = pax.get('GNU.sparse.major')?.toString('latin1') ?? '';
  const minor = pax.get('GNU.sparse.minor')?.toString('latin1') ?? '';
  if (major === '0' && (minor === '0' || minor === '1')) return true;
  if (major === '1' && minor === '0') return true;
  if (major !== '' || minor !== '') return false;
  return (pax.get('GNU.sparse.map')?.length ?? 0) > 0;
}

const XATTR_PREFIX = 'SCHILY.xattr.';

function paxInteger(value: Buffer, key: string): number {
  const text = value.toString('latin1');
  if (!/^[+-]?\d+$/.test(text)) throw new Error(`invalid pax ${key} ${JSON.stringify(text)}`);
  return Number(text);
}

/**
 * Applies a decoded block's extensions as Go does (reader.go next, mergePAX): pax records
 * (an empty value keeps the block's own), then a GNU long name/link over them; a '\0'
 * typeflag with a name ending in '/' is a directory.
 */
export function applyPax(raw: RawHeader, pax: Map<string, Buffer>, longName?: string, longLink?: string): TarHeader {
  const h: TarHeader = {
    name: raw.name,
    type: raw.type,
    mode: raw.mode & 0o7777,
    uid: raw.uid,
    gid: raw.gid,
    size: raw.size,
    mtime: raw.mtimeSeconds * 1_000_000_000n,
    linkname: raw.linkname,
    uname: raw.uname,
    gname: raw.gname,
    devmajor: raw.devmajor,
    devminor: raw.devminor,
    xattrs: [],
    pax,
  };
  if (raw.atimeSeconds !== undefined) h.atime = raw.atimeSeconds * 1_000_000_000n;
  for (const [key, value] of pax) {
    if (value.length === 0) continue;
    switch (key) {
      case 'path':
        h.name = nameFromBytes(value);
        break;
      case 'linkpath':
        h.linkname = nameFromBytes(value);
        break;
      case 'size':
        h.size = paxInteger(value, key);
        break;
      case 'uid':
        h.uid = paxInteger(value, key);
        break;
      case 'gid':
        h.gid = paxInteger(value, key);
        break;
      case 'uname':
        h.uname = nameFromBytes(value);
        break;
      case 'gname':
        h.gname = nameFromBytes(value);
        break;
      case 'mtime':
        h.mtime = parsePaxTime(value.toString('latin1'));
        break;
      case 'atime':
        h.atime = parsePaxTime(value.toString('latin1'));
        break;
      case 'ctime':
        h.ctime = parsePaxTime(value.toString('latin1'));
        break;
      default:
        if (key.startsWith(XATTR_PREFIX)) h.xattrs.push({ name: key.slice(XATTR_PREFIX.length), value });
    }
  }
  if (longName) h.name = longName;
  if (longLink) h.linkname = longLink;
  if (raw.type === 'file' && h.name.endsWith('/') && raw.typeflagNul) h.type = 'directory';
  for (const n of ['size', 'uid', 'gid'] as const) {
    if (!Number.isSafeInteger(h[n]) || h[n] < 0) throw new Error(`invalid ${n} in tar header of ${h.name}`);
  }
  return h;
}

// ---- encoding ----------------------------------------------------------------------------

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(' '), nameToBytes(key), Buffer.from('='), value, Buffer.from('\n')]);
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
    const bytes = nameToBytes(h.name);
    records.push(paxRecord('path', bytes));
    name = bytes.subarray(0, 100).toString('latin1').replace(/[^\x20-\x7e]/g, '_');
  }
  if (!isPortable(h.linkname, 100)) {
    records.push(paxRecord('linkpath', nameToBytes(h.linkname)));
    linkname = '';
  }
  if (h.mtime % 1_000_000_000n !== 0n || h.mtime < 0n || h.mtime >= 8n ** 11n * 1_000_000_000n) {
    records.push(paxRecord('mtime', Buffer.from(formatPaxTime(h.mtime))));
  }
  if (h.atime !== undefined) records.push(paxRecord('atime', Buffer.from(formatPaxTime(h.atime))));
  if (!fitsOctal(h.uid, 8)) records.push(paxRecord('uid', Buffer.from(String(h.uid))));
  if (!fitsOctal(h.gid, 8)) records.push(paxRecord('gid', Buffer.from(String(h.gid))));
  if (!fitsOctal(h.size, 12)) records.push(paxRecord('size', Buffer.from(String(h.size))));
  if (!isPortable(h.uname, 32)) records.push(paxRecord('uname', nameToBytes(h.uname)));
  if (!isPortable(h.gname, 32)) records.push(paxRecord('gname', nameToBytes(h.gname)));
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
