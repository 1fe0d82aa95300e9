/**
 * tar-split: the engine's record of a layer tar's exact bytes (`tar-split.json.gz` in each
 * layerdb entry), which with the files of diff/ rebuilds the layer tar byte for byte.
 *
 * Format (vbatts/tar-split tar/storage/entry.go, tar/storage/packer.go): gzip of JSON lines,
 * one Entry per line, fields in this order, each line as Go's json.Encoder writes it:
 *   {"type":2,"payload":"<base64 raw tar bytes>","position":N}
 *   {"type":1,"name":"<tar name>","size":S,"payload":"<base64 CRC-64/ISO, 8 bytes>","position":N}
 * `name_raw` (base64) replaces `name` when the name is not valid UTF-8; `size` is left out
 * when 0 (omitempty) and `payload` is null for empty files. `position` counts every line
 * from 0. Disassembly (tar/asm/disassemble.go): before each file entry, one segment with the
 * raw bytes read since the previous entry (the previous content's padding, then every header
 * block including pax/GNU extension headers); at the end one segment with the last padding
 * and the end-of-archive blocks, then whatever follows in segments of at most 1 MiB (one per
 * read), then an empty segment (the read that returned EOF).
 * Assembly (tar/asm/assemble.go) writes segments verbatim and, for each file entry with a
 * size, the file's bytes, checking their CRC.
 */
import { createHash } from 'node:crypto';
import { createGzip, createGunzip } from 'node:zlib';
import { once } from 'node:events';
import type { Readable } from 'node:stream';
import { TarParser, type TarEntry } from '../tar/parse.js';
import { BLOCK } from '../tar/header.js';
import { nameFromBytes, nameToBytes } from '../layer/entry.js';
import { nativeCrc64 } from '../fsx/index.js';

// ---- CRC-64/ISO -----------------------------------------------------------------------

/**
 * Go's crc64.MakeTable(crc64.ISO): reflected polynomial 0xD800000000000000, here as
 * slicing-by-8 tables (T[k][i] = CRC of byte i followed by k zero bytes), each 64-bit
 * entry kept as two 32-bit halves (HI, LO) at index k * 256 + i.
 */
const [CRC_HI, CRC_LO] = (() => {
  const hi = new Int32Array(8 * 256);
  const lo = new Int32Array(8 * 256);
  const t0: bigint[] = [];
  for (let i = 0; i < 256; i++) {
    let crc = BigInt(i);
    for (let k = 0; k < 8; k++) crc = crc & 1n ? (crc >> 1n) ^ 0xd800000000000000n : crc >> 1n;
    t0.push(crc);
  }
  for (let i = 0; i < 256; i++) {
    let crc = t0[i];
    for (let k = 0; k < 8; k++) {
      hi[k * 256 + i] = Number(crc >> 32n) | 0;
      lo[k * 256 + i] = Number(crc & 0xffffffffn) | 0;
      crc = (crc >> 8n) ^ t0[Number(crc & 0xffn)];
    }
  }
  return [hi, lo];
})();

/**
 * Pieces from this size go to the native step (native/fsx.c; about 2x faster, 1.4 vs 0.6 GB/s
 * of CPU measured); smaller ones, or without the addon, the JavaScript below.
 */
const NATIVE_CRC_MIN = 4096;
/** undefined: not looked up yet; null: the addon is not available. */
let NATIVE_CRC: ((state: Buffer, data: Uint8Array) => void) | null | undefined;
const CRC_STATE = Buffer.alloc(8);

/** Streaming CRC-64/ISO as Go's hash/crc64 computes it; digest() is big-endian like hash.Sum. */
export class Crc64 {
  // The state is kept complemented (Go's update: crc = ^crc … return ^crc), as int32 halves.
  private hi = -1;
  private lo = -1;

