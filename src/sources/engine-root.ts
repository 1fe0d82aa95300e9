/**
 * An engine data root in a host directory: /var/lib/docker, a mounted resin-data (`docker/`),
 * or a copied root file system (`var/lib/docker/`). Read only; nothing is ever written here.
 */
import { promises as fs } from 'node:fs';
import type { LayerItem } from '../layer/entry.js';
import { chainIds, sha256Digest } from '../engine/digest.js';
import { LAST_UPDATED_RE, IMAGEDB_CONTENT, IMAGEDB_METADATA, REPOSITORIES, cacheDir, diffDir, layerDir } from '../engine/layout.js';
import { parseLayerFiles } from '../engine/layerdb.js';
import { tarSplitCounts } from '../engine/tar-split.js';
import { parseRepositories, referencesOf, type Repositories } from '../engine/repositories.js';
import { HostReader, type StoreReader } from './store-reader.js';
import { countDiffTree, readDiffTree } from './diff-tree.js';
import { configPlatform, type ImageSource, type LayerOptions, type SourceImage, type SourceLayer } from './source.js';

const CANDIDATES = ['', 'docker', 'var/lib/docker', 'balena-engine', 'var/lib/balena-engine'];

/** Finds the engine data root inside a tree (itself, docker/, var/lib/docker/ …), as a relative path. */
export async function findEngineRoot(reader: StoreReader): Promise<string | undefined> {
  for (const c of CANDIDATES) {
    const p = c ? `${c}/image/overlay2` : 'image/overlay2';
    const kind = await reader.kindOf(p);
    if (kind === 'directory') return c;
    // The engine's own directories are never symlinks: one here could lead anywhere.
    if (kind === 'symlink') throw new Error(`${reader.description}: ${p} is a symlink, never followed (nothing under a data root is read through a symlink)`);
  }
  return undefined;
}

export class EngineRootSource implements ImageSource {
  private imageCache?: SourceImage[];
  private repositories?: Repositories;

  private constructor(
    readonly description: string,
    private readonly reader: StoreReader,
    /** The engine root inside the reader ('' when the reader is rooted at it). */
    readonly prefix: string,
    /** The host directory the user named, when diff/ trees can be read there (below it, never through a symlink). */
    private readonly hostTop?: string,
  ) {}

  /** A host directory: an engine root, or one holding it as docker/ or var/lib/docker/. */
  static async open(dir: string): Promise<EngineRootSource> {
    let st;
    try {
      st = await fs.stat(dir);
    } catch {
      throw new Error(`${dir}: no such directory`);
    }
    if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
    // Only root sees trusted.* xattrs (overlay's opaque markers) and can read every file:
    // reading a data root as anyone else would silently lose data.
    if (typeof process.getuid === 'function' && process.getuid() !== 0) {
      throw new Error(`reading the engine data root in ${dir} needs root (its files carry trusted.* xattrs and foreign owners); run as root, or make a tarball of it as root and use that`);
    }
    const source = await EngineRootSource.over(new HostReader(dir), dir);
    return new EngineRootSource(dir, source.reader, source.prefix, dir);
  }

  /** Any tree (e.g. the resin-data file system of a disk image); metadata only. */
  static async over(reader: StoreReader, description: string): Promise<EngineRootSource> {
    const prefix = await findEngineRoot(reader);
    if (prefix === undefined) {
      throw new Error(`${description} does not hold an engine data root (looked for image/overlay2/ in it, in docker/ and in var/lib/docker/)`);
    }
    return new EngineRootSource(description, reader, prefix);
  }

  private at(p: string): string {
    return this.prefix ? `${this.prefix}/${p}` : p;
  }

  async references(): Promise<Repositories> {
    this.repositories ??= parseRepositories(await this.reader.readFile(this.at(REPOSITORIES)), this.description);
    return this.repositories;
  }

  async images(): Promise<SourceImage[]> {
    if (this.imageCache) return this.imageCache;
    const repos = await this.references();
    const names = (await this.reader.readdir(this.at(IMAGEDB_CONTENT))) ?? [];
    const out: SourceImage[] = [];
    for (const hex of names.sort()) {
      if (!/^[0-9a-f]{64}$/.test(hex)) continue;
      const id = `sha256:${hex}`;
      const config = await this.reader.readFile(this.at(`${IMAGEDB_CONTENT}/${hex}`));
      // The engine re-hashes every config and drops those whose bytes do not match (image/fs.go).
      if (!config || sha256Digest(config) !== id) continue;
      let platform: ReturnType<typeof configPlatform>;
      try {
        platform = configPlatform(config);
      } catch {
        continue;
      }
      // Carried only in the engine's form: a malformed one would break docker image inspect on the target.
      const stamp = (await this.reader.readFile(this.at(`${IMAGEDB_METADATA}/${hex}/lastUpdated`)))?.toString('utf8');
      const lastUpdated = stamp !== undefined && LAST_UPDATED_RE.test(stamp) ? stamp : undefined;
      out.push({
        id,
        config,
        references: referencesOf(repos, id),
        chainIds: chainIds(platform.diffIds),
        architecture: platform.architecture,
        os: platform.os,
        lastUpdated,
      });
    }
    this.imageCache = out;
    return out;
  }

  async layer(chainId: string, options: LayerOptions = {}): Promise<SourceLayer> {
    const dir = this.at(layerDir(chainId));
    if ((await this.reader.kindOf(dir)) !== 'directory') throw new Error(`${this.description}: layer ${chainId} is missing from the layer store`);
    const read = (name: string): Promise<Buffer | undefined> => this.reader.readFile(`${dir}/${name}`);
    const record = parseLayerFiles(
      chainId,
      { diff: await read('diff'), size: await read('size'), 'cache-id': await read('cache-id'), parent: await read('parent') },
      this.description,
    );
    const link = (await this.reader.readFile(this.at(`${cacheDir(record.cacheId)}/link`)))?.toString('utf8');
    // lstat of both: a symlink at overlay2/<cacheId> or at its diff/ would make us read (and
    // copy into a bundle or target) files from outside the data root.
    for (const dir of [cacheDir(record.cacheId), diffDir(record.cacheId)]) {
      const kind = await this.reader.kindOf(this.at(dir));
      if (kind !== 'directory') {
        throw new Error(`${this.description}: layer ${chainId} has no data (${dir} is ${kind === undefined ? 'missing' : kind === 'symlink' ? 'a symlink, never followed' : 'not a directory'})`);
      }
    }
    const tarSplit = await read('tar-split.json.gz');
    let counts = {};
    if (options.counts) {
      // Estimates from the tar-split when they may be (one read of a small file instead of a
      // readdir and lstat of every file); the content check then holds every file to it.
      counts = (!options.exactCounts && tarSplit && (await tarSplitCounts(tarSplit).catch(() => undefined))) || countDiffTree(this.hostRootDir(), this.at(diffDir(record.cacheId)));
    }
    return { ...record, link, tarSplit, ...counts };
  }

  private hostRootDir(): string {
    if (!this.hostTop) throw new Error(`${this.description}: reading layer files from here is not supported`);
    return this.hostTop;
  }

  async *layerItems(chainId: string): AsyncIterable<LayerItem> {
    // Through layer(): the cache-id checked, overlay2/<cacheId>/diff a directory, not a symlink.
    const { cacheId } = await this.layer(chainId);
    const top = this.hostRootDir();
    yield* readDiffTree(top, { rel: this.at(diffDir(cacheId as string)) });
  }

  async close(): Promise<void> {
    /* nothing held open */
  }
}
