/**
 * One file of a layer's `diff/` directory, with every attribute the engine's
 * overlay2 driver keeps (see ../../shared/docs/engine-on-disk.md, "What a diff
 * directory holds"). Sources yield these, targets write them, the bundle carries them.
 */

export type EntryKind =
  | 'file'
  | 'directory'
  | 'symlink'
  | 'hardlink'
  | 'char-device'
  | 'block-device'
  | 'fifo';

export interface Xattr {
  /** Full name with its namespace, e.g. `trusted.overlay.opaque`, `security.capability`. */
  name: string;
  value: Buffer;
}

export interface LayerEntry {
  /**
   * Path relative to the layer's `diff/` directory, '/'-separated, no leading './' or '/'.
   * The `diff/` directory itself is '.'.
   */
  path: string;
  kind: EntryKind;
  /** Permission bits including setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Modification time in nanoseconds since the epoch. */
  mtime: bigint;
  /** Access time in nanoseconds since the epoch (defaults to mtime when a source lacks it). */
  atime: bigint;
  /** Content length of a regular file; 0 for every other kind. */
  size: number;
  /** symlink: the target exactly as stored. hardlink: the layer-relative path of an earlier entry. */
  linkTarget?: string;
  /** char-device / block-device numbers (whiteouts are char-device 0/0). */
  devMajor?: number;
  devMinor?: number;
  /** Extended attributes in the order read. */
  xattrs: Xattr[];
}

/** An entry and, for regular files, a stream of exactly `entry.size` bytes that must be consumed before the next entry. */
export interface LayerItem {
  entry: LayerEntry;
  content?: AsyncIterable<Buffer>;
}

/** Mode bits of a whiteout as the engine writes it (pkg/archive/archive_linux.go: mknod 0/0). */
export function isWhiteout(entry: LayerEntry): boolean {
  return entry.kind === 'char-device' && (entry.devMajor ?? 0) === 0 && (entry.devMinor ?? 0) === 0;
}