  update(data: Uint8Array): this {
    if (data.length >= NATIVE_CRC_MIN) {
      NATIVE_CRC ??= nativeCrc64() ?? null;
      if (NATIVE_CRC) {
        CRC_STATE.writeInt32LE(this.lo, 0);
        CRC_STATE.writeInt32LE(this.hi, 4);
        NATIVE_CRC(CRC_STATE, data);
        this.lo = CRC_STATE.readInt32LE(0);
        this.hi = CRC_STATE.readInt32LE(4);
        return this;
      }
    }
    let hi = this.hi;
    let lo = this.lo;
    const H = CRC_HI;
    const L = CRC_LO;
    const n = data.length;
    let i = 0;
    for (; i + 8 <= n; i += 8) {
      const a = lo ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24));
      const b = hi ^ (data[i + 4] | (data[i + 5] << 8) | (data[i + 6] << 16) | (data[i + 7] << 24));
      const i7 = 1792 + (a & 0xff);
      const i6 = 1536 + ((a >>> 8) & 0xff);
      const i5 = 1280 + ((a >>> 16) & 0xff);
      const i4 = 1024 + (a >>> 24);
      const i3 = 768 + (b & 0xff);
      const i2 = 512 + ((b >>> 8) & 0xff);
      const i1 = 256 + ((b >>> 16) & 0xff);
      const i0 = b >>> 24;
      hi = H[i7] ^ H[i6] ^ H[i5] ^ H[i4] ^ H[i3] ^ H[i2] ^ H[i1] ^ H[i0];
      lo = L[i7] ^ L[i6] ^ L[i5] ^ L[i4] ^ L[i3] ^ L[i2] ^ L[i1] ^ L[i0];
    }
    for (; i < n; i++) {
      const idx = (lo ^ data[i]) & 0xff;
      lo = ((lo >>> 8) | (hi << 24)) ^ L[idx];
      hi = (hi >>> 8) ^ H[idx];
    }
    this.hi = hi;
    this.lo = lo;
    return this;
  }

  digest(): Buffer {
    const out = Buffer.allocUnsafe(8);
    out.writeUInt32BE(~this.hi >>> 0, 0);
    out.writeUInt32BE(~this.lo >>> 0, 4);
    return out;
  }
}

export function crc64(data: Uint8Array): Buffer {
  return new Crc64().update(data).digest();
}

// ---- entries and their JSON ------------------------------------------------------------

export const SEGMENT = 2;
export const FILE = 1;

export type TarSplitEntry =
  | { type: typeof SEGMENT; payload: Buffer; position: number }
  | {
      type: typeof FILE;
      /** The tar name as bytes (from `name` or `name_raw`). */
      name: Buffer;
      size: number;
      /** CRC-64/ISO of the content, or undefined (null in JSON) for empty entries. */
      crc?: Buffer;
      position: number;
    };

