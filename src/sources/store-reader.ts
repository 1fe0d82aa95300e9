/**
 * Read access to a file tree holding an engine data root: a host directory, or the ext4
 * file system inside a disk image (every TreeWriter is one). The engine-root source reads
 * its metadata through this, so listing a disk image uses the same code as a directory.
 */
import type { TreeWriter } from '../targets/tree-writer.js';
import { readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { childPath, closeDir, lstatBelow, openDirBelow, readRegularBelow, readdirBelow, withTop } from '../fsx/beneath.js';
import { metadataLimit } from '../engine/limits.js';

export type StoreReader = Pick<TreeWriter, 'description' | 'readFile' | 'readdir' | 'kindOf'>;

/**
 * A StoreReader over a host directory (paths relative to it). Nothing below the directory is
 * followed through a symlink (fsx/beneath.ts): a symlink where a directory or a file is read
 * is refused (UnsafeSourcePath), and so is anything that is not a regular file where a file is
 * read. Each file is bounded by its engine limit (engine/limits.ts). kindOf reports a symlink
 * as 'symlink' (it reads no further).
 */
export class HostReader implements StoreReader {
  constructor(
    readonly root: string,
    readonly description: string = root,
  ) {}

  async readFile(p: string): Promise<Buffer | undefined> {
    return withTop(this.root, (top) => readRegularBelow(top, p, this.description, metadataLimit(p)));
  }

  async readdir(p: string): Promise<string[] | undefined> {
    return withTop(this.root, (top) => readdirBelow(top, p, this.description));
  }

  /** The target of a symlink (the engine's l/ links), read, never followed; undefined when missing or not a symlink. */
  async readlink(p: string): Promise<string | undefined> {
    return withTop(this.root, (top) => {
      const dir = openDirBelow(top, path.posix.dirname(p), this.description);
      if (!dir) return undefined;
      try {
        return readlinkSync(childPath(dir, path.posix.basename(p)));
      } catch {
        return undefined;
      } finally {
        closeDir(dir);
      }
    });
  }

  async kindOf(p: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined> {
    if (p === '') return 'directory';
    const st = withTop(this.root, (top) => lstatBelow(top, p, this.description));
    if (!st) return undefined;
    return st.isFile() ? 'file' : st.isDirectory() ? 'directory' : st.isSymbolicLink() ? 'symlink' : 'other';
  }
}
