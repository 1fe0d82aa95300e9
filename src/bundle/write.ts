/** Writes a bundle (see format.ts) from any ImageSource, as a stream. */
import type { Writable } from 'node:stream';
import type { LayerEntry } from '../layer/entry.js';
import { tarHeaderOf } from '../layer/tar-entry.js';
import { emptyHeader, type TarHeader } from '../tar/header.js';
import { TarPacker } from '../tar/pack.js';
import type { ImageSource, SourceImage, SourceLayer } from '../sources/source.js';
import { VERSION } from '../version.js';
import { checkChains } from '../inject/plan.js';
import { checkLayerDepths } from '../engine/limits.js';
import {
  FORMAT,
  FORMAT_VERSION,
  MANIFEST_NAME,
  TRAILER_NAME,
  diffEntryName,
  imageEntryName,
  tarSplitEntryName,
  type BundleLayer,
  type BundleManifest,
  type BundleTrailer,
} from './format.js';

export interface LayerProgress {
  /** The content bytes the whole run will write, once planned. */
  planned?(totalBytes: number): void;
  layerStarted(layer: SourceLayer, index: number, total: number): void;
  entryWritten(entry: LayerEntry): void;
  layerDone(layer: SourceLayer): void;
}

/** The layers the images need, each once, parents before children. */
export function layersOf(images: readonly SourceImage[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const img of images) {
    for (const chainId of img.chainIds) {
      if (!seen.has(chainId)) {
        seen.add(chainId);
        out.push(chainId);
      }
    }
  }
  return out;
}

/**
 * The order to ask a source for the content of these layers: its contentOrder() when it has
 * one (a tarball streams layers in the order they are stored), else the order given.
 */
export function contentOrderOf(source: ImageSource, chainIds: readonly string[]): string[] {
  const order = source.contentOrder?.(chainIds);
  if (!order || order.length !== chainIds.length || new Set(order).size !== order.length || !order.every((c) => chainIds.includes(c))) return [...chainIds];
  return order;
}

export async function planBundle(source: ImageSource, images: readonly SourceImage[]): Promise<{ manifest: BundleManifest; layers: SourceLayer[] }> {
  checkLayerDepths(images, source.description);
  const layers: SourceLayer[] = [];
  const order = contentOrderOf(source, layersOf(images));
  source.prefetch?.(order);
  for (const chainId of order) layers.push(await source.layer(chainId, { counts: true, exactCounts: true }));
  checkChains(images, layers, source.description);
  const manifestLayers: BundleLayer[] = layers.map((l) => ({
    chainId: l.chainId,
    diffId: l.diffId,
    parent: l.parent,
    size: l.size,
    cacheId: l.cacheId,
    link: l.link,
    hasTarSplit: l.tarSplit !== undefined,
    entries: l.entries ?? 0,
    bytes: l.bytes ?? l.size,
  }));
  const manifest: BundleManifest = {
    format: FORMAT,
    version: FORMAT_VERSION,
    createdBy: `transplant ${VERSION}`,
    createdAt: new Date().toISOString(),
    images: images.map((img) => ({
      id: img.id,
      references: img.references,
      chainIds: img.chainIds,
      architecture: img.architecture,
      os: img.os,
      lastUpdated: img.lastUpdated,
      distribution: img.distribution?.map((d) => ({ digest: d.digest, sourceRepository: d.sourceRepository })),
    })),
    layers: manifestLayers,
  };
  return { manifest, layers };
}

function metaHeader(name: string, size: number): TarHeader {
  return { ...emptyHeader(), name, size, mode: 0o644, mtime: BigInt(Date.now()) * 1_000_000n };
}

export function entryHeader(chainId: string, entry: LayerEntry): TarHeader {
  return tarHeaderOf(entry, diffEntryName(chainId, entry.path), diffEntryName(chainId, entry.linkTarget ?? ''));
}

export async function writeBundle(
  source: ImageSource,
  images: readonly SourceImage[],
  out: Writable,
  progress?: LayerProgress,
): Promise<BundleManifest> {
  const { manifest, layers } = await planBundle(source, images);
  progress?.planned?.(manifest.layers.reduce((n, l) => n + l.bytes, 0));
  const tar = new TarPacker(out);
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 2));
  await tar.add(metaHeader(MANIFEST_NAME, manifestBytes.length), manifestBytes);
  for (const img of images) await tar.add(metaHeader(imageEntryName(img.id), img.config.length), img.config);
  for (const layer of layers) {
    if (layer.tarSplit) await tar.add(metaHeader(tarSplitEntryName(layer.chainId), layer.tarSplit.length), layer.tarSplit);
  }
  let totalEntries = 0;
  for (const [index, layer] of layers.entries()) {
    progress?.layerStarted(layer, index, layers.length);
    let count = 0;
    for await (const { entry, content } of source.layerItems(layer.chainId)) {
      await tar.add(entryHeader(layer.chainId, entry), content);
      count++;
      progress?.entryWritten(entry);
    }
    const planned = manifest.layers[index];
    if (planned.entries !== count) {
      // The manifest is already written; a source that changed under us cannot give a consistent bundle.
      throw new Error(`${source.description}: layer ${layer.chainId} changed while it was read (${planned.entries} entries counted, ${count} read)`);
    }
    totalEntries += count;
    progress?.layerDone(layer);
  }
  const trailer: BundleTrailer = { layers: layers.length, entries: totalEntries };
  const trailerBytes = Buffer.from(JSON.stringify(trailer));
  await tar.add(metaHeader(TRAILER_NAME, trailerBytes.length), trailerBytes);
  await tar.finish();
  return manifest;
}
