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
