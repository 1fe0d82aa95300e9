/**
 * Images pulled from a registry (HTTP API v2) as an ImageSource.
 *
 * Manifests and configs are fetched when the source opens, each checked against its digest
 * (the manifest against the digest asked for or the one the registry names, the config
 * against the manifest; its digest is the image ID). Layer blobs are fetched only for layers
 * a writer asks counts or content of, so layers the target already has (same ChainID) are
 * never downloaded.
 *
 * A layer asked for with `streamed` (the injector into a directory, which can take size and
 * tar-split after the files) is read once: streamLayerTar writes its files as the blob
 * arrives and makes the tar-split, counts and DiffID from the same bytes; the blobs of the
 * next layers are opened ahead in bounded buffers (`jobs` open at a time), so the download
 * of one overlaps the writing of another and memory does not grow with a layer. Otherwise
 * (a disk image that must be grown before writing, a bundle whose manifest comes first, a
 * dry run) a layer is read twice from the registry and never stored: a first pass
 * (prefetched, `jobs` at a time) hashes the blob, makes the tar-split, counts entries and
 * bytes and finds opaque directories; the second writes the files while hashing again.
 * A layer one pass cannot convert (LayerOrderError) is started over in two passes. Every
 * pass checks the blob digest and the DiffID; nothing is committed before both match.
 */
import type { LayerItem } from '../layer/entry.js';
import { chainIds as chainIdsOf, sha256Digest } from '../engine/digest.js';
import { RegistryClient, type ClientOptions } from '../registry/client.js';
import { MANIFEST_ACCEPT, choosePlatform, hostPlatforms, parseManifest, showPlatform, type Descriptor, type Platform } from '../registry/manifest.js';
import { pulledReferences, showRef, type RegistryRef } from '../registry/reference.js';
import { decompressedWithKind } from './docker-archive.js';
import type { Compression } from '../stream/decompress.js';
import { LayerOrderError, layerTarItems, scanLayerTar, streamLayerTar, type LayerTarScan, type StreamedLayer } from './layer-tar.js';
import { ReadAhead } from '../stream/read-ahead.js';
import { configPlatform, LayerRestart, type LayerOptions, type ImageSource, type SourceImage, type SourceLayer } from './source.js';

export interface RegistrySourceOptions extends ClientOptions {
  /** Platforms to take from a manifest list / index, best first (default: this machine's). */
  platforms?: Platform[];
  /** Layer blobs fetched at once (default 3). */
  jobs?: number;
}

interface RegistryLayer {
  chainId: string;
  diffId: string;
  parent?: string;
  /** Where to fetch it (the first image that names it). */
  client: RegistryClient;
  repo: string;
  blob: Descriptor;
  image: string;
}

interface Scanned {
  scan: LayerTarScan;
  tarSplit: Buffer;
}

const MANIFEST_LIMIT = 4 << 20;
/** Bytes of a blob read ahead of the writer, per open blob. */
const READ_AHEAD = 8 << 20;
const CONFIG_LIMIT = 16 << 20;

export class RegistrySource implements ImageSource {
  private readonly imageList: SourceImage[] = [];
  private readonly layers = new Map<string, RegistryLayer>();
  private readonly scans = new Map<string, Promise<Scanned>>();
  private readonly clients = new Map<string, RegistryClient>();
  private readonly now = BigInt(Date.now()) * 1_000_000n;
  private readonly jobs: number;
  private running = 0;
  /** Streamed (one-pass) layers: asked for with `streamed`, their results once read. */
  private readonly streamedLayers = new Set<string>();
  private readonly streamedResults = new Map<string, StreamedLayer>();
  /** Blobs opened ahead of the writer, and the layers still to open, in writing order. */
  private readonly ahead = new Map<string, { stream: ReadAhead; taken: boolean }>();
  private aheadOrder: string[] = [];
  private readonly waiting: (() => void)[] = [];

  private constructor(
    readonly description: string,
    private readonly options: RegistrySourceOptions,
  ) {
    this.jobs = Math.max(1, options.jobs ?? 3);
  }

  /** Resolves every reference to one image (manifest, platform, config), checking every digest. */
  static async open(description: string, refs: readonly RegistryRef[], options: RegistrySourceOptions = {}): Promise<RegistrySource> {
    const source = new RegistrySource(description, options);
    try {
      for (const ref of refs) await source.resolve(ref);
    } catch (e) {
      await source.close();
      throw e;
    }
    return source;
  }

  private client(host: string): RegistryClient {
    let c = this.clients.get(host);
    if (!c) {
      c = new RegistryClient(host, this.options);
      this.clients.set(host, c);
    }
    return c;
  }

