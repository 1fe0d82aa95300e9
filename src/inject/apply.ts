/**
 * Carries out an injection plan through a TreeWriter, in the order that makes an
 * interruption harmless (engine-on-disk.md):
 *   1. each copied layer's overlay2 directory (diff/ with every attribute, link, lower, work/)
 *      and its l/ link; then its layerdb entry, written in layerdb/tmp and renamed into place
 *      as layer/filestore.go does — a layer exists for the engine only once complete;
 *   2. image configs (atomic rename), so an image appears only when all its layers exist;
 *   3. repositories.json last, by atomic rename: no reference ever names an incomplete image.
 * A layer's overlay2 directory is written under a name no engine uses,
 * `overlay2/.transplant-partial-<cacheId>`, and renamed to its cache ID just before its
 * layerdb entry appears, so a run killed midway leaves partial directories that the next
 * run recognises and removes (moby 20.10 never prunes an overlay2 directory no layer
 * uses). The one rename-to-rename window left holds a complete directory under a cache ID
 * the next run of the same layer plans again (plan.ts: kept from the source, or derived from
 * the ChainID) and so replaces.
 */
import { randomBytes } from 'node:crypto';
import type { TreeWriter } from '../targets/tree-writer.js';
import type { LayerEntry } from '../layer/entry.js';
import { LayerRestart, type ImageSource } from '../sources/source.js';
import { hexOf } from '../engine/digest.js';
import {
  IMAGEDB_CONTENT,
  IMAGEDB_METADATA,
  IMAGE_ROOT,
  LAYERDB_SHA,
  LAYERDB_TMP,
  LINKS,
  MODE,
  OVERLAY,
  REPOSITORIES,
  cacheDir,
  imageConfigPath,
  imageMetadataDir,
  layerDir,
  linkPath,
  linkTarget,
} from '../engine/layout.js';
import { layerFiles } from '../engine/layerdb.js';
import { DISTRIBUTION_MODE, addV2Metadata, diffIdByDigestPath, v2MetadataPath } from '../engine/distribution.js';
import { serializeRepositories } from '../engine/repositories.js';
import { contentOrderOf } from '../bundle/write.js';
import type { InjectPlan, PlannedLayer } from './plan.js';
import { checked, fileRecords } from './content-check.js';
import { quietly } from '../run/abort.js';
import type { TargetStore } from './target-store.js';

export interface InjectProgress {
  /** The content bytes the run will write, once planned. */
  planned?(totalBytes: number): void;
  layerStarted(layer: PlannedLayer, index: number, total: number): void;
  entryWritten(entry: LayerEntry): void;
  layerDone(layer: PlannedLayer): void;
}

function tmpName(): string {
  return randomBytes(8).toString('hex');
}

/** Where a layer's overlay2 directory is written before it is renamed to its cache ID. */
export const PARTIAL_PREFIX = '.transplant-partial-';
const partialDir = (cacheId: string): string => `${OVERLAY}/${PARTIAL_PREFIX}${cacheId}`;

/** Registers what undoes one step of a run (e.g. restoring the apps.json it replaced). */
export interface UndoSteps {
  step(undo: () => Promise<void>): void;
}

/** What a failed run undoes, newest first: paths it created, and the files it replaced. */
export class Undo implements UndoSteps {
  private readonly steps: (() => Promise<void>)[] = [];

  constructor(private readonly writer: TreeWriter) {}

  push(path: string): void {
    this.steps.push(() => this.writer.remove(path));
  }

  step(undo: () => Promise<void>): void {
    this.steps.push(undo);
  }

  restore(path: string, data: Buffer, mode: number): void {
    this.steps.push(async () => {
      const tmp = `${path}.restore-${tmpName()}`;
      await this.writer.writeFile(tmp, data, mode);
      await this.writer.rename(tmp, path);
    });
  }

  /** Runs every step (newest first) to the end, even after a signal. */
  async run(): Promise<void> {
    await quietly(async () => {
      for (const step of this.steps.reverse()) {
        try {
          await step();
        } catch {
          /* best effort: what is left is what an interrupted run leaves, which the next run removes */
        }
      }
    });
    this.steps.length = 0;
  }
}

