/**
 * A streaming tar writer into a Node Writable, honouring back-pressure. Every entry goes
 * through encodeHeader (pax for whatever ustar cannot hold exactly).
 */
import type { Writable } from 'node:stream';
import { once } from 'node:events';
import { BLOCK, TarHeader, encodeHeader, paddingFor } from './header.js';

export class TarPacker {
  private written = 0;
  private finished = false;

  constructor(private readonly out: Writable) {}

  get bytesWritten(): number {
    return this.written;
  }

  async write(data: Buffer): Promise<void> {
    if (data.length === 0) return;
    this.written += data.length;
    if (!this.out.write(data)) {
      // events.once also rejects when the stream emits 'error' while we wait.
      await once(this.out, 'drain');
    }
  }

  /** Writes one entry; content (regular files) must hold exactly header.size bytes. */
  async add(header: TarHeader, content?: AsyncIterable<Buffer> | Buffer): Promise<void> {
    if (this.finished) throw new Error('tar already finished');
    await this.write(encodeHeader(header));
    if (header.type !== 'file' || header.size === 0) return;
    if (!content) throw new Error(`no content for ${header.name}`);
    let total = 0;
    if (Buffer.isBuffer(content)) {
      total = content.length;
      await this.write(content);
    } else {
      for await (const chunk of content) {
        total += chunk.length;
        if (total > header.size) break;
        await this.write(chunk);
      }
    }
    if (total !== header.size) throw new Error(`${header.name}: expected ${header.size} bytes of content, got ${total}${total > header.size ? '+' : ''} (the file changed while being read?)`);
    await this.write(Buffer.alloc(paddingFor(header.size)));
  }

  /** Writes the end-of-archive marker (two zero blocks). Does not end the Writable. */
  async finish(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await this.write(Buffer.alloc(BLOCK * 2));
  }
}
