/**
 * Read access to a file tree holding an engine data root: a host directory, or the ext4
 * file system inside a disk image (every TreeWriter is one). The engine-root source reads
 * its metadata through this, so listing a disk image uses the same code as a directory.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { TreeWriter } from '../targets/tree-writer.js';

export type StoreReader = Pick<TreeWriter, 'description' | 'readFile' | 'readdir' | 'kindOf'>;

/** A StoreReader over a host directory (paths relative to it). */
export class HostReader implements StoreReader {
  constructor(
    readonly root: string,
    readonly description: string = root,
  ) {}

  private abs(p: string): string {
    return p === '' ? this.root : path.join(this.root, p);
  }

  async readFile(p: string): Promise<Buffer | undefined> {
    try {
      return await fs.readFile(this.abs(p));
    } catch (e) {
      if (['ENOENT', 'ENOTDIR'].includes((e as NodeJS.ErrnoException).code ?? '')) return undefined;
      throw e;
    }
  }

  async readdir(p: string): Promise<string[] | undefined> {
    try {
      return await fs.readdir(this.abs(p));
    } catch (e) {
      if (['ENOENT', 'ENOTDIR'].includes((e as NodeJS.ErrnoException).code ?? '')) return undefined;
      throw e;
    }
  }

  async kindOf(p: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined> {
    try {
      const st = await fs.lstat(this.abs(p));
      return st.isFile() ? 'file' : st.isDirectory() ? 'directory' : st.isSymbolicLink() ? 'symlink' : 'other';
    } catch {
      return undefined;
    }
  }
}
