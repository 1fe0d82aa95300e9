/**
 * Where an image lives in a registry: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` (skopeo's and
 * crane's convention), `docker://HOST[:PORT]` plus `--image REPO[:TAG|@DIGEST]`, or a plain
 * reference resolved as docker does (distribution/reference normalize.go: a first component
 * with a dot or a colon, or `localhost`, is a registry; else Docker Hub, `library/` for
 * single names).
 */
import { isDigest } from '../engine/digest.js';
import { parseReference, referenceKey } from '../engine/reference.js';

export const DOCKER_HUB = 'registry-1.docker.io';

export interface RegistryRef {
  /** Host and port to connect to (Docker Hub: registry-1.docker.io). */
  host: string;
  /** The repository path on that registry (`library/alpine`, `org/app`). */
  path: string;
  /** Familiar name, as repositories.json keys it (`alpine`, `127.0.0.1:5000/org/app`). */
  familiar: string;
  /** Fully qualified name (`docker.io/library/alpine`): v2metadata's SourceRepository. */
  fullName: string;
  tag?: string;
  digest?: string;
}

export function isRegistryUrl(s: string): boolean {
  return /^docker:\/\//i.test(s);
}

function hubHost(domain: string | undefined): boolean {
  return domain === undefined || domain === 'docker.io' || domain === 'index.docker.io' || domain === 'registry-1.docker.io';
}

/** A plain reference (`alpine:3.20`, `bh.cr/org/app`, `127.0.0.1:5000/x@sha256:…`) as docker resolves it. */
export function registryRef(input: string): RegistryRef {
  const parsed = parseReference(input); // validates, throws ReferenceError
  let rest = input.trim();
  const at = rest.indexOf('@');
  if (at >= 0) rest = rest.slice(0, at);
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) rest = rest.slice(0, colon);
  const slash = rest.indexOf('/');
  const first = slash < 0 ? '' : rest.slice(0, slash);
  const hasDomain = slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost');
  const domain = hasDomain ? first : undefined;
  let path = hasDomain ? rest.slice(slash + 1) : rest;
  if (hubHost(domain) && !path.includes('/')) path = `library/${path}`;
  const tag = parsed.digest ? undefined : (parsed.tag ?? 'latest');
  return {
    host: hubHost(domain) ? DOCKER_HUB : (domain as string),
    path,
    familiar: parsed.repository,
    fullName: hubHost(domain) ? `docker.io/${path}` : `${domain}/${path}`,
    tag,
    digest: parsed.digest,
  };
}

/** `docker://HOST[:PORT][/REPO[:TAG|@DIGEST]]`: the registry, and the image when named. */
export function parseRegistryUrl(url: string): { host: string; image?: RegistryRef } {
  const rest = url.replace(/^docker:\/\//i, '').replace(/\/+$/, '');
  if (rest === '') throw new Error(`${url}: no registry host (docker://HOST[:PORT]/REPO[:TAG|@DIGEST])`);
  const slash = rest.indexOf('/');
  if (slash < 0) return { host: hostOf(rest, url) };
  const host = hostOf(rest.slice(0, slash), url);
  const first = rest.slice(0, slash);
  // docker://alpine:3 or docker://library/x: no registry host given, Docker Hub (as skopeo).
  const looksLikeHost = first.includes('.') || first.includes(':') || first === 'localhost';
  return { host: looksLikeHost ? host : DOCKER_HUB, image: registryRef(looksLikeHost ? rest : rest) };
}

function hostOf(s: string, url: string): string {
  if (!/^[A-Za-z0-9.-]+(:\d{1,5})?$/.test(s) && !/^\[[0-9a-fA-F:]+\](:\d{1,5})?$/.test(s)) throw new Error(`${url}: invalid registry host ${JSON.stringify(s)}`);
  return hubHost(s) ? DOCKER_HUB : s;
}

/** An image on a known registry: `--image REPO[:TAG|@DIGEST]` with `docker://HOST`. */
export function refOnHost(host: string, image: string): RegistryRef {
  if (host === DOCKER_HUB) return registryRef(image);
  // A name that already starts with this host is taken as it is.
  if (image.startsWith(`${host}/`)) return registryRef(image);
  return registryRef(`${host}/${image}`);
}

/** repositories.json keys docker pull writes: `name:tag` (pulled by tag) and `name@<manifest digest>`. */
export function pulledReferences(ref: RegistryRef, manifestDigest: string): string[] {
  if (!isDigest(manifestDigest)) throw new Error(`malformed manifest digest ${manifestDigest}`);
  const keys: string[] = [];
  if (ref.tag) keys.push(referenceKey({ repository: ref.familiar, tag: ref.tag }));
  keys.push(referenceKey({ repository: ref.familiar, digest: manifestDigest }));
  return keys;
}

/** How a reference is shown in messages. */
export function showRef(ref: RegistryRef): string {
  const base = ref.host === DOCKER_HUB ? ref.familiar : `${ref.host}/${ref.path}`;
  return ref.digest ? `${base}@${ref.digest}` : `${base}:${ref.tag ?? 'latest'}`;
}
