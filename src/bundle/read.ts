/**
 * Reads a bundle as a stream: the manifest, configs and tar-splits first, then each layer's
 * files in order. Every name and link is checked against the layer it belongs to.
 */
import { createReadStream, fstatSync, promises as fsp } from 'node:fs';
import { createGunzip } from 'node:zlib';
import type { Readable } from 'node:stream';
import type { LayerEntry, LayerItem } from '../layer/entry.js';
import { layerEntryFromTar } from '../layer/tar-entry.js';
import { sha256Digest } from '../engine/digest.js';
import { TarParser, type TarEntry } from '../tar/parse.js';
import type { ImageSource, SourceImage, SourceLayer } from '../sources/source.js';
import { ByteReader } from '../stream/byte-reader.js';
import {
  MANIFEST_NAME,
  TRAILER_NAME,
  imageEntryName,
  layerPrefix,
  tarSplitEntryName,
  type BundleManifest,
  type BundleTrailer,
  validateManifest,
} from './format.js';
import { LIMITS, type Limit } from '../engine/limits.js';

/** Reads a whole entry, refusing it (before reading it) when its header says it is over the limit. */
async function readAll(entry: TarEntry, content: AsyncIterable<Buffer>, limit: Limit, what: string): Promise<Buffer> {
  if (entry.header.size > limit.bytes) throw new Error(`${what} is ${entry.header.size} bytes, more than ${limit.name}`);
  const parts: Buffer[] = [];
  let total = 0;
  for await (const c of content) {
    total += c.length;
    if (total > limit.bytes) throw new Error(`${what} is more than ${limit.name}`);
    parts.push(c);
  }
  return Buffer.concat(parts);
}

/** Checks a layer-relative path: no absolute, no '..', no empty or NUL components. */
export function checkRelativePath(p: string, what: string): string {
  if (p === '.') return p;
  if (p.startsWith('/') || p.includes('\0')) throw new Error(`${what}: unsafe path ${JSON.stringify(p)}`);
  const parts = p.split('/');
  if (parts.some((c) => c === '' || c === '.' || c === '..' || Buffer.byteLength(c) > 255)) {
    throw new Error(`${what}: unsafe path ${JSON.stringify(p)}`);
  }
  return p;
}

export class BundleSource implements ImageSource {
  private manifest!: BundleManifest;
  private readonly configs = new Map<string, Buffer>();
  private readonly tarSplits = new Map<string, Buffer>();
  private pending?: TarEntry;
  private nextLayer = 0;
  private entriesRead = 0;
  contentLimit?: number;
  /** Removed on close (a spool of standard input). */
  private cleanup?: string;

  private constructor(
    readonly description: string,
    private readonly parser: TarParser,
  ) {}

  /**
   * Opens a bundle file ('-' for standard input); gzip-compressed bundles are accepted too.
   * `options.description` names it in messages (default: `file`); `options.removeOnClose`
   * is a directory removed by close() (where standard input was spooled).
   */
  static async open(file: string, options: { description?: string; removeOnClose?: string } = {}): Promise<BundleSource> {
    // What the input can hold bounds every size its manifest declares: a file's (or a
    // redirected standard input's) size; gzip expands at most 1032 times (zlib's
    // "maximum compression factor" of deflate). A pipe has no size: contentLimit stays unset.
    let inputSize: number | undefined;
    try {
      const st = file === '-' ? fstatSync(0) : await fsp.stat(file);
      if (st.isFile()) inputSize = st.size;
    } catch {
      /* a missing file is reported by the first read */
    }
    const raw: Readable = file === '-' ? process.stdin : createReadStream(file, { highWaterMark: 1 << 20 });
    const probe = new ByteReader(raw);
    const head = await probe.readAtMost(2).catch((e: NodeJS.ErrnoException) => {
      throw new Error(e.code === 'ENOENT' ? `${file}: no such file` : `${file}: ${e.message}`);
    });
    let stream: AsyncIterable<Buffer> = (async function* () {
      yield head;
      for (;;) {
        const chunk = await probe.readAtMost(1 << 20);
        if (chunk.length === 0) return;
        yield chunk;
      }
    })();
    if (head[0] === 0x1f && head[1] === 0x8b) {
      const gunzip = createGunzip();
      const src = stream;
      void (async () => {
        try {
          for await (const c of src) if (!gunzip.write(c)) await new Promise((r) => gunzip.once('drain', r));
          gunzip.end();
        } catch (e) {
          gunzip.destroy(e as Error);
        }
      })();
      stream = gunzip;
    }
    const bundle = new BundleSource(options.description ?? file, new TarParser(stream));
    bundle.cleanup = options.removeOnClose;
    if (inputSize !== undefined) bundle.contentLimit = head[0] === 0x1f && head[1] === 0x8b ? inputSize * 1032 : inputSize;
    try {
      await bundle.readHead();
    } catch (e) {
      await bundle.close().catch(() => undefined);
      throw e;
    }
    return bundle;
  }