/**
 * Writes the plan, then runs `check` (e.g. verification of what was written). On failure,
 * whatever this run created is removed again and a replaced repositories.json restored,
 * before the error is passed on, so the target is left as it was.
 */
export async function applyPlan(
  plan: InjectPlan,
  source: ImageSource,
  target: TargetStore,
  progress?: InjectProgress,
  check?: () => Promise<void>,
  /** What goes beside the engine root (apps.json, keyfiles), undone with the rest on a failure. */
  finish?: (undo: UndoSteps) => Promise<void>,
): Promise<void> {
  const undo = new Undo(target.writer);
  const at: { layer?: string; entry?: string } = {};
  try {
    await write(plan, source, target, undo, progress, at);
    if (check) await check();
    if (finish) await finish(undo);
  } catch (error) {
    await undo.run();
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    if (code === 'ENAMETOOLONG') {
      const shown = at.entry && at.entry.length > 120 ? `${at.entry.slice(0, 60)}…${at.entry.slice(-40)}` : at.entry;
      throw new Error(
        `${source.description}: layer ${at.layer?.slice(7, 19) ?? '?'} holds a path the target cannot take (${shown ?? '?'}, ${at.entry?.length ?? '?'} bytes: over PATH_MAX with the target's prefix) (nothing was changed)`,
      );
    }
    if (code === 'ENOSPC' || code === 'EDQUOT') {
      // The plan's estimate passed, the file system still ran out (the estimate is not exact).
      throw new Error(
        `${target.writer.description} ran out of space while writing ${at.layer ? `layer ${at.layer.slice(7, 19)} of ` : ''}${source.description} ` +
          `(nothing was changed): free some room or choose a bigger target`,
      );
    }
    throw error;
  }
}

