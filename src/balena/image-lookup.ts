/**
 * How the supervisor finds a preloaded service image in the engine, replayed over an
 * engine data root's description (no engine running). If any service image of apps.json
 * does not resolve, the supervisor abandons the whole preload at first boot (logged only
 * at debug level), so the transplant checks every name before writing.
 *
 * The supervisor's steps (balena-supervisor src/device-state/preload.ts -> images.save ->
 * src/compose/images.ts inspectByName, src/lib/docker-utils.ts normaliseImageName):
 * 1. normalise the name: with a digest `repo@sha256:…` (the tag dropped), otherwise
 *    `repo:tag` with `:latest` added when no tag is given. `repo` keeps whatever registry
 *    prefix the name had (no docker.io/library rewriting at this step).
 * 2. `GET /images/<normalised>/json`: the engine (daemon/images/image.go GetImage) parses
 *    the name with the docker.io/library normalisation and looks its familiar form up as an
 *    exact key in repositories.json (reference/store.go Get); a `sha256:<64 hex>` name is an
 *    image ID. The image must also exist in imagedb.
 * 3. else `GET /images/json?filters={"reference":["<pattern>"]}` with pattern `repo:tag`,
 *    or just `repo` for a digest name. The engine (daemon/images/images.go Images, with
 *    reference.FamiliarMatch) matches the pattern against each reference's familiar string
 *    (`busybox:latest`) or familiar name (`busybox`), without normalising the pattern;
 *    so a digest name matches *any* tag or digest of its repository. Images are listed
 *    newest first and the supervisor takes the first.
 * (A 4th step looks in the supervisor's own database, which is empty at first boot.)
 */
import { parseReference, referenceKey } from '../engine/reference.js';
import type { Repositories } from '../engine/repositories.js';

export interface ImageStoreView {
  /** repositories.json's "Repositories": familiar repository -> reference key -> image ID. */
  repositories: Repositories;
  /** Every image ID present in imagedb (`sha256:<hex>`). References to other IDs do not resolve. */
  imageIds: Set<string>;
  /** Image creation times (ms since the epoch), for the engine's newest-first listing. */
  created?: Map<string, number>;
}

export type LookupVia = 'exact' | 'image-id' | 'reference-filter';

export interface SupervisorLookup {
  /** The name as written in apps.json. */
  name: string;
  /** The supervisor's normalised name (what it stores and asks the engine for). */
  normalised?: string;
  /** The repositories.json key the engine looks up (familiar form); absent when the engine cannot parse the name. */
  key?: string;
  imageId?: string;
  via?: LookupVia;
  /** Other images the reference filter matched too (the supervisor takes the newest; a risk when not the intended one). */
  alsoMatched: string[];
  /** Why the name cannot be parsed (by the supervisor or by the engine). */
  error?: string;
}

/** The supervisor's split of an image name (docker-utils getRegistryAndName), rules restated. */
export interface SupervisorName {
  /** Registry and path, e.g. `registry2.balena-cloud.com/v2/abc`, `localhost:5000/app`, `busybox`. */
  repository: string;
  tag?: string;
  digest?: string;
}

const SUPERVISOR_DIGEST = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$/;
const IMAGE_ID = /^sha256:[0-9a-f]{64}$/;

/**
 * Splits like the supervisor's regex: a registry prefix is the shortest start followed by
 * '/' that is `localhost` or holds '.' or ':'; after it, the name runs to the first ':'
 * (tag, up to the first '@') or '@' (digest, to the end).
 */
export function parseSupervisorName(name: string): SupervisorName {
  let registryEnd = -1;
  for (let i = name.indexOf('/'); i > 0; i = name.indexOf('/', i + 1)) {
    const prefix = name.slice(0, i);
    if (prefix === 'localhost' || /[.:]/.test(prefix)) {
      registryEnd = i;
      break;
    }
  }
  const start = registryEnd + 1;
  let cut = name.length;
  for (let i = start + 1; i < name.length; i++) {
    if (name[i] === ':' || name[i] === '@') {
      cut = i;
      break;
    }
  }
  const repository = name.slice(0, cut);
  let rest = name.slice(cut);
  let tag: string | undefined;
  let digest: string | undefined;
  if (rest.startsWith(':')) {
    const at = rest.indexOf('@');
    tag = at < 0 ? rest.slice(1) : rest.slice(1, at);
    rest = at < 0 ? '' : rest.slice(at);
  }
  if (rest.startsWith('@')) digest = rest.slice(1);
  if (repository.length === start || (digest !== undefined && !SUPERVISOR_DIGEST.test(digest))) {
    throw new Error(`invalid image name ${JSON.stringify(name)}: expected [domain.tld/]repo/image[:tag][@digest]`);
  }
  return { repository, tag: tag === '' ? undefined : tag, digest };
}