  private async manifest(client: RegistryClient, ref: RegistryRef, reference: string, name: string): Promise<{ body: Buffer; digest: string; contentType?: string }> {
    const { body, headers } = await client.fetchSmall(ref.path, `manifests/${reference}`, MANIFEST_ACCEPT, MANIFEST_LIMIT);
    const actual = sha256Digest(body);
    // By digest: the bytes must hash to it. By tag: to the digest the registry names, when it names one.
    const expected = reference.startsWith('sha256:') ? reference : (headers['docker-content-digest'] as string | undefined);
    if (expected !== undefined && expected !== actual) throw new Error(`${name}: the manifest does not match its digest ${expected} (its bytes hash to ${actual}): refused`);
    return { body, digest: actual, contentType: headers['content-type'] };
  }

  private async resolve(ref: RegistryRef): Promise<void> {
    const name = showRef(ref);
    const wrap = (e: unknown): Error => {
      const msg = (e as Error).message;
      return new Error(msg.startsWith(name) ? msg : `${name}: ${msg}`);
    };
    try {
      const client = this.client(ref.host);
      const top = await this.manifest(client, ref, ref.digest ?? ref.tag ?? 'latest', name);
      let parsed = parseManifest(top.body, top.contentType, name);
      if (parsed.kind === 'index') {
        const wanted = this.options.platforms ?? hostPlatforms();
        const chosen = choosePlatform(parsed.manifests, wanted);
        if (!chosen) {
          const has = parsed.manifests.map((m) => (m.platform ? showPlatform(m.platform) : '?')).filter((p) => p !== 'unknown/unknown');
          throw new Error(`has no image for ${showPlatform(wanted[0] as Platform)} (the index holds ${has.join(', ') || 'no platform'}); choose one with --platform`);
        }
        const sub = await this.manifest(client, ref, chosen.digest, name);
        parsed = parseManifest(sub.body, sub.contentType, name);
        if (parsed.kind === 'index') throw new Error('an index inside an index (not supported)');
      }
      const { config: configDesc, layers } = parsed;
      if (configDesc.size > CONFIG_LIMIT) throw new Error(`its config is ${configDesc.size} bytes (refused)`);
      const parts: Buffer[] = [];
      for await (const c of client.blob(ref.path, configDesc.digest, configDesc.size, `config ${configDesc.digest}`)) parts.push(c);
      const config = Buffer.concat(parts);
      // The image ID is the config's digest (image/image.go): checked by client.blob above.
      const id = configDesc.digest;
      const platform = configPlatform(config);
      if (platform.diffIds.length !== layers.length) throw new Error(`its manifest lists ${layers.length} layers, its config ${platform.diffIds.length} diff_ids (refused)`);
      const chains = chainIdsOf(platform.diffIds);
      chains.forEach((chainId, i) => {
        if (this.layers.has(chainId)) return;
        this.layers.set(chainId, {
          chainId,
          diffId: platform.diffIds[i] as string,
          parent: i > 0 ? chains[i - 1] : undefined,
          client,
          repo: ref.path,
          blob: layers[i] as Descriptor,
          image: name,
        });
      });
      const references = pulledReferences(ref, top.digest);
      const existing = this.imageList.find((img) => img.id === id);
      if (existing) {
        // docker pull of an image it already has records only the references (pull_v2.go pullSchema2).
        for (const r of references) if (!existing.references.includes(r)) existing.references.push(r);
        return;
      }
      const distribution = layers.map((l) => ({ digest: l.digest, sourceRepository: ref.fullName }));
      this.imageList.push({ id, config, references, chainIds: chains, architecture: platform.architecture, os: platform.os, distribution });
    } catch (e) {
      throw wrap(e);
    }
  }

  async images(): Promise<SourceImage[]> {
    return this.imageList;
  }

  private layerOf(chainId: string): RegistryLayer {
    const l = this.layers.get(chainId);
    if (!l) throw new Error(`${this.description}: layer ${chainId} is not in any image pulled`);
    return l;
  }

  private where(l: RegistryLayer): string {
    return `${l.image}: layer ${l.blob.digest}`;
  }

  /** The layer tar, decompressed as it arrives (gzip, zstd or none, by its magic bytes, as the engine's DecompressStream). */
  private async tar(l: RegistryLayer): Promise<{ stream: AsyncIterable<Buffer>; kind: Compression }> {
    const where = this.where(l);
    return decompressedWithKind(l.client.blob(l.repo, l.blob.digest, l.blob.size, where), where);
  }

