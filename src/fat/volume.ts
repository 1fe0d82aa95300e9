/**
 * A small FAT12/16/32 engine for the boot partition of a disk image: find, read and write
 * small files and make directories, with VFAT long names, without mounting.
 *
 * Nothing is written on a file system that is not sound: opening checks the boot sector
 * (geometry.ts), then walks every directory and every cluster chain once — a chain that
 * leaves the data area, reaches a free or bad cluster, loops, or shares a cluster with
 * another chain (cross-linked), a file larger than its chain, refuses the whole volume
 * with one line (what dosfstools' fsck.fat -n reports as errors). Changes are made in
 * memory and written by flush(): new data into free clusters first, then every FAT copy
 * (the kernel's fs/fat/fatent.c fat_mirror_bhs keeps them equal), then the directories,
 * then the FAT32 FSInfo free count (recounted, so it is exact).
 */
import type { ImageFile } from '../ext4/image-file.js';
import { parseGeometry, type FatGeometry } from './geometry.js';
import {
  ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_LONG_NAME, ENTRY, displayShortName, exactShortName, longNameEntries,
  makeShortName, parseDirectory, sameName, setEntryCluster, shortEntry, touchEntry, type DirEntry,
} from './dirent.js';

/** A directory can hold at most 65536 entries (fatgen103: 2 MiB). */
const MAX_DIR_BYTES = 65536 * ENTRY;
const FSINFO_LEAD = 0x41615252;
const FSINFO_STRUCT = 0x61417272;

interface Dir {
  path: string;
  /** 0 for the fixed FAT12/16 root. */
  firstCluster: number;
  clusters: number[];
  data: Buffer;
  dirty: boolean;
}

export class FatVolume {
  private readonly dirs = new Map<number, Dir>();
  private fatDirty = false;
  private nextFree = 2;
  private readonly written: string[] = [];

  private constructor(
    private readonly image: ImageFile,
    private readonly base: number,
    readonly geometry: FatGeometry,
    private readonly fat: Buffer,
    /** For messages: `image:resin-boot`. */
    readonly where: string,
  ) {}

  /** Opens the FAT file system of the partition at `offset`, `size` bytes, and checks it. */
  static open(image: ImageFile, offset: number, size: number, where: string): FatVolume {
    const g = parseGeometry(image.read(offset, 512), size, where);
    const bytes = Math.ceil(((g.clusterCount + 2) * g.bits) / 8);
    // The FAT read is the first one written on a change (the active one when not mirrored).
    const fat = image.read(offset + g.fatOffset + g.writtenFats[0] * g.fatBytes, bytes);
    const vol = new FatVolume(image, offset, g, fat, where);
    vol.checkTree();
    return vol;
  }

  private damaged(path: string, why: string): Error {
    return new Error(`${this.where}${path}: ${why}; the FAT file system is damaged, nothing was changed`);
  }

  /** The FAT entry of cluster `n`. */
  private entry(n: number): number {
    const { bits } = this.geometry;
    if (bits === 32) return this.fat.readUInt32LE(n * 4) & 0x0fffffff;
    if (bits === 16) return this.fat.readUInt16LE(n * 2);
    const v = this.fat.readUInt16LE(n + (n >> 1));
    return n & 1 ? v >> 4 : v & 0xfff;
  }

  private setEntry(n: number, value: number): void {
    const { bits } = this.geometry;
    if (bits === 32) this.fat.writeUInt32LE(((this.fat.readUInt32LE(n * 4) & 0xf0000000) | (value & 0x0fffffff)) >>> 0, n * 4);
    else if (bits === 16) this.fat.writeUInt16LE(value & 0xffff, n * 2);
    else {
      const at = n + (n >> 1);
      const v = this.fat.readUInt16LE(at);
      this.fat.writeUInt16LE(n & 1 ? (v & 0x000f) | ((value & 0xfff) << 4) : (v & 0xf000) | (value & 0xfff), at);
    }
    this.fatDirty = true;
  }

  private get endOfChain(): number {
    return this.geometry.bits === 12 ? 0xfff : this.geometry.bits === 16 ? 0xffff : 0x0fffffff;
  }

  /** The clusters of a chain, checked: inside the data area, no free or bad cluster, no loop. */
  private chain(first: number, path: string): number[] {
    const { clusterCount, eoc, bad } = this.geometry;
    const out: number[] = [];
    const seen = new Set<number>();
    for (let c = first; ; ) {
      if (c < 2 || c >= clusterCount + 2) throw this.damaged(path, `its cluster chain points to cluster ${c}, outside the ${clusterCount} clusters`);
      if (seen.has(c)) throw this.damaged(path, `its cluster chain loops (back to cluster ${c})`);
      seen.add(c);
      out.push(c);
      const next = this.entry(c);
      if (next >= eoc) return out;
      if (next === 0) throw this.damaged(path, `its cluster chain reaches cluster ${c}, which the FAT marks free`);
      if (next === bad) throw this.damaged(path, `its cluster chain reaches a bad cluster after ${c}`);
      c = next;
    }
  }

