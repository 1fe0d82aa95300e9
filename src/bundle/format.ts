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
import { LAST_UPDATED_RE } from '../engine/layout.js';

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
  /**
   * Pulled from a registry: each layer's blob digest and repository, aligned with chainIds
   * (SourceImage.distribution), so that inject writes the distribution/ metadata docker pull
   * would have. Optional: bundles without it (older ones, other sources) stay readable.
   */
  distribution?: { digest: string; sourceRepository: string }[];
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

/**
 * Checks a parsed manifest field by field before anything trusts it: every field has the
 * type the writer gives it (a string is never an object with a `length`, a count is a safe
 * non-negative integer), every digest is a digest, every parent and image layer is in the
 * bundle. An error names the field (`images[0].lastUpdated`) and what was found there.
 * cacheId and link values that are not the engine's form are dropped (the target makes new
 * ones), as before.
 */
export function validateManifest(json: unknown, where: string): BundleManifest {
  const fail = (message: string): never => {
    throw new Error(`${where}: malformed bundle manifest: ${message}`);
  };
  const kind = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : typeof v === 'string' ? 'a string' : `a ${typeof v} (${String(v).slice(0, 40)})`);
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const str = (o: Record<string, unknown>, key: string, field: string, opts: { optional?: boolean; max?: number; re?: RegExp; what?: string } = {}): string | undefined => {
    const v = o[key];
    if (v === undefined && opts.optional) return undefined;
    if (typeof v !== 'string') return fail(`${field} must be ${opts.what ?? 'a string'}, found ${kind(v)}`);
    if (v.length > (opts.max ?? 4096)) return fail(`${field} is ${v.length} characters, more than the ${opts.max ?? 4096} allowed`);
    if (opts.re && !opts.re.test(v)) return fail(`${field} must be ${opts.what ?? 'a string'}, found ${JSON.stringify(v.slice(0, 80))}`);
    return v;
  };
  const count = (o: Record<string, unknown>, key: string, field: string): number => {
    const v = o[key];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) return fail(`${field} must be a non-negative integer, found ${kind(v)}`);
    return v;
  };
  const DIGEST = /^sha256:[0-9a-f]{64}$/;
  const digest = { re: DIGEST, what: 'a sha256 digest', max: 71 };

  if (!isObject(json) || json.format !== FORMAT) throw new Error(`${where} is not a transplant bundle (no ${MANIFEST_NAME} first)`);
  if (json.version !== FORMAT_VERSION) throw new Error(`${where} is bundle format version ${String(json.version).slice(0, 40)}; this transplant reads version ${FORMAT_VERSION}: upgrade transplant`);
  str(json, 'createdBy', 'createdBy');
  str(json, 'createdAt', 'createdAt');
  if (!Array.isArray(json.images)) fail(`images must be an array, found ${kind(json.images)}`);
  if (!Array.isArray(json.layers)) fail(`layers must be an array, found ${kind(json.layers)}`);

  const layers: BundleLayer[] = [];
  const known = new Set<string>();
  (json.layers as unknown[]).forEach((l, i) => {
    const f = `layers[${i}]`;
    if (!isObject(l)) return fail(`${f} must be an object, found ${kind(l)}`);
    const chainId = str(l, 'chainId', `${f}.chainId`, digest) as string;
    if (known.has(chainId)) fail(`${f}.chainId ${chainId} is in the bundle twice`);
    known.add(chainId);
    if (typeof l.hasTarSplit !== 'boolean') fail(`${f}.hasTarSplit must be true or false, found ${kind(l.hasTarSplit)}`);
    const layer: BundleLayer = {
      chainId,
      diffId: str(l, 'diffId', `${f}.diffId`, digest) as string,
      parent: str(l, 'parent', `${f}.parent`, { ...digest, optional: true }),
      size: count(l, 'size', `${f}.size`),
      cacheId: str(l, 'cacheId', `${f}.cacheId`, { optional: true, max: 256 }),
      link: str(l, 'link', `${f}.link`, { optional: true, max: 256 }),
      hasTarSplit: l.hasTarSplit as boolean,
      entries: count(l, 'entries', `${f}.entries`),
      bytes: count(l, 'bytes', `${f}.bytes`),
    };
    if (layer.parent === undefined) delete layer.parent;
    if (layer.cacheId === undefined || !/^[0-9a-f]{64}$/.test(layer.cacheId)) delete layer.cacheId;
    if (layer.link === undefined || !/^[A-Z2-7]{26}$/.test(layer.link)) delete layer.link;
    layers.push(layer);
  });
  for (const l of layers) {
    // Layers may come in the source's order (see above), but each parent must be in the bundle.
    if (l.parent !== undefined && !known.has(l.parent)) fail(`layer ${l.chainId} has its parent ${l.parent} outside the bundle`);
  }

  const images: BundleImage[] = [];
  (json.images as unknown[]).forEach((img, i) => {
    const f = `images[${i}]`;
    if (!isObject(img)) return fail(`${f} must be an object, found ${kind(img)}`);
    const id = str(img, 'id', `${f}.id`, digest) as string;
    const list = (key: string, check: (v: unknown, field: string) => string): string[] => {
      const v = img[key];
      if (!Array.isArray(v)) return fail(`${f}.${key} must be an array, found ${kind(v)}`);
      return v.map((x, j) => check(x, `${f}.${key}[${j}]`));
    };
    const chainIds = list('chainIds', (v, field) => str({ v }, 'v', field, digest) as string);
    const missing = chainIds.find((c) => !known.has(c));
    if (missing) fail(`image ${id} needs layer ${missing}, which the bundle lacks`);
    const image: BundleImage = {
      id,
      references: list('references', (v, field) => str({ v }, 'v', field, { max: 1024 }) as string),
      chainIds,
      architecture: str(img, 'architecture', `${f}.architecture`, { max: 64 }) as string,
      os: str(img, 'os', `${f}.os`, { max: 64 }) as string,
      lastUpdated: str(img, 'lastUpdated', `${f}.lastUpdated`, { optional: true, max: 64, re: LAST_UPDATED_RE, what: 'an RFC 3339 time' }),
    };
    if (image.lastUpdated === undefined) delete image.lastUpdated;
    if (img.distribution !== undefined) {
      const d = img.distribution;
      if (!Array.isArray(d)) return fail(`${f}.distribution must be an array, found ${kind(d)}`);
      if (d.length !== chainIds.length) fail(`${f}.distribution has ${d.length} entries for ${chainIds.length} layers`);
      image.distribution = d.map((x: unknown, j) => {
        const field = `${f}.distribution[${j}]`;
        if (!isObject(x)) return fail(`${field} must be an object, found ${kind(x)}`);
        return { digest: str(x, 'digest', `${field}.digest`, digest) as string, sourceRepository: str(x, 'sourceRepository', `${field}.sourceRepository`, { max: 1024 }) as string };
      });
    }
    images.push(image);
  });
  return { format: FORMAT, version: FORMAT_VERSION, createdBy: json.createdBy as string, createdAt: json.createdAt as string, images, layers };
}
