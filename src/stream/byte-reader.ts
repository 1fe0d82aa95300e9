/**
 * Exact-length reads over an async stream of chunks, without copying more than needed.
 * The tar parser and the bundle reader stand on it.
 */
export class TruncatedInputError extends Error {}

export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private done = false;
  private readonly iterator: AsyncIterator<Buffer | Uint8Array | string>;
  /** Bytes consumed so far (for error messages and tar-split positions). */
  position = 0;

  constructor(source: AsyncIterable<Buffer | Uint8Array | string>) {
    this.iterator = source[Symbol.asyncIterator]();
  }

  private async fill(): Promise<boolean> {
    if (this.done) return false;
    const next = await this.iterator.next();
    if (next.done) {
      this.done = true;
      return false;
    }
    const value = next.value;
    const chunk = typeof value === 'string' ? Buffer.from(value) : Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    return true;
  }

  /** Reads exactly n bytes, or fewer only at the end of input (then returns what there was). */
  async readAtMost(n: number): Promise<Buffer> {
    while (this.buffered < n && (await this.fill())) {
      /* keep filling */
    }
    return this.take(Math.min(n, this.buffered));
  }

  /** Reads exactly n bytes or throws TruncatedInputError. */
  async read(n: number): Promise<Buffer> {
    const out = await this.readAtMost(n);
    if (out.length < n) throw new TruncatedInputError(`unexpected end of input at byte ${this.position}`);
    return out;
  }

  /** Yields exactly n bytes as they arrive, in chunks of at most maxChunk. */
  async *stream(n: number, maxChunk = 1 << 20): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.buffered === 0 && !(await this.fill())) {
        throw new TruncatedInputError(`unexpected end of input at byte ${this.position}`);
      }
      if (this.buffered === 0) continue;
      const take = Math.min(left, this.chunks[0].length, maxChunk);
      const out = this.take(take);
      left -= take;
      yield out;
    }
  }

  async skip(n: number): Promise<void> {
    for await (const _ of this.stream(n)) {
      /* discard */
    }
  }

  /** True when no byte is left. */
  async atEnd(): Promise<boolean> {
    while (this.buffered === 0) {
      if (!(await this.fill())) return true;
    }
    return false;
  }

  /** Everything left (trailers); throws past `limit` bytes. */
  async rest(limit: number): Promise<Buffer> {
    while (await this.fill()) {
      if (this.buffered > limit) throw new Error(`more than ${limit} trailing bytes`);
    }
    return this.take(this.buffered);
  }

  async close(): Promise<void> {
    this.done = true;
    this.chunks = [];
    this.buffered = 0;
    if (this.iterator.return) await this.iterator.return(undefined);
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    this.position += n;
    this.buffered -= n;
    const first = this.chunks[0];
    if (first.length === n) {
      this.chunks.shift();
      return first;
    }
    if (first.length > n) {
      this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0];
      const want = n - off;
      if (c.length <= want) {
        c.copy(out, off);
        off += c.length;
        this.chunks.shift();
      } else {
        c.copy(out, off, 0, want);
        this.chunks[0] = c.subarray(want);
        off += want;
      }
    }
    return out;
  }
}
