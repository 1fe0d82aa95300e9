/** ls: the images a directory, bundle, tarball, device, archive, registry or disk image holds. */
import { appsStatus, type AppsStatus } from '../preload/apps.js';
import { EngineRootSource } from '../sources/engine-root.js';
import { listImages, type ImageListing } from '../sources/listing.js';
import { HostReader, type StoreReader } from '../sources/store-reader.js';
import { openSource, sniff } from '../sources/open.js';
import { libraryCall, type RunOptions, type SourceOptions } from './options.js';

export interface LsOptions extends RunOptions, SourceOptions {
  /** With docker://HOST: the images on that registry to list. */
  image?: string[];
}

export interface LsImage {
  id: string;
  references: string[];
  os: string;
  architecture: string;
  /** Bytes of file content of its layers, as the engine counts them. */
  size: number;
  layerCount: number;
  /** A balena supervisor image (left out of extract unless named). */
  supervisor: boolean;
}

/** What the apps.json at the root of a resin-data says, and whether each service image resolves. */
export type AppsJsonStatus = AppsStatus;

export interface LsResult {
  images: LsImage[];
  /** Null unless the target is a resin-data (or a disk image's) holding an apps.json. */
  appsJson: AppsJsonStatus | null;
}

function lsImage(i: ImageListing): LsImage {
  return { id: i.id, references: i.references, os: i.os, architecture: i.architecture, size: i.size, layerCount: i.layers, supervisor: i.supervisor };
}

/** Images of a resin-data-like tree, and the apps.json at its root when the engine root is its docker/. */
async function listTree(reader: StoreReader, description: string): Promise<LsResult> {
  const source = await EngineRootSource.over(reader, description);
  const images = await listImages(source);
  const apps = source.prefix === 'docker' ? await appsStatus(reader, await source.images(), await source.references()) : undefined;
  return { images: images.map(lsImage), appsJson: apps ?? null };
}

async function lsIn(target: string, opts: LsOptions): Promise<LsResult> {
  const kind = await sniff(target);
  if (kind === 'disk-image') {
    const { DiskImageReader } = await import('../disk/read-only.js');
    const reader = await DiskImageReader.open(target);
    try {
      return await listTree(reader, reader.description);
    } finally {
      await reader.close();
    }
  }
  // Metadata only: listing needs no root, unlike reading layer files.
  if (kind === 'engine-root') return listTree(new HostReader(target), target);
  const source = await openSource(target, {
    identity: opts.identity,
    insecureHostKey: opts.insecureHostKey,
    registry: { ...opts, images: opts.image ?? [] },
    warn: opts.onWarning,
  });
  try {
    return { images: (await listImages(source)).map(lsImage), appsJson: null };
  } finally {
    await source.close();
  }
}

/** Lists the images of `target` (what `transplant ls --json` prints). */
export async function ls(target: string, options: LsOptions = {}): Promise<LsResult> {
  return libraryCall(options, () => lsIn(target, options), target);
}
