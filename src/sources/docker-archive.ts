/**
 * `docker save` archives and OCI image layouts as an ImageSource:
 *
 * - the legacy `docker save` tar (moby image/tarexport/save.go): `manifest.json`
 *   ([{Config, RepoTags, Layers}]), `<id>.json` configs, `<v1 id>/layer.tar` (possibly a
 *   symlink to an identical layer elsewhere in the archive), `repositories`;
 * - the archive Docker 25+ writes (the same manifest.json pointing into an OCI layout:
 *   `blobs/sha256/<hex>`, with `index.json` and `oci-layout` beside it);
 * - an OCI image layout (index.json → manifests → config and layer blobs, which may be
 *   gzip- or zstd-compressed), as a directory or a tar.
 * A compressed archive (gzip, zstd, …) is decompressed once to a temp file. Layer tars are
 * read in place, twice: once to make the layer's tar-split and check its DiffID (layer()),
 * once to write its files (layerItems()), converted to overlay2's diff/ form the way
 * `docker load` does.
 */
import { createReadStream, createWriteStream, promises as fs, statSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable, pipeline } from 'node:stream';
import { decompress, detectCompression, type Compression } from '../stream/decompress.js';
import type { LayerItem } from '../layer/entry.js';
import { chainIds as chainIdsOf, isDigest, sha256Digest } from '../engine/digest.js';
import { cleanTarPath } from '../engine/tar-split.js';
import { normalizeReference } from '../engine/reference.js';
import { TarParser } from '../tar/parse.js';
import { ByteReader } from '../stream/byte-reader.js';
import { layerTarItems, scanLayerTar, type LayerTarScan } from './layer-tar.js';
import { configPlatform, type ImageSource, type SourceImage, type SourceLayer } from './source.js';

// ---- byte streams ----------------------------------------------------------------------

async function* fromReadable(r: Readable): AsyncGenerator<Buffer> {
  for await (const c of r) yield Buffer.isBuffer(c) ? c : Buffer.from(c as Uint8Array);
}

async function collect(stream: AsyncIterable<Buffer>, limit: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of stream) {
    n += c.length;
    if (n > limit) throw new Error(`${what} is larger than ${limit} bytes`);
    parts.push(c);
  }
  return Buffer.concat(parts);
}

/** Re-yields a stream after looking at its first bytes. */
async function peek(stream: AsyncIterable<Buffer>, n: number): Promise<{ head: Buffer; stream: AsyncIterable<Buffer> }> {
  const reader = new ByteReader(stream);
  const head = await reader.readAtMost(n);
  return {
    head,
    stream: (async function* () {
      if (head.length > 0) yield head;
      for (;;) {
        const c = await reader.readAtMost(1 << 20);
        if (c.length === 0) return;
        yield c;
      }
    })(),
  };
}

/** A blob as an uncompressed stream: gzip, zstd (and xz, bzip2) recognised by their magic bytes. */
export async function decompressed(stream: AsyncIterable<Buffer>, where: string): Promise<AsyncIterable<Buffer>> {
  return (await decompressedWithKind(stream, where)).stream;
}

/** decompressed(), telling which compression it found. */
export async function decompressedWithKind(stream: AsyncIterable<Buffer>, where: string): Promise<{ stream: AsyncIterable<Buffer>; kind: Compression }> {
  const p = await peek(stream, 6);
  const kind = detectCompression(p.head);
  if (kind === 'none') return { stream: p.stream, kind };
  const inner = decompress(Readable.from(p.stream), kind);
  return {
    kind,
    stream: (async function* () {
      try {
        yield* inner;
      } catch (err) {
        throw new Error(`${where}: ${(err as Error).message}`);
      }
    })(),
  };
}

// ---- the archive's files -----------------------------------------------------------------

/** Names inside an archive: '/'-separated, no leading './' or '/', no trailing '/'. */
function archiveName(name: string): string {
  return cleanTarPath(name).replace(/^\/+/, '');
}

interface ArchiveFiles {
  has(name: string): boolean;
  open(name: string): AsyncIterable<Buffer>;
  read(name: string): Promise<Buffer>;
}