  private clusterOffset(c: number): number {
    return this.base + this.geometry.dataOffset + (c - 2) * this.geometry.clusterBytes;
  }

  /**
   * Walks every directory and chain once: each cluster may belong to one chain only (a
   * cross-linked file would be overwritten through the other), and a file's chain must
   * hold its size.
   */
  private checkTree(): void {
    const owner = new Int32Array(this.geometry.clusterCount + 2);
    const owners: string[] = [''];
    const claim = (clusters: number[], path: string) => {
      owners.push(path);
      for (const c of clusters) {
        if (owner[c] !== 0) throw this.damaged(path, `its cluster chain is cross-linked with ${this.where}${owners[owner[c]]} (cluster ${c})`);
        owner[c] = owners.length - 1;
      }
    };
    const root = this.rootDir();
    if (root.clusters.length > 0) claim(root.clusters, '/');
    const queue: Dir[] = [root];
    const cb = this.geometry.clusterBytes;
    while (queue.length > 0) {
      const dir = queue.shift()!;
      for (const e of parseDirectory(dir.data)) {
        if (e.name === '.' || e.name === '..') continue;
        const path = `${dir.path === '/' ? '' : dir.path}/${e.name}`;
        if (e.attr & ATTR_DIRECTORY) {
          if (e.firstCluster === 0) throw this.damaged(path, 'a directory without clusters');
          const clusters = this.chain(e.firstCluster, path);
          claim(clusters, path);
          queue.push(this.loadDir(e.firstCluster, path, clusters));
        } else if (e.firstCluster !== 0 || e.size !== 0) {
          if (e.firstCluster === 0) throw this.damaged(path, `a file of ${e.size} bytes without clusters`);
          const clusters = this.chain(e.firstCluster, path);
          if (clusters.length * cb < e.size) throw this.damaged(path, `${e.size} bytes, but its cluster chain holds ${clusters.length * cb}`);
          claim(clusters, path);
        }
      }
    }
  }

  private rootDir(): Dir {
    const g = this.geometry;
    if (g.bits === 32) {
      const cached = this.dirs.get(g.rootCluster);
      return cached ?? this.loadDir(g.rootCluster, '/', this.chain(g.rootCluster, '/'));
    }
    let root = this.dirs.get(0);
    if (!root) {
      root = { path: '/', firstCluster: 0, clusters: [], data: this.image.read(this.base + g.rootOffset, g.rootEntries * ENTRY), dirty: false };
      this.dirs.set(0, root);
    }
    return root;
  }

  private loadDir(first: number, path: string, clusters?: number[]): Dir {
    const cached = this.dirs.get(first);
    if (cached) return cached;
    const chain = clusters ?? this.chain(first, path);
    const cb = this.geometry.clusterBytes;
    if (chain.length * cb > MAX_DIR_BYTES) throw this.damaged(path, `a directory of ${chain.length * cb} bytes (at most ${MAX_DIR_BYTES})`);
    const data = Buffer.alloc(chain.length * cb);
    chain.forEach((c, i) => this.image.readInto(data, i * cb, cb, this.clusterOffset(c)));
    const dir: Dir = { path, firstCluster: first, clusters: chain, data, dirty: false };
    this.dirs.set(first, dir);
    return dir;
  }

  private find(dir: Dir, name: string): DirEntry | undefined {
    return parseDirectory(dir.data).find(
      (e) => e.name !== '.' && e.name !== '..' && (sameName(e.name, name) || sameName(displayShortName(e.shortName), name)),
    );
  }

  /** The directory at `parts` (root for []); undefined when a component is missing or not a directory. */
  private dirAt(parts: readonly string[]): Dir | undefined {
    let dir = this.rootDir();
    for (const [i, p] of parts.entries()) {
      const e = this.find(dir, p);
      if (!e || (e.attr & ATTR_DIRECTORY) === 0) return undefined;
      dir = this.loadDir(e.firstCluster, '/' + parts.slice(0, i + 1).join('/'));
    }
    return dir;
  }

  private split(rel: string): string[] {
    const parts = rel.split('/').filter((p) => p !== '');
    if (parts.some((p) => p === '.' || p === '..')) throw new Error(`internal: invalid FAT path ${JSON.stringify(rel)}`);
    return parts;
  }

