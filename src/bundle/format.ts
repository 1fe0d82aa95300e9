/**
 * The bundle: one tar stream (POSIX pax) that carries selected images with every attribute of
 * every file. Readable and writable as a stream by an unprivileged user on Linux and macOS,
 * because nothing in it is ever materialised on the host file system.
 *
 *   transplant-bundle.json                 manifest (always the first entry)
 *   images/<id hex>.json                   each image config, byte for byte
 *   layers/<chainID hex>/tar-split.json.gz the engine's tar-split, verbatim (when the source has it)
 *   layers/<chainID hex>/diff/…            the layer's diff/ tree: owners, modes, ns times,
 *                                          xattrs (SCHILY.xattr.*), devices, FIFOs, links
 *   transplant-bundle.end                  trailer: proves the stream is complete
 *
 * Layers appear each once, in the manifest's order: base first, unless the source streams
 * them in another order (ImageSource.contentOrder, e.g. a data-root tarball); every layer's
 * parent is in the bundle either way.
 */

export const MANIFEST_NAME = 'transplant-bundle.json';
export const TRAILER_NAME = 'transplant-bundle.end';
export const FORMAT = 'balena-transplant-bundle';
export const FORMAT_VERSION = 1;

export interface BundleImage {
  id: string;
  references: string[];
  chainIds: string[];
  architecture: string;
  os: string;
  lastUpdated?: string;
}

export interface BundleLayer {
  chainId: string;
  diffId: string;
  parent?: string;
  size: number;
  cacheId?: string;
  link?: string;
  hasTarSplit: boolean;
  /** diff/ entries (the root included) and content bytes (hard links counted once). */
  entries: number;
  bytes: number;
}

export interface BundleManifest {
  format: typeof FORMAT;
  version: number;
  createdBy: string;
  createdAt: string;
  images: BundleImage[];
  layers: BundleLayer[];
}

export interface BundleTrailer {
  layers: number;
  entries: number;
}

export const imageEntryName = (id: string): string => `images/${id.slice(7)}.json`;
export const layerPrefix = (chainId: string): string => `layers/${chainId.slice(7)}`;
export const tarSplitEntryName = (chainId: string): string => `${layerPrefix(chainId)}/tar-split.json.gz`;
export const diffEntryName = (chainId: string, path: string): string =>
  path === '.' ? `${layerPrefix(chainId)}/diff` : `${layerPrefix(chainId)}/diff/${path}`;
