/**
 * The injection plan: which layers the target already has (same ChainID: reused, never
 * copied), which are copied and under which cache and link IDs, which references change,
 * and how many bytes and inodes it needs. Pure decisions; apply.ts does the writing.
 */
import { createHash } from 'node:crypto';
import { chainIds, newCacheId, newLinkId } from '../engine/digest.js';
import { configPlatform } from '../sources/source.js';
import { mergeReferences, type MergeOutcome } from '../engine/repositories.js';
import type { SourceImage, SourceLayer } from '../sources/source.js';
import type { TargetStore } from './target-store.js';

export interface PlannedLayer {
  chainId: string;
  action: 'reuse' | 'copy';
  cacheId: string;
  link: string;
  /** The lower file's content for a copied layer (immediate parent first), '' for a base layer. */
  lower: string;
  parent?: string;
  /** Parent's cache ID (to mark it `committed`). */
  parentCacheId?: string;
  source: SourceLayer;
}

export interface InjectPlan {
  images: { image: SourceImage; present: boolean }[];
  layers: PlannedLayer[];
  references: MergeOutcome;
  /** Space the copied layers need on the target, estimated before writing. */
  bytes: number;
  inodes: number;
  filesToCopy: number;
}

// Per copied layer: its overlay2 dir, diff, work, link, lower, committed, l/ link, layerdb dir and files.
const INODES_PER_LAYER = 12;

/** A cache ID for a layer whose source has none: 64 hex like the engine's, the same for every run. */
export function derivedCacheId(chainId: string): string {
  return createHash('sha256').update(`transplant cache-id ${chainId}`).digest('hex');
}
const BYTES_PER_LAYER = 64 * 1024;

/**
 * Checks that each image's layers form the chain its config names (layer/layer.go
 * CreateChainID): image.chainIds are the ChainIDs of rootfs.diff_ids, each layer's DiffID is
 * the config's and its parent the ChainID below it. A source whose metadata disagrees would
 * give a layer store the engine does not load (the image is dropped), or the wrong parent.
 */
export function checkChains(images: readonly SourceImage[], layers: readonly SourceLayer[], where: string): void {
  const byChain = new Map(layers.map((l) => [l.chainId, l]));
  for (const image of images) {
    const name = image.references[0] ?? image.id;
    let diffIds: string[];
    try {
      diffIds = configPlatform(image.config).diffIds;
    } catch (e) {
      throw new Error(`${where}: image ${name}: ${(e as Error).message}`);
    }
    let expected: string[];
    try {
      expected = chainIds(diffIds);
    } catch (e) {
      throw new Error(`${where}: image ${name}: ${(e as Error).message}`);
    }
    if (expected.length !== image.chainIds.length || expected.some((c, i) => c !== image.chainIds[i])) {
      throw new Error(`${where}: image ${name} lists layers that are not the chain of its config's diff_ids (corrupt input)`);
    }
    for (const [i, chainId] of expected.entries()) {
      const layer = byChain.get(chainId);
      if (!layer) continue;
      if (layer.diffId !== diffIds[i]) throw new Error(`${where}: layer ${chainId} of image ${name} has DiffID ${layer.diffId}, its config says ${diffIds[i]} (corrupt input)`);
      if ((layer.parent ?? undefined) !== (i === 0 ? undefined : expected[i - 1])) {
        throw new Error(`${where}: layer ${chainId} of image ${name} names ${layer.parent ?? 'no'} parent, the chain says ${i === 0 ? 'none' : expected[i - 1]} (corrupt input)`);
      }
    }
  }
}

