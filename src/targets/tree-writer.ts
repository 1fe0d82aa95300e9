import type { LayerEntry } from '../layer/entry.js';

/**
 * The one small interface every target file system implements (a host directory,
 * the ext4 `resin-data` partition inside a disk image). The engine layout rules
 * (src/engine/, src/inject/) are written once on top of it.
 *
 * Paths are relative to the writer's root, '/'-separated, never starting with '/'
 * and never containing '..' (callers guarantee it; writers still refuse them).
 * Nothing is ever followed through a symlink while writing.
 */
export interface FreeSpace {
  bytes: number;
  inodes: number;
}

export interface TreeWriter {
  /** What the writer writes into, for messages (e.g. `/mnt/resin-data` or `balena.img:resin-data`). */
  readonly description: string;

  // Reading what the target already holds.
  readFile(path: string): Promise<Buffer | undefined>;
  readdir(path: string): Promise<string[] | undefined>;
  /** lstat-like: the kind of what is at path, or undefined. */
  kindOf(path: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined>;
  readlink(path: string): Promise<string | undefined>;
  freeSpace(): Promise<FreeSpace | undefined>;

  // Engine metadata: owned by root, no xattrs, times of the moment.
  /** Creates the directory and missing parents with this mode; no error if it exists. */
  mkdirp(path: string, mode: number): Promise<void>;
  /** Creates or replaces a small file (written in place; use rename for atomic replacement). */
  writeFile(path: string, data: Buffer, mode: number): Promise<void>;
  symlink(target: string, path: string): Promise<void>;
  /** Atomic replacement of `to` by `from` (rename(2) semantics). */
  rename(from: string, to: string): Promise<void>;
  /** Removes a file or a whole tree; no error if absent. */
  remove(path: string): Promise<void>;

  // Layer content, with every attribute.
  /**
   * Writes one entry below `root` (`root` + '/' + entry.path; entry.path '.' is root itself,
   * which must then already exist or be created). Hard-link targets are resolved inside `root`.
   * `content` is given for regular files and holds exactly entry.size bytes.
   * Directory times may be deferred until finishTree(root).
   */
  writeEntry(root: string, entry: LayerEntry, content?: AsyncIterable<Buffer>): Promise<void>;
  /** Applies what writeEntry deferred under `root` (directory times, deepest first). */
  finishTree(root: string): Promise<void>;

  /** Flushes everything; after close() the target is complete and consistent. Safe to call twice. */
  close(): Promise<void>;
}
