/** transplant ls: the images a directory, bundle or disk image holds. */
import { formatBytes } from '../../inject/inject.js';
import { isSupervisorImage } from '../../selection/select.js';
import type { ImageSource } from '../../sources/source.js';
import { openSource, sniff } from '../open-source.js';
import type { Output } from '../output.js';

export interface ImageListing {
  id: string;
  references: string[];
  architecture: string;
  os: string;
  size: number;
  layers: number;
  supervisor: boolean;
}

export async function listImages(source: ImageSource): Promise<ImageListing[]> {
  const out: ImageListing[] = [];
  const sizes = new Map<string, number>();
  for (const img of await source.images()) {
    let size = 0;
    for (const chainId of img.chainIds) {
      if (!sizes.has(chainId)) sizes.set(chainId, (await source.layer(chainId)).size);
      size += sizes.get(chainId) as number;
    }
    out.push({ id: img.id, references: img.references, architecture: img.architecture, os: img.os, size, layers: img.chainIds.length, supervisor: isSupervisorImage(img) });
  }
  return out;
}

export function formatListing(images: readonly ImageListing[]): string {
  if (images.length === 0) return '(no images)';
  const rows = images.map((i) => [i.id.slice(7, 19), `${i.os}/${i.architecture}`, formatBytes(i.size), String(i.layers), (i.references.join(', ') || '<none>') + (i.supervisor ? ' [supervisor]' : '')]);
  const head = ['IMAGE ID', 'PLATFORM', 'SIZE', 'LAYERS', 'REFERENCES'];
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  return [head, ...rows].map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]))).join('  ')).join('\n');
}

export async function lsCommand(target: string, opts: { json?: boolean }, out: Output): Promise<void> {
  if ((await sniff(target)) === 'disk-image') {
    const { listDiskImage } = await import('../../disk/list.js');
    const images = await listDiskImage(target);
    out.data(images, () => formatListing(images));
    return;
  }
  const source = await openSource(target);
  try {
    const images = await listImages(source);
    out.data(images, () => formatListing(images));
  } finally {
    await source.close();
  }
}
