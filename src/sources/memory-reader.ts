/**
 * A StoreReader over engine metadata gathered elsewhere (read from a tarball, fetched from a
 * device): small files held in memory, directories implied by the files' paths, and files
 * too large or too many to hold (tar-split.json.gz) fetched on demand through a loader.
 * The engine-root source reads it like any other tree.
 */
import type { StoreReader } from './store-reader.js';

export type LazyFile = () => Promise<Buffer | undefined>;

export class MemoryStoreReader implements StoreReader {
  private readonly files = new Map<string, Buffer | LazyFile>();
  private readonly dirs = new Map<string, Set<string>>([['', new Set()]]);

  constructor(readonly description: string) {}

  private addParents(p: string): void {
    let child = p;
    for (;;) {
      const slash = child.lastIndexOf('/');
      const parent = slash < 0 ? '' : child.slice(0, slash);
      const name = slash < 0 ? child : child.slice(slash + 1);
      let set = this.dirs.get(parent);
      const existed = set !== undefined;
      if (!set) {
        set = new Set();
        this.dirs.set(parent, set);
      }
      set.add(name);
      if (existed || parent === '') return;
      child = parent;
    }
  }

  /** A file (content, or a loader called on each read). */
  addFile(p: string, data: Buffer | LazyFile): void {
    this.files.set(p, data);
    this.addParents(p);
  }

  /** A directory, possibly empty. */
  addDir(p: string): void {
    if (!this.dirs.has(p)) this.dirs.set(p, new Set());
    if (p !== '') this.addParents(p);
  }

  async readFile(p: string): Promise<Buffer | undefined> {
    const f = this.files.get(p);
    if (f === undefined) return undefined;
    return Buffer.isBuffer(f) ? f : f();
  }

  async readdir(p: string): Promise<string[] | undefined> {
    const d = this.dirs.get(p);
    return d ? [...d] : undefined;
  }

  async kindOf(p: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined> {
    if (this.dirs.has(p)) return 'directory';
    if (this.files.has(p)) return 'file';
    return undefined;
  }
}