  private async slot<T>(work: () => Promise<T>): Promise<T> {
    if (this.running >= this.jobs) await new Promise<void>((r) => this.waiting.push(r));
    this.running++;
    try {
      return await work();
    } finally {
      this.running--;
      this.waiting.shift()?.();
    }
  }

  private scan(l: RegistryLayer): Promise<Scanned> {
    let p = this.scans.get(l.chainId);
    if (!p) {
      p = this.slot(async () => {
        const where = this.where(l);
        const tar = await this.tar(l);
        // The engine reads a gzip layer through Go's gzip reader (pkg/archive DecompressStream without unpigz).
        const r = await scanLayerTar(tar.stream, where, { gzipped: tar.kind === 'gzip' });
        if (r.diffId !== l.diffId) throw new Error(`${where} hashes to DiffID ${r.diffId}, not to ${l.diffId} as its image config says: refused`);
        return { scan: r.scan, tarSplit: r.tarSplit };
      });
      // Prefetched scans nobody awaits yet must not become unhandled rejections.
      p.catch(() => undefined);
      this.scans.set(l.chainId, p);
    }
    return p;
  }

  prefetch(chainIds: readonly string[], options: { streamed?: boolean } = {}): void {
    if (options.streamed) {
      this.aheadOrder = chainIds.filter((c) => this.layers.has(c));
      this.readAheadNext(this.jobs);
      return;
    }
    for (const c of chainIds) {
      const l = this.layers.get(c);
      if (l) void this.scan(l);
    }
  }

  /** Opens the blobs of the next layers to be written (bounded buffers), keeping `n` open. */
  private readAheadNext(n: number): void {
    while (this.aheadOrder.length > 0 && [...this.ahead.values()].filter((a) => !a.taken).length < n) {
      const c = this.aheadOrder.shift() as string;
      const l = this.layers.get(c) as RegistryLayer;
      if (this.ahead.has(c) || this.scans.has(c)) continue;
      const where = this.where(l);
      this.ahead.set(c, { stream: new ReadAhead(l.client.blob(l.repo, l.blob.digest, l.blob.size, where), READ_AHEAD), taken: false });
    }
  }

  async layer(chainId: string, options: LayerOptions = {}): Promise<SourceLayer> {
    const l = this.layerOf(chainId);
    const base = { chainId, diffId: l.diffId, parent: l.parent };
    if (!options.counts) return { ...base, size: 0 };
    if (options.streamed && !this.scans.has(chainId)) {
      // Read once while writing: size and tar-split come after the items (layerAfterItems).
      this.streamedLayers.add(chainId);
      return { ...base, size: 0, bytes: l.blob.size };
    }
    const { scan, tarSplit } = await this.scan(l);
    return { ...base, size: scan.size, tarSplit, entries: scan.entries, bytes: scan.bytes };
  }

  layerAfterItems(chainId: string): SourceLayer | undefined {
    const done = this.streamedResults.get(chainId);
    const l = this.layerOf(chainId);
    return done ? { chainId, diffId: l.diffId, parent: l.parent, ...done } : undefined;
  }

  async *layerItems(chainId: string): AsyncIterable<LayerItem> {
    const l = this.layerOf(chainId);
    const where = this.where(l);
    if (this.streamedLayers.has(chainId)) {
      const ahead = this.ahead.get(chainId);
      if (ahead) ahead.taken = true;
      this.readAheadNext(this.jobs - 1);
      const blob = ahead ? ahead.stream.stream() : l.client.blob(l.repo, l.blob.digest, l.blob.size, where);
      const tar = await decompressedWithKind(blob, where);
      const s = streamLayerTar(tar.stream, where, this.now, l.diffId, { gzipped: tar.kind === 'gzip' });
      try {
        yield* s.items;
      } catch (e) {
        if (!(e instanceof LayerOrderError)) throw e;
        // Take the two-pass road for this layer; the writer starts it over.
        this.streamedLayers.delete(chainId);
        throw new LayerRestart(e.message);
      } finally {
        this.ahead.delete(chainId);
      }
      this.streamedResults.set(chainId, s.result());
      return;
    }
    const { scan, tarSplit } = await this.scan(l);
    yield* layerTarItems((await this.tar(l)).stream, scan, where, this.now, l.diffId, (actual) => new Error(`${where} hashes to DiffID ${actual}, not to ${l.diffId} as its image config says: refused`));
    this.streamedResults.set(chainId, { size: scan.size, entries: scan.entries, bytes: scan.bytes, tarSplit });
  }

  async close(): Promise<void> {
    for (const a of this.ahead.values()) await a.stream.cancel();
    for (const c of this.clients.values()) c.close();
  }
}
