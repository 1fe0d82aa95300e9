/**
 * apps.json in the pipeline: read what the user has, pick the images its services need from
 * the source (the supervisor's lookup), and make sure every service image will resolve in
 * the target the way the supervisor looks it up — or refuse before anything is written.
 */
import { readNamedFile } from '../fsx/beneath.js';
import { LIMITS } from '../engine/limits.js';
import { randomBytes } from 'node:crypto';
import { normalizeTargetState, serializeAppsJson, serviceImages, type AppsJson } from '../balena/apps-json.js';
import { lookupLikeSupervisor, planReferences, type ImageStoreView } from '../balena/image-lookup.js';
import { parseReference } from '../engine/reference.js';
import { IMAGEDB_CONTENT } from '../engine/layout.js';
import { compareVersions, loadsV3AppsJson, supervisorReferences, supervisorVersionOf, V3_APPS_JSON_SUPERVISOR, type SupervisorVersion } from '../balena/supervisor.js';
import type { SourceImage } from '../sources/source.js';
import type { TargetStore } from '../inject/target-store.js';
import type { UndoSteps } from '../inject/apply.js';
import type { TreeWriter } from '../targets/tree-writer.js';

export async function readApps(file: string, options: { pinDevice?: boolean } = {}): Promise<AppsJson> {
  const text = readNamedFile(file, LIMITS.appsJson, `--apps ${file}`, { pipe: true }).toString('utf8');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`--apps ${file} is not valid JSON (${(e as Error).message})`);
  }
  return normalizeTargetState(json, file, options);
}

/** The view of a set of images that the supervisor's lookup works on. */
export function storeViewOf(images: readonly SourceImage[], base?: { repositories: ImageStoreView['repositories']; imageIds: Set<string> }): ImageStoreView {
  const repositories: ImageStoreView['repositories'] = JSON.parse(JSON.stringify(base?.repositories ?? {})) as ImageStoreView['repositories'];
  const imageIds = new Set(base?.imageIds ?? []);
  const created = new Map<string, number>();
  for (const img of images) {
    imageIds.add(img.id);
    for (const key of img.references) {
      const repo = parseReference(key).repository;
      (repositories[repo] ??= {})[key] = img.id;
    }
    try {
      const c = (JSON.parse(img.config.toString('utf8')) as { created?: string }).created;
      if (c) created.set(img.id, Date.parse(c));
    } catch {
      /* configs were validated on read */
    }
  }
  return { repositories, imageIds, created };
}

/** The source images the apps' services need, found the way the supervisor will look for them. */
/**
 * `inTarget`: the target may already hold what the source lacks (the supervisor's own image,
 * an app preloaded before); those names are left for referencesForApps to check against
 * the target, instead of being refused here.
 */
export function imagesForApps(apps: AppsJson, images: readonly SourceImage[], sourceName: string, options: { inTarget?: boolean } = {}): SourceImage[] {
  const view = storeViewOf(images);
  const out: SourceImage[] = [];
  const missing: string[] = [];
  for (const svc of serviceImages(apps)) {
    const found = lookupLikeSupervisor(svc.image, view);
    let id = found.imageId;
    if (id === undefined) {
      // Not found by the supervisor's own steps, but the planner may still make it resolve
      // (same manifest digest under another repository): take the image it would point at.
      const [plan] = planReferences([svc.image], view).plans;
      if (plan?.status === 'add-reference') id = plan.imageId;
    }
    const image = id ? images.find((i) => i.id === id) : undefined;
    if (!image) {
      missing.push(`${svc.image} (service ${svc.service} of app ${svc.app})`);
      continue;
    }
    if (!out.includes(image)) out.push(image);
  }
  if (missing.length > 0 && !options.inTarget) {
    throw new Error(`${sourceName} lacks ${missing.length === 1 ? 'an image' : `${missing.length} images`} that apps.json names: ${missing.join('; ')}`);
  }
  return out;
}

/**
 * The references to add so that every service image resolves in the target after the
 * transplant; throws, naming each image, when one cannot be made to resolve.
 */
export function referencesForApps(apps: AppsJson, images: readonly SourceImage[], target: TargetStore): { key: string; imageId: string }[] {
  const after = storeViewOf(images, { repositories: target.repositories, imageIds: target.imageIds });
  const result = planReferences(
    serviceImages(apps).map((s) => s.image),
    after,
  );
  if (result.errors.length > 0) {
    throw new Error(`apps.json names images that would not resolve on the device (the supervisor would abandon the preload): ${result.errors.join('; ')}`);
  }
  return result.additions;
}

const APPS_JSON = 'apps.json';
const TMP_PREFIX = '.apps.json.tmp-';

/** Refuses, before anything is written, a target whose apps.json could not be replaced by a file. */
export async function checkAppsTarget(writer: Pick<TreeWriter, 'kindOf' | 'description'>): Promise<void> {
  const kind = await writer.kindOf(APPS_JSON);
  if (kind === undefined || kind === 'file') return;
  const what = kind === 'directory' ? 'a directory' : kind === 'symlink' ? 'a symlink' : 'not a regular file';
  throw new Error(`${writer.description}/${APPS_JSON} exists and is ${what}; remove it or choose another target (nothing was changed)`);
}

