/**
 * Image manifests as registries serve them: Docker v2 schema 2 and OCI image manifests,
 * Docker manifest lists and OCI image indexes (one platform chosen, as dockerd's
 * distribution/pull_v2.go pullManifestList does with platforms.Only). Schema 1 is refused.
 */
import { isDigest } from '../engine/digest.js';

export const MEDIA = {
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  schema1: 'application/vnd.docker.distribution.manifest.v1+json',
  schema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

/** The Accept header docker sends for a manifest. */
export const MANIFEST_ACCEPT = [MEDIA.ociIndex, MEDIA.dockerList, MEDIA.dockerManifest, MEDIA.ociManifest].join(', ');

const LAYER_TYPES = new Set([
  'application/vnd.docker.image.rootfs.diff.tar.gzip',
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd',
]);
const FOREIGN_TYPES = new Set([
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
]);

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  platform?: Platform;
}

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export type ParsedManifest =
  | { kind: 'index'; manifests: Descriptor[] }
  | { kind: 'image'; config: Descriptor; layers: Descriptor[] };

function descriptor(d: unknown, where: string): Descriptor {
  const o = d as Partial<Descriptor> | null;
  if (!o || typeof o !== 'object' || typeof o.digest !== 'string' || !isDigest(o.digest) || typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) {
    throw new Error(`${where}: a descriptor has no valid sha256 digest and size`);
  }
  return { mediaType: typeof o.mediaType === 'string' ? o.mediaType : '', digest: o.digest, size: o.size, urls: o.urls, platform: o.platform };
}

export function parseManifest(body: Buffer, contentType: string | undefined, where: string): ParsedManifest {
  let json: { schemaVersion?: number; mediaType?: string; manifests?: unknown[]; config?: unknown; layers?: unknown[] };
  try {
    json = JSON.parse(body.toString('utf8')) as typeof json;
  } catch {
    throw new Error(`${where}: the manifest is not valid JSON`);
  }
  const type = json.mediaType ?? (contentType ?? '').split(';')[0]?.trim() ?? '';
  if (json.schemaVersion === 1 || type === MEDIA.schema1 || type === MEDIA.schema1Signed) {
    throw new Error(`${where}: a schema 1 manifest (deprecated, not supported; push the image again with a current docker)`);
  }
  if (type === MEDIA.dockerList || type === MEDIA.ociIndex || Array.isArray(json.manifests)) {
    return { kind: 'index', manifests: (json.manifests ?? []).map((d) => descriptor(d, where)) };
  }
  if (!json.config || !Array.isArray(json.layers)) throw new Error(`${where}: the manifest has no config and layers (media type ${type || 'unknown'})`);
  const layers = json.layers.map((d) => descriptor(d, where));
  for (const l of layers) {
    if (FOREIGN_TYPES.has(l.mediaType)) {
      throw new Error(`${where}: layer ${l.digest} is a foreign layer (${l.mediaType}${l.urls?.[0] ? ` from ${l.urls[0]}` : ''}); foreign layers are not pulled (refused)`);
    }
    if (!LAYER_TYPES.has(l.mediaType)) throw new Error(`${where}: layer ${l.digest} has media type ${JSON.stringify(l.mediaType)}, which is not an image layer`);
  }
  return { kind: 'image', config: descriptor(json.config, where), layers };
}

/** `--platform os/arch[/variant]`. */
export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[\w.-]+$/.test(p))) throw new Error(`--platform ${s}: expected os/arch[/variant], e.g. linux/arm64 or linux/arm/v7`);
  return { os: parts[0] as string, architecture: parts[1] as string, variant: parts[2] };
}

/** The platforms a balenaOS arch (device-type.json `arch`) runs, best first (src/balena/arch.ts pairs them the same way). */
export function platformsForBalenaArch(arch: string): Platform[] | undefined {
  switch (arch) {
    case 'aarch64':
      return [{ os: 'linux', architecture: 'arm64', variant: 'v8' }];
    case 'armv7hf':
      return ['v7', 'v6', 'v5'].map((variant) => ({ os: 'linux', architecture: 'arm', variant }));
    case 'rpi':
      return ['v6', 'v5'].map((variant) => ({ os: 'linux', architecture: 'arm', variant }));
    case 'amd64':
      return [{ os: 'linux', architecture: 'amd64' }];
    case 'i386':
    case 'i386-nlp':
      return [{ os: 'linux', architecture: '386' }];
    default:
      return undefined;
  }
}

/** The platform of this machine, for when neither --platform nor a target's device type decides. */
export function hostPlatforms(): Platform[] {
  switch (process.arch) {
    case 'arm64':
      return platformsForBalenaArch('aarch64') as Platform[];
    case 'arm':
      return platformsForBalenaArch('armv7hf') as Platform[];
    case 'ia32':
      return platformsForBalenaArch('i386') as Platform[];
    default:
      return platformsForBalenaArch('amd64') as Platform[];
  }
}

export function showPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

/** Normalised variant (containerd platforms.Normalize: arm64's is v8 when absent, arm's v7). */
function variantOf(p: Platform): string | undefined {
  if (p.variant) return p.variant;
  if (p.architecture === 'arm64') return 'v8';
  if (p.architecture === 'arm') return 'v7';
  return undefined;
}

/** The index entry for the first wanted platform that it holds. */
export function choosePlatform(manifests: readonly Descriptor[], wanted: readonly Platform[]): Descriptor | undefined {
  for (const w of wanted) {
    const found = manifests.find(
      (m) => m.platform !== undefined && m.platform.os === w.os && m.platform.architecture === w.architecture && (w.variant === undefined || variantOf(m.platform) === variantOf(w)),
    );
    if (found) return found;
  }
  return undefined;
}