type Indexed = { kind: 'file'; offset: number; size: number } | { kind: 'link'; target: string };

/**
 * The most files an image archive may hold (its index is kept in memory): a docker save
 * archive has a few per layer and image, and the engine caps an image at 128 layers.
 */
export const MAX_ARCHIVE_FILES = 50_000;

/** An uncompressed tar file: indexed in one pass, then each file read in place at its offset. */
class TarFiles implements ArchiveFiles {
  private readonly index = new Map<string, Indexed>();

  private constructor(private readonly file: string) {}

  static async open(file: string): Promise<TarFiles> {
    const t = new TarFiles(file);
    const parser = new TarParser(fromReadable(createReadStream(file, { highWaterMark: 1 << 20 })));
    try {
      for (;;) {
        const e = await parser.next();
        if (!e) break;
        const name = archiveName(e.header.name);
        const h = e.header;
        if (h.type !== 'directory' && t.index.size >= MAX_ARCHIVE_FILES) {
          throw new Error(`it holds more than ${MAX_ARCHIVE_FILES} files, which no image archive does (transplant's limit)`);
        }
        // After next(), the parser stands at the first byte of the entry's content.
        if (h.type === 'file') t.index.set(name, { kind: 'file', offset: parser.position, size: h.size });
        else if (h.type === 'symlink') {
          // docker save links a layer.tar to an identical one (image/tarexport/save.go).
          const dir = path.posix.dirname(name);
          t.index.set(name, { kind: 'link', target: archiveName(h.linkname.startsWith('/') ? h.linkname : `${dir}/${h.linkname}`) });
        } else if (h.type === 'hardlink') t.index.set(name, { kind: 'link', target: archiveName(h.linkname) });
      }
    } catch (err) {
      throw new Error(`corrupt or truncated archive (${(err as Error).message})`);
    } finally {
      await parser.close().catch(() => undefined);
    }
    return t;
  }

  private resolve(name: string): { offset: number; size: number } | undefined {
    let n = archiveName(name);
    for (let hops = 0; hops < 16; hops++) {
      const e = this.index.get(n);
      if (!e) return undefined;
      if (e.kind === 'file') return e;
      n = e.target;
    }
    return undefined;
  }

  has(name: string): boolean {
    return this.resolve(name) !== undefined;
  }

  read(name: string): Promise<Buffer> {
    return collect(this.open(name), 64 << 20, name);
  }

  open(name: string): AsyncIterable<Buffer> {
    const r = this.resolve(name);
    if (!r) throw new Error(`lacks ${name} (truncated or incomplete archive)`);
    const { offset, size } = r;
    const file = this.file;
    return (async function* () {
      if (size === 0) return;
      let got = 0;
      for await (const c of fromReadable(createReadStream(file, { start: offset, end: offset + size - 1, highWaterMark: 1 << 20 }))) {
        got += c.length;
        yield c;
      }
      if (got !== size) throw new Error(`${name} is cut short (truncated archive)`);
    })();
  }
}

/** An unpacked archive or OCI layout in a directory. */
class DirFiles implements ArchiveFiles {
  constructor(private readonly dir: string) {}

  static async open(dir: string): Promise<DirFiles> {
    return new DirFiles(dir);
  }

  private abs(name: string): string | undefined {
    const n = archiveName(name);
    if (n === '..' || n.startsWith('../')) return undefined;
    return path.join(this.dir, n);
  }

  has(name: string): boolean {
    const file = this.abs(name);
    if (!file) return false;
    try {
      return statSync(file).isFile();
    } catch {
      return false;
    }
  }

  read(name: string): Promise<Buffer> {
    return collect(this.open(name), 64 << 20, name);
  }

  open(name: string): AsyncIterable<Buffer> {
    const file = this.abs(name);
    if (!file || !this.has(name)) throw new Error(`lacks ${name} (incomplete layout)`);
    return fromReadable(createReadStream(file, { highWaterMark: 1 << 20 }));
  }
}

