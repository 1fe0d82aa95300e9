/**
 * What an engine data root on the target already holds, read through a TreeWriter so that
 * host directories and disk images are treated alike.
 */
import type { TreeWriter } from '../targets/tree-writer.js';
import { CACHE_ID, LINK_ID } from '../engine/digest.js';
import { IMAGEDB_CONTENT, LAYERDB, LAYERDB_SHA, LINKS, OVERLAY, REPOSITORIES, cacheDir, layerDir } from '../engine/layout.js';
import { parseRepositories, type Repositories } from '../engine/repositories.js';

export interface TargetLayer {
  chainId: string;
  cacheId: string;
  link: string;
  /** Contents of the lower file ('' for a base layer). */
  lower: string;
  committed: boolean;
}

export class TargetStore {
  readonly layers = new Map<string, TargetLayer>();
  readonly imageIds = new Set<string>();
  /** Every overlay2/ directory name (cache IDs, container mounts, orphans). */
  readonly overlayDirs = new Set<string>();
  /** Every overlay2/ directory some layer or container uses. */
  readonly usedDirs = new Set<string>();
  readonly linkIds = new Set<string>();
  repositories: Repositories = {};
  exists = false;

  private constructor(
    readonly writer: TreeWriter,
    /** The engine root inside the writer ('' or 'docker'). */
    readonly prefix: string,
  ) {}

  path(p: string): string {
    return this.prefix ? `${this.prefix}/${p}` : p;
  }

  static async read(writer: TreeWriter, prefix: string): Promise<TargetStore> {
    const t = new TargetStore(writer, prefix);
    await t.load();
    return t;
  }

  private async text(p: string): Promise<string | undefined> {
    return (await this.writer.readFile(this.path(p)))?.toString('utf8');
  }

  private async load(): Promise<void> {
    const w = this.writer;
    this.exists = (await w.kindOf(this.path('image/overlay2'))) === 'directory';
    for (const name of (await w.readdir(this.path(OVERLAY))) ?? []) if (name !== 'l') this.overlayDirs.add(name);
    for (const name of (await w.readdir(this.path(LINKS))) ?? []) this.linkIds.add(name);
    for (const hex of (await w.readdir(this.path(IMAGEDB_CONTENT))) ?? []) if (/^[0-9a-f]{64}$/.test(hex)) this.imageIds.add(`sha256:${hex}`);
    this.repositories = parseRepositories(await w.readFile(this.path(REPOSITORIES)), w.description);
    for (const hex of (await w.readdir(this.path(LAYERDB_SHA))) ?? []) {
      if (!/^[0-9a-f]{64}$/.test(hex)) continue;
      const chainId = `sha256:${hex}`;
      const cacheId = await this.text(`${layerDir(chainId)}/cache-id`);
      if (!cacheId) continue; // the engine skips such a layer too
      this.usedDirs.add(cacheId);
      const link = (await this.text(`${cacheDir(cacheId)}/link`)) ?? '';
      const lower = (await this.text(`${cacheDir(cacheId)}/lower`)) ?? '';
      const committed = (await w.kindOf(this.path(`${cacheDir(cacheId)}/committed`))) === 'file';
      this.layers.set(chainId, { chainId, cacheId, link, lower, committed });
    }
    // Containers' read-write layers and their init layers (layer/filestore.go mount-id, init-id).
    for (const id of (await w.readdir(this.path(`${LAYERDB}/mounts`))) ?? []) {
      for (const f of ['mount-id', 'init-id']) {
        const dir = await this.text(`${LAYERDB}/mounts/${id}/${f}`);
        if (dir) this.usedDirs.add(dir);
      }
    }
    // l/ links of directories nothing uses (left by an interrupted run; the engine removes
    // them with the directory when it prunes it, overlay.go Remove).
    for (const name of this.linkIds) {
      const target = await w.readlink(this.path(`${LINKS}/${name}`));
      const m = target === undefined ? undefined : /^\.\.\/([^/]+)\/diff$/.exec(target);
      if (m && !this.usedDirs.has(m[1] as string)) this.staleLinks.add(name);
    }
  }

  /** l/ links that point at an overlay2 directory no layer or container uses. */
  readonly staleLinks = new Set<string>();

  /** An overlay2 directory that no layer or container uses (left by an interrupted run). */
  isOrphanDir(name: string): boolean {
    return this.overlayDirs.has(name) && !this.usedDirs.has(name);
  }

  cacheIdFree(id: string): boolean {
    return CACHE_ID.test(id) && (!this.overlayDirs.has(id) || this.isOrphanDir(id));
  }

  linkIdFree(id: string): boolean {
    return LINK_ID.test(id) && (!this.linkIds.has(id) || this.staleLinks.has(id));
  }
}
