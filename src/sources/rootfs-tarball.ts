/**
 * A tarball of a device's engine data root (`tar -czf docker.tgz --xattrs --xattrs-include='*'
 * /var/lib/docker` on the device, or a copy of resin-data's `docker/`), read as a stream and
 * never unpacked on the host: an unprivileged user, or macOS, cannot create whiteout devices,
 * `trusted.*` xattrs or foreign owners, and does not need to.
 *
 * Plain, gzip, zstd, xz or bzip2 (recognised by magic bytes). The engine root may sit at the
 * top of the tarball, under `var/lib/docker/`, `docker/`, `./…` or any other directory.
 *
 * Two reads of the file:
 *  1. metadata (image configs, layerdb files, repositories.json, overlay2 link/lower files)
 *     is kept in memory, tar-split.json.gz files are spooled to a temp file, and each
 *     overlay2/<cacheId>/diff tree is counted (entries, bytes, where it starts and ends);
 *  2. layerItems streams the entries of the asked-for diff/ trees as LayerItems. Asking in
 *     contentOrder() keeps it to one read; asking for a layer that lies behind the read
 *     position starts another read from the top.
 * Memory holds the metadata only (it grows with the number of images and layers, not with
 * the size of the tarball). Standard input is first spooled to a temp file as it comes
 * (compressed as given), because it has to be read twice.
 */
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { LayerItem } from '../layer/entry.js';
import { layerEntryFromTar } from '../layer/tar-entry.js';
import { hexOf } from '../engine/digest.js';
import { LAYERDB_SHA } from '../engine/layout.js';
import { LIMITS, metadataLimit } from '../engine/limits.js';

/** Room beyond the tarball's own size for the tar-split spool (gzip of gzip data can grow by a little). */
const SPOOL_SLACK = 16 << 20;
import { checkRelativePath } from '../bundle/read.js';
import { TarParser, type TarEntry } from '../tar/parse.js';
import { decompress, detectCompression, type Compression } from '../stream/decompress.js';
import { EngineRootSource } from './engine-root.js';
import { MemoryStoreReader } from './memory-reader.js';
import type { ImageSource, SourceImage, SourceLayer } from './source.js';

/** `<root>overlay2/<cacheId>/diff[/<path>]`, root '' or ending in '/' (the shortest root wins, so layer content never looks like a root). */
const DIFF_RE = /^((?:[^/]+\/)*?)overlay2\/([^/]+)\/diff(?:\/(.+))?$/;
/** The engine's metadata files (image/fs.go, layer/filestore.go, reference/store.go). */
const META_RE =
  /^((?:[^/]+\/)*?)(image\/overlay2\/(?:repositories\.json|imagedb\/content\/sha256\/[0-9a-f]{64}|imagedb\/metadata\/sha256\/[0-9a-f]{64}\/lastUpdated|layerdb\/sha256\/[0-9a-f]{64}\/(?:diff|size|cache-id|parent|tar-split\.json\.gz)))$/;
/** overlay2/<cacheId>/link and lower (daemon/graphdriver/overlay2/overlay.go). */
const OVERLAY_META_RE = /^((?:[^/]+\/)*?)(overlay2\/[^/]+\/(?:link|lower))$/;


interface LayerStats {
  /** Ordinal of the first and last tar entry of this diff/ tree. */
  first: number;
  last: number;
  entries: number;
  bytes: number;
  /** Why this layer cannot be read from the tarball, if it cannot. */
  problem?: string;
}

interface RootData {
  reader: MemoryStoreReader;
  layers: Map<string, LayerStats>;
  hasMetadata: boolean;
  /** Whether any layer entry had pax records (GNU tar --xattrs writes pax headers for every entry). */
  pax: boolean;
}

/** Tar names as GNU tar and busybox write them: no leading '/' or './', no trailing '/'. */
export function normalizeTarName(name: string): string {
  let n = name;
  for (;;) {
    if (n.startsWith('/')) n = n.slice(1);
    else if (n.startsWith('./')) n = n.slice(2);
    else break;
  }
  n = n.replace(/\/+$/, '').replace(/\/{2,}/g, '/');
  return n === '.' ? '' : n;
}

