/**
 * One file of a layer's `diff/` directory, with every attribute the engine's
 * overlay2 driver keeps (see ../../shared/docs/engine-on-disk.md, "What a diff
 * directory holds"). Sources yield these, targets write them, the bundle carries them.
 */

export type EntryKind =
  | 'file'
  | 'directory'
  | 'symlink'
  | 'hardlink'
  | 'char-device'
  | 'block-device'
  | 'fifo';

export interface Xattr {
  /** Full name with its namespace, e.g. `trusted.overlay.opaque`, `security.capability`. */
  name: string;
  value: Buffer;
}

export interface LayerEntry {
  /**
   * Path relative to the layer's `diff/` directory, '/'-separated, no leading './' or '/'.
   * The `diff/` directory itself is '.'. The name's bytes in the surrogateescape form (see
   * "names are bytes" below): get them with entryPathBytes, give fs fsName(path).
   */
  path: string;
  kind: EntryKind;
  /** Permission bits including setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Modification time in nanoseconds since the epoch. */
  mtime: bigint;
  /** Access time in nanoseconds since the epoch (defaults to mtime when a source lacks it). */
  atime: bigint;
  /** Content length of a regular file; 0 for every other kind. */
  size: number;
  /** symlink: the target exactly as stored. hardlink: the layer-relative path of an earlier entry. Bytes as for `path` (entryLinkTargetBytes). */
  linkTarget?: string;
  /** char-device / block-device numbers (whiteouts are char-device 0/0). */
  devMajor?: number;
  devMinor?: number;
  /** Extended attributes in the order read. */
  xattrs: Xattr[];
}

/** An entry and, for regular files, a stream of exactly `entry.size` bytes that must be consumed before the next entry. */
export interface LayerItem {
  entry: LayerEntry;
  content?: AsyncIterable<Buffer>;
}

/** Mode bits of a whiteout as the engine writes it (pkg/archive/archive_linux.go: mknod 0/0). */
export function isWhiteout(entry: LayerEntry): boolean {
  return entry.kind === 'char-device' && (entry.devMajor ?? 0) === 0 && (entry.devMinor ?? 0) === 0;
}

// ---- names are bytes -------------------------------------------------------------------
//
// Linux names (and symlink targets) are byte strings that need not be UTF-8. Every name in
// a LayerEntry (`path`, `linkTarget`) and in a TarHeader is a JavaScript string that holds
// those bytes losslessly, in the "surrogateescape" form (PEP 383): valid UTF-8 decodes as
// usual, and each byte of an invalid sequence becomes the lone surrogate U+DC80 + (byte -
// 0x80) (invalid bytes are always >= 0x80). So names stay strings (Map keys, '/' splitting,
// messages work unchanged), and a name that is valid UTF-8 is exactly the string it always
// was. The one rule for every writer: turn a name into bytes with `nameToBytes` (or
// `entryPathBytes`/`entryLinkTargetBytes`), never with Buffer.from(name) / 'utf8', and give
// Node's fs `fsName(name)`; read names from bytes with `nameFromBytes`.

const ESCAPED = /[\udc80-\udcff]/;

/** The bytes of a name as read (tar header, readdir, readlink, tar-split name_raw) → the name. */
export function nameFromBytes(bytes: Uint8Array): string {
  const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  const s = b.toString('utf8');
  if (!s.includes('\ufffd') && !ESCAPED.test(s)) return s;
  if (Buffer.from(s, 'utf8').equals(b) && !ESCAPED.test(s)) return s; // a genuine U+FFFD
  let out = '';
  let i = 0;
  while (i < b.length) {
    const c = b[i];
    let n = 0; // length of a valid sequence at i (RFC 3629: no overlongs, no surrogates, <= U+10FFFF)
    if (c < 0x80) n = 1;
    else if (c >= 0xc2 && c <= 0xdf) n = cont(b, i + 1) ? 2 : 0;
    else if (c >= 0xe0 && c <= 0xef) {
      const c1 = b[i + 1];
      const ok1 = c === 0xe0 ? c1 >= 0xa0 && c1 <= 0xbf : c === 0xed ? c1 >= 0x80 && c1 <= 0x9f : cont(b, i + 1);
      n = ok1 && cont(b, i + 2) ? 3 : 0;
    } else if (c >= 0xf0 && c <= 0xf4) {
      const c1 = b[i + 1];
      const ok1 = c === 0xf0 ? c1 >= 0x90 && c1 <= 0xbf : c === 0xf4 ? c1 >= 0x80 && c1 <= 0x8f : cont(b, i + 1);
      n = ok1 && cont(b, i + 2) && cont(b, i + 3) ? 4 : 0;
    }
    if (n === 0) {
      out += String.fromCharCode(0xdc00 + c);
      i++;
    } else {
      out += b.toString('utf8', i, i + n);
      i += n;
    }
  }
  return out;
}

function cont(b: Buffer, i: number): boolean {
  return i < b.length && b[i] >= 0x80 && b[i] <= 0xbf;
}

/** A name → its bytes (the inverse of nameFromBytes). */
export function nameToBytes(name: string): Buffer {
  if (!ESCAPED.test(name)) return Buffer.from(name, 'utf8');
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < name.length; i++) {
    const u = name.charCodeAt(i);
    if (u >= 0xdc80 && u <= 0xdcff && !(i > 0 && isHighSurrogate(name.charCodeAt(i - 1)))) {
      if (i > start) parts.push(Buffer.from(name.slice(start, i), 'utf8'));
      parts.push(Buffer.of(u - 0xdc00));
      start = i + 1;
    }
  }
  if (start < name.length) parts.push(Buffer.from(name.slice(start), 'utf8'));
  return Buffer.concat(parts);
}

function isHighSurrogate(u: number): boolean {
  return u >= 0xd800 && u <= 0xdbff;
}

/** True when a name is not valid UTF-8 (it holds escaped bytes). */
export function nameIsRaw(name: string): boolean {
  return ESCAPED.test(name) && nameToBytes(name).toString('utf8') !== name;
}

/** A name as Node's fs takes it: the string when it is UTF-8, else its bytes. */
export function fsName(name: string): string | Buffer {
  return ESCAPED.test(name) ? nameToBytes(name) : name;
}

/** The bytes of an entry's path. */
export function entryPathBytes(entry: Pick<LayerEntry, 'path'>): Buffer {
  return nameToBytes(entry.path);
}

/** The bytes of a symlink's target or a hard link's layer path (empty when there is none). */
export function entryLinkTargetBytes(entry: Pick<LayerEntry, 'linkTarget'>): Buffer {
  return nameToBytes(entry.linkTarget ?? '');
}
