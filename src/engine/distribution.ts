/**
 * The engine's pull cache, `image/overlay2/distribution/` (moby 20.10
 * distribution/metadata/metadata.go FSMetadataStore, v2_metadata_service.go):
 *
 * - `diffid-by-digest/sha256/<blob hex>`: the DiffID (`sha256:…`) the compressed blob
 *   unpacks to;
 * - `v2metadata-by-diffid/sha256/<diffID hex>`: JSON array of
 *   `{"Digest":…,"SourceRepository":…,"HMAC":…}` (Go field names, no omitempty), the newest
 *   last, at most 50; an entry equal to the new one is moved to the end (Add). A pull leaves
 *   HMAC empty: only push computes one (pull_v2.go Registered passes no HMAC).
 * Written with AtomicWriteFile, mode 0644, directories 0755, no trailing newline. With these,
 * the device's engine (and the supervisor's pulls) map a blob to a layer it already has and
 * skip the download.
 */
import { hexOf } from './digest.js';
import { IMAGE_ROOT } from './layout.js';

export const DISTRIBUTION = `${IMAGE_ROOT}/distribution`;
export const DIFFID_BY_DIGEST = `${DISTRIBUTION}/diffid-by-digest/sha256`;
export const V2METADATA_BY_DIFFID = `${DISTRIBUTION}/v2metadata-by-diffid/sha256`;
export const DISTRIBUTION_MODE = { dir: 0o755, file: 0o644 } as const;
const MAX_METADATA = 50;

export interface V2Metadata {
  Digest: string;
  SourceRepository: string;
  HMAC: string;
}

export const diffIdByDigestPath = (digest: string): string => `${DIFFID_BY_DIGEST}/${hexOf(digest)}`;
export const v2MetadataPath = (diffId: string): string => `${V2METADATA_BY_DIFFID}/${hexOf(diffId)}`;

/** The engine's Add: the existing list (unparseable counts as empty) with `entry` moved or appended last. */
export function addV2Metadata(existing: Buffer | undefined, entry: V2Metadata): Buffer {
  let list: V2Metadata[] = [];
  if (existing) {
    try {
      const parsed = JSON.parse(existing.toString('utf8')) as unknown;
      if (Array.isArray(parsed)) list = parsed as V2Metadata[];
    } catch {
      list = [];
    }
  }
  const same = (m: V2Metadata): boolean => m.Digest === entry.Digest && m.SourceRepository === entry.SourceRepository && (m.HMAC ?? '') === entry.HMAC;
  const next = [...list.filter((m) => !same(m)), entry].slice(-MAX_METADATA);
  // Go's json.Marshal of the struct: fields in declaration order.
  return Buffer.from(JSON.stringify(next.map((m) => ({ Digest: m.Digest, SourceRepository: m.SourceRepository, HMAC: m.HMAC ?? '' }))));
}
