/**
 * Reads a byte stream ahead of its consumer into a bounded buffer: the producer (e.g. a
 * socket) is pulled until `limit` bytes wait, then left alone (TCP flow control holds the
 * sender) until the consumer catches up. Memory is bounded by `limit` plus one chunk.
 */
export class ReadAhead {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private error: unknown;
  private wakeConsumer?: () => void;
  private wakeProducer?: () => void;
  private taken = false;

  constructor(
    private readonly source: AsyncIterator<Buffer>,
    private readonly limit: number,
  ) {
    void this.pump();
  }

  private async pump(): Promise<void> {
    try {
      for (;;) {
        while (this.buffered >= this.limit) await new Promise<void>((r) => (this.wakeProducer = r));
        const r = await this.source.next();
        if (r.done) break;
        this.chunks.push(r.value);
        this.buffered += r.value.length;
        this.wakeConsumer?.();
      }
    } catch (e) {
      this.error = e ?? new Error('read-ahead failed');
    }
    this.ended = true;
    this.wakeConsumer?.();
  }

  /** The stream, once. */
  async *stream(): AsyncGenerator<Buffer> {
    if (this.taken) throw new Error('a read-ahead stream is read once');
    this.taken = true;
    try {
      for (;;) {
        const c = this.chunks.shift();
        if (c) {
          this.buffered -= c.length;
          this.wakeProducer?.();
          yield c;
          continue;
        }
        if (this.ended) {
          if (this.error !== undefined) throw this.error;
          return;
        }
        await new Promise<void>((r) => (this.wakeConsumer = r));
      }
    } finally {
      if (!this.ended) await this.source.return?.(undefined);
    }
  }

  /** Stops reading (a stream nobody will take). */
  async cancel(): Promise<void> {
    this.chunks.length = 0;
    this.buffered = 0;
    this.wakeProducer?.();
    await this.source.return?.(undefined).catch(() => undefined);
  }
}
