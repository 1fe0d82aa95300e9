/**
 * An engine data root in a host directory: /var/lib/docker, a mounted resin-data (`docker/`),
 * or a copied root file system (`var/lib/docker/`). Read only; nothing is ever written here.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { LayerItem } from '../layer/entry.js';
import { chainIds, sha256Digest } from '../engine/digest.js';
import { IMAGEDB_CONTENT, IMAGEDB_METADATA, REPOSITORIES, cacheDir, diffDir, layerDir } from '../engine/layout.js';
import { parseLayerFiles } from '../engine/layerdb.js';
import { parseRepositories, referencesOf, type Repositories } from '../engine/repositories.js';
import { readDiffTree } from './diff-tree.js';
import { configPlatform, type ImageSource, type SourceImage, type SourceLayer } from './source.js';

const CANDIDATES = ['', 'docker', 'var/lib/docker', 'balena-engine', 'var/lib/balena-engine'];

async function isDir(p: string): Promise<boolean> {
  try {
    return (await fs.stat(p)).isDirectory();
  } catch {
    return false;
  }
}

async function readOptional(p: string): Promise<Buffer | undefined> {
  try {
    return await fs.readFile(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

/** Finds the engine data root inside `dir` (itself, docker/, var/lib/docker/ …). */
export async function findEngineRoot(dir: string): Promise<string | undefined> {
  for (const c of CANDIDATES) {
    const root = path.join(dir, c);
    if (await isDir(path.join(root, 'image/overlay2'))) return root;
  }
  return undefined;
}

export class EngineRootSource implements ImageSource {
  private imageCache?: SourceImage[];
  private repositories?: Repositories;

  private constructor(
    readonly description: string,
    readonly root: string,
  ) {}

  static async open(dir: string): Promise<EngineRootSource> {
    if (!(await isDir(dir))) throw new Error(`${dir}: no such directory`);
    const root = await findEngineRoot(dir);
    if (!root) {
      throw new Error(`${dir} does not hold an engine data root (looked for image/overlay2/ in it, in docker/ and in var/lib/docker/)`);
    }
    return new EngineRootSource(dir, root);
  }

  async references(): Promise<Repositories> {
    this.repositories ??= parseRepositories(await readOptional(path.join(this.root, REPOSITORIES)), this.description);
    return this.repositories;
  }

  async images(): Promise<SourceImage[]> {
    if (this.imageCache) return this.imageCache;
    const repos = await this.references();
    const contentDir = path.join(this.root, IMAGEDB_CONTENT);
    let names: string[] = [];
    try {
      names = await fs.readdir(contentDir);
    } catch {
      names = [];
    }
    const out: SourceImage[] = [];
    for (const hex of names.sort()) {
      if (!/^[0-9a-f]{64}$/.test(hex)) continue;
      const id = `sha256:${hex}`;
      const config = await fs.readFile(path.join(contentDir, hex));
      // The engine re-hashes every config and drops those whose bytes do not match (image/fs.go).
      if (sha256Digest(config) !== id) continue;
      let platform: ReturnType<typeof configPlatform>;
      try {
        platform = configPlatform(config);
      } catch {
        continue;
      }
      const lastUpdated = (await readOptional(path.join(this.root, IMAGEDB_METADATA, hex, 'lastUpdated')))?.toString('utf8');
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

  async layer(chainId: string, options: { counts?: boolean } = {}): Promise<SourceLayer> {
    const dir = path.join(this.root, layerDir(chainId));
    if (!(await isDir(dir))) throw new Error(`${this.description}: layer ${chainId} is missing from the layer store`);
    const read = (name: string): Promise<Buffer | undefined> => readOptional(path.join(dir, name));
    const record = parseLayerFiles(
      chainId,
      { diff: await read('diff'), size: await read('size'), 'cache-id': await read('cache-id'), parent: await read('parent') },
      this.description,
    );
    const link = (await readOptional(path.join(this.root, cacheDir(record.cacheId), 'link')))?.toString('utf8');
    const diff = path.join(this.root, diffDir(record.cacheId));
    if (!(await isDir(diff))) throw new Error(`${this.description}: layer ${chainId} has no data (overlay2/${record.cacheId}/diff is missing)`);
    const counts = options.counts ? await countTree(diff) : {};
    return { ...record, link, tarSplit: await read('tar-split.json.gz'), ...counts };
  }

  async *layerItems(chainId: string): AsyncIterable<LayerItem> {
    const cacheId = (await readOptional(path.join(this.root, layerDir(chainId), 'cache-id')))?.toString('utf8');
    if (!cacheId) throw new Error(`${this.description}: layer ${chainId} has no cache-id`);
    yield* readDiffTree(path.join(this.root, diffDir(cacheId)));
  }

  async close(): Promise<void> {
    /* nothing held open */
  }
}

/** Inodes and content bytes under a directory (lstat only). */
async function countTree(dir: string): Promise<{ entries: number; bytes: number }> {
  let entries = 1;
  let bytes = 0;
  const seen = new Set<bigint>();
  const stack = [dir];
  while (stack.length > 0) {
    const d = stack.pop() as string;
    for (const dirent of await fs.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, dirent.name);
      entries++;
      if (dirent.isDirectory()) stack.push(p);
      else if (dirent.isFile()) {
        const st = await fs.lstat(p, { bigint: true });
        if (st.nlink > 1n) {
          if (seen.has(st.ino)) continue;
          seen.add(st.ino);
        }
        bytes += Number(st.size);
      }
    }
  }
  return { entries, bytes };
}

