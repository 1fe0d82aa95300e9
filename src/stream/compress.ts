/**
 * Compressed output chosen by the file name (`--output x.img.gz|.xz|.zst`), streamed from
 * one file to another: gzip in process (zlib), xz and zstd by their command-line tools
 * reading and writing the files directly (Debian xz-utils, zstd), so no image passes
 * through memory.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';

export type OutputCompression = 'gzip' | 'xz' | 'zstd';

const BY_SUFFIX: [string, OutputCompression][] = [['.gz', 'gzip'], ['.xz', 'xz'], ['.zst', 'zstd']];

/** The compression a file name asks for, by its suffix; undefined for anything else. */
export function compressionForName(file: string): OutputCompression | undefined {
  const lower = file.toLowerCase();
  return BY_SUFFIX.find(([s]) => lower.endsWith(s))?.[1];
}

const TOOLS: Record<Exclude<OutputCompression, 'gzip'>, { cmd: string; args: string[]; pkg: string }> = {
  // -T0: all cores; the levels are the tools' defaults.
  xz: { cmd: 'xz', args: ['-c', '-T0', '-q'], pkg: 'xz-utils' },
  zstd: { cmd: 'zstd', args: ['-c', '-q', '-T0'], pkg: 'zstd' },
};

/** Compresses `from` into `to` (created, must not exist); `to` is removed on failure. */
export async function compressFile(from: string, to: string, compression: OutputCompression): Promise<void> {
  const out = fs.openSync(to, 'wx', 0o644);
  try {
    if (compression === 'gzip') {
      await pipeline(fs.createReadStream(from, { highWaterMark: 1 << 20 }), createGzip(), fs.createWriteStream('', { fd: out, autoClose: false }));
    } else {
      const { cmd, args, pkg } = TOOLS[compression];
      const input = fs.openSync(from, 'r');
      try {
        await new Promise<void>((resolve, reject) => {
          const child = spawn(cmd, args, { stdio: [input, out, 'pipe'] });
          let stderr = '';
          child.stderr?.on('data', (d: Buffer) => {
            if (stderr.length < 4096) stderr += d.toString('utf8');
          });
          child.once('error', (e: NodeJS.ErrnoException) =>
            reject(new Error(e.code === 'ENOENT' ? `writing ${compression}-compressed output needs the ${cmd} command: install it (Debian/Ubuntu: apt-get install ${pkg})` : `cannot run ${cmd}: ${e.message}`)),
          );
          child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} could not compress the image: ${stderr.trim().split('\n').pop() ?? `exit status ${String(code)}`}`))));
        });
      } finally {
        fs.closeSync(input);
      }
    }
    fs.fsyncSync(out);
  } catch (e) {
    fs.closeSync(out);
    fs.rmSync(to, { force: true });
    throw e;
  }
  fs.closeSync(out);
}