async function write(plan: InjectPlan, source: ImageSource, target: TargetStore, created: Undo, progress: InjectProgress | undefined, where: { layer?: string; entry?: string }): Promise<void> {
  const w: TreeWriter = target.writer;
  const at = (p: string): string => target.path(p);

  // The store's directories, as a fresh engine creates them; those this run creates are
  // removed again if it fails.
  const ensureDir = async (dir: string, mode: number): Promise<void> => {
    const parts = dir.split('/');
    for (let i = 1; i <= parts.length; i++) {
      const sub = parts.slice(0, i).join('/');
      if ((await w.kindOf(sub)) === undefined) {
        created.push(sub);
        await w.mkdirp(sub, i === parts.length ? mode : MODE.imageDirs);
      }
    }
  };
  await ensureDir(at(IMAGE_ROOT), MODE.imageDirs);
  await ensureDir(at(LAYERDB_SHA), MODE.layerdbSha);
  await ensureDir(at(LAYERDB_TMP), MODE.layerdbSha);
  await ensureDir(at(IMAGEDB_CONTENT), MODE.imageDirs);
  await ensureDir(at(IMAGEDB_METADATA), MODE.imageDirs);
  await ensureDir(at(OVERLAY), MODE.overlayRoot);
  await ensureDir(at(LINKS), MODE.linksDir);

  // What interrupted runs left: unfinished layerdb entries (ours and layer/filestore.go's own
  // write-set-*, which the engine deletes at start anyway), temp configs and repositories.json
  // (image/fs.go skips names that are not digests), and l/ links of directories nothing uses.
  // None is anything the engine uses, and this injector only writes while the engine is stopped.
  for (const name of (await w.readdir(at(LAYERDB_TMP))) ?? []) if (name.startsWith('write-set-')) await w.remove(at(`${LAYERDB_TMP}/${name}`));
  for (const name of (await w.readdir(at(IMAGEDB_CONTENT))) ?? []) if (name.startsWith('.tmp-')) await w.remove(at(`${IMAGEDB_CONTENT}/${name}`));
  for (const name of (await w.readdir(at(IMAGE_ROOT))) ?? []) if (name.startsWith('.tmp-repositories.json')) await w.remove(at(`${IMAGE_ROOT}/${name}`));
  for (const name of target.staleLinks) await w.remove(at(linkPath(name)));
  // Partial layer directories of killed runs (the target is locked: no other run is writing).
  for (const name of target.overlayDirs) if (name.startsWith(PARTIAL_PREFIX)) await w.remove(at(`${OVERLAY}/${name}`));

  // Content in the order the source streams it (ImageSource.contentOrder: lower files were
  // planned up front, so the writing order does not matter to them). The layerdb renames,
  // which make layers visible to the engine, still happen parents first (below).
  const planned = plan.layers.filter((l) => l.action === 'copy');
  const byChain = new Map(planned.map((l) => [l.chainId, l]));
  const copies = contentOrderOf(source, planned.map((l) => l.chainId)).map((c) => byChain.get(c) as PlannedLayer);
  const layerdbTmp = new Map<string, string>();
  for (const [index, layer] of copies.entries()) {
    progress?.layerStarted(layer, index, copies.length);
    where.layer = layer.chainId;
    const dir = at(partialDir(layer.cacheId));
    created.push(dir);
    await w.mkdirp(dir, MODE.cacheDir);
    const diff = `${dir}/diff`;
    const records = layer.source.tarSplit ? await fileRecords(layer.source.tarSplit, `${source.description}: layer ${layer.chainId}`) : undefined;
    for (let attempt = 0; ; attempt++) {
      let first = true;
      try {
        for await (const { entry, content } of source.layerItems(layer.chainId)) {
          if (first && entry.path !== '.') await w.mkdirp(diff, MODE.diffDir);
          first = false;
          const record = content ? records?.get(entry.path) : undefined;
          where.entry = entry.path;
          const body = content && record ? checked(content, record, () => `${source.description}: layer ${layer.chainId.slice(7, 19)}: ${entry.path}`) : content;
          await w.writeEntry(diff, entry, body);
          progress?.entryWritten(entry);
        }
      } catch (e) {
        // The source cannot stream this layer in one pass: start the layer over (once).
        if (!(e instanceof LayerRestart) || attempt > 0) throw e;
        if ((await w.kindOf(diff)) !== undefined) await w.remove(diff);
        continue;
      }
      if (first) await w.mkdirp(diff, MODE.diffDir);
      break;
    }
    await w.finishTree(diff);
    // A streamed layer's size and tar-split are known only now (ImageSource.layerAfterItems).
    const meta = source.layerAfterItems?.(layer.chainId) ?? layer.source;

    await w.writeFile(`${dir}/link`, Buffer.from(layer.link), MODE.linkFile);
    if (layer.parent) {
      await w.mkdirp(`${dir}/work`, MODE.workDir);
      if (layer.lower) await w.writeFile(`${dir}/lower`, Buffer.from(layer.lower), MODE.lowerFile);
    }
    // layerdb entry: complete in tmp/, then one rename makes it visible.
    const tmp = at(`${LAYERDB_TMP}/write-set-${tmpName()}`);
    created.push(tmp);
    await w.mkdirp(tmp, MODE.layerDir);
    const record = { chainId: layer.chainId, diffId: layer.source.diffId, parent: layer.parent, size: meta.size, cacheId: layer.cacheId };
    for (const f of layerFiles(record)) await w.writeFile(`${tmp}/${f.name}`, f.data, MODE.layerFile);
    if (meta.tarSplit) await w.writeFile(`${tmp}/tar-split.json.gz`, meta.tarSplit, MODE.layerFile);
    layerdbTmp.set(layer.chainId, tmp);
    progress?.layerDone(layer);
  }
  // Parents first: the engine never meets a layer whose parent is not complete. Each layer's
  // directory takes its cache ID, gets its l/ link, then its layerdb entry appears.
  for (const layer of planned) {
    // Left over by an interrupted run: no layer uses it, so it is ours to replace.
    if (target.isOrphanDir(layer.cacheId)) await w.remove(at(cacheDir(layer.cacheId)));
    await w.rename(at(partialDir(layer.cacheId)), at(cacheDir(layer.cacheId)));
    created.push(at(cacheDir(layer.cacheId)));
    const l = at(linkPath(layer.link));
    if ((await w.kindOf(l)) !== undefined) await w.remove(l);
    created.push(l);
    await w.symlink(linkTarget(layer.cacheId), l);
    await w.rename(layerdbTmp.get(layer.chainId) as string, at(layerDir(layer.chainId)));
    created.push(at(layerDir(layer.chainId)));
  }

  // overlay.go create(): a parent is marked committed when a child is made on it.
  for (const layer of copies) {
    if (!layer.parentCacheId) continue;
    const committed = at(`${cacheDir(layer.parentCacheId)}/committed`);
    if ((await w.kindOf(committed)) === undefined) {
      created.push(committed);
      await w.writeFile(committed, Buffer.alloc(0), MODE.committed);
    }
  }

  await writeDistribution(plan, target, created);

  for (const { image, present } of plan.images) {
    if (present) continue;
    const tmp = at(`${IMAGEDB_CONTENT}/.tmp-${hexOf(image.id)}-${tmpName()}`);
    created.push(tmp);
    await w.writeFile(tmp, image.config, MODE.imageConfig);
    await w.rename(tmp, at(imageConfigPath(image.id)));
    created.push(at(imageConfigPath(image.id)));
    if (image.lastUpdated) {
      if ((await w.kindOf(at(imageMetadataDir(image.id)))) === undefined) created.push(at(imageMetadataDir(image.id)));
      await w.mkdirp(at(imageMetadataDir(image.id)), MODE.imageDirs);
      await w.writeFile(at(`${imageMetadataDir(image.id)}/lastUpdated`), Buffer.from(image.lastUpdated), MODE.imageMetadata);
    }
  }

  if (plan.references.added.length > 0 || plan.references.moved.length > 0) {
    const tmp = at(`${IMAGE_ROOT}/.tmp-repositories.json${tmpName()}`);
    const previous = await w.readFile(at(REPOSITORIES));
    created.push(tmp);
    await w.writeFile(tmp, serializeRepositories(plan.references.repositories), MODE.repositories);
    await w.rename(tmp, at(REPOSITORIES));
    if (previous) created.restore(at(REPOSITORIES), previous, MODE.repositories);
    else created.push(at(REPOSITORIES));
  }
}