// ---- recognising archives ------------------------------------------------------------------

/**
 * True for the first entry name of a docker save archive (`<64 hex>/`, `<64 hex>.json`,
 * `manifest.json`, `repositories`), of skopeo's and crane's docker-archives, or of an OCI
 * layout tar (`blobs/`, `index.json`, `oci-layout`).
 */
export function isImageArchiveEntry(name: string): boolean {
  const n = archiveName(name);
  // Also the names skopeo (`<hex>.tar` layers) and crane (`sha256:<hex>` config, `<hex>.tar.gz` layers) write first.
  return (
    /^(sha256:)?[0-9a-f]{64}(\.json|\.tar|\.tar\.gz|\/.*)?$/.test(n) || /^(blobs(\/.*)?|index\.json|oci-layout|manifest\.json|repositories)$/.test(n)
  );
}

/** True for a directory holding an OCI layout or an unpacked docker save archive (and no engine root). */
export async function isImageArchiveDir(dir: string): Promise<boolean> {
  const has = async (n: string): Promise<boolean> => fs.access(path.join(dir, n)).then(() => true, () => false);
  if (await has('image/overlay2')) return false;
  return (await has('oci-layout')) || ((await has('index.json')) && (await has('blobs'))) || (await has('manifest.json'));
}

// ---- manifests ---------------------------------------------------------------------------

interface ArchiveLayer {
  chainId: string;
  diffId: string;
  parent?: string;
  /** Where the layer blob is in the archive. */
  blob: string;
}

interface Descriptor {
  mediaType?: string;
  digest?: string;
  annotations?: Record<string, string>;
}

/** How deep image indexes may nest below index.json (OCI allows nesting; real layouts use 1-2). */
const MAX_INDEX_DEPTH = 4;
/** The most distinct manifests and indexes read from an OCI layout. */
const MAX_OCI_BLOBS = 10_000;
/** The largest manifest or index blob (distribution's maxManifestBodySize, 4 MiB). */
const MAX_MANIFEST_BYTES = 4 << 20;

interface OciManifest {
  digest: string;
  configPath: string;
  configDigest: string;
  blobs: string[];
}

/** What one walk of an OCI layout's indexes has read, by digest. */
interface OciWalk {
  done: Map<string, OciManifest[]>;
  /** Indexes being expanded (a cycle is corrupt). */
  open: Set<string>;
  configs: Map<string, Buffer>;
  reads: number;
}

const INDEX_TYPES = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json']);

function blobPath(digest: unknown, where: string): string {
  if (typeof digest !== 'string' || !isDigest(digest)) throw new Error(`${where}: malformed digest ${JSON.stringify(digest)}`);
  return `blobs/sha256/${digest.slice(7)}`;
}

function parseJson<T>(data: Buffer, what: string): T {
  try {
    return JSON.parse(data.toString('utf8')) as T;
  } catch {
    throw new Error(`${what} is not valid JSON (corrupt archive)`);
  }
}

/** The familiar repositories.json key of an archive tag, or undefined when it is none. */
function referenceOf(tag: string): string | undefined {
  try {
    return normalizeReference(tag);
  } catch {
    return undefined;
  }
}

export interface DockerArchiveOptions {
  /** Where notices go (spooling standard input). */
  warn?: (message: string) => void;
}

export class DockerArchiveSource implements ImageSource {
  private readonly imageList: SourceImage[] = [];
  private readonly layers = new Map<string, ArchiveLayer>();
  private readonly scans = new Map<string, { scan: LayerTarScan; tarSplit: Buffer }>();
  private readonly now = BigInt(Date.now()) * 1_000_000n;

  private constructor(
    readonly description: string,
    private readonly files: ArchiveFiles,
    /** Temp directory of spooled or decompressed input, removed on close. */
    private readonly scratch?: string,
  ) {}

