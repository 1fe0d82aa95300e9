/**
 * Where things live in an overlay2 engine data root, and the modes the engine gives them
 * (image/fs.go, layer/filestore.go, daemon/graphdriver/overlay2/overlay.go of moby 20.10,
 * checked against a real dockerd 20.10). Paths are relative to the data root.
 */
import { hexOf } from './digest.js';

export const IMAGE_ROOT = 'image/overlay2';
export const LAYERDB = `${IMAGE_ROOT}/layerdb`;
export const LAYERDB_SHA = `${LAYERDB}/sha256`;
export const LAYERDB_TMP = `${LAYERDB}/tmp`;
export const IMAGEDB_CONTENT = `${IMAGE_ROOT}/imagedb/content/sha256`;
export const IMAGEDB_METADATA = `${IMAGE_ROOT}/imagedb/metadata/sha256`;
export const REPOSITORIES = `${IMAGE_ROOT}/repositories.json`;
export const OVERLAY = 'overlay2';
export const LINKS = `${OVERLAY}/l`;

export const layerDir = (chainId: string): string => `${LAYERDB_SHA}/${hexOf(chainId)}`;
export const imageConfigPath = (imageId: string): string => `${IMAGEDB_CONTENT}/${hexOf(imageId)}`;
export const imageMetadataDir = (imageId: string): string => `${IMAGEDB_METADATA}/${hexOf(imageId)}`;
export const cacheDir = (cacheId: string): string => `${OVERLAY}/${cacheId}`;
export const diffDir = (cacheId: string): string => `${OVERLAY}/${cacheId}/diff`;
export const linkPath = (linkId: string): string => `${LINKS}/${linkId}`;
/** The target of an l/ symlink, relative to l/ (overlay.go: path.Join("..", id, "diff")). */
export const linkTarget = (cacheId: string): string => `../${cacheId}/diff`;

export const MODE = {
  imageDirs: 0o700, // image/, image/overlay2/, imagedb/…
  layerdbSha: 0o755, // layerdb/sha256, layerdb/tmp
  layerDir: 0o700, // layerdb/sha256/<chain>
  layerFile: 0o644, // diff, size, cache-id, parent, tar-split.json.gz
  imageConfig: 0o600,
  imageMetadata: 0o600,
  repositories: 0o600,
  overlayRoot: 0o710,
  cacheDir: 0o710,
  linksDir: 0o700,
  diffDir: 0o755,
  workDir: 0o700,
  linkFile: 0o644,
  lowerFile: 0o644,
  committed: 0o600,
} as const;

/**
 * imagedb/metadata/<id>/lastUpdated: an RFC 3339 time with up to ns, no newline (image/store.go
 * SetLastUpdated writes time.Now().Format(time.RFC3339Nano); anything else breaks inspect).
 */
export const LAST_UPDATED_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$/;
