/**
 * Which images a command works on. A selector is resolved the way the engine's
 * daemon/images/image.go GetImage does: a reference first (name, name:tag, name@digest),
 * then a full image ID, then a unique ID prefix (here at least 12 hex digits).
 */
import { isDigestKey, normalizeReference, parseReference, ReferenceError } from '../engine/reference.js';
import type { SourceImage } from '../sources/source.js';
import { isSupervisorRepository } from '../balena/supervisor.js';

/** Whether an image is the balena supervisor (by its repository). */
export function isSupervisorImage(image: SourceImage): boolean {
  return image.references.some((key) => isSupervisorRepository(parseReference(key).repository));
}

export class SelectionError extends Error {}

export function resolveSelector(selector: string, images: readonly SourceImage[], sourceName: string): SourceImage {
  const trimmed = selector.trim();
  // Image IDs are hex; accept them in either case (sha256: prefix optional).
  const hex = /^(sha256:)?[0-9a-fA-F]+$/.test(trimmed) ? trimmed.replace(/^sha256:/, '').toLowerCase() : '';
  let key: string | undefined;
  try {
    key = normalizeReference(trimmed);
  } catch (e) {
    if (!(e instanceof ReferenceError) || !/^[0-9a-f]{12,64}$/.test(hex)) {
      if (e instanceof ReferenceError) throw new SelectionError(`${e.message}`);
      throw e;
    }
  }
  if (key !== undefined && !/^sha256:/.test(trimmed)) {
    const byRef = images.find((img) => img.references.includes(key as string));
    if (byRef) return byRef;
  }
  if (/^[0-9a-f]{12,64}$/.test(hex)) {
    const matches = images.filter((img) => img.id.slice(7).startsWith(hex));
    if (matches.length === 1) return matches[0];
    if (matches.length > 1) throw new SelectionError(`image ID prefix ${hex} is ambiguous in ${sourceName} (${matches.length} images match); give more digits`);
  }
  // A short hex string is a name as far as the engine goes, but it may have been meant as an ID.
  if (/^[0-9a-f]{1,11}$/.test(hex) && images.some((img) => img.id.slice(7).startsWith(hex))) {
    throw new SelectionError(`image ID prefix ${hex} is too short: give at least 12 hex digits (no image is named ${JSON.stringify(selector)} in ${sourceName})`);
  }
  const hint = key !== undefined && isDigestKey(key) ? ' (digest references resolve only through an exact name@sha256 entry)' : '';
  throw new SelectionError(`no image ${JSON.stringify(selector)} in ${sourceName}${hint}; run \`transplant ls ${sourceName}\` to see what it holds`);
}

/** Resolves every selector, keeping the order given and dropping duplicates. */
export function selectImages(selectors: readonly string[], images: readonly SourceImage[], sourceName: string): SourceImage[] {
  const out: SourceImage[] = [];
  for (const s of selectors) {
    const image = resolveSelector(s, images, sourceName);
    if (!out.includes(image)) out.push(image);
  }
  return out;
}

/** One line per image for listings in error messages. */
export function describeImages(images: readonly SourceImage[]): string {
  if (images.length === 0) return '  (no images)';
  return images
    .map((img) => {
      const refs = img.references.length > 0 ? img.references.join(', ') : '<none>';
      return `  ${img.id.slice(7, 19)}  ${refs}${isSupervisorImage(img) ? '  [balena supervisor: taken only when named]' : ''}`;
    })
    .join('\n');
}