  /** A docker save / OCI archive file (tar or tar.gz; '-' spools standard input), or an OCI layout / unpacked archive directory. */
  static async open(file: string, options: DockerArchiveOptions = {}): Promise<DockerArchiveSource> {
    const warn = options.warn ?? ((): void => undefined);
    const shown = file === '-' ? 'standard input' : file;
    let scratch: string | undefined;
    const scratchDir = async (): Promise<string> => (scratch ??= await fs.mkdtemp(path.join(os.tmpdir(), 'transplant-archive-')));
    try {
      let at = file;
      if (file === '-') {
        at = path.join(await scratchDir(), 'stdin');
        warn(`reading an image archive from standard input: spooling it to ${at} (it is read more than once)`);
        await new Promise<void>((resolve, reject) => pipeline(process.stdin, createWriteStream(at), (e) => (e ? reject(e) : resolve())));
      }
      let st;
      try {
        st = await fs.stat(at);
      } catch {
        throw new Error('no such file or directory');
      }
      let files: ArchiveFiles;
      if (st.isDirectory()) files = await DirFiles.open(at);
      else {
        const fh = await fs.open(at, 'r');
        const head = Buffer.alloc(6);
        try {
          await fh.read(head, 0, 6, 0);
        } finally {
          await fh.close();
        }
        const compression = detectCompression(head);
        if (compression !== 'none') {
          // Layers are read in place, more than once: a compressed stream has no offsets.
          const plain = path.join(await scratchDir(), 'archive.tar');
          warn(`${shown} is ${compression}-compressed: decompressing it once to ${plain} to read its layers in place`);
          try {
            await new Promise<void>((resolve, reject) =>
              pipeline(Readable.from(decompress(createReadStream(at, { highWaterMark: 1 << 20 }), compression)), createWriteStream(plain), (e) => (e ? reject(e) : resolve())),
            );
          } catch (err) {
            throw new Error(`corrupt or truncated archive (${(err as Error).message})`);
          }
          if (file === '-') await fs.rm(at, { force: true });
          at = plain;
        }
        files = await TarFiles.open(at);
      }
      const source = new DockerArchiveSource(shown, files, scratch);
      await source.readManifests();
      return source;
    } catch (err) {
      if (scratch) await fs.rm(scratch, { recursive: true, force: true });
      const msg = (err as Error).message;
      throw new Error(msg.startsWith(`${shown}:`) ? msg : `${shown}: ${msg}`);
    }
  }

  private fail(message: string): never {
    throw new Error(`${this.description}: ${message}`);
  }

  private async addImage(config: Buffer, blobs: string[], references: string[]): Promise<void> {
    const id = sha256Digest(config);
    let platform: ReturnType<typeof configPlatform>;
    try {
      platform = configPlatform(config);
    } catch (err) {
      this.fail(`image ${id}: ${(err as Error).message}`);
    }
    if (platform.diffIds.length !== blobs.length) {
      this.fail(`image ${id} lists ${blobs.length} layers but its config has ${platform.diffIds.length} diff_ids (corrupt archive)`);
    }
    const chains = chainIdsOf(platform.diffIds);
    chains.forEach((chainId, i) => {
      if (!this.layers.has(chainId)) this.layers.set(chainId, { chainId, diffId: platform.diffIds[i], parent: i > 0 ? chains[i - 1] : undefined, blob: blobs[i] });
    });
    const existing = this.imageList.find((img) => img.id === id);
    const refs = references.map(referenceOf).filter((r): r is string => r !== undefined);
    if (existing) {
      for (const r of refs) if (!existing.references.includes(r)) existing.references.push(r);
      return;
    }
    this.imageList.push({ id, config, references: [...new Set(refs)], chainIds: chains, architecture: platform.architecture, os: platform.os });
  }

