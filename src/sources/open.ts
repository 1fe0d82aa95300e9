/**
 * Opens whatever a user names as a source of images, deciding by content, not by name:
 * a directory holding an engine data root, a bundle file, a tarball of a device's data root
 * (plain or compressed), a live device (ssh://…), or a registry (`--from registry`, docker://…).
 */
import { constants, createWriteStream, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { describeKind } from '../fsx/beneath.js';
import { BundleSource } from '../bundle/read.js';
import { MANIFEST_NAME } from '../bundle/format.js';
import { EngineRootSource } from './engine-root.js';
import { RootfsTarballSource } from './rootfs-tarball.js';
import { DockerArchiveSource, isImageArchiveDir, isImageArchiveEntry } from './docker-archive.js';
import type { ImageSource } from './source.js';
import { isRegistrySource, openRegistrySource } from './open-registry.js';
import { TarParser } from '../tar/parse.js';
import { decompressFilePrefix, decompressHead, detectCompression } from '../stream/decompress.js';

export type SourceKind = 'engine-root' | 'bundle' | 'docker-archive' | 'data-root-tarball' | 'device' | 'registry' | 'disk-image' | 'unknown';

export interface OpenSourceOptions {
  /** ssh://: a private key file (else the ssh-agent of SSH_AUTH_SOCK, else ~/.ssh/id_*). */
  identity?: string;
  /** ssh://: accept any host key instead of checking ~/.ssh/known_hosts. */
  insecureHostKey?: boolean;
  /**
   * A bundle on standard input is first spooled to TMPDIR, so that its size bounds what its
   * manifest declares (a disk target grows by the declared size before the content comes).
   */
  spoolStdin?: boolean;
  /** `--from registry` / docker://…: the images to pull and how. */
  registry?: Parameters<typeof openRegistrySource>[1];
  /** Where a source's warnings go (a spooled standard input, a registry's retries). */
  warn?: (message: string) => void;
}

/** Copies standard input to a private temp directory; returns the file and the directory. */
async function spoolStdin(): Promise<{ file: string; dir: string }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'transplant-stdin-'));
  const file = path.join(dir, 'bundle');
  try {
    await pipeline(process.stdin, createWriteStream(file, { mode: 0o600, flags: 'wx' }));
  } catch (e) {
    await fs.rm(dir, { recursive: true, force: true });
    throw new Error(`standard input: cannot spool it to ${dir} (${(e as Error).message}); set TMPDIR to a place with room for it`);
  }
  return { file, dir };
}

const HEAD = 64 * 1024;

/** The first bytes of standard input, put back so that whoever reads it next gets them too. */
async function peekStdin(): Promise<Buffer> {
  const stdin = process.stdin;
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const c = stdin.read() as Buffer | null;
    if (c !== null) {
      chunks.push(c);
      total += c.length;
      if (total >= 1024) break;
      continue;
    }
    if (stdin.readableEnded) break;
    const more = await new Promise<boolean>((resolve) => {
      const onReadable = (): void => {
        stdin.off('end', onEnd);
        resolve(true);
      };
      const onEnd = (): void => {
        stdin.off('readable', onReadable);
        resolve(false);
      };
      stdin.once('readable', onReadable);
      stdin.once('end', onEnd);
    });
    if (!more && stdin.readableLength === 0) break;
  }
  const head = Buffer.concat(chunks);
  // Put back before the stream can emit 'end' (stream/readable.js endReadableNT checks the buffer).
  if (head.length > 0 && !stdin.readableEnded) stdin.unshift(head);
  return head;
}

/** What kind of tar a (possibly compressed) file head starts: a bundle (manifest first) or anything else. */
async function tarKind(head: Buffer, file: string): Promise<SourceKind> {
  const compression = detectCompression(head);
  // A file can be read further: bzip2 and xz need more than a short head to yield a tar header.
  const plain = file !== '-' && compression !== 'none' ? await decompressFilePrefix(file, compression, HEAD) : decompressHead(head, compression);
  if (plain.length < 512) return 'unknown';
  const parser = new TarParser((async function* () {
    yield plain;
  })());
  try {
    let first = await parser.next();
    if (!first) return 'unknown';
    if (first.header.name === MANIFEST_NAME) return 'bundle';
    // A layout tarred from inside its directory (`tar -C layout -cf x.tar .`) starts with './'.
    while (first && /^(\.\/?)+$/.test(first.header.name)) first = await parser.next();
    if (!first) return 'unknown';
    return isImageArchiveEntry(first.header.name) ? 'docker-archive' : 'data-root-tarball';
  } catch {
    // A header cut off by the end of the head (a long pax record) still means tar.
    return plain.length >= 512 && plain.toString('latin1', 257, 262) === 'ustar' ? 'data-root-tarball' : 'unknown';
  }
}

/** Looks at a path's type and first bytes. */
export async function sniff(file: string): Promise<SourceKind> {
  if (/^ssh:\/\//i.test(file)) return 'device';
  if (isRegistrySource(file)) return 'registry';
  let head: Buffer;
  if (file === '-') {
    head = await peekStdin();
  } else {
    let st;
    try {
      st = await fs.stat(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EACCES') throw new Error(`${file}: permission denied: run as root (or as a user who can read it)`);
      throw new Error(`${file}: no such file or directory`);
    }
    if (st.isDirectory()) return (await isImageArchiveDir(file)) ? 'docker-archive' : 'engine-root';
    // A FIFO would block the open (and be read twice), a device never ends: only regular files.
    if (!st.isFile()) throw new Error(`${file} is ${describeKind(st)}, not a regular file or directory; give a file, or - to read standard input`);
    const fh = await fs.open(file, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const buf = Buffer.alloc(HEAD);
      const { bytesRead } = await fh.read(buf, 0, HEAD, 0);
      head = buf.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  }
  const kind = await tarKind(head, file);
  if (kind !== 'unknown') return kind;
  if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa) return 'disk-image';
  return 'unknown';
}

export async function openSource(file: string, options: OpenSourceOptions = {}): Promise<ImageSource> {
  const kind = await sniff(file);
  switch (kind) {
    case 'engine-root':
      return EngineRootSource.open(file);
    case 'bundle': {
      if (file !== '-' || !options.spoolStdin) return BundleSource.open(file);
      const spool = await spoolStdin();
      try {
        return await BundleSource.open(spool.file, { description: 'standard input', removeOnClose: spool.dir });
      } catch (e) {
        await fs.rm(spool.dir, { recursive: true, force: true });
        throw e;
      }
    }
    case 'docker-archive':
      return DockerArchiveSource.open(file, { warn: options.warn });
    case 'data-root-tarball':
      return RootfsTarballSource.open(file);
    case 'device': {
      const { SshDeviceSource } = await import('../sources/ssh-device.js');
      return SshDeviceSource.open(file, options);
    }
    case 'registry':
      return openRegistrySource(file, { ...options.registry, warn: options.registry?.warn ?? options.warn });
    case 'disk-image':
      throw new Error(`${file} is a disk image; use it as a target (--disk) or list it with transplant ls`);
    default:
      throw new Error(
        `${file === '-' ? 'standard input' : file} is neither an engine data root directory, a transplant bundle, a docker save / OCI image archive, nor a tarball of a data root (.tar, .tar.gz, .tar.zst)`,
      );
  }
}
