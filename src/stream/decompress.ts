/**
 * Compressed input recognised by its magic bytes (never by its name) and decompressed as a
 * stream: gzip in process (zlib), zstd, xz and bzip2 through their command-line tools as
 * child processes (Debian packages zstd, xz-utils, bzip2), so nothing is held in memory.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { pipeline, type Readable } from 'node:stream';
import { constants as zlibConstants, createGunzip, gunzipSync, type ZlibOptions } from 'node:zlib';

export type Compression = 'none' | 'gzip' | 'zstd' | 'xz' | 'bzip2';

const TOOLS: Record<Exclude<Compression, 'none' | 'gzip'>, { cmd: string; pkg: string }> = {
  zstd: { cmd: 'zstd', pkg: 'zstd' },
  xz: { cmd: 'xz', pkg: 'xz-utils' },
  bzip2: { cmd: 'bzip2', pkg: 'bzip2' },
};

/** Magic numbers: RFC 1952 (gzip), RFC 8878 (zstd frame), xz file format 1.0, bzip2 "BZh". */
export function detectCompression(head: Buffer): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (head.length >= 4 && head.toString('latin1', 0, 3) === 'BZh' && head[3] >= 0x31 && head[3] <= 0x39) return 'bzip2';
  return 'none';
}

/**
 * The first bytes of the decompressed content of `head` (the beginning of a possibly
 * compressed file), for sniffing; empty when they cannot be decoded.
 */
export function decompressHead(head: Buffer, compression: Compression = detectCompression(head)): Buffer {
  try {
    if (compression === 'none') return head;
    if (compression === 'gzip') return gunzipSync(head, { finishFlush: zlibConstants.Z_SYNC_FLUSH });
    // The tool fails on the cut-off input but writes what it could decode first.
    const r = spawnSync(TOOLS[compression].cmd, ['-dc'], { input: head, maxBuffer: 64 << 20, timeout: 30_000 });
    if (r.error) throw new Error(missingTool(compression));
    return r.stdout ?? Buffer.alloc(0);
  } catch (e) {
    if (compression !== 'gzip' && compression !== 'none') throw e;
    return Buffer.alloc(0);
  }
}

/**
 * Up to `n` decompressed bytes from the start of a file, for sniffing (bzip2 and xz need far
 * more input than a short head to produce their first byte). Empty when it cannot be decoded;
 * a missing decompressor is an error.
 */
export async function decompressFilePrefix(file: string, compression: Compression, n: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let total = 0;
  const iterator = decompress(createReadStream(file, { highWaterMark: 1 << 16 }), compression)[Symbol.asyncIterator]();
  try {
    while (total < n) {
      const r = await iterator.next();
      if (r.done) break;
      parts.push(r.value);
      total += r.value.length;
    }
  } catch (e) {
    if (/needs the .* command/.test((e as Error).message)) throw e;
  } finally {
    await iterator.return?.(undefined)?.catch?.(() => undefined);
  }
  return Buffer.concat(parts).subarray(0, n);
}

function missingTool(c: Exclude<Compression, 'none' | 'gzip'>): string {
  return `reading ${c}-compressed input needs the ${TOOLS[c].cmd} command: install it (Debian/Ubuntu: apt-get install ${TOOLS[c].pkg}; macOS: brew install ${TOOLS[c].cmd})`;
}

const GUNZIP_CHUNK = 1 << 20;

/** Decompresses a byte stream; errors (corrupt data, a missing tool) are thrown from the iteration. */
export function decompress(input: Readable, compression: Compression): AsyncIterable<Buffer> {
  if (compression === 'none') return input as AsyncIterable<Buffer>;
  if (compression === 'gzip') {
    // Output in 1 MiB pieces instead of zlib's 16 KiB: a 64th of the chunks for every stage
    // after it (hashing, tar parsing, the async iterators between them); measured on the
    // registry bench, it roughly halves the CPU spent around decompression. Up to 4 pieces
    // wait for the reader, so that inflating (on the thread pool) goes on while the reader
    // works: with the default 16 KiB mark zlib stops after each piece until it is read.
    // (ZlibBase passes its options on to Transform; @types/node's ZlibOptions lacks the mark.)
    const gunzip = createGunzip({ chunkSize: GUNZIP_CHUNK, ...({ readableHighWaterMark: 4 * GUNZIP_CHUNK } as ZlibOptions) });
    pipeline(input, gunzip, () => {
      /* errors surface through gunzip */
    });
    return gunzip;
  }
  return viaTool(input, compression);
}

async function* viaTool(input: Readable, compression: Exclude<Compression, 'none' | 'gzip'>): AsyncGenerator<Buffer> {
  const { cmd } = TOOLS[compression];
  const child = spawn(cmd, ['-dc'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let spawnError: NodeJS.ErrnoException | undefined;
  let inputError: Error | undefined;
  let stderr = '';
  const closed = new Promise<number | null>((resolve) => {
    child.once('error', (e) => {
      spawnError = e;
      resolve(null);
    });
    child.once('close', (code) => resolve(code));
  });
  child.stderr.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString('utf8');
  });
  pipeline(input, child.stdin, (e) => {
    // EPIPE: the tool stopped reading (it failed, or we stopped early); its exit says why.
    if (e && (e as NodeJS.ErrnoException).code !== 'EPIPE' && (e as NodeJS.ErrnoException).code !== 'ERR_STREAM_PREMATURE_CLOSE') inputError = e;
  });
  let finished = false;
  try {
    for await (const chunk of child.stdout) yield chunk as Buffer;
    const code = await closed;
    finished = true;
    if (spawnError) throw new Error(spawnError.code === 'ENOENT' ? missingTool(compression) : `cannot run ${cmd}: ${spawnError.message}`);
    if (inputError) throw inputError;
    if (code !== 0) {
      const why = stderr.split('\n').map((l) => l.trim()).filter((l) => l !== '').pop() ?? `exit status ${String(code)}`;
      throw new Error(`${cmd} could not decompress it: ${why}`);
    }
  } finally {
    if (!finished) {
      child.kill();
      input.destroy();
    }
  }
}
