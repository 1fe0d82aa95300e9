/**
 * A streaming tar reader. Each entry's content must be consumed (or is skipped) before the
 * next entry is read; memory stays bounded by one chunk. Raw header bytes and padding are
 * kept so that tar-split records can be generated from the exact original bytes.
 */
import { ByteReader } from '../stream/byte-reader.js';
import { BLOCK, TarHeader, applyPax, decodeBlock, isGnuSparse, isZeroBlock, paddingFor, parsePaxRecords } from './header.js';
import { nameFromBytes } from '../layer/entry.js';

export interface TarEntry {
  header: TarHeader;
  /** The exact bytes of this entry's header blocks (pax/GNU extension headers included). */
  headerBytes: Buffer;
  /** Bytes between the end of the previous entry's content and this entry's headers (the previous padding). */
  content: AsyncIterable<Buffer>;
}

export interface TarParseResult {
  /** Everything after the last entry (end-of-archive zero blocks and any extra bytes). */
  trailer: Buffer;
}

/**
 * The largest pax or GNU long-name payload: Go's archive/tar refuses larger ones
 * (reader.go readSpecialFile, maxSpecialFileSize = 1 MiB), and so does the engine.
 */
export const MAX_SPECIAL_FILE = 1 << 20;
/**
 * The most header bytes (extension headers and their blocks) before one entry. Go keeps only
 * the last pax header of a run, but tar-split's reader (the engine's tar-split) keeps all of
 * their raw bytes in memory; ours keeps them too (for the tar-split), so a run is capped.
 */
export const MAX_HEADER_RUN = 8 << 20;
/** The most bytes kept after the end-of-archive blocks (read into the tar-split). */
export const MAX_TRAILER = 64 << 20;

export class TarParser {
  private readonly reader: ByteReader;
  private pendingSkip = 0;
  private pendingPadding = 0;
  /** Padding bytes consumed after the previous entry's content (for tar-split). */
  lastPadding: Buffer = Buffer.alloc(0);
  /**
   * At the end: extension headers read after the last entry that applied to nothing (a
   * layer that is a lone pax header: Go's reader reports the end of the archive, and
   * tar-split keeps their bytes with the end blocks).
   */
  endHeaders: Buffer = Buffer.alloc(0);
  /** At the end: the end-of-archive zero blocks (0, 1 or 2) and everything after them. */
  trailer: Buffer = Buffer.alloc(0);

  /**
   * `globalHeaders`: also return pax global headers as entries (type 'pax-global', as Go's
   * reader does; needed for tar-split). Otherwise they are skipped: the engine applies them
   * to nothing (moby pkg/archive Unpack ignores TypeXGlobalHeader).
   */
  constructor(
    source: AsyncIterable<Buffer | Uint8Array | string> | ByteReader,
    private readonly options: { globalHeaders?: boolean } = {},
  ) {
    this.reader = source instanceof ByteReader ? source : new ByteReader(source);
  }

  get position(): number {
    return this.reader.position;
  }

  /** Reads the next entry; undefined at the end of the archive. */
  async next(): Promise<TarEntry | undefined> {
    for (;;) {
      const e = await this.nextEntry();
      if (!e || e.header.type !== 'pax-global' || this.options.globalHeaders) return e;
    }
  }

