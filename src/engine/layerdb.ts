/**
 * The files of image/overlay2/layerdb/sha256/<chainID>/ (layer/filestore.go). None ends with
 * a newline; `size` is parsed without trimming, so a newline breaks the layer at start-up.
 */
import { isDigest } from './digest.js';

export interface LayerRecord {
  chainId: string;
  diffId: string;
  parent?: string;
  size: number;
  cacheId: string;
}

export function parseLayerFiles(
  chainId: string,
  files: { diff?: Buffer; size?: Buffer; 'cache-id'?: Buffer; parent?: Buffer },
  where: string,
): LayerRecord {
  const text = (name: 'diff' | 'size' | 'cache-id' | 'parent'): string | undefined => files[name]?.toString('utf8');
  const diffId = text('diff');
  const size = text('size');
  const cacheId = text('cache-id');
  const parent = text('parent');
  if (diffId === undefined || !isDigest(diffId)) throw new Error(`${where}: layer ${chainId} has no valid diff file`);
  if (size === undefined || !/^\d+$/.test(size)) throw new Error(`${where}: layer ${chainId} has no valid size file`);
  if (cacheId === undefined || !/^[A-Za-z0-9_.-]+$/.test(cacheId) || cacheId === '.' || cacheId === '..') throw new Error(`${where}: layer ${chainId} has no valid cache-id file`);
  if (parent !== undefined && !isDigest(parent)) throw new Error(`${where}: layer ${chainId} has an invalid parent file`);
  return { chainId, diffId, parent, size: Number(size), cacheId };
}

/** The metadata files to write for a layer, exactly as the engine writes them. */
export function layerFiles(record: LayerRecord): { name: string; data: Buffer }[] {
  const out = [
    { name: 'diff', data: Buffer.from(record.diffId) },
    { name: 'size', data: Buffer.from(String(record.size)) },
    { name: 'cache-id', data: Buffer.from(record.cacheId) },
  ];
  if (record.parent) out.push({ name: 'parent', data: Buffer.from(record.parent) });
  return out;
}