  /** What is at `rel`: a file, a directory, or nothing. */
  kind(rel: string): 'file' | 'directory' | undefined {
    const parts = this.split(rel);
    if (parts.length === 0) return 'directory';
    const dir = this.dirAt(parts.slice(0, -1));
    const e = dir && this.find(dir, parts[parts.length - 1]);
    if (!e) return undefined;
    return e.attr & ATTR_DIRECTORY ? 'directory' : 'file';
  }

  /** Names in a directory (long names where there are any); undefined when it is not one. */
  readdir(rel: string): string[] | undefined {
    const dir = this.dirAt(this.split(rel));
    return dir && parseDirectory(dir.data).map((e) => e.name).filter((n) => n !== '.' && n !== '..');
  }

  /** A file's content; undefined when there is no such file. Refuses files over `maxBytes`. */
  readFile(rel: string, maxBytes = 64 * 1024 * 1024): Buffer | undefined {
    const parts = this.split(rel);
    const dir = this.dirAt(parts.slice(0, -1));
    const e = dir && parts.length > 0 ? this.find(dir, parts[parts.length - 1]) : undefined;
    if (!e || e.attr & ATTR_DIRECTORY) return undefined;
    const path = '/' + parts.join('/');
    if (e.size > maxBytes) throw new Error(`${this.where}${path}: ${e.size} bytes, more than the ${maxBytes} this reads`);
    const out = Buffer.alloc(e.size);
    if (e.size === 0) return out;
    const cb = this.geometry.clusterBytes;
    this.chain(e.firstCluster, path).forEach((c, i) => {
      if (i * cb < e.size) this.image.readInto(out, i * cb, Math.min(cb, e.size - i * cb), this.clusterOffset(c));
    });
    return out;
  }

  /** Free clusters, linked into one chain (end-of-chain last). */
  private allocate(count: number, path: string): number[] {
    const { clusterCount } = this.geometry;
    const out: number[] = [];
    for (let scanned = 0; out.length < count && scanned < clusterCount; scanned++) {
      const c = this.nextFree;
      this.nextFree = c + 1 >= clusterCount + 2 ? 2 : c + 1;
      if (this.entry(c) === 0) out.push(c);
    }
    if (out.length < count) throw new Error(`${this.where}${path}: no room: ${count} clusters needed, ${out.length} free`);
    out.forEach((c, i) => this.setEntry(c, i + 1 < out.length ? out[i + 1] : this.endOfChain));
    return out;
  }

  private writeClusters(clusters: number[], data: Buffer): void {
    const cb = this.geometry.clusterBytes;
    clusters.forEach((c, i) => {
      const part = Buffer.alloc(cb);
      data.copy(part, 0, i * cb, Math.min(data.length, (i + 1) * cb));
      this.image.write(this.clusterOffset(c), part);
    });
  }

  /** Adds a short entry (and long-name entries when `name` needs them) to `dir`. */
  private addEntry(dir: Dir, name: string, attr: number, firstCluster: number, size: number): void {
    const taken = (raw: Buffer) => {
      for (let i = 0; i * ENTRY < dir.data.length; i++) {
        const at = i * ENTRY;
        if (dir.data[at] === 0) return false;
        if (dir.data[at] !== 0xe5 && (dir.data[at + 11] & 0x3f) !== ATTR_LONG_NAME && dir.data.compare(raw, 0, 11, at, at + 11) === 0) return true;
      }
      return false;
    };
    const exact = exactShortName(name);
    const short = exact ?? makeShortName(name, taken);
    const slots = [...(exact ? [] : longNameEntries(name, short)), shortEntry(short, attr, firstCluster, size, new Date())];
    for (let attempt = 0; attempt < 2; attempt++) {
      const total = dir.data.length / ENTRY;
      let run = 0;
      let pastEnd = false;
      for (let i = 0; i < total; i++) {
        const b = dir.data[i * ENTRY];
        if (b === 0) pastEnd = true;
        run = pastEnd || b === 0xe5 ? run + 1 : 0;
        if (run === slots.length) {
          const start = i + 1 - slots.length;
          slots.forEach((s, k) => s.copy(dir.data, (start + k) * ENTRY));
          // Past the old end marker, the entry after the new ones ends the directory.
          if (pastEnd && i + 1 < total) dir.data.fill(0, (i + 1) * ENTRY, (i + 2) * ENTRY);
          dir.dirty = true;
          return;
        }
      }
      if (dir.firstCluster === 0) throw new Error(`${this.where}${dir.path}: the root directory is full`);
      const cb = this.geometry.clusterBytes;
      const need = Math.ceil((slots.length * ENTRY) / cb);
      if (dir.data.length + need * cb > MAX_DIR_BYTES) throw new Error(`${this.where}${dir.path}: the directory is full`);
      const more = this.allocate(need, dir.path);
      this.setEntry(dir.clusters[dir.clusters.length - 1], more[0]);
      dir.clusters.push(...more);
      dir.data = Buffer.concat([dir.data, Buffer.alloc(need * cb)]);
      dir.dirty = true;
    }
    throw new Error(`internal: no room for ${name} in ${this.where}${dir.path}`);
  }

