/**
 * What every place images come from yields: image configs with their references, and each
 * layer's metadata and files. Engine roots, data-root tarballs, devices, `docker save`
 * archives and bundles all implement ImageSource; the rest of the pipeline knows no other.
 */
import type { LayerItem } from '../layer/entry.js';

export interface SourceImage {
  /** sha256:… of the config bytes. */
  id: string;
  /** The config JSON, byte for byte. */
  config: Buffer;
  /** repositories.json keys naming this image in the source (familiar form). */
  references: string[];
  /** ChainIDs of rootfs.diff_ids, base first. */
  chainIds: string[];
  architecture: string;
  os: string;
  /** imagedb/metadata lastUpdated, when the source has one. */
  lastUpdated?: string;
  /**
   * Pulled from a registry: where each layer (aligned with chainIds) came from, for the
   * engine's distribution/ metadata (diffid-by-digest, v2metadata-by-diffid), which lets the
   * device's engine skip the download next time. The injector writes it for images the
   * target does not hold yet, as docker pull does.
   */
  distribution?: DistributionSource[];
}

export interface SourceLayer {
  chainId: string;
  diffId: string;
  parent?: string;
  /** layerdb `size`: bytes of file content as the engine counted them. */
  size: number;
  /** The source's overlay2 directory name and link ID, kept in the target when free. */
  cacheId?: string;
  link?: string;
  /** tar-split.json.gz bytes, verbatim. */
  tarSplit?: Buffer;
  /** Entries (inodes) and content bytes of diff/, when known before streaming. */
  entries?: number;
  bytes?: number;
}

export interface DistributionSource {
  /** sha256:… of the compressed blob, as the manifest names it. */
  digest: string;
  /** Fully qualified repository (`docker.io/library/alpine`, `registry.example.com/org/app`). */
  sourceRepository: string;
}

export interface LayerOptions {
  /** The caller will write the layer: it needs size, tarSplit, entries and bytes. */
  counts?: boolean;
  /**
   * With counts: the caller can take size and tarSplit after the layer's items
   * (layerAfterItems) and needs entries/bytes only as estimates. A source that learns them
   * only by reading the layer (a registry) then reads it once instead of twice.
   */
  streamed?: boolean;
  /**
   * With counts: entries and bytes must be exactly what layerItems will yield (a bundle's
   * manifest states them before the layer's files). Without it a source may give estimates
   * (an engine root counts its tar-split instead of walking diff/).
   */
  exactCounts?: boolean;
}

/**
 * Thrown by layerItems when what it already yielded must be discarded (a registry layer in
 * an order that cannot be converted in one pass): the caller removes what it wrote of the
 * layer and asks for its items again; the source then reads the layer in two passes.
 */
export class LayerRestart extends Error {}

export interface ImageSource {
  /** For messages: the path or URL the user gave. */
  readonly description: string;
  images(): Promise<SourceImage[]>;
  /**
   * Metadata of one layer (by ChainID). `counts` asks for `entries`/`bytes` too, which some
   * sources can only learn by walking the layer; callers that write the layer ask with it.
   * Without it, a source that must download a layer to learn its `size` and `tarSplit` (a
   * registry) answers from its manifest alone (size 0, no tarSplit): that is how the
   * planner looks at layers the target already has without fetching them.
   */
  layer(chainId: string, options?: LayerOptions): Promise<SourceLayer>;
  /**
   * Optional: the layers this run will write, in the order it will ask for them. A source
   * that fetches over a network starts on them now, a few at a time, so that layer() and
   * layerItems() find them under way. `streamed` as for layer().
   */
  prefetch?(chainIds: readonly string[], options?: { streamed?: boolean }): void;
  /**
   * Optional, for layers asked for with `streamed`: the layer's metadata (size, tarSplit,
   * counts) once its layerItems have been read to the end; undefined when the source gave
   * them up front.
   */
  layerAfterItems?(chainId: string): SourceLayer | undefined;
  /**
   * The files of a layer's diff/, with every attribute. Sources that are streams (bundles,
   * tarballs) require layers to be asked for in their stored order.
   */
  layerItems(chainId: string): AsyncIterable<LayerItem>;
  /**
   * Optional: the given ChainIDs (each once) reordered into the order this source streams
   * their files cheaply (a tarball read front to back). Writers that do not depend on the
   * order of layer content (the bundle writer, the injector, which plan lower files up
   * front) ask for layerItems in this order. Absent: any order is as cheap as another.
   */
  contentOrder?(chainIds: readonly string[]): string[];
  close(): Promise<void>;
  /**
   * Optional: the most bytes of layer content (file data and tar headers together) the
   * input can hold, known from its own size, for sources whose layer counts are declared
   * by the input (a bundle's manifest) rather than counted. Planning refuses a declaration
   * above it, so a disk is never grown on the input's word alone.
   */
  readonly contentLimit?: number;
}

/** Parses the architecture/os of an image config (image/image.go V1Image). */
export function configPlatform(config: Buffer): { architecture: string; os: string; diffIds: string[] } {
  let json: { architecture?: unknown; os?: unknown; rootfs?: { type?: unknown; diff_ids?: unknown } };
  try {
    json = JSON.parse(config.toString('utf8')) as typeof json;
  } catch {
    throw new Error('image config is not valid JSON');
  }
  const diffIds = json.rootfs?.diff_ids;
  if (!Array.isArray(diffIds) || !diffIds.every((d): d is string => typeof d === 'string')) {
    throw new Error('image config has no rootfs.diff_ids');
  }
  return {
    architecture: typeof json.architecture === 'string' ? json.architecture : 'unknown',
    os: typeof json.os === 'string' ? json.os : 'linux',
    diffIds,
  };
}
