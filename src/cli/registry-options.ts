/**
 * The command-line side of registry sources: `--from registry`, `docker://HOST[:PORT]/REPO…`,
 * `docker://HOST` with `--image`, and the options that go with them.
 */
import { promises as fs } from 'node:fs';
import type { Command } from 'commander';
import { serviceImages, type AppsJson } from '../balena/apps-json.js';
import { ReferenceError } from '../engine/reference.js';
import { hostPlatforms, parsePlatform, platformsForBalenaArch, type Platform } from '../registry/manifest.js';
import { isRegistryUrl, parseRegistryUrl, refOnHost, registryRef, type RegistryRef } from '../registry/reference.js';
import type { RegistrySource } from '../sources/registry.js';
import { UsageError } from './errors.js';

export interface RegistryCliOptions {
  platform?: string;
  jobs?: string;
  registryAuth?: string;
  registryAuthFile?: string;
  ca?: string[];
  insecureRegistry?: string[];
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

export function registryOptions(command: Command): Command {
  return command
    .option('--platform <os/arch[/variant]>', 'with a registry: the platform to take from a multi-platform image (default: the target disk image\'s device type, else this machine\'s)')
    .option('--jobs <n>', 'with a registry: layers fetched at once (default 3)')
    .option('--registry-auth <user:password>', 'with a registry: credentials (default: REGISTRY_AUTH_FILE, then ~/.docker/config.json or $DOCKER_CONFIG, with its credential helpers)')
    .option('--registry-auth-file <file>', 'with a registry: a docker config.json / containers auth.json to take credentials from')
    .option('--ca <file>', 'with a registry: a CA certificate (PEM) to trust beside the system ones; repeatable', collect, [])
    .option('--insecure-registry <host[:port]>', 'with a registry: allow plain HTTP to this host (loopback registries always are); repeatable', collect, []);
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
  options: RegistryCliOptions & { images?: readonly string[]; apps?: AppsJson; deviceArch?: string; warn?: (m: string) => void },
): Promise<RegistrySource> {
  const { RegistrySource } = await import('../sources/registry.js');
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
    warn: options.warn ?? ((m) => void process.stderr.write(`warning: ${m}\n`)),
    retries: envNumber('TRANSPLANT_REGISTRY_RETRIES'),
    backoffMs: envNumber('TRANSPLANT_REGISTRY_BACKOFF_MS'),
  });
}

function envNumber(name: string): number | undefined {
  const v = process.env[name];
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
}