/**
 * The pull cache (engine/distribution.ts) for every layer of the images a registry source
 * pulled, copied or reused (the engine records both, xfer/download.go Registered). Each file is written
 * beside its place and renamed over it; a file this run replaced is restored on failure.
 */
async function writeDistribution(plan: InjectPlan, target: TargetStore, created: Undo): Promise<void> {
  const w = target.writer;
  const at = (p: string): string => target.path(p);
  const put = async (file: string, data: Buffer): Promise<void> => {
    const previous = await w.readFile(at(file));
    if (previous?.equals(data)) return;
    const dir = file.slice(0, file.lastIndexOf('/'));
    const parts = dir.split('/');
    for (let i = 1; i <= parts.length; i++) {
      const sub = at(parts.slice(0, i).join('/'));
      if ((await w.kindOf(sub)) === undefined) {
        created.push(sub);
        await w.mkdirp(sub, DISTRIBUTION_MODE.dir);
      }
    }
    const tmp = at(`${dir}/.tmp-${tmpName()}`);
    created.push(tmp);
    await w.writeFile(tmp, data, DISTRIBUTION_MODE.file);
    await w.rename(tmp, at(file));
    if (previous) created.restore(at(file), previous, DISTRIBUTION_MODE.file);
    else created.push(at(file));
  };
  const diffIds = new Map(plan.layers.map((l) => [l.chainId, l.source.diffId]));
  // docker pull records nothing for an image it already has (pull_v2.go pullSchema2).
  for (const { image, present } of plan.images) {
    if (present || !image.distribution) continue;
    for (const [i, d] of image.distribution.entries()) {
      const diffId = diffIds.get(image.chainIds[i] as string);
      if (!diffId) continue;
      const metadataFile = v2MetadataPath(diffId);
      await put(metadataFile, addV2Metadata(await w.readFile(at(metadataFile)), { Digest: d.digest, SourceRepository: d.sourceRepository, HMAC: '' }));
      await put(diffIdByDigestPath(d.digest), Buffer.from(diffId));
    }
  }
}