  private fail(message: string): never {
    throw new Error(`${this.description}: ${message}`);
  }

  /** Content as read from the stream: a read error (truncated, corrupt gzip) names the bundle. */
  private async *guard(content: AsyncIterable<Buffer>, what: string): AsyncGenerator<Buffer> {
    try {
      for await (const chunk of content) yield chunk;
    } catch (e) {
      if ((e as Error).message.startsWith(`${this.description}: `)) throw e;
      this.fail(`corrupt or truncated bundle (${(e as Error).message}) in ${what}`);
    }
  }

  /** A whole entry, bounded by a named limit (the error says which). */
  private async limited(e: TarEntry, where: string, limit: Limit, what: string): Promise<Buffer> {
    try {
      return await readAll(e, this.guard(e.content, where), limit, what);
    } catch (err) {
      const m = (err as Error).message;
      this.fail(m.startsWith(`${this.description}: `) ? m.slice(this.description.length + 2) : m);
    }
  }

  private async nextEntry(): Promise<TarEntry | undefined> {
    if (this.pending) {
      const e = this.pending;
      this.pending = undefined;
      return e;
    }
    try {
      return await this.parser.next();
    } catch (e) {
      this.fail(`corrupt or truncated bundle (${(e as Error).message})`);
    }
  }

  private async readHead(): Promise<void> {
    const first = await this.nextEntry();
    if (!first || first.header.name !== MANIFEST_NAME) this.fail(`not a transplant bundle (no ${MANIFEST_NAME} first)`);
    const text = (await this.limited(first, MANIFEST_NAME, LIMITS.bundleManifest, 'the bundle manifest')).toString('utf8');
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      this.fail('the bundle manifest is not valid JSON');
    }
    this.manifest = validateManifest(json, this.description);
    for (const img of this.manifest.images) {
      const e = await this.nextEntry();
      if (!e || e.header.name !== imageEntryName(img.id)) this.fail(`expected the config of ${img.id}`);
      const config = await this.limited(e, `the config of image ${img.id}`, LIMITS.config, `the config of image ${img.id}`);
      if (sha256Digest(config) !== img.id) this.fail(`the config of image ${img.id} does not match its ID`);
      this.configs.set(img.id, config);
    }
    let held = 0;
    for (const layer of this.manifest.layers) {
      if (!layer.hasTarSplit) continue;
      const e = await this.nextEntry();
      if (!e || e.header.name !== tarSplitEntryName(layer.chainId)) this.fail(`expected the tar-split of layer ${layer.chainId}`);
      const what = `the tar-split of layer ${layer.chainId}`;
      const ts = await this.limited(e, what, LIMITS.tarSplit, what);
      // tar-split.json.gz is gzip (layer/filestore.go TarSplitWriter): anything else is not one, and never held.
      if (ts.length < 2 || ts[0] !== 0x1f || ts[1] !== 0x8b) this.fail(`${what} is not gzip data (a tar-split.json.gz always is)`);
      held += ts.length;
      if (held > LIMITS.heldMetadata.bytes) this.fail(`its tar-splits together are more than ${LIMITS.heldMetadata.name}`);
      this.tarSplits.set(layer.chainId, ts);
    }
  }

  getManifest(): BundleManifest {
    return this.manifest;
  }

  async images(): Promise<SourceImage[]> {
    return this.manifest.images.map((img) => ({
      id: img.id,
      config: this.configs.get(img.id) as Buffer,
      references: img.references,
      chainIds: img.chainIds,
      architecture: img.architecture,
      os: img.os,
      lastUpdated: img.lastUpdated,
      distribution: img.distribution,
    }));
  }

  async layer(chainId: string): Promise<SourceLayer> {
    const l = this.manifest.layers.find((x) => x.chainId === chainId);
    if (!l) this.fail(`layer ${chainId} is not in the bundle`);
    return {
      chainId: l.chainId,
      diffId: l.diffId,
      parent: l.parent,
      size: l.size,
      cacheId: l.cacheId,
      link: l.link,
      tarSplit: this.tarSplits.get(chainId),
      entries: l.entries,
      bytes: l.bytes,
    };
  }

  /** The bundle's stored order: layers must be read in it. */
  contentOrder(chainIds: readonly string[]): string[] {
    const at = (c: string): number => this.manifest.layers.findIndex((x) => x.chainId === c);
    return [...chainIds].sort((a, b) => at(a) - at(b));
  }

  async *layerItems(chainId: string): AsyncIterable<LayerItem> {
    const index = this.manifest.layers.findIndex((x) => x.chainId === chainId);
    if (index < this.nextLayer) this.fail(`layer ${chainId} was asked for out of the bundle's order`);
    // Skip layers not asked for (they are already in the target).
    while (this.nextLayer < index) {
      for await (const _ of this.readLayer(this.manifest.layers[this.nextLayer].chainId)) {
        /* drain */
      }
    }
    yield* this.readLayer(chainId);
  }

  private async *readLayer(chainId: string): AsyncGenerator<LayerItem> {
    const layer = this.manifest.layers[this.nextLayer];
    const prefix = `${layerPrefix(chainId)}/diff`;
    const seen = new Set<string>();
    let count = 0;
    let delivered = 0;
    for (;;) {
      const e = await this.nextEntry();
      if (!e) this.fail(`truncated bundle: layer ${chainId} is incomplete`);
      const name = e.header.name.replace(/\/+$/, '');
      if (name !== prefix && !name.startsWith(prefix + '/')) {
        this.pending = e;
        break;
      }
      const rel = name === prefix ? '.' : checkRelativePath(name.slice(prefix.length + 1), this.description);
      if (count === 0 && rel !== '.') this.fail(`layer ${chainId} does not start with its root directory`);
      if (seen.has(rel)) this.fail(`duplicate entry ${rel} in layer ${chainId}`);
      seen.add(rel);
      const h = e.header;
      let entry: LayerEntry;
      try {
        entry = layerEntryFromTar(h, rel);
      } catch (err) {
        this.fail((err as Error).message);
      }
      if (entry.kind === 'hardlink') {
        if (!h.linkname.startsWith(prefix + '/')) this.fail(`hard link ${rel} points outside its layer`);
        const target = checkRelativePath(h.linkname.slice(prefix.length + 1), this.description);
        if (!seen.has(target)) this.fail(`hard link ${rel} points to ${target}, which is not earlier in the layer`);
        entry.linkTarget = target;
      }
      count++;
      if (entry.kind === 'file') delivered += h.size;
      yield { entry, content: entry.kind === 'file' ? this.guard(e.content, `${rel} of layer ${chainId}`) : undefined };
    }
    if (count !== layer.entries) this.fail(`layer ${chainId} holds ${count} entries, the manifest says ${layer.entries} (corrupt bundle)`);
    // The declared size is what a disk target grew by: a claim well above what came is a
    // lie, and the run is undone. (Some slack: a layer's engine-counted size may differ a little.)
    if (layer.bytes > delivered + (1 << 20) + delivered / 100) {
      this.fail(`layer ${chainId} holds ${delivered} bytes of files, the manifest says ${layer.bytes} (corrupt bundle)`);
    }
    this.entriesRead += count;
    this.nextLayer++;
    if (this.nextLayer === this.manifest.layers.length) await this.readTrailer();
  }

  private async readTrailer(): Promise<void> {
    const e = await this.nextEntry();
    if (!e || e.header.name !== TRAILER_NAME) this.fail('truncated bundle (no trailer)');
    let t: BundleTrailer;
    try {
      t = JSON.parse((await this.limited(e, TRAILER_NAME, { bytes: 1 << 16, name: '64 KiB (the limit on the bundle trailer)' }, 'the bundle trailer')).toString('utf8')) as BundleTrailer;
    } catch {
      this.fail('corrupt bundle trailer');
    }
    if (t.layers !== this.manifest.layers.length || t.entries !== this.entriesRead) this.fail('bundle trailer does not match its contents');
  }

  /** Reads everything left, so that truncation is noticed even when no layer is needed. */
  async drain(): Promise<void> {
    while (this.nextLayer < this.manifest.layers.length) {
      for await (const _ of this.readLayer(this.manifest.layers[this.nextLayer].chainId)) {
        /* drain */
      }
    }
    if (this.manifest.layers.length === 0 && !this.trailerSeen) {
      this.trailerSeen = true;
      await this.readTrailer();
    }
  }
  private trailerSeen = false;

  async close(): Promise<void> {
    try {
      await this.parser.close();
    } finally {
      if (this.cleanup) await fsp.rm(this.cleanup, { recursive: true, force: true });
      this.cleanup = undefined;
    }
  }
}
