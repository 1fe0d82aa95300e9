/** transplant ls: the images a directory, bundle or disk image holds. */
import { formatBytes } from '../../inject/inject.js';
import { listImages, type ImageListing } from '../../sources/listing.js';
import { openSource, sniff } from '../open-source.js';
import type { Output } from '../output.js';

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
