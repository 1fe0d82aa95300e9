/**
 * Image references as the engine normalises them (github.com/docker/distribution/reference:
 * normalize.go, regexp.go). repositories.json keys use the *familiar* form:
 * `busybox:latest`, `myorg/app:v1`, `registry2.balena-cloud.com/v2/abc@sha256:…`.
 */
import { isDigest } from './digest.js';

export interface Reference {
  /** Familiar repository name: `busybox`, `myorg/app`, `registry.example.com:5000/app`. */
  repository: string;
  tag?: string;
  digest?: string;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const TAG = /^[\w][\w.-]{0,127}$/;

export class ReferenceError extends Error {}

function splitDomain(name: string): { domain?: string; path: string } {
  const slash = name.indexOf('/');
  if (slash < 0) return { path: name };
  const first = name.slice(0, slash);
  if (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase()) {
    return { domain: first, path: name.slice(slash + 1) };
  }
  return { path: name };
}

/** Parses `name[:tag][@sha256:digest]` into its familiar form. Throws ReferenceError. */
export function parseReference(input: string): Reference {
  let rest = input.trim();
  if (rest === '' || rest.length > 255 + 80) throw new ReferenceError(`invalid image reference ${JSON.stringify(input)}`);
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isDigest(digest)) throw new ReferenceError(`invalid digest in image reference ${JSON.stringify(input)}`);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw new ReferenceError(`invalid tag in image reference ${JSON.stringify(input)}`);
  }
  const { domain, path } = splitDomain(rest);
  if (domain !== undefined) {
    const host = domain.replace(/:\d+$/, '');
    if (!host.split('.').every((c) => DOMAIN_COMPONENT.test(c))) throw new ReferenceError(`invalid registry in image reference ${JSON.stringify(input)}`);
  }
  const components = path.split('/');
  for (const c of components) {
    if (!COMPONENT.test(c)) {
      throw new ReferenceError(
        `invalid image reference ${JSON.stringify(input)}` + (c !== c.toLowerCase() ? ' (repository names must be lowercase)' : ''),
      );
    }
  }
  let repository: string;
  if (domain === undefined || domain === 'docker.io' || domain === 'index.docker.io') {
    // Familiar form drops docker.io/ and library/ (normalize.go FamiliarName).
    repository = components[0] === 'library' && components.length === 2 ? components[1] : path;
  } else {
    repository = `${domain}/${path}`;
  }
  if (repository.length > 255) throw new ReferenceError(`image reference ${JSON.stringify(input)} is longer than 255 characters`);
  return { repository, tag, digest };
}

/** The repositories.json key of a reference: `repo:tag` or `repo@sha256:…`. */
export function referenceKey(ref: Reference): string {
  if (ref.digest) return `${ref.repository}@${ref.digest}`;
  return `${ref.repository}:${ref.tag ?? 'latest'}`;
}

/** Normalises user input to a repositories.json key; a name alone means :latest. */
export function normalizeReference(input: string): string {
  const ref = parseReference(input);
  // With both a tag and a digest, the engine keys by digest (the tag is dropped).
  return referenceKey(ref.digest ? { repository: ref.repository, digest: ref.digest } : ref);
}

export function isDigestKey(key: string): boolean {
  return key.includes('@sha256:');
}