/**
 * Writes apps.json at the root of resin-data, atomically; never apps.json.preloaded. With
 * `undo`, how to put back what was there (the user's apps.json, or none) is registered.
 * Temp files of killed runs are removed first.
 */
export async function writeApps(writer: TreeWriter, apps: AppsJson, undo?: UndoSteps): Promise<void> {
  for (const name of (await writer.readdir('')) ?? []) if (name.startsWith(TMP_PREFIX)) await writer.remove(name);
  const previous = await writer.readFile(APPS_JSON);
  const tmpName = (): string => `${TMP_PREFIX}${randomBytes(4).toString('hex')}`;
  const tmp = tmpName();
  undo?.step(() => writer.remove(tmp));
  await writer.writeFile(tmp, Buffer.from(serializeAppsJson(apps)), 0o644);
  await writer.rename(tmp, APPS_JSON);
  undo?.step(async () => {
    if (previous === undefined) return writer.remove(APPS_JSON);
    const back = tmpName();
    try {
      await writer.writeFile(back, previous, 0o644);
      await writer.rename(back, APPS_JSON);
    } finally {
      await writer.remove(back);
    }
  });
}

export interface AppsStatus {
  /** apps.json could not be read as a v3 target state. */
  error?: string;
  services: { app: string; service: string; image: string; imageId?: string; via?: string }[];
}

/**
 * What `transplant ls` says of the apps.json at the root of a resin-data tree: each service
 * image and whether the supervisor will find it. Undefined when there is no apps.json.
 */
export async function appsStatus(reader: Pick<TreeWriter, 'readFile'>, images: readonly SourceImage[], repositories: ImageStoreView['repositories']): Promise<AppsStatus | undefined> {
  const raw = await reader.readFile('apps.json');
  if (!raw) return undefined;
  let apps: AppsJson;
  try {
    apps = normalizeTargetState(JSON.parse(raw.toString('utf8')) as unknown, 'apps.json');
  } catch (e) {
    return { error: (e as Error).message.split('\n')[0], services: [] };
  }
  const view = storeViewOf([], { repositories, imageIds: new Set(images.map((i) => i.id)) });
  return {
    services: serviceImages(apps).map((s) => {
      const found = lookupLikeSupervisor(s.image, view);
      return { app: s.app, service: s.service, image: s.image, imageId: found.imageId, via: found.via };
    }),
  };
}

export function formatAppsStatus(status: AppsStatus): string {
  if (status.error) return `apps.json: unusable (${status.error})`;
  const lines = [`apps.json: ${status.services.length} service${status.services.length === 1 ? '' : 's'}`];
  for (const s of status.services) {
    lines.push(`  ${s.service}: ${s.image} -> ${s.imageId ? `${s.imageId.slice(7, 19)} (${s.via})` : 'DOES NOT RESOLVE: the supervisor would abandon the preload'}`);
  }
  return lines.join('\n');
}

/**
 * The balena supervisor the target will run: the newest supervisor image among what the
 * target holds and what is injected, read from its tag or its VERSION (balena/supervisor.ts).
 */
export async function targetSupervisor(store: TargetStore, injected: readonly SourceImage[]): Promise<SupervisorVersion | undefined> {
  const found: SupervisorVersion[] = [];
  const byImage = new Map<string, string[]>();
  for (const keys of Object.values(store.repositories)) {
    for (const [key, id] of Object.entries(keys)) if (store.imageIds.has(id)) byImage.set(id, [...(byImage.get(id) ?? []), key]);
  }
  for (const [id, references] of byImage) {
    if (supervisorReferences(references).length === 0) continue;
    const config = await store.writer.readFile(store.path(`${IMAGEDB_CONTENT}/${id.slice('sha256:'.length)}`));
    const v = supervisorVersionOf(references, config?.toString('utf8'));
    if (v) found.push(v);
  }
  for (const img of injected) {
    const v = supervisorVersionOf(img.references, img.config.toString('utf8'));
    if (v) found.push(v);
  }
  return found.sort((a, b) => compareVersions(b, a))[0];
}

/** Refuses, before anything is written, a target whose supervisor cannot load the v3 apps.json. */
export function checkSupervisorLoadsApps(supervisor: SupervisorVersion | undefined, target: string): void {
  if (supervisor === undefined || loadsV3AppsJson(supervisor)) return;
  const min = V3_APPS_JSON_SUPERVISOR;
  throw new Error(
    `${target}: its balena supervisor is v${supervisor.version} (${supervisor.reference}), which cannot load the v3 apps.json that --apps writes ` +
      `(supervisor ${min.major}.${min.minor}.${min.patch} or later); use a newer balenaOS image, or inject without --apps (nothing was changed)`,
  );
}