  /** Makes directory `rel`; its parent must exist. */
  mkdir(rel: string): void {
    const parts = this.split(rel);
    const parent = this.dirAt(parts.slice(0, -1));
    const path = '/' + parts.join('/');
    if (!parent) throw new Error(`${this.where}${path}: its parent directory does not exist`);
    if (this.find(parent, parts[parts.length - 1])) throw new Error(`${this.where}${path}: already exists`);
    const [c] = this.allocate(1, path);
    const data = Buffer.alloc(this.geometry.clusterBytes);
    const now = new Date();
    shortEntry(Buffer.from('.          ', 'latin1'), ATTR_DIRECTORY, c, 0, now).copy(data, 0);
    // `..` of a directory in the root names cluster 0, also on FAT32 (fatgen103).
    const parentCluster = parent.path === '/' ? 0 : parent.firstCluster;
    shortEntry(Buffer.from('..         ', 'latin1'), ATTR_DIRECTORY, parentCluster, 0, now).copy(data, ENTRY);
    this.writeClusters([c], data);
    this.addEntry(parent, parts[parts.length - 1], ATTR_DIRECTORY, c, 0);
    this.written.push(path);
  }

  /**
   * Writes file `rel` (its directory must exist), replacing an existing file: the new
   * content goes to newly allocated clusters, the entry is pointed at them, then the old
   * chain is freed.
   */
  writeFile(rel: string, data: Buffer): void {
    const parts = this.split(rel);
    const path = '/' + parts.join('/');
    const parent = parts.length > 0 ? this.dirAt(parts.slice(0, -1)) : undefined;
    if (!parent) throw new Error(`${this.where}${path}: its directory does not exist`);
    if (data.length > 0xffffffff) throw new Error(`${this.where}${path}: too large for FAT`);
    const existing = this.find(parent, parts[parts.length - 1]);
    if (existing && existing.attr & ATTR_DIRECTORY) throw new Error(`${this.where}${path}: is a directory`);
    const clusters = data.length > 0 ? this.allocate(Math.ceil(data.length / this.geometry.clusterBytes), path) : [];
    this.writeClusters(clusters, data);
    const first = clusters[0] ?? 0;
    if (existing) {
      const old = existing.firstCluster !== 0 ? this.chain(existing.firstCluster, path) : [];
      const e = parent.data.subarray(existing.index * ENTRY, (existing.index + 1) * ENTRY);
      setEntryCluster(e, first);
      e.writeUInt32LE(data.length, 28);
      e[11] |= ATTR_ARCHIVE;
      touchEntry(e, new Date());
      parent.dirty = true;
      for (const c of old) this.setEntry(c, 0);
    } else {
      this.addEntry(parent, parts[parts.length - 1], ATTR_ARCHIVE, first, data.length);
    }
    this.written.push(path);
  }

  /** Writes the FATs, the changed directories and the FSInfo sector, and syncs the image. */
  flush(): void {
    const g = this.geometry;
    if (this.fatDirty) {
      for (const k of g.writtenFats) this.image.write(this.base + g.fatOffset + k * g.fatBytes, this.fat);
    }
    for (const dir of this.dirs.values()) {
      if (!dir.dirty) continue;
      if (dir.firstCluster === 0) this.image.write(this.base + g.rootOffset, dir.data);
      else this.writeClusters(dir.clusters, dir.data);
      dir.dirty = false;
    }
    if (this.fatDirty && g.fsInfoOffset !== 0) {
      const info = this.image.read(this.base + g.fsInfoOffset, 512);
      if (info.readUInt32LE(0) === FSINFO_LEAD && info.readUInt32LE(484) === FSINFO_STRUCT) {
        let free = 0;
        for (let c = 2; c < g.clusterCount + 2; c++) if (this.entry(c) === 0) free++;
        info.writeUInt32LE(free, 488);
        info.writeUInt32LE(0xffffffff, 492); // next free: unknown, the driver searches
        this.image.write(this.base + g.fsInfoOffset + 488, info.subarray(488, 496));
      }
    }
    this.fatDirty = false;
    this.image.sync();
  }
}