/** Go's encoding/json string escaping (encode.go: HTML-safe, \u2028/\u2029, \u00XX for other controls). */
function goJsonString(s: string): string {
  return JSON.stringify(s).replace(/[<>&\u2028\u2029\b\f]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

function isUtf8(b: Buffer): boolean {
  return Buffer.compare(Buffer.from(b.toString('utf8'), 'utf8'), b) === 0;
}

/** One JSON line exactly as tar-split's jsonPacker (json.Encoder) writes it, newline included. */
export function encodeEntryLine(e: TarSplitEntry): string {
  if (e.type === SEGMENT) return `{"type":2,"payload":"${e.payload.toString('base64')}","position":${e.position}}\n`;
  const name = isUtf8(e.name) ? `"name":${goJsonString(e.name.toString('utf8'))},` : `"name_raw":"${e.name.toString('base64')}",`;
  const size = e.size !== 0 ? `"size":${e.size},` : '';
  const payload = e.crc ? `"${e.crc.toString('base64')}"` : 'null';
  return `{"type":1,${name}${size}"payload":${payload},"position":${e.position}}\n`;
}

function parseEntryLine(line: string, lineNo: number, where: string): TarSplitEntry {
  let j: { type?: unknown; name?: unknown; name_raw?: unknown; size?: unknown; payload?: unknown; position?: unknown };
  try {
    j = JSON.parse(line) as typeof j;
  } catch {
    throw new Error(`${where}: line ${lineNo} of the tar-split is not JSON (corrupt tar-split.json.gz)`);
  }
  const bad = (what: string): never => {
    throw new Error(`${where}: line ${lineNo} of the tar-split has ${what} (corrupt tar-split.json.gz)`);
  };
  const position = typeof j.position === 'number' ? j.position : bad('no position');
  if (j.type === SEGMENT) {
    if (j.payload !== null && j.payload !== undefined && typeof j.payload !== 'string') bad('a malformed payload');
    return { type: SEGMENT, payload: Buffer.from(typeof j.payload === 'string' ? j.payload : '', 'base64'), position };
  }
  if (j.type === FILE) {
    let name: Buffer;
    if (typeof j.name === 'string' && j.name !== '') name = Buffer.from(j.name, 'utf8');
    else if (typeof j.name_raw === 'string') name = Buffer.from(j.name_raw, 'base64');
    else name = Buffer.alloc(0);
    const size = j.size === undefined ? 0 : typeof j.size === 'number' && Number.isSafeInteger(j.size) && j.size >= 0 ? j.size : bad('a malformed size');
    let crc: Buffer | undefined;
    if (typeof j.payload === 'string') crc = Buffer.from(j.payload, 'base64');
    else if (j.payload !== null && j.payload !== undefined) bad('a malformed payload');
    return { type: FILE, name, size, crc, position };
  }
  return bad(`unknown type ${JSON.stringify(j.type)}`);
}

// ---- reading ---------------------------------------------------------------------------

function asChunks(input: Buffer | AsyncIterable<Buffer>): AsyncIterable<Buffer> {
  if (!Buffer.isBuffer(input)) return input;
  return (async function* () {
    yield input;
  })();
}

/**
 * Entries and content bytes of the layer a tar-split describes, as countDiffTree counts its
 * diff/ (the root included; an opaque directory's `.wh..wh..opq` entry counts one more).
 */
export async function tarSplitCounts(input: Buffer): Promise<{ entries: number; bytes: number }> {
  let entries = 1;
  let bytes = 0;
  for await (const e of readTarSplit(input)) {
    if (e.type !== FILE) continue;
    entries++;
    bytes += e.size;
  }
  return { entries, bytes };
}

/** Streams the entries of a tar-split.json.gz (gzip or plain JSON lines). */
export async function* readTarSplit(input: Buffer | AsyncIterable<Buffer>, where = 'tar-split'): AsyncGenerator<TarSplitEntry> {
  const source = asChunks(input)[Symbol.asyncIterator]();
  const first = await source.next();
  if (first.done) throw new Error(`${where}: the tar-split is empty`);
  const head = first.value;
  const rest = async function* (): AsyncGenerator<Buffer> {
    yield head;
    for (;;) {
      const n = await source.next();
      if (n.done) return;
      yield n.value;
    }
  };
  let text: AsyncIterable<Buffer | string>;
  if (head[0] === 0x1f && head[1] === 0x8b) {
    const gunzip = createGunzip();
    void (async () => {
      try {
        for await (const c of rest()) if (!gunzip.write(c)) await new Promise((r) => gunzip.once('drain', r));
        gunzip.end();
      } catch (e) {
        gunzip.destroy(e as Error);
      }
    })();
    text = gunzip as Readable as AsyncIterable<Buffer>;
  } else {
    text = rest();
  }
  let pending = '';
  let lineNo = 0;
  let expected = 0;
  const check = (e: TarSplitEntry): TarSplitEntry => {
    if (e.position !== expected) throw new Error(`${where}: tar-split entry ${expected} says position ${e.position} (corrupt tar-split.json.gz)`);
    expected++;
    return e;
  };
  try {
    for await (const chunk of text) {
      pending += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        lineNo++;
        if (line.trim() === '') continue;
        yield check(parseEntryLine(line, lineNo, where));
      }
    }
  } catch (e) {
    const msg = (e as Error).message;
    if (msg.startsWith(where)) throw e;
    throw new Error(`${where}: cannot read the tar-split (${msg})`);
  }
  if (pending.trim() !== '') yield check(parseEntryLine(pending, lineNo + 1, where));
}

// ---- assembly --------------------------------------------------------------------------

/** Opens the content of one file entry by its tar name (as stored in the tar-split). */
export type FileOpener = (name: string, nameBytes: Buffer, size: number) => Promise<AsyncIterable<Buffer>> | AsyncIterable<Buffer>;

export class TarSplitFileError extends Error {
  constructor(
    message: string,
    readonly file: string,
  ) {
    super(message);
  }
}

/**
 * Rebuilds the layer tar from a tar-split and the layer's files (tar/asm/assemble.go), yielding
 * it chunk by chunk. Each file's size and CRC are checked; the first bad one throws a
 * TarSplitFileError naming it.
 */
export async function* assembleTar(tarSplit: Buffer | AsyncIterable<Buffer>, open: FileOpener, where = 'tar-split'): AsyncGenerator<Buffer> {
  for await (const e of readTarSplit(tarSplit, where)) {
    if (e.type === SEGMENT) {
      if (e.payload.length > 0) yield e.payload;
      continue;
    }
    if (e.size === 0) continue; // assemble.go: nothing to read for empty entries
    const name = nameFromBytes(e.name);
    const crc = new Crc64();
    let got = 0;
    let content: AsyncIterable<Buffer>;
    try {
      content = await open(name, e.name, e.size);
    } catch (err) {
      throw new TarSplitFileError(`${where}: ${name}: cannot be read (${(err as Error).message})`, name);
    }
    try {
      for await (const chunk of content) {
        got += chunk.length;
        if (got > e.size) break;
        crc.update(chunk);
        yield chunk;
      }
    } catch (err) {
      if (err instanceof TarSplitFileError) throw err;
      throw new TarSplitFileError(`${where}: ${name}: cannot be read (${(err as Error).message})`, name);
    }
    if (got !== e.size) {
      throw new TarSplitFileError(`${where}: ${name} holds ${got > e.size ? 'more than ' + e.size : got} bytes, the layer recorded ${e.size}`, name);
    }
    if (!e.crc || !crc.digest().equals(e.crc)) {
      throw new TarSplitFileError(`${where}: ${name} does not match the checksum the layer recorded (its content changed)`, name);
    }
  }
}

/** Rebuilds the tar and returns its DiffID (sha256 of the whole stream) and length. */
export async function assembledDigest(
  tarSplit: Buffer | AsyncIterable<Buffer>,
  open: FileOpener,
  where = 'tar-split',
): Promise<{ diffId: string; bytes: number }> {
  const h = createHash('sha256');
  let bytes = 0;
  for await (const chunk of assembleTar(tarSplit, open, where)) {
    h.update(chunk);
    bytes += chunk.length;
  }
  return { diffId: `sha256:${h.digest('hex')}`, bytes };
}

// ---- disassembly -----------------------------------------------------------------------

/**
 * The tar name exactly as Go's archive/tar (tar-split's copy of it) reports it, as bytes:
 * GNU long name over pax `path` over the ustar name with its prefix (reader.go next()); the
 * parser has worked it out already (TarHeader.name holds the bytes, src/layer/entry.ts).
 */
export function rawTarName(header: { name: string }): Buffer {
  return nameToBytes(header.name);
}

/** Collects tar-split lines into gzip as they are made (the whole tar is never held). */
export class TarSplitWriter {
  private readonly gzip = createGzip();
  private readonly out: Buffer[] = [];
  private position = 0;
  private readonly seen = new Set<string>();
  private done?: Promise<Buffer>;

  constructor(private readonly where = 'layer tar') {
    this.gzip.on('data', (c: Buffer) => this.out.push(c));
  }

  private pending = '';

  private add(line: string): void {
    // Lines are batched: one zlib write per 64 KiB instead of one per entry (each write is
    // a work item queued in the gzip stream until the thread pool gets to it).
    this.pending += line;
    if (this.pending.length >= 1 << 16) this.flushPending();
    this.position++;
  }

  private flushPending(): void {
    if (this.pending === '') return;
    this.gzip.write(this.pending);
    this.pending = '';
  }

  /** Resolves when the gzip stream has room again: the caller's loop waits for it, so queued lines do not pile up. */
  async ready(): Promise<void> {
    if (this.gzip.writableNeedDrain) await once(this.gzip, 'drain');
  }

  segment(payload: Buffer, evenEmpty = false): void {
    if (payload.length === 0 && !evenEmpty) return;
    this.add(encodeEntryLine({ type: SEGMENT, payload, position: this.position }));
  }

  file(name: Buffer, size: number, crc: Buffer | undefined): void {
    // packer.go: a second entry with the same cleaned path is refused (ErrDuplicatePath).
    const clean = cleanTarPath(name.toString('latin1'));
    if (this.seen.has(clean)) throw new Error(`${this.where}: duplicate entry ${JSON.stringify(nameFromBytes(name))} (the engine refuses such layers: tar-split ErrDuplicatePath)`);
    this.seen.add(clean);
    this.add(encodeEntryLine({ type: FILE, name, size, crc, position: this.position }));
  }

  /** Ends the stream and returns the gzip bytes. */
  finish(): Promise<Buffer> {
    this.done ??= new Promise<Buffer>((resolve, reject) => {
      this.gzip.once('end', () => resolve(Buffer.concat(this.out)));
      this.gzip.once('error', reject);
      this.flushPending();
      this.gzip.end();
      this.gzip.resume();
    });
    return this.done;
  }
}

/** Go's filepath.Clean for '/'-separated names (enough for duplicate detection). */
export function cleanTarPath(p: string): string {
  const abs = p.startsWith('/');
  const out: string[] = [];
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length > 0 && out[out.length - 1] !== '..') out.pop();
      else if (!abs) out.push('..');
      continue;
    }
    out.push(part);
  }
  const s = (abs ? '/' : '') + out.join('/');
  return s === '' ? '.' : s;
}

