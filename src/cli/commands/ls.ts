/** transplant ls: the images a directory, bundle or disk image holds, and its apps.json. */
import { formatBytes } from '../../inject/inject.js';
import { appsStatus, formatAppsStatus, type AppsStatus } from '../../preload/apps.js';
import { EngineRootSource } from '../../sources/engine-root.js';
import { listImages, type ImageListing } from '../../sources/listing.js';
import { HostReader, type StoreReader } from '../../sources/store-reader.js';
import { openSource, sniff } from '../open-source.js';
import type { Output } from '../output.js';
import type { RegistryCliOptions } from '../registry-options.js';

export function formatListing(images: readonly ImageListing[]): string {
  if (images.length === 0) return '(no images)';
  const rows = images.map((i) => [i.id.slice(7, 19), `${i.os}/${i.architecture}`, formatBytes(i.size), String(i.layers), (i.references.join(', ') || '<none>') + (i.supervisor ? ' [supervisor]' : '')]);
  const head = ['IMAGE ID', 'PLATFORM', 'SIZE', 'LAYERS', 'REFERENCES'];
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  return [head, ...rows].map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]))).join('  ')).join('\n');
}

/** Images of a resin-data-like tree, and the apps.json at its root when the engine root is its docker/. */
async function listTree(reader: StoreReader, description: string): Promise<{ images: ImageListing[]; apps?: AppsStatus }> {
  const source = await EngineRootSource.over(reader, description);
  const images = await listImages(source);
  const apps = source.prefix === 'docker' ? await appsStatus(reader, await source.images(), await source.references()) : undefined;
  return { images, apps };
}

/** Text: the table, then the apps.json status when there is one. JSON: always `{ images, appsJson }` (appsJson null when absent). */
function show(out: Output, result: { images: ImageListing[]; apps?: AppsStatus }): void {
  out.data({ images: result.images, appsJson: result.apps ?? null }, () =>
    result.apps === undefined ? formatListing(result.images) : `${formatListing(result.images)}\n\n${formatAppsStatus(result.apps)}`,
  );
}

export async function lsCommand(target: string, opts: { json?: boolean; identity?: string; insecureHostKey?: boolean; image?: string[] } & RegistryCliOptions, out: Output): Promise<void> {
  const kind = await sniff(target);
  if (kind === 'disk-image') {
    const { DiskImageReader } = await import('../../disk/read-only.js');
    const reader = await DiskImageReader.open(target);
    try {
      show(out, await listTree(reader, reader.description));
    } finally {
      await reader.close();
    }
    return;
  }
  if (kind === 'engine-root') {
    // Metadata only: listing needs no root, unlike reading layer files.
    show(out, await listTree(new HostReader(target), target));
    return;
  }
  const source = await openSource(target, { identity: opts.identity, insecureHostKey: opts.insecureHostKey, registry: { ...opts, images: opts.image ?? [] } });
  try {
    show(out, { images: await listImages(source) });
  } finally {
    await source.close();
  }
}
