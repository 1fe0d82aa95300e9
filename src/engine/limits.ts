/**
 * Bounds on what a source may make us hold, the way docker bounds what it reads: the engine's
 * metadata files are small, and a file far larger than any the engine writes is an attack on
 * memory or temp space, not a store. Each limit has a name, and every refusal names it.
 *
 * - image configs: 4 MiB, the bound distribution puts on a manifest body
 *   (registry/handlers/manifests.go maxManifestBodySize = 4 << 20) and containers/image on a
 *   config blob (internal/iolimits MaxConfigBodySize);
 * - the small layerdb and overlay2 files (diff, size, cache-id, parent, link, lower,
 *   lastUpdated, descriptor.json): 64 KiB (lower, the largest, is at most 128 links of 29
 *   bytes: daemon/graphdriver/overlay2/overlay.go maxDepth);
 * - repositories.json: 64 MiB (hundreds of thousands of references);
 * - one tar-split.json.gz: 256 MiB (a layer of millions of files compresses to tens of MB);
 * - the bundle manifest: 64 MiB.
 */
export interface Limit {
  bytes: number;
  /** For messages: "<size> (the limit on …)". */
  name: string;
}

const MiB = 1 << 20;

export const LIMITS = {
  config: { bytes: 4 * MiB, name: '4 MiB (the limit on an image config, as a registry bounds a manifest)' },
  smallFile: { bytes: 64 << 10, name: '64 KiB (the limit on an engine metadata file such as diff, size, cache-id, parent, link, lower or lastUpdated)' },
  repositories: { bytes: 64 * MiB, name: '64 MiB (the limit on repositories.json)' },
  tarSplit: { bytes: 256 * MiB, name: '256 MiB (the limit on one layer\'s tar-split.json.gz)' },
  appsJson: { bytes: 16 * MiB, name: '16 MiB (the limit on apps.json)' },
  bundleManifest: { bytes: 64 * MiB, name: '64 MiB (the limit on a bundle manifest)' },
  /** All metadata a streamed source (a data-root tarball) holds in memory at once. */
  heldMetadata: { bytes: 512 * MiB, name: '512 MiB (the limit on the metadata of one source held in memory)' },
} as const satisfies Record<string, Limit>;

/** The limit on an engine metadata file, by its path relative to the data root. */
export function metadataLimit(rel: string): Limit {
  if (rel.endsWith('/tar-split.json.gz')) return LIMITS.tarSplit;
  if (rel.endsWith('repositories.json')) return LIMITS.repositories;
  if (rel === 'apps.json') return LIMITS.appsJson;
  if (/imagedb\/content\/sha256\/[^/]+$/.test(rel)) return LIMITS.config;
  return LIMITS.smallFile;
}

/**
 * The engine's limit on a layer chain: moby's layer store refuses to register a layer whose
 * parent chain is already this deep (layer/layer_store.go maxLayerDepth = 125, "to account
 * for the 127 max in some graphdrivers plus the 2 additional layers used to create a
 * rwlayer"), with ErrMaxDepthExceeded, "max depth exceeded" (layer/layer.go); overlay2 itself
 * refuses more than 128 lowers (daemon/graphdriver/overlay2/overlay.go maxDepth).
 */
export const MAX_LAYER_DEPTH = 125;

/** Why an image of this many layers cannot be used by the engine, or undefined when it can. */
export function layerDepthProblem(layers: number, image: string): string | undefined {
  if (layers <= MAX_LAYER_DEPTH) return undefined;
  return `image ${image} has ${layers} layers; the engine refuses chains deeper than ${MAX_LAYER_DEPTH} layers (max depth exceeded: moby layer/layer_store.go maxLayerDepth)`;
}

/** Refuses images whose layer chain is deeper than the engine allows, with the engine's reason (before any layer is read). */
export function checkLayerDepths(images: readonly { id: string; references: readonly string[]; chainIds: readonly string[] }[], where: string): void {
  for (const img of images) {
    const problem = layerDepthProblem(img.chainIds.length, img.references[0] ?? img.id);
    if (problem) throw new Error(`${where}: ${problem}`);
  }
}