  private async nextEntry(): Promise<TarEntry | undefined> {
    if (this.pendingSkip > 0) {
      await this.reader.skip(this.pendingSkip);
      this.pendingSkip = 0;
    }
    this.lastPadding = this.pendingPadding > 0 ? await this.reader.read(this.pendingPadding) : Buffer.alloc(0);
    this.pendingPadding = 0;

    // Go src/archive/tar/reader.go next(): extension headers apply to the next entry; a
    // later pax header replaces an earlier one (only the last counts), and so does a later
    // GNU long name; a pax global header is an entry of its own, applied to nothing.
    const headerParts: Buffer[] = [];
    let headerBytes = 0;
    let pax = new Map<string, Buffer>();
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      const block = await this.reader.readAtMost(BLOCK);
      if (block.length === 0) return this.end(headerParts, Buffer.alloc(0)); // no end-of-archive marker: Go reports io.EOF too
      if (block.length < BLOCK) throw new Error(`truncated tar header at byte ${this.reader.position - block.length}`);
      if (isZeroBlock(block)) {
        const second = await this.reader.readAtMost(BLOCK);
        if (second.length === 0) return this.end(headerParts, block);
        if (second.length < BLOCK) throw new Error(`truncated tar archive at byte ${this.reader.position - second.length}`);
        if (!isZeroBlock(second)) throw new Error(`a zero block followed by a header at byte ${this.reader.position - BLOCK} (corrupt tar)`);
        return this.end(headerParts, Buffer.concat([block, second, await this.reader.rest(MAX_TRAILER)]));
      }
      const raw = decodeBlock(block);
      headerParts.push(block);
      headerBytes += BLOCK;
      if (raw.type === 'pax' || raw.type === 'pax-global' || raw.type === 'gnu-longname' || raw.type === 'gnu-longlink') {
        if (raw.size > MAX_SPECIAL_FILE) {
          throw new Error(`a ${raw.type === 'pax' || raw.type === 'pax-global' ? 'pax' : 'GNU long name'} header of ${raw.size} bytes exceeds the limit of ${MAX_SPECIAL_FILE} bytes (Go archive/tar maxSpecialFileSize, as in the engine)`);
        }
        headerBytes += raw.size + paddingFor(raw.size);
        if (headerBytes > MAX_HEADER_RUN) {
          throw new Error(`more than ${MAX_HEADER_RUN} bytes of consecutive extension headers before one entry (limit of transplant's tar reader)`);
        }
        const data = await this.reader.read(raw.size);
        headerParts.push(data);
        if (raw.type === 'pax-global') {
          // Returned as an entry (reader.go: Header{Name, Typeflag: 'g', PAXRecords}); its
          // padding is read with the next entry, as tar-split records it.
          const header = applyPax(raw, parsePaxRecords(data));
          header.size = 0;
          this.pendingPadding = paddingFor(raw.size);
          return { header, headerBytes: Buffer.concat(headerParts), content: this.contentOf(0) };
        }
        headerParts.push(await this.reader.read(paddingFor(raw.size)));
        if (raw.type === 'pax') pax = parsePaxRecords(data);
        else {
          const nul = data.indexOf(0);
          const text = nameFromBytes(nul >= 0 ? data.subarray(0, nul) : data);
          if (raw.type === 'gnu-longname') longName = text;
          else longLink = text;
        }
        continue;
      }
      const header = applyPax(raw, pax, longName, longLink);
      if (isGnuSparse(pax)) {
        throw new Error(`${header.name} is a GNU sparse file (pax GNU.sparse.*): not supported (the engine expands it and cannot give the layer back)`);
      }
      const hasContent = header.type === 'file' || header.type === 'contiguous';
      const size = hasContent ? header.size : 0;
      // Header-only types (links, devices, dirs, FIFOs) carry no data whatever their size
      // field says (Go src/archive/tar/reader.go, isHeaderOnlyType).
      const entry: TarEntry = {
        header,
        headerBytes: Buffer.concat(headerParts),
        content: this.contentOf(size),
      };
      if (hasContent) {
        this.pendingSkip = size;
        this.pendingPadding = paddingFor(size);
      }
      return entry;
    }
  }

  private end(headerParts: Buffer[], trailer: Buffer): undefined {
    this.endHeaders = Buffer.concat(headerParts);
    this.trailer = trailer;
    return undefined;
  }

  private async *contentOf(size: number): AsyncGenerator<Buffer> {
    if (size === 0) return;
    for await (const chunk of this.reader.stream(Math.min(size, this.pendingSkip))) {
      this.pendingSkip -= chunk.length;
      yield chunk;
    }
  }

  async *entries(): AsyncGenerator<TarEntry> {
    for (;;) {
      const entry = await this.next();
      if (!entry) return;
      yield entry;
    }
  }

  async close(): Promise<void> {
    await this.reader.close();
  }
}
