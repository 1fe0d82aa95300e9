/**
 * Opening a registry source as a user names it: `registry` (each image from its own
 * reference's registry), `docker://HOST[:PORT]/REPO…`, `docker://HOST` with images, and the
 * options that go with them (platform, jobs, credentials, CAs, insecure hosts).
 */
import { promises as fs } from 'node:fs';
import { serviceImages, type AppsJson } from '../balena/apps-json.js';
import { ReferenceError } from '../engine/reference.js';
import { hostPlatforms, parsePlatform, platformsForBalenaArch, type Platform } from '../registry/manifest.js';
import { isRegistryUrl, parseRegistryUrl, refOnHost, registryRef, type RegistryRef } from '../registry/reference.js';
import type { RegistrySource } from './registry.js';
import { UsageError } from '../errors.js';

/** How to reach a registry (the CLI's --platform, --jobs, --registry-auth, … options). */
export interface RegistryOptions {
  platform?: string;
  /** Layers fetched at once, 1 to 64 (default 3). */
  jobs?: number | string;
  registryAuth?: string;
  registryAuthFile?: string;
  ca?: string[];
  insecureRegistry?: string[];
}

/** `registry` (each image from its own reference's registry) or `docker://…`. */
export function isRegistrySource(from: string): boolean {
  return from === 'registry' || isRegistryUrl(from);
}

/**
 * The references a registry source pulls: the one in `docker://HOST/REPO:TAG`, each `--image`
 * (on HOST for `docker://HOST`, as its own reference for `--from registry`), and with `--apps`
 * each service image the apps.json names.
 */
export function registryRefs(from: string, images: readonly string[], apps?: AppsJson): RegistryRef[] {
  const refs: RegistryRef[] = [];
  const named = (s: string, f: () => RegistryRef): void => {
    try {
      refs.push(f());
    } catch (e) {
      if (e instanceof ReferenceError) throw new UsageError(`--image ${s}: ${e.message}`);
      throw e;
    }
  };
  let host: string | undefined;
  if (from !== 'registry') {
    const url = parseRegistryUrl(from);
    host = url.host;
    if (url.image) refs.push(url.image);
  }
  for (const s of images) named(s, () => (host ? refOnHost(host, s) : registryRef(s)));
  if (apps) for (const svc of serviceImages(apps)) named(svc.image, () => registryRef(svc.image));
  const seen = new Set<string>();
  const unique = refs.filter((r) => {
    const k = `${r.host}/${r.path}:${r.tag ?? ''}@${r.digest ?? ''}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
  if (unique.length === 0) throw new UsageError(`${from}: name the images to pull (docker://HOST/REPO:TAG, or --image REPO[:TAG|@DIGEST])`);
  return unique;
}

export async function openRegistrySource(
  from: string,
  options: RegistryOptions & { images?: readonly string[]; apps?: AppsJson; deviceArch?: string; warn?: (m: string) => void },
): Promise<RegistrySource> {
  const { RegistrySource } = await import('./registry.js');
  let platforms: Platform[];
  if (options.platform) {
    try {
      platforms = [parsePlatform(options.platform)];
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  } else platforms = (options.deviceArch ? platformsForBalenaArch(options.deviceArch) : undefined) ?? hostPlatforms();
  let jobs: number | undefined;
  if (options.jobs !== undefined) {
    jobs = Number(options.jobs);
    if (!Number.isInteger(jobs) || jobs < 1 || jobs > 64) throw new UsageError(`--jobs ${options.jobs}: a whole number from 1 to 64`);
  }
  const ca: Buffer[] = [];
  for (const file of options.ca ?? []) {
    try {
      ca.push(await fs.readFile(file));
    } catch {
      throw new Error(`--ca ${file}: cannot read it`);
    }
  }
  const refs = registryRefs(from, options.images ?? [], options.apps);
  return RegistrySource.open(from, refs, {
    platforms,
    jobs,
    ca,
    insecure: options.insecureRegistry,
    credentials: { auth: options.registryAuth, authFile: options.registryAuthFile },
    warn: options.warn ?? (() => undefined),
    retries: envNumber('TRANSPLANT_REGISTRY_RETRIES'),
    backoffMs: envNumber('TRANSPLANT_REGISTRY_BACKOFF_MS'),
  });
}

function envNumber(name: string): number | undefined {
  const v = process.env[name];
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
}
