/**
 * Copies a file's content stream into a target in large sequential writes: small pieces are
 * gathered in a reused buffer of `chunk.length` bytes; with `passLarge`, pieces of at least a
 * quarter chunk arriving on an empty buffer are written as they are (no copy). Checks that the
 * stream holds exactly `size` bytes. Both TreeWriters (host directory, ext4) write through it.
 */
export async function writeChunked(
  content: AsyncIterable<Buffer> | undefined,
  size: number,
  chunk: Buffer,
  write: (buf: Buffer, length: number) => Promise<void>,
  where: string,
  options: { passLarge?: boolean } = {},
): Promise<void> {
  let written = 0;
  let fill = 0;
  if (content) {
    for await (const piece of content) {
      written += piece.length;
      if (written > size) throw new Error(`${where}: content is longer than its size ${size}`);
      if (options.passLarge && fill === 0 && piece.length >= chunk.length / 4) {
        await write(piece, piece.length);
        continue;
      }
      let off = 0;
      while (off < piece.length) {
        const n = Math.min(chunk.length - fill, piece.length - off);
        piece.copy(chunk, fill, off, off + n);
        fill += n;
        off += n;
        if (fill === chunk.length) {
          await write(chunk, fill);
          fill = 0;
        }
      }
    }
  }
  if (fill > 0) await write(chunk, fill);
  if (written !== size) throw new Error(`${where}: content is ${written} bytes, expected ${size}`);
}

/**
 * writeChunked with the write of one chunk in flight while the next is gathered: content is
 * copied into two buffers in turn, and `write` (which must not return before it is done with
 * the buffer) runs while the consumer checksums and copies the next chunk. Every write has
 * finished when this returns or throws, so the caller may free what it allocated.
 */
export async function writeChunkedOverlapped(
  content: AsyncIterable<Buffer> | Iterable<Buffer> | undefined,
  size: number,
  chunks: [Buffer, Buffer],
  write: (buf: Buffer, length: number) => Promise<void>,
  where: string,
): Promise<void> {
  const inFlight: (Promise<void> | undefined)[] = [undefined, undefined];
  let failure: unknown;
  const start = (i: number, length: number): void => {
    const p = write(chunks[i] as Buffer, length);
    // Seen at once so a failure is never unhandled; thrown when the buffer is next needed.
    p.catch((e: unknown) => (failure ??= e));
    inFlight[i] = p;
  };
  let cur = 0;
  let fill = 0;
  let written = 0;
  try {
    if (content) {
      for await (const piece of content) {
        written += piece.length;
        if (written > size) throw new Error(`${where}: content is longer than its size ${size}`);
        let off = 0;
        while (off < piece.length) {
          const chunk = chunks[cur] as Buffer;
          const n = Math.min(chunk.length - fill, piece.length - off);
          piece.copy(chunk, fill, off, off + n);
          fill += n;
          off += n;
          if (fill === chunk.length) {
            start(cur, fill);
            cur ^= 1;
            fill = 0;
            await inFlight[cur];
            inFlight[cur] = undefined;
          }
        }
      }
    }
    if (fill > 0) start(cur, fill);
    if (written !== size) throw new Error(`${where}: content is ${written} bytes, expected ${size}`);
  } finally {
    await Promise.allSettled(inFlight.filter((p) => p !== undefined));
  }
  if (failure !== undefined) throw failure;
}
