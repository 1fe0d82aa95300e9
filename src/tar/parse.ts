/**
 * A streaming tar reader. Each entry's content must be consumed (or is skipped) before the
 * next entry is read; memory stays bounded by one chunk. Raw header bytes and padding are
 * kept so that tar-split records can be generated from the exact original bytes.
 */
import { ByteReader } from '../stream/byte-reader.js';
import { BLOCK, TarHeader, applyPax, decodeBlock, isZeroBlock, paddingFor, parsePaxRecords } from './header.js';

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

const MAX_EXTENSION = 16 << 20; // pax and GNU long-name payloads are small; refuse absurd ones

export class TarParser {
  private readonly reader: ByteReader;
  private pendingSkip = 0;
  private pendingPadding = 0;
  /** Padding bytes consumed after the previous entry's content (for tar-split). */
  lastPadding: Buffer = Buffer.alloc(0);
  trailer: Buffer = Buffer.alloc(0);

  constructor(source: AsyncIterable<Buffer | Uint8Array | string> | ByteReader) {
    this.reader = source instanceof ByteReader ? source : new ByteReader(source);
  }

  get position(): number {
    return this.reader.position;
  }

  /** Reads the next entry; undefined at the end of the archive. */
  async next(): Promise<TarEntry | undefined> {
    if (this.pendingSkip > 0) {
      await this.reader.skip(this.pendingSkip);
      this.pendingSkip = 0;
    }
    this.lastPadding = this.pendingPadding > 0 ? await this.reader.read(this.pendingPadding) : Buffer.alloc(0);
    this.pendingPadding = 0;

    const headerParts: Buffer[] = [];
    let globalPax = new Map<string, Buffer>();
    let localPax = new Map<string, Buffer>();
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      const block = await this.reader.readAtMost(BLOCK);
      if (block.length === 0 && headerParts.length === 0) {
        this.trailer = Buffer.alloc(0);
        return undefined; // no end-of-archive marker: tolerated like GNU tar does
      }
      if (block.length < BLOCK) throw new Error(`truncated tar header at byte ${this.reader.position - block.length}`);
      if (isZeroBlock(block) && headerParts.length === 0) {
        this.trailer = Buffer.concat([block, await this.reader.rest(64 << 20)]);
        return undefined;
      }
      const raw = decodeBlock(block);
      headerParts.push(block);
      if (raw.type === 'pax' || raw.type === 'pax-global' || raw.type === 'gnu-longname' || raw.type === 'gnu-longlink') {
        if (raw.size > MAX_EXTENSION) throw new Error(`tar extension header of ${raw.size} bytes is too large`);
        const data = await this.reader.read(raw.size);
        const pad = await this.reader.read(paddingFor(raw.size));
        headerParts.push(data, pad);
        if (raw.type === 'pax') localPax = new Map([...localPax, ...parsePaxRecords(data)]);
        else if (raw.type === 'pax-global') globalPax = new Map([...globalPax, ...parsePaxRecords(data)]);
        else {
          const text = data.toString('utf8').replace(/\0.*$/s, '');
          if (raw.type === 'gnu-longname') longName = text;
          else longLink = text;
        }
        continue;
      }
      const header = applyPax(raw, new Map([...globalPax, ...localPax]), longName, longLink);
      const hasContent = header.type === 'file';
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