const PADDING_CHUNK = 1 << 20; // disassemble.go paddingChunkSize

export interface DisassembleResult {
  /** tar-split.json.gz bytes. */
  tarSplit: Buffer;
  /** sha256: of the whole input (the DiffID when the input is an uncompressed layer tar). */
  diffId: string;
  /** Length of the tar stream. */
  bytes: number;
}

/** Wraps a byte stream so that everything read through it is hashed and counted. */
export function hashing(input: AsyncIterable<Buffer>): { stream: AsyncIterable<Buffer>; result: () => { diffId: string; bytes: number } } {
  const h = createHash('sha256');
  let bytes = 0;
  return {
    stream: (async function* () {
      for await (const c of input) {
        const b = Buffer.isBuffer(c) ? c : Buffer.from(c as Uint8Array);
        h.update(b);
        bytes += b.length;
        yield b;
      }
    })(),
    result: () => ({ diffId: `sha256:${h.digest('hex')}`, bytes }),
  };
}

/**
 * Reads a layer tar to its end and produces its tar-split as tar-split's disassembler does
 * (tar/asm/disassemble.go), with the DiffID. `visit` sees every entry with its content
 * (read it or not; what is not read is still checksummed).
 */
export interface DisassembleOptions {
  /**
   * The engine read the layer through Go's gzip reader, whose last Read returns the final
   * bytes together with io.EOF (compress/flate decompressor.Read): then what follows the
   * end blocks ends the tar-split without the empty segment of a separate EOF read.
   */
  gzipped?: boolean;
}