export class RootfsTarballSource implements ImageSource {
  private cursor?: { parser: TarParser; index: number };
  private engine!: EngineRootSource;
  private root!: RootData;
  private rootPrefix = '';
  private readonly chainFirst = new Map<string, number>();
  private spool?: fs.FileHandle;
  private spoolSize = 0;
  /** Bytes of metadata held in memory (bounded by LIMITS.heldMetadata). */
  private held = 0;
  /** The tarball's size on disk: the spool can never need more (see spoolFile). */
  private inputSize = 0;
  private closed = false;

  private constructor(
    readonly description: string,
    private readonly file: string,
    private readonly compression: Compression,
    /** Temp dir holding the tar-split spool (and standard input's copy); removed by close(). */
    private readonly tmp: string,
  ) {}

  /** Opens a data-root tarball ('-' for standard input) and reads its metadata (the first read). */
  static async open(file: string): Promise<RootfsTarballSource> {
    const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'transplant-tarball-'));
    try {
      let input = file;
      const description = file === '-' ? 'standard input' : file;
      if (file === '-') {
        input = path.join(tmp, 'input');
        await pipeline(process.stdin, createWriteStream(input, { mode: 0o600 })).catch((e: Error) => {
          throw new Error(`${description}: cannot spool the tarball to ${tmp} (${e.message}); set TMPDIR to a place with room for it`);
        });
      }
      const head = Buffer.alloc(8);
      let fh: fs.FileHandle;
      try {
        fh = await fs.open(input, 'r');
      } catch (e) {
        throw new Error(`${description}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
      }
      try {
        await fh.read(head, 0, 8, 0);
      } finally {
        await fh.close();
      }
      const source = new RootfsTarballSource(description, input, detectCompression(head), tmp);
      source.inputSize = (await fs.stat(input)).size;
      try {
        await source.firstPass();
      } catch (e) {
        await source.close();
        throw e;
      }
      return source;
    } catch (e) {
      await fs.rm(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  private corrupt(e: unknown): Error {
    return new Error(`${this.description}: corrupt or truncated tarball (${(e as Error).message})`);
  }

  private openTar(): TarParser {
    const raw = createReadStream(this.file, { highWaterMark: 1 << 20 });
    return new TarParser(decompress(raw, this.compression));
  }

  private async next(parser: TarParser): Promise<TarEntry | undefined> {
    try {
      return await parser.next();
    } catch (e) {
      throw this.corrupt(e);
    }
  }

  private async *guarded(content: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    try {
      for await (const c of content) yield c;
    } catch (e) {
      throw this.corrupt(e);
    }
  }

  /** An engine metadata file, held in memory: bounded by its own limit and by all metadata held. */
  private async readSmall(e: TarEntry, name: string, rel: string): Promise<Buffer> {
    const limit = metadataLimit(rel);
    if (e.header.size > limit.bytes) throw new Error(`${this.description}: ${name} is ${e.header.size} bytes, more than ${limit.name}`);
    this.held += e.header.size;
    if (this.held > LIMITS.heldMetadata.bytes) throw new Error(`${this.description}: its engine metadata files together are more than ${LIMITS.heldMetadata.name}`);
    const parts: Buffer[] = [];
    for await (const c of this.guarded(e.content)) parts.push(c);
    return Buffer.concat(parts);
  }

  /**
   * Copies a tar-split file to the spool; returns a loader for it. Bounded: each by its limit,
   * all together by the tarball's own size (a tar-split.json.gz is gzip data, which no
   * compression of the tarball makes smaller, so a real data root's tar-splits always fit in
   * it: more is a bomb, which must not fill TMPDIR).
   */
  private async spoolFile(e: TarEntry, name: string): Promise<() => Promise<Buffer>> {
    if (e.header.size > LIMITS.tarSplit.bytes) throw new Error(`${this.description}: ${name} is ${e.header.size} bytes, more than ${LIMITS.tarSplit.name}`);
    const room = this.inputSize + SPOOL_SLACK;
    if (this.spoolSize + e.header.size > room) {
      throw new Error(`${this.description}: its tar-split files hold more than the tarball itself (${this.inputSize} bytes) could if they were real gzip data: refused before TMPDIR fills up`);
    }
    this.spool ??= await fs.open(path.join(this.tmp, 'tar-split.spool'), 'w+', 0o600);
    const fh = this.spool;
    const offset = this.spoolSize;
    let first = true;
    for await (const c of this.guarded(e.content)) {
      if (first && c.length >= 2 && (c[0] !== 0x1f || c[1] !== 0x8b)) throw new Error(`${this.description}: ${name} is not gzip data (a tar-split.json.gz always is)`);
      first = false;
      await fh.write(c, 0, c.length, this.spoolSize);
      this.spoolSize += c.length;
    }
    const length = this.spoolSize - offset;
    return async () => {
      const buf = Buffer.alloc(length);
      await fh.read(buf, 0, length, offset);
      return buf;
    };
  }

  private async firstPass(): Promise<void> {
    const roots = new Map<string, RootData>();
    const rootOf = (prefix: string): RootData => {
      let r = roots.get(prefix);
      if (!r) {
        r = { reader: new MemoryStoreReader(`${this.description}:${prefix || '/'}`), layers: new Map(), hasMetadata: false, pax: false };
        roots.set(prefix, r);
      }
      return r;
    };
    const parser = this.openTar();
    let index = 0;
    try {
      for (;;) {
        const e = await this.next(parser);
        if (!e) break;
        const i = index++;
        const name = normalizeTarName(e.header.name);
        const diff = DIFF_RE.exec(name);
        if (diff) {
          const [, prefix, cacheId, rest] = diff as unknown as [string, string, string, string | undefined];
          const r = rootOf(prefix);
          let s = r.layers.get(cacheId);
          if (!s) {
            s = { first: i, last: i, entries: 0, bytes: 0 };
            r.layers.set(cacheId, s);
            if (rest !== undefined || e.header.type !== 'directory') {
              s.problem = `overlay2/${cacheId}/diff does not start with its own directory entry (make the tarball with tar -c of the whole data root)`;
            } else {
              r.reader.addDir(`overlay2/${cacheId}/diff`);
            }
          }
          s.last = i;
          s.entries++;
          if (rest !== undefined && s.problem === undefined) {
            try {
              checkRelativePath(rest, 'entry');
            } catch (err) {
              // Named once: layer() prefixes the tarball's name to the problem.
              s.problem = `${(err as Error).message} in overlay2/${cacheId}/diff`;
            }
          }
          if (e.header.pax.size > 0) r.pax = true;
          if (e.header.type === 'file') s.bytes += e.header.size;
          if (e.header.type === 'hardlink' && s.problem === undefined) {
            const t = DIFF_RE.exec(normalizeTarName(e.header.linkname));
            if (!t || t[1] !== prefix || t[2] !== cacheId || t[3] === undefined) {
              s.problem = `hard link overlay2/${cacheId}/diff/${rest ?? ''} points outside its layer (to ${e.header.linkname}): this is not a plain tarball of a data root`;
            }
          }
          continue;
        }
        if (e.header.type !== 'file') continue;
        const meta = META_RE.exec(name) ?? OVERLAY_META_RE.exec(name);
        if (!meta) continue;
        const [, prefix, rel] = meta as unknown as [string, string, string];
        const r = rootOf(prefix);
        if (rel.endsWith('/tar-split.json.gz')) r.reader.addFile(rel, await this.spoolFile(e, name));
        else r.reader.addFile(rel, await this.readSmall(e, name, rel));
        if (rel.startsWith('image/')) r.hasMetadata = true;
      }
      if (parser.trailer.length === 0 && index > 0) {
        throw this.corrupt(new Error('it ends without the end-of-archive blocks'));
      }
    } finally {
      await parser.close();
    }

    const withMetadata = [...roots.entries()].filter(([, r]) => r.hasMetadata);
    // A root inside another one is content (docker-in-docker: volumes/<v>/_data/image/…).
    const found = withMetadata.filter(([p]) => !withMetadata.some(([q]) => q !== p && p.startsWith(q)));
    if (found.length === 0) {
      throw new Error(
        `${this.description} does not hold an engine data root (no image/overlay2/ metadata in it); make it on the device with: tar -czf docker.tgz --xattrs --xattrs-include='*' /var/lib/docker`,
      );
    }
    if (found.length > 1) {
      throw new Error(`${this.description} holds several engine data roots (${found.map(([p]) => p || './').join(', ')}); make a tarball of only the one to read`);
    }
    const [prefix, root] = found[0] as [string, RootData];
    if (root.layers.size > 0 && !root.pax) {
      // ustar/GNU format has no place for xattrs (opaque directories, capabilities) or ns times.
      throw new Error(
        `${this.description} was made without --xattrs (it has no pax headers, so extended attributes and nanosecond times are lost); make it again on the device with: tar -czf docker.tgz --xattrs --xattrs-include='*' /var/lib/docker`,
      );
    }
    this.rootPrefix = prefix;
    this.root = root;
    this.engine = await EngineRootSource.over(root.reader, this.description);
    for (const hex of (await root.reader.readdir(LAYERDB_SHA)) ?? []) {
      const cacheId = (await root.reader.readFile(`${LAYERDB_SHA}/${hex}/cache-id`))?.toString('utf8');
      const stats = cacheId !== undefined ? root.layers.get(cacheId) : undefined;
      if (stats) this.chainFirst.set(`sha256:${hex}`, stats.first);
    }
  }

  /** Where the engine root sits in the tarball ('' at its top, else e.g. 'var/lib/docker/'). */
  get engineRootPrefix(): string {
    return this.rootPrefix;
  }

  images(): Promise<SourceImage[]> {
    return this.engine.images();
  }

  async layer(chainId: string): Promise<SourceLayer> {
    const layer = await this.engine.layer(chainId);
    const stats = this.root.layers.get(layer.cacheId ?? '');
    if (!stats) throw new Error(`${this.description}: layer ${chainId} has no data in the tarball (overlay2/${layer.cacheId ?? '?'}/diff is missing)`);
    if (stats.problem) throw new Error(`${this.description}: ${stats.problem}`);
    return { ...layer, entries: stats.entries, bytes: stats.bytes };
  }

  contentOrder(chainIds: readonly string[]): string[] {
    const at = (c: string): number => this.chainFirst.get(c) ?? Number.MAX_SAFE_INTEGER;
    return [...chainIds].sort((a, b) => at(a) - at(b));
  }

  async *layerItems(chainId: string): AsyncIterable<LayerItem> {
    const layer = await this.layer(chainId);
    const cacheId = layer.cacheId as string;
    const stats = this.root.layers.get(cacheId) as LayerStats;
    if (!this.cursor || this.cursor.index > stats.first) {
      // Behind the read position (or the first layer asked for): read again from the top.
      await this.cursor?.parser.close();
      this.cursor = { parser: this.openTar(), index: 0 };
    }
    const c = this.cursor;
    let yielded = 0;
    while (c.index <= stats.last) {
      const e = await this.next(c.parser);
      if (!e) throw this.corrupt(new Error(`it ended before layer ${hexOf(chainId).slice(0, 12)} was complete: was it changed since it was first read?`));
      const i = c.index++;
      if (i < stats.first) continue;
      const m = DIFF_RE.exec(normalizeTarName(e.header.name));
      if (!m || m[1] !== this.rootPrefix || m[2] !== cacheId) continue;
      const rel = m[3] === undefined ? '.' : checkRelativePath(m[3], this.description);
      const entry = layerEntryFromTar(e.header, rel);
      if (entry.kind === 'hardlink') {
        const t = DIFF_RE.exec(normalizeTarName(e.header.linkname));
        if (!t || t[1] !== this.rootPrefix || t[2] !== cacheId || t[3] === undefined) {
          throw new Error(`${this.description}: hard link ${rel} of layer ${chainId} points outside its layer`);
        }
        entry.linkTarget = checkRelativePath(t[3], this.description);
      }
      yielded++;
      yield { entry, content: entry.kind === 'file' ? this.guarded(e.content) : undefined };
    }
    if (yielded !== stats.entries) {
      throw new Error(`${this.description}: layer ${chainId} changed between the two reads of the tarball (${stats.entries} entries, then ${yielded})`);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.cursor?.parser.close().catch(() => undefined);
    await this.spool?.close().catch(() => undefined);
    await fs.rm(this.tmp, { recursive: true, force: true });
  }
}