  private async readManifests(): Promise<void> {
    const f = this.files;
    if (f.has('manifest.json')) {
      type Entry = { Config?: unknown; RepoTags?: unknown; Layers?: unknown };
      const manifest = parseJson<Entry[]>(await f.read('manifest.json'), 'manifest.json');
      if (!Array.isArray(manifest)) this.fail('manifest.json is not a list (not a docker save archive)');
      for (const m of manifest) {
        if (typeof m.Config !== 'string' || !Array.isArray(m.Layers) || !m.Layers.every((l): l is string => typeof l === 'string')) {
          this.fail('manifest.json has a malformed entry (corrupt archive)');
        }
        if (!f.has(m.Config)) this.fail(`lacks ${m.Config}, named in manifest.json (truncated or incomplete archive)`);
        const tags = Array.isArray(m.RepoTags) ? m.RepoTags.filter((t): t is string => typeof t === 'string') : [];
        for (const l of m.Layers) if (!f.has(l)) this.fail(`lacks ${l}, named in manifest.json (truncated or incomplete archive)`);
        await this.addImage(await f.read(m.Config), m.Layers, tags);
      }
      return;
    }
    if (f.has('index.json')) {
      const index = parseJson<{ manifests?: Descriptor[] }>(await f.read('index.json'), 'index.json');
      if (!Array.isArray(index.manifests)) this.fail('index.json has no manifests (not an OCI image layout)');
      const walk: OciWalk = { done: new Map(), open: new Set(), configs: new Map(), reads: 0 };
      for (const d of index.manifests) {
        if (d === null || typeof d !== 'object') this.fail('index.json: a manifest descriptor is not an object (corrupt archive)');
        await this.readOciDescriptor(d, this.refsOf(d), walk);
      }
      if (this.imageList.length === 0) this.fail('holds no image whose blobs are all present');
      return;
    }
    this.fail('holds neither manifest.json nor index.json: it is not a docker save archive or an OCI image layout');
  }

  private refsOf(d: Descriptor): string[] {
    const a = d.annotations ?? {};
    const out: string[] = [];
    const containerd = a['io.containerd.image.name'];
    if (containerd) out.push(containerd);
    const refName = a['org.opencontainers.image.ref.name'];
    // ref.name is often only a tag ("latest"); it names an image only when it holds a repository.
    if (refName && !containerd && /[/:]/.test(refName) && !/^[\w][\w.-]*$/.test(refName)) out.push(refName);
    return out;
  }

  /**
   * The image manifests a descriptor leads to (an index is followed to its manifests), each
   * blob read and parsed once however many indexes name it: a layout whose indexes fan out
   * K ways over several levels costs K reads per level, not K^levels. Bounded in depth
   * (MAX_INDEX_DEPTH) and in the number of blobs read (MAX_OCI_BLOBS).
   */
  private async manifestsOf(d: Descriptor, depth: number, walk: OciWalk): Promise<OciManifest[]> {
    if (depth > MAX_INDEX_DEPTH) this.fail(`index.json nests image indexes more than ${MAX_INDEX_DEPTH} deep (transplant's limit)`);
    const p = blobPath(d.digest, this.description);
    const digest = d.digest as string;
    const known = walk.done.get(digest);
    if (known) return known;
    if (walk.open.has(digest)) this.fail(`${p}: an image index that contains itself (corrupt archive)`);
    if (!this.files.has(p)) return []; // layouts often hold only some platforms of an index
    if (++walk.reads > MAX_OCI_BLOBS) this.fail(`its image indexes name more than ${MAX_OCI_BLOBS} distinct manifests (transplant's limit)`);
    walk.open.add(digest);
    let data: Buffer;
    try {
      data = await collect(this.files.open(p), MAX_MANIFEST_BYTES, `${p} (a manifest or index; the limit is distribution's maxManifestBodySize)`);
    } catch (err) {
      if (/limit/.test((err as Error).message)) this.fail((err as Error).message);
      walk.open.delete(digest);
      return [];
    }
    if (sha256Digest(data) !== digest) this.fail(`${p} does not match its digest (corrupt archive)`);
    const json = parseJson<{ mediaType?: unknown; manifests?: unknown; config?: Descriptor; layers?: unknown }>(data, p);
    if (json === null || typeof json !== 'object') this.fail(`${p} is not a JSON object (corrupt archive)`);
    const out: OciManifest[] = [];
    if (INDEX_TYPES.has(typeof d.mediaType === 'string' ? d.mediaType : '') || Array.isArray(json.manifests)) {
      if (json.manifests !== undefined && !Array.isArray(json.manifests)) this.fail(`${p}: manifests is not a list (corrupt archive)`);
      const seen = new Set<string>();
      for (const sub of (json.manifests ?? []) as Descriptor[]) {
        if (sub === null || typeof sub !== 'object') this.fail(`${p}: a manifest descriptor is not an object (corrupt archive)`);
        for (const m of await this.manifestsOf(sub, depth + 1, walk)) {
          if (!seen.has(m.digest)) {
            seen.add(m.digest);
            out.push(m);
          }
        }
      }
    } else if (json.config && Array.isArray(json.layers)) {
      const configPath = blobPath(json.config.digest, p);
      const blobs = (json.layers as Descriptor[]).map((l) => blobPath(l?.digest, p));
      if (this.files.has(configPath) && blobs.every((b) => this.files.has(b))) out.push({ digest, configPath, configDigest: json.config.digest as string, blobs });
    }
    walk.open.delete(digest);
    walk.done.set(digest, out);
    return out;
  }