export async function disassembleTar(
  input: AsyncIterable<Buffer>,
  where = 'layer tar',
  visit?: (entry: TarEntry, content: AsyncIterable<Buffer>) => Promise<void>,
  options: DisassembleOptions = {},
): Promise<DisassembleResult> {
  const hashed = hashing(input);
  const parser = new TarParser(hashed.stream, { globalHeaders: true });
  const w = new TarSplitWriter(where);
  try {
    for (;;) {
      let entry: TarEntry | undefined;
      try {
        entry = await parser.next();
      } catch (e) {
        throw new Error(`${where}: corrupt or truncated tar (${(e as Error).message})`);
      }
      if (!entry) break;
      // The raw bytes since the previous entry: its padding, then this entry's header blocks.
      w.segment(Buffer.concat([parser.lastPadding, entry.headerBytes]));
      const h = entry.header;
      const crc = h.size > 0 ? new Crc64() : undefined;
      const source = entry.content;
      const tapped = (async function* () {
        for await (const c of source) {
          crc?.update(c);
          yield c;
        }
      })();
      try {
        if (visit) await visit(entry, tapped);
        for await (const _ of tapped) {
          /* whatever the visitor left */
        }
      } catch (e) {
        const msg = (e as Error).message;
        throw msg.startsWith(where) ? e : new Error(`${where}: corrupt or truncated tar at ${h.name} (${msg})`);
      }
      w.file(rawTarName(h), h.size, crc?.digest());
      await w.ready();
    }
    // End of archive: the last padding and the zero blocks in one segment; then what follows,
    // one segment per read of at most 1 MiB, and the empty segment of the read that hit EOF
    // (disassemble.go adds every read's bytes, even none, until io.EOF).
    const trailer = parser.trailer;
    const endBlocks = Math.min(trailer.length, 2 * BLOCK);
    // Extension headers that applied to nothing (a lone pax header) are read with the end blocks.
    w.segment(Buffer.concat([parser.lastPadding, parser.endHeaders, trailer.subarray(0, endBlocks)]));
    for (let off = endBlocks; off < trailer.length; off += PADDING_CHUNK) w.segment(trailer.subarray(off, off + PADDING_CHUNK));
    if (!(options.gzipped && trailer.length > endBlocks)) w.segment(Buffer.alloc(0), true);
    const { diffId, bytes } = hashed.result();
    return { tarSplit: await w.finish(), diffId, bytes };
  } finally {
    await parser.close().catch(() => undefined);
  }
}