export function planInjection(
  images: readonly SourceImage[],
  layers: readonly SourceLayer[],
  target: TargetStore,
  /** References to add beyond the images' own (e.g. the exact names apps.json uses). */
  extraReferences: readonly { key: string; imageId: string }[] = [],
  /** What the input can hold (ImageSource.contentLimit); the caller names the input in messages. */
  input?: { contentLimit?: number },
): InjectPlan {
  const planned = new Map<string, PlannedLayer>();
  const takenCache = new Set<string>();
  const takenLinks = new Set<string>();
  const out: PlannedLayer[] = [];
  for (const layer of layers) {
    const existing = target.layers.get(layer.chainId);
    const parentPlan = layer.parent ? planned.get(layer.parent) : undefined;
    if (layer.parent && !parentPlan) throw new Error(`layer ${layer.chainId} comes before its parent ${layer.parent}`);
    let p: PlannedLayer;
    if (existing) {
      p = { chainId: layer.chainId, action: 'reuse', cacheId: existing.cacheId, link: existing.link, lower: existing.lower, parent: layer.parent, source: layer };
    } else {
      // The source's cache ID, else one derived from the ChainID: a rerun after a killed run
      // plans the same directory again and replaces what that run left (apply.ts).
      const wanted = layer.cacheId || derivedCacheId(layer.chainId);
      let cacheId = target.cacheIdFree(wanted) && !takenCache.has(wanted) ? wanted : newCacheId();
      while (!target.cacheIdFree(cacheId) || takenCache.has(cacheId)) cacheId = newCacheId();
      let link = layer.link && target.linkIdFree(layer.link) && !takenLinks.has(layer.link) ? layer.link : newLinkId();
      while (!target.linkIdFree(link) || takenLinks.has(link)) link = newLinkId();
      // overlay.go getLower: "l/<parent link>" then the parent's own lower chain.
      const lower = parentPlan ? [`l/${parentPlan.link}`, ...(parentPlan.lower ? [parentPlan.lower] : [])].join(':') : '';
      p = { chainId: layer.chainId, action: 'copy', cacheId, link, lower, parent: layer.parent, parentCacheId: parentPlan?.cacheId, source: layer };
    }
    takenCache.add(p.cacheId);
    takenLinks.add(p.link);
    planned.set(layer.chainId, p);
    out.push(p);
  }
  const additions = [...images.flatMap((image) => image.references.map((key) => ({ key, imageId: image.id }))), ...extraReferences];
  const references = mergeReferences(target.repositories, additions);
  const copies = out.filter((l) => l.action === 'copy');
  checkDeclaredSizes(copies, input);
  const configBytes = images.filter((i) => !target.imageIds.has(i.id)).reduce((n, i) => n + i.config.length + 4096, 0);
  return {
    images: images.map((image) => ({ image, present: target.imageIds.has(image.id) })),
    layers: out,
    references,
    bytes: copies.reduce((n, l) => n + (l.source.bytes ?? l.source.size) + (l.source.tarSplit?.length ?? 0) + BYTES_PER_LAYER, 0) + configBytes,
    inodes: copies.reduce((n, l) => n + (l.source.entries ?? 0) + INODES_PER_LAYER, 0) + images.length * 3,
    filesToCopy: copies.reduce((n, l) => n + (l.source.entries ?? 0), 0),
  };
}

/**
 * Sizes a source declares (a bundle manifest's bytes and entries) decide how far a disk
 * target grows before any content arrives. They cannot exceed what the input holds: every
 * byte of content and every entry's 512-byte tar header is in it.
 */
function checkDeclaredSizes(copies: readonly PlannedLayer[], input?: { contentLimit?: number }): void {
  const limit = input?.contentLimit;
  if (limit === undefined) return;
  let bytes = 0;
  let entries = 0;
  for (const l of copies) {
    const declaredBytes = l.source.bytes ?? l.source.size;
    const declaredEntries = l.source.entries ?? 0;
    if (!Number.isSafeInteger(declaredBytes) || declaredBytes < 0 || !Number.isSafeInteger(declaredEntries) || declaredEntries < 0) {
      throw new Error(`layer ${l.chainId} declares an impossible size (corrupt input)`);
    }
    bytes += declaredBytes;
    entries += declaredEntries;
  }
  if (bytes + entries * 512 > limit) {
    throw new Error(
      `its layers declare ${bytes} bytes in ${entries} files, more than the ${limit} bytes the input can hold (corrupt input); nothing was written`,
    );
  }
}

export function planChangesNothing(plan: InjectPlan): boolean {
  return (
    plan.layers.every((l) => l.action === 'reuse') &&
    plan.images.every((i) => i.present) &&
    plan.references.added.length === 0 &&
    plan.references.moved.length === 0
  );
}