  private async readOciDescriptor(d: Descriptor, refs: string[], walk: OciWalk): Promise<void> {
    for (const m of await this.manifestsOf(d, 0, walk)) {
      let config = walk.configs.get(m.configDigest);
      if (!config) {
        try {
          config = await this.files.read(m.configPath);
        } catch {
          continue;
        }
        if (sha256Digest(config) !== m.configDigest) this.fail(`${m.configPath} does not match its digest (corrupt archive)`);
        walk.configs.set(m.configDigest, config);
      }
      await this.addImage(config, m.blobs, refs);
    }
  }

  async images(): Promise<SourceImage[]> {
    return this.imageList;
  }

  private layerOf(chainId: string): ArchiveLayer {
    const l = this.layers.get(chainId);
    if (!l) this.fail(`layer ${chainId} is not in the archive`);
    return l;
  }

  private async blobTar(l: ArchiveLayer): Promise<{ stream: AsyncIterable<Buffer>; kind: Compression }> {
    let blob: AsyncIterable<Buffer>;
    try {
      blob = this.files.open(l.blob);
    } catch (err) {
      this.fail((err as Error).message);
    }
    return decompressedWithKind(blob, `${this.description}: ${l.blob}`);
  }

  /** First pass over a layer: its tar-split, counts and opaque directories; checks the DiffID. */
  private async scan(l: ArchiveLayer): Promise<{ scan: LayerTarScan; tarSplit: Buffer }> {
    const done = this.scans.get(l.chainId);
    if (done) return done;
    const where = `${this.description}: ${l.blob}`;
    const tar = await this.blobTar(l);
    const r = await scanLayerTar(tar.stream, where, { gzipped: tar.kind === 'gzip' });
    if (r.diffId !== l.diffId) {
      this.fail(`layer ${l.blob} hashes to ${r.diffId}, not to the DiffID ${l.diffId} its image config names (corrupt or truncated archive)`);
    }
    const out = { scan: r.scan, tarSplit: r.tarSplit };
    this.scans.set(l.chainId, out);
    return out;
  }

  async layer(chainId: string): Promise<SourceLayer> {
    const l = this.layerOf(chainId);
    const { scan, tarSplit } = await this.scan(l);
    return { chainId, diffId: l.diffId, parent: l.parent, size: scan.size, tarSplit, entries: scan.entries, bytes: scan.bytes };
  }

  async *layerItems(chainId: string): AsyncIterable<LayerItem> {
    const l = this.layerOf(chainId);
    const { scan } = await this.scan(l);
    const where = `${this.description}: ${l.blob}`;
    yield* layerTarItems((await this.blobTar(l)).stream, scan, where, this.now, l.diffId, (actual) =>
      new Error(`${this.description}: layer ${l.blob} changed while being read (it hashes to ${actual}, not ${l.diffId})`),
    );
  }

  async close(): Promise<void> {
    if (this.scratch) await fs.rm(this.scratch, { recursive: true, force: true });
  }
}
