/**
 * The balena supervisor's image on a target, and its version.
 *
 * A balenaOS image ships the supervisor already loaded into resin-data's engine, under its
 * repository (`balena/<arch>-supervisor`, `resin/<arch>-supervisor` on old releases,
 * `balena_supervisor` where meta-balena retags it) with the release as tag (`v14.11.4`).
 * balena-preload reads the version from that tag (src/preload.py, get_image_info). The
 * supervisor's Dockerfile also sets `ENV VERSION=<release>` in the image, which is read
 * when the tag is `latest` or a digest reference is all there is.
 *
 * The apps.json transplant writes is the v3 target state; the supervisor loads that form
 * from 13.0.0 on (balena-supervisor src/device-state/preload.ts with src/types/state.ts).
 */
import { parseReference } from '../engine/reference.js';

/** The first supervisor release that loads a v3 apps.json. */
export const V3_APPS_JSON_SUPERVISOR = { major: 13, minor: 0, patch: 0 } as const;

export interface SupervisorVersion {
  /** As the image states it, without a leading `v`: `14.11.4`, `17`. */
  version: string;
  major: number;
  minor: number;
  patch: number;
  /** The reference that names the supervisor image (its first one). */
  reference: string;
  /** Where the version was read. */
  from: 'tag' | 'env';
}

/** The supervisor's repositories: balena/<arch>-supervisor, resin/…, balena_supervisor, registry names. */
export function isSupervisorRepository(repository: string): boolean {
  return /(^|[/_-])supervisor$/.test(repository);
}

/** The references among these that name a supervisor repository. */
export function supervisorReferences(references: readonly string[]): string[] {
  return references.filter((key) => {
    try {
      return isSupervisorRepository(parseReference(key).repository);
    } catch {
      return false;
    }
  });
}

const VERSION = /^v?(\d{1,6})(?:\.(\d{1,6}))?(?:\.(\d{1,6}))?(?:[-+_.][\w.+-]*)?$/;

function parseVersion(text: string): Pick<SupervisorVersion, 'version' | 'major' | 'minor' | 'patch'> | undefined {
  const m = VERSION.exec(text.trim());
  if (!m) return undefined;
  return { version: text.trim().replace(/^v/, ''), major: Number(m[1]), minor: Number(m[2] ?? 0), patch: Number(m[3] ?? 0) };
}

/**
 * The version of a supervisor image from its references and its config (JSON text), or
 * undefined when the image is not a supervisor or states no version.
 */
export function supervisorVersionOf(references: readonly string[], config: string | undefined): SupervisorVersion | undefined {
  const own = supervisorReferences(references);
  if (own.length === 0) return undefined;
  for (const key of own) {
    const tag = parseReference(key).tag;
    const v = tag === undefined ? undefined : parseVersion(tag);
    if (v) return { ...v, reference: key, from: 'tag' };
  }
  let env: unknown;
  try {
    env = (JSON.parse(config ?? '{}') as { config?: { Env?: unknown } }).config?.Env;
  } catch {
    env = undefined;
  }
  if (Array.isArray(env)) {
    for (const e of env) {
      if (typeof e !== 'string' || !e.startsWith('VERSION=')) continue;
      const v = parseVersion(e.slice('VERSION='.length));
      if (v) return { ...v, reference: own[0] as string, from: 'env' };
    }
  }
  return undefined;
}

export function compareVersions(a: Pick<SupervisorVersion, 'major' | 'minor' | 'patch'>, b: Pick<SupervisorVersion, 'major' | 'minor' | 'patch'>): number {
  return a.major - b.major || a.minor - b.minor || a.patch - b.patch;
}

/** Whether this supervisor loads the v3 apps.json transplant writes. */
export function loadsV3AppsJson(v: SupervisorVersion): boolean {
  return compareVersions(v, V3_APPS_JSON_SUPERVISOR) >= 0;
}
