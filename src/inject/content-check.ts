/**
 * Checks each regular file's content as it is written against what the layer's
 * tar-split recorded for it (size and CRC-64/ISO, tar/storage/entry.go), so that a corrupt
 * bundle or source fails before any reference names the layer. Streaming and order-free:
 * only the per-file records are held, not the content. (The whole-layer DiffID check,
 * which also covers headers, is `transplant verify` / `inject --verify`.)
 */
import { Crc64, FILE, cleanTarPath, readTarSplit } from '../engine/tar-split.js';
import { nameFromBytes } from '../layer/entry.js';

export interface FileRecord {
  size: number;
  /** The CRC-64 as a number: tens of thousands of 8-byte Buffers would each hold an ArrayBuffer. */
  crc?: bigint;
}

export class ContentMismatchError extends Error {}

/** The per-file records of a tar-split, by layer-relative path. */
export async function fileRecords(tarSplit: Buffer, where: string): Promise<Map<string, FileRecord>> {
  const out = new Map<string, FileRecord>();
  for await (const e of readTarSplit(tarSplit, where)) {
    if (e.type !== FILE || e.size === 0) continue;
    // A number, not e.crc: that is a slice of Buffer's shared 8 KiB pool, and keeping it would
    // keep the whole slab (with the tar-split's header bytes decoded next to it) alive.
    out.set(cleanTarPath(nameFromBytes(e.name)), { size: e.size, crc: e.crc === undefined ? undefined : e.crc.length === 8 ? e.crc.readBigUInt64BE(0) : -1n });
    // (-1n: a malformed payload matches no content.)
  }
  return out;
}

/** Passes content through, failing at its end when it does not match the record. */
export async function* checked(content: AsyncIterable<Buffer>, record: FileRecord, describe: () => string): AsyncGenerator<Buffer> {
  const crc = new Crc64();
  let size = 0;
  for await (const chunk of content) {
    crc.update(chunk);
    size += chunk.length;
    yield chunk;
  }
  if (size !== record.size || (record.crc !== undefined && crc.digest().readBigUInt64BE(0) !== record.crc)) {
    throw new ContentMismatchError(`${describe()} does not match the layer's recorded checksum (the input is corrupt)`);
  }
}
