/**
 * Reading the resin-data file system of a disk image without changing a byte of it,
 * through transplant's own ext4 engine (src/ext4/) opened read-only.
 */
import * as path from 'node:path';
import { ImageFile } from '../ext4/image-file.js';
import { Ext4Volume } from '../ext4/volume.js';
import { Ext4Tree, ROOT_INO, nameKey } from '../ext4/tree.js';
import { ext4FileAccess } from '../ext4/file-access.js';
import { FT_DIR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../ext4/inode.js';
import type { StoreReader } from '../sources/store-reader.js';
import type { LayerFileAccess } from '../verify/verify.js';
import { inspectBalenaImage, DATA_LABEL } from './disk-target.js';

/** A StoreReader over resin-data inside a balenaOS disk image, opened read-only. */
export class DiskImageReader implements StoreReader {
  readonly description: string;

  private constructor(
    private readonly image: ImageFile,
    private readonly tree: Ext4Tree,
    description: string,
  ) {
    this.description = description;
  }

  static async open(imagePath: string, description = `${path.basename(imagePath)}:${DATA_LABEL}`): Promise<DiskImageReader> {
    const { data } = inspectBalenaImage(imagePath, { forReading: true });
    const image = ImageFile.open(imagePath, false);
    try {
      const vol = Ext4Volume.open(image, data.offset, { where: description, writable: false, limit: data.size });
      return new DiskImageReader(image, new Ext4Tree(vol), description);
    } catch (e) {
      image.close();
      throw e;
    }
  }

  private at(p: string): number | undefined {
    this.tree.trimCache();
    let ino = ROOT_INO;
    if (p === '' || p === '.') return ino;
    let dir = true;
    for (const c of p.split('/')) {
      if (c === '' || c === '.' || c === '..') return undefined;
      if (ino !== ROOT_INO && !dir) return undefined;
      const e = this.tree.entry(ino, nameKey(c));
      if (!e) return undefined;
      dir = e.type === FT_DIR;
      ino = e.ino;
    }
    return ino;
  }

  private mode(ino: number): number {
    return this.tree.info(ino).mode & S_IFMT;
  }

  async readFile(p: string): Promise<Buffer | undefined> {
    const ino = this.at(p);
    if (ino === undefined || this.mode(ino) !== S_IFREG) return undefined;
    return this.tree.readWhole(ino);
  }

  async readdir(p: string): Promise<string[] | undefined> {
    const ino = this.at(p);
    if (ino === undefined || this.mode(ino) !== S_IFDIR) return undefined;
    return this.tree.list(ino);
  }

  async kindOf(p: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined> {
    const ino = this.at(p);
    if (ino === undefined) return undefined;
    const m = this.mode(ino);
    return m === S_IFREG ? 'file' : m === S_IFDIR ? 'directory' : m === S_IFLNK ? 'symlink' : 'other';
  }

  async readlink(p: string): Promise<string | undefined> {
    const ino = this.at(p);
    if (ino === undefined || this.mode(ino) !== S_IFLNK) return undefined;
    return this.tree.readlink(ino);
  }

  /** Streaming layer-file access with device numbers and xattrs, for verify. */
  fileAccess(): LayerFileAccess {
    return ext4FileAccess(() => this.tree);
  }

  async close(): Promise<void> {
    this.image.close();
  }
}