/** docker-utils normaliseImageName: `repo@digest` (tag dropped) or `repo:tag` (`:latest` by default). */
export function normaliseLikeSupervisor(name: string): string {
  const n = parseSupervisorName(name);
  return n.digest !== undefined ? `${n.repository}@${n.digest}` : `${n.repository}:${n.tag ?? 'latest'}`;
}

function newestFirst(ids: Iterable<string>, store: ImageStoreView): string[] {
  const t = (id: string) => store.created?.get(id) ?? 0;
  return [...new Set(ids)].sort((a, b) => t(b) - t(a) || (a < b ? -1 : a > b ? 1 : 0));
}

/** The images the engine lists for a `reference` filter pattern, newest first. */
export function matchReferenceFilter(pattern: string, store: ImageStoreView): string[] {
  // Glob characters would make FamiliarMatch a path.Match glob; no valid image name holds them.
  if (/[*?[\\]/.test(pattern)) return [];
  const ids: string[] = [];
  for (const [repo, refs] of Object.entries(store.repositories)) {
    for (const [key, id] of Object.entries(refs)) {
      if (!store.imageIds.has(id)) continue;
      if (key === pattern || repo === pattern) ids.push(id);
    }
  }
  return newestFirst(ids, store);
}

/** Every step of the supervisor's lookup, with how it resolved. */
export function lookupLikeSupervisor(name: string, store: ImageStoreView): SupervisorLookup {
  const out: SupervisorLookup = { name, alsoMatched: [] };
  if (name === '') return { ...out, error: 'empty image name' };
  let sup: SupervisorName;
  try {
    sup = parseSupervisorName(name);
  } catch (e) {
    return { ...out, error: (e as Error).message };
  }
  const normalised = sup.digest !== undefined ? `${sup.repository}@${sup.digest}` : `${sup.repository}:${sup.tag ?? 'latest'}`;
  out.normalised = normalised;

  // Step 2: GET /images/<normalised>/json.
  if (IMAGE_ID.test(normalised)) {
    if (store.imageIds.has(normalised)) return { ...out, imageId: normalised, via: 'image-id' };
  } else {
    try {
      const ref = parseReference(normalised);
      out.key = referenceKey(ref.digest ? { repository: ref.repository, digest: ref.digest } : ref);
      const id = store.repositories[ref.repository]?.[out.key];
      if (id !== undefined && store.imageIds.has(id)) return { ...out, imageId: id, via: 'exact' };
    } catch (e) {
      // The engine refuses the name (e.g. upper case); the filter below still runs.
      out.error = (e as Error).message;
    }
  }

  // Step 3: the reference filter, pattern built from the supervisor's split of the normalised name.
  const pattern = sup.digest !== undefined ? sup.repository : `${sup.repository}:${sup.tag ?? 'latest'}`;
  const [first, ...others] = matchReferenceFilter(pattern, store);
  if (first !== undefined) return { ...out, imageId: first, via: 'reference-filter', alsoMatched: others, error: undefined };
  return out;
}

/** The image ID the supervisor would find for `name`, or undefined (the preload would then be abandoned). */
export function resolveLikeSupervisor(name: string, store: ImageStoreView): string | undefined {
  return lookupLikeSupervisor(name, store).imageId;
}

// ---------------------------------------------------------------------------------------
// Planning the references a preload needs.

export type ReferencePlan =
  | {
      status: 'resolves';
      name: string;
      imageId: string;
      via: LookupVia;
    }
  | {
      /** Adding `key -> imageId` to repositories.json makes the name resolve by step 2. */
      status: 'add-reference';
      name: string;
      key: string;
      imageId: string;
      /** True when the image is not in the target yet and must be transplanted from the candidates. */
      needsImage: boolean;
      reason: string;
    }
  | {
      status: 'missing';
      name: string;
      message: string;
    };

export interface PlanOptions {
  /**
   * Explicit mappings given by the user: apps.json image name (as written, or normalised)
   * -> a reference or image ID of an image in the target or the candidates.
   */
  map?: Record<string, string>;
}

export interface ReferencePlanResult {
  plans: ReferencePlan[];
  /** Keys to merge into the target's repositories.json (engine/repositories.ts mergeReferences). */
  additions: { key: string; imageId: string }[];
  /** Image IDs that must be transplanted from the candidates. */
  imagesNeeded: string[];
  /** One line per name that cannot be made to resolve; empty when the preload will load. */
  errors: string[];
}

function digestOf(key: string): string | undefined {
  const at = key.indexOf('@');
  return at < 0 ? undefined : key.slice(at + 1);
}

/** Image IDs holding a digest reference with this manifest digest, under any repository. */
function idsWithDigest(digest: string, store: ImageStoreView): string[] {
  const ids: string[] = [];
  for (const refs of Object.values(store.repositories)) {
    for (const [key, id] of Object.entries(refs)) if (digestOf(key) === digest && store.imageIds.has(id)) ids.push(id);
  }
  return [...new Set(ids)].sort();
}

function findByUserTarget(target: string, store: ImageStoreView): string | undefined {
  const t = target.trim();
  if (IMAGE_ID.test(t)) return store.imageIds.has(t) ? t : undefined;
  if (/^[0-9a-f]{64}$/.test(t)) return store.imageIds.has(`sha256:${t}`) ? `sha256:${t}` : undefined;
  try {
    const ref = parseReference(t);
    const key = referenceKey(ref.digest ? { repository: ref.repository, digest: ref.digest } : ref);
    const id = store.repositories[ref.repository]?.[key];
    if (id !== undefined && store.imageIds.has(id)) return id;
  } catch {
    // Not a reference: maybe a short ID.
  }
  if (/^[0-9a-f]{12,63}$/.test(t)) {
    const hits = [...store.imageIds].filter((id) => id.startsWith(`sha256:${t}`));
    if (hits.length === 1) return hits[0];
  }
  return undefined;
}

/**
 * For each apps.json image name, says how it will resolve in `store` (the target as it
 * will be after the transplant) and what to add when it does not. The rules, in order:
 *
 * 1. It resolves by step 2 (exact key or image ID) in `store`: nothing to do.
 * 2. The user mapped it (`options.map`) to a reference or ID of an image in `store` or
 *    `candidates`: add the exact key for that image (a mapping that contradicts an exact
 *    key already present is an error).
 * 3. It carries a manifest digest and exactly one image (in `store`, else in `candidates`)
 *    holds a digest reference with the same digest under another repository: add the exact
 *    key. A manifest digest names one manifest, hence one config and one image ID; when
 *    several IDs hold it (a manifest list pulled for different platforms) it is refused.
 * 4. It resolves by step 2 in `candidates` (the source): the image must be transplanted,
 *    and the exact key is added.
 * 5. It resolves by step 3 (the reference filter) in `store` to exactly one image: nothing
 *    to do. If the filter matches several images, the supervisor would take the newest,
 *    which may not be the intended one: refused unless mapped.
 * 6. Otherwise it cannot be found: an error naming it.
 * No image is ever chosen by a matching tag or name alone: only an exact key, a manifest
 * digest or the user's word.
 */
export function planReferences(
  names: readonly string[],
  store: ImageStoreView,
  candidates?: ImageStoreView,
  options: PlanOptions = {},
): ReferencePlanResult {
  const raw: ReferencePlan[] = [];
  const mapping = new Map<string, string>();
  for (const [from, to] of Object.entries(options.map ?? {})) {
    mapping.set(from, to);
    try {
      mapping.set(normaliseLikeSupervisor(from), to);
    } catch {
      // Kept as written only.
    }
  }
  const seen = new Set<string>();
  for (const name of names) {
    if (seen.has(name)) continue;
    seen.add(name);
    raw.push(planOne(name, store, candidates, mapping));
  }
  // A digest key is never re-pointed (reference/store.go refuses it, and so does
  // engine/repositories.ts mergeReferences): one that names an image missing from imagedb blocks.
  const plans = raw.map((p): ReferencePlan => {
    if (p.status !== 'add-reference' || !p.key.includes('@')) return p;
    let repo: string;
    try {
      repo = parseReference(p.key).repository;
    } catch {
      return p;
    }
    const existing = store.repositories[repo]?.[p.key];
    if (existing === undefined || existing === p.imageId) return p;
    return {
      status: 'missing',
      name: p.name,
      message: `service image ${p.name}: the target's repositories.json already maps ${p.key} to ${existing}, which is not in its imagedb; remove that stale reference first`,
    };
  });
  const additions: { key: string; imageId: string }[] = [];
  const needed = new Set<string>();
  const errors: string[] = [];
  for (const p of plans) {
    if (p.status === 'add-reference') {
      if (!additions.some((a) => a.key === p.key)) additions.push({ key: p.key, imageId: p.imageId });
      if (p.needsImage) needed.add(p.imageId);
    } else if (p.status === 'missing') {
      errors.push(p.message);
    }
  }
  return { plans, additions, imagesNeeded: [...needed].sort(), errors };
}

function planOne(
  name: string,
  store: ImageStoreView,
  candidates: ImageStoreView | undefined,
  mapping: Map<string, string>,
): ReferencePlan {
  const inStore = lookupLikeSupervisor(name, store);
  if (inStore.normalised === undefined) {
    return { status: 'missing', name, message: `service image ${JSON.stringify(name)} is not a valid image name (${inStore.error}); the supervisor would abandon the preload` };
  }
  const key = inStore.key;
  const mapped = mapping.get(name) ?? mapping.get(inStore.normalised);

  // 1. Exact.
  if (inStore.via === 'exact' || inStore.via === 'image-id') {
    if (mapped !== undefined) {
      const want = findByUserTarget(mapped, store) ?? (candidates && findByUserTarget(mapped, candidates));
      if (want !== undefined && want !== inStore.imageId) {
        return {
          status: 'missing',
          name,
          message: `service image ${name} already names image ${inStore.imageId} in the target, but it was mapped to ${mapped} (${want}); remove the mapping or the existing reference`,
        };
      }
    }
    return { status: 'resolves', name, imageId: inStore.imageId!, via: inStore.via };
  }
  if (key === undefined) {
    return {
      status: 'missing',
      name,
      message: `service image ${JSON.stringify(name)} cannot be looked up by the engine (${inStore.error}); the supervisor would abandon the preload`,
    };
  }

  // 2. The user's mapping.
  if (mapped !== undefined) {
    const inTarget = findByUserTarget(mapped, store);
    const inSource = inTarget === undefined && candidates ? findByUserTarget(mapped, candidates) : undefined;
    const id = inTarget ?? inSource;
    if (id === undefined) {
      return { status: 'missing', name, message: `service image ${name} was mapped to ${mapped}, which names no image in the target or the source` };
    }
    return { status: 'add-reference', name, key, imageId: id, needsImage: inTarget === undefined, reason: `mapped to ${mapped}` };
  }

  // 3. Same manifest digest under another repository.
  const digest = digestOf(key);
  if (digest !== undefined) {
    for (const [where, view, needsImage] of [
      ['target', store, false],
      ['source', candidates, true],
    ] as const) {
      if (!view) continue;
      const ids = idsWithDigest(digest, view);
      if (ids.length === 1) {
        return { status: 'add-reference', name, key, imageId: ids[0], needsImage: needsImage && !store.imageIds.has(ids[0]), reason: `the ${where} holds manifest digest ${digest} under another name` };
      }
      if (ids.length > 1) {
        return {
          status: 'missing',
          name,
          message: `service image ${name}: manifest digest ${digest} names ${ids.length} different images in the ${where} (${ids.join(', ')}); map it to one explicitly`,
        };
      }
    }
  }

  // 4. Exact in the source.
  if (candidates) {
    const inSource = lookupLikeSupervisor(name, candidates);
    if (inSource.via === 'exact' || inSource.via === 'image-id') {
      return { status: 'add-reference', name, key, imageId: inSource.imageId!, needsImage: !store.imageIds.has(inSource.imageId!), reason: 'present in the source under this name' };
    }
  }

  // 5. The reference filter in the target.
  if (inStore.via === 'reference-filter') {
    if (inStore.alsoMatched.length === 0) return { status: 'resolves', name, imageId: inStore.imageId!, via: 'reference-filter' };
    return {
      status: 'missing',
      name,
      message: `service image ${name} matches ${inStore.alsoMatched.length + 1} images by repository only (${[inStore.imageId!, ...inStore.alsoMatched].join(', ')}); the supervisor would take the newest; map it to the intended one`,
    };
  }

  // 6.
  return {
    status: 'missing',
    name,
    message: `service image ${name} is neither in the target nor in the source (looked up as ${key}); add the image, or map the name to a local image or ID`,
  };
}
