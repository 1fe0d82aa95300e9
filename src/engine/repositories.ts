/**
 * repositories.json (reference/store.go): {"Repositories":{"<repo>":{"<key>":"sha256:<id>"}}},
 * written without a trailing newline, mode 0600. Merged, never overwritten.
 */
import { isDigest } from './digest.js';
import { isDigestKey, parseReference, referenceKey } from './reference.js';

export type Repositories = Record<string, Record<string, string>>;

export function parseRepositories(data: Buffer | undefined, where: string): Repositories {
  if (!data || data.length === 0) return {};
  let json: unknown;
  try {
    json = JSON.parse(data.toString('utf8'));
  } catch {
    throw new Error(`${where}: repositories.json is not valid JSON`);
  }
  const repos = (json as { Repositories?: unknown } | null)?.Repositories;
  if (repos === undefined || repos === null) return {};
  if (typeof repos !== 'object') throw new Error(`${where}: repositories.json has no "Repositories" object`);
  const out: Repositories = {};
  for (const [repo, refs] of Object.entries(repos as Record<string, unknown>)) {
    if (!refs || typeof refs !== 'object') throw new Error(`${where}: repositories.json entry ${repo} is not an object`);
    out[repo] = {};
    for (const [key, id] of Object.entries(refs as Record<string, unknown>)) {
      if (typeof id !== 'string' || !isDigest(id)) throw new Error(`${where}: repositories.json reference ${key} does not name an image ID`);
      out[repo][key] = id;
    }
  }
  return out;
}

export function serializeRepositories(repos: Repositories): Buffer {
  return Buffer.from(JSON.stringify({ Repositories: repos }), 'utf8');
}

/** Every reference key naming this image ID. */
export function referencesOf(repos: Repositories, imageId: string): string[] {
  const out: string[] = [];
  for (const refs of Object.values(repos)) for (const [key, id] of Object.entries(refs)) if (id === imageId) out.push(key);
  return out.sort();
}

export function lookupKey(repos: Repositories, key: string): string | undefined {
  const repo = parseReference(key).repository;
  return repos[repo]?.[key];
}

export interface MergeOutcome {
  repositories: Repositories;
  added: string[];
  moved: { key: string; from: string; to: string }[];
}

/**
 * Adds references. A tag already pointing elsewhere is moved (as `docker tag` does); a digest
 * reference is never re-pointed to another image (reference/store.go refuses it too).
 */
export function mergeReferences(current: Repositories, additions: { key: string; imageId: string }[]): MergeOutcome {
  const repositories: Repositories = JSON.parse(JSON.stringify(current)) as Repositories;
  const added: string[] = [];
  const moved: MergeOutcome['moved'] = [];
  for (const { key, imageId } of additions) {
    const ref = parseReference(key);
    const normal = referenceKey(ref);
    const repo = (repositories[ref.repository] ??= {});
    const existing = repo[normal];
    if (existing === imageId) continue;
    if (existing !== undefined) {
      if (isDigestKey(normal)) {
        throw new Error(`digest reference ${normal} already names image ${existing} in the target; refusing to re-point it to ${imageId}`);
      }
      moved.push({ key: normal, from: existing, to: imageId });
    } else {
      added.push(normal);
    }
    repo[normal] = imageId;
  }
  return { repositories, added, moved };
}
