import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ImageFile } from '../ext4/image-file.js';
import { checkWritable, readSuperblock, type Superblock } from '../ext4/superblock.js';
import { Ext4TreeWriter } from '../targets/ext4-tree-writer.js';
import { findPartition, growLastPartition, readPartitionTable, type Partition, type PartitionTable } from './partition-table.js';
import { copyImageFile, growExt4 } from './grow.js';
import { readFatFile } from './fat-read.js';
import { checkAborted as checkInterrupted, onAbort as onInterrupt } from '../run/abort.js';

export const DATA_LABEL = 'resin-data';

export interface DiskTargetOptions {
  /** Write the result here instead of replacing the input image. */
  output?: string;
  /** In place: the owner and mode the image has, given to the result (set by openDiskTarget). */
  keep?: FileOwnership;
  /**
   * The image is already a private work copy (a decompressed input, compressed-image.ts):
   * written in place without another copy; commit leaves it where it is.
   */
  adopt?: boolean;
  /** The name messages give the image (the user's file, when the image is a work copy of it). */
  shownAs?: string;
}

/** What an image replaced in place keeps: its owner and permission bits. */
export interface FileOwnership {
  uid: number;
  gid: number;
  mode: number;
}

/**
 * The file an in-place run replaces: the image itself, or the file a symlink named as the
 * image points to (the symlink stays, and the work copy is made beside the real file).
 */
export function realImagePath(imagePath: string): string {
  try {
    return fs.realpathSync(imagePath);
  } catch {
    return path.resolve(imagePath);
  }
}

/**
 * Refuses an in-place run on an image the user cannot write, or whose owner the result
 * could not keep (the result replaces it by rename, so it is a new file owned by whoever
 * writes it unless given the old owner, which only root or the owner can do).
 */
export function checkInPlace(imagePath: string, real: string): FileOwnership {
  const st = fs.statSync(real);
  const mode = st.mode & 0o7777;
  const alt = 'give --output <image> to write the result to another file';
  try {
    fs.accessSync(real, fs.constants.W_OK);
  } catch {
    throw new Error(`${imagePath}: you cannot write it (owner uid ${st.uid}, mode ${mode.toString(8).padStart(4, '0')}); ${alt}`);
  }
  const uid = process.geteuid?.() ?? 0;
  if (uid !== 0) {
    const groups = new Set([process.getegid?.() ?? -1, ...(process.getgroups?.() ?? [])]);
    if (st.uid !== uid || !groups.has(st.gid)) {
      throw new Error(`${imagePath}: it belongs to uid ${st.uid} gid ${st.gid}, and the image replacing it could not keep that owner; run as its owner or as root, or ${alt}`);
    }
  }
  return { uid: st.uid, gid: st.gid, mode };
}

export interface RoomNeeded {
  /** Bytes the file system needed beyond what was free (0 when it fitted). */
  grewBy: number;
}

export interface DiskTarget {
  /** The image given. */
  readonly imagePath: string;
  /** Where the result lands on commit: --output, or the image itself. */
  readonly destination: string;
  /** The work copy being written. */
  readonly workPath: string;
  /**
   * The image file whose resin-boot the device will boot, to write network keyfiles or
   * config.json into before commit: the work copy, or for a flasher image the inner image
   * (which is streamed back into flash-rootA on commit).
   */
  readonly bootImagePath: string;
  readonly tableKind: 'mbr' | 'gpt';
  /** resin-data, as it is now in the work copy (offset and size in bytes). */
  readonly partition: Partition;
  /** Rooted at resin-data's root; the engine data root is `docker/` in it. */
  readonly writer: Ext4TreeWriter;
  /**
   * Makes sure resin-data has room for `bytes` of file content in `inodes` new inodes,
   * growing the work copy (file, partition table, file system) when it does not.
   * Margins (each an upper bound): every inode may waste up to one block to rounding;
   * directory entries take up to 40 bytes each (8-byte header + name padded to 4);
   * 1% of the content for extent-tree and directory index blocks; 8 MiB for the engine's
   * own metadata; blocks reserved for root are not counted as free. Growth itself costs
   * inode tables and bitmaps in every new block group, which is added back.
   */
  ensureRoom(bytes: number, inodes: number): Promise<RoomNeeded>;
  /** Everything succeeded: the work copy replaces the destination atomically (rename). */
  commit(): Promise<void>;
  /** Throws the work copy away; the input image is untouched. Safe to call twice. */
  abort(): Promise<void>;
}

const MiB = 1024 * 1024;
const IMAGE_ALIGN = 4 * MiB; // balenaOS aligns partitions to 4 MiB

/** Reads the partition table and finds resin-data, refusing anything that is not a balenaOS image. */
export function inspectBalenaImage(imagePath: string, opts: { forReading?: boolean } = {}): { table: PartitionTable; data: Partition } {
  let image: ImageFile;
  try {
    image = ImageFile.open(imagePath, false);
  } catch (err) {
    throw new Error(`cannot open ${imagePath}: ${(err as Error).message}`);
  }
  try {
    if (!fs.fstatSync(image.fd).isFile()) throw new Error(`${imagePath} is not a regular file; give a balenaOS disk image file`);
    const table = readPartitionTable(image);
    if (!table) throw new Error(`${imagePath} is not a balenaOS disk image: it has no MBR or GPT partition table`);
    const data = findPartition(table, DATA_LABEL, imagePath);
    if (!data) {
      if (findPartition(table, 'flash-rootA', imagePath)) {
        throw new Error(`${imagePath} is a balenaOS flasher image: its resin-data is inside the image file in flash-rootA`);
      }
      throw new Error(`${imagePath} is not a balenaOS disk image: it has no ${DATA_LABEL} partition`);
    }
    if (data.fsType !== 'ext4') throw new Error(`${imagePath}: the ${DATA_LABEL} partition does not hold an ext4 file system`);
    const sb = readSuperblock(image, data.offset);
    if (!sb) throw new Error(`${imagePath}: the ${DATA_LABEL} partition has no readable ext4 superblock; the image is damaged`);
    if (!opts.forReading) checkWritable(sb, `${imagePath}:${DATA_LABEL}`);
    if (sb.blocksCount * sb.blockSize > data.size) {
      throw new Error(`${imagePath}: the ${DATA_LABEL} file system is larger than its partition; the image is damaged`);
    }
    if (data.offset + data.size > image.size()) {
      throw new Error(`${imagePath}: the ${DATA_LABEL} partition ends beyond the end of the file; the image is truncated`);
    }
    return { table, data };
  } finally {
    image.close();
  }
}

/** Where the work copy of `destination` is made: beside it, hidden, unique. */
export function workPathFor(destination: string): string {
  const dir = path.dirname(path.resolve(destination));
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch {
    throw new Error(`cannot write in ${dir}: the work copy of the image is made there; choose an --output in a writable directory`);
  }
  removeStaleWorkFiles(dir, path.basename(destination));
  return path.join(dir, `.${path.basename(destination)}.transplant-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/**
 * Work files of an earlier run that was killed (its process is gone) are removed: they
 * are copies of the image, never the image itself.
 */
function removeStaleWorkFiles(dir: string, base: string): void {
  const prefix = `.${base}.transplant-`;
  let names: string[];
  try {
    names = fs.readdirSync(dir).filter((n) => n.startsWith(prefix));
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^(\d+)-[0-9a-f]{8}(\.inner|\.out|\.resize-\d+)?$/.exec(name.slice(prefix.length));
    if (!m) continue;
    const pid = Number(m[1]);
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch (err) {
      alive = (err as NodeJS.ErrnoException).code !== 'ESRCH';
    }
    if (!alive) fs.rmSync(path.join(dir, name), { force: true });
  }
}

/** A flasher image: flash-rootA (ext4) and no resin-data; undefined for anything else. */
export function flasherRootA(imagePath: string): { rootA: Partition } | undefined {
  const image = ImageFile.open(imagePath, false);
  try {
    const table = readPartitionTable(image);
    if (!table || findPartition(table, DATA_LABEL, imagePath)) return undefined;
    const rootA = findPartition(table, 'flash-rootA', imagePath);
    return rootA && rootA.fsType === 'ext4' ? { rootA } : undefined;
  } catch {
    return undefined;
  } finally {
    image.close();
  }
}

export async function openDiskTarget(imagePath: string, options: DiskTargetOptions = {}): Promise<DiskTarget> {
  if (options.output && path.resolve(options.output) === path.resolve(imagePath)) {
    throw new Error(`--output ${options.output} is the input image; leave --output out to write the image in place`);
  }
  if (options.adopt) {
    const flasher = flasherRootA(imagePath);
    if (flasher) {
      const { openFlasherTarget } = await import('./flasher.js');
      return openFlasherTarget(imagePath, flasher.rootA, { adopt: true, shownAs: options.shownAs });
    }
    const { table, data } = inspectBalenaImage(imagePath);
    return new DiskTargetImpl(imagePath, imagePath, imagePath, table, data, undefined, options.shownAs);
  }
  // In place, a symlink named as the image is written through: the real file is replaced.
  const real = realImagePath(imagePath);
  const inPlace = options.output === undefined;
  if (fs.existsSync(imagePath)) {
    const flasher = flasherRootA(imagePath);
    if (flasher) {
      const { openFlasherTarget } = await import('./flasher.js');
      return openFlasherTarget(imagePath, flasher.rootA, inPlace ? { output: real, keep: checkInPlace(imagePath, real) } : options);
    }
  }
  const { table, data } = inspectBalenaImage(imagePath);
  const keep = inPlace ? checkInPlace(imagePath, real) : undefined;
  const destination = options.output ?? real;
  const workPath = workPathFor(destination);
  const forget = onInterrupt(() => fs.rmSync(workPath, { force: true }));
  try {
    await copyImageFile(imagePath, workPath);
  } catch (err) {
    forget();
    throw err;
  }
  const target = new DiskTargetImpl(imagePath, destination, workPath, table, data, keep);
  target.forgetCleanup = forget;
  return target;
}

/** The resin-data target of one image file; `destination` may equal `workPath` (then commit only closes). */
export class DiskTargetImpl implements DiskTarget {
  readonly writer: Ext4TreeWriter;
  readonly bootImagePath: string;
  readonly tableKind: 'mbr' | 'gpt';
  private state: 'open' | 'committed' | 'aborted' = 'open';
  /** Unregisters the removal of the work copy on a signal (once committed or aborted). */
  forgetCleanup: () => void = () => undefined;

  constructor(
    readonly imagePath: string,
    readonly destination: string,
    readonly workPath: string,
    private table: PartitionTable,
    public partition: Partition,
    private readonly keep?: FileOwnership,
    shownAs?: string,
  ) {
    this.bootImagePath = workPath;
    this.tableKind = table.kind;
    this.writer = new Ext4TreeWriter(workPath, partition.offset, { description: `${path.basename(shownAs ?? imagePath)}:${DATA_LABEL}` });
  }

  private assertOpen(): void {
    if (this.state !== 'open') throw new Error(`the disk target ${this.imagePath} is already ${this.state}`);
  }

  async ensureRoom(bytes: number, inodes: number): Promise<RoomNeeded> {
    this.assertOpen();
    if (!Number.isFinite(bytes) || bytes < 0 || !Number.isFinite(inodes) || inodes < 0) throw new Error('ensureRoom: bytes and inodes must be non-negative numbers');
    // The content lands on the host's disk (the work copy is sparse or reflinked): more than
    // is free there can never be written, whatever the input declares, so such a plan is
    // refused before the image, partition and file system are grown for it.
    const dir = path.dirname(path.resolve(this.workPath));
    const free = hostFreeBytes(dir);
    if (free !== undefined && bytes > free) {
      throw new Error(`${this.imagePath}: the planned content takes ${bytes} bytes, but only ${free} bytes are free in ${dir} where the work copy is; free some space or choose an --output elsewhere`);
    }
    await this.writer.suspend();
    const startSize = fs.statSync(this.workPath).size;
    for (let attempt = 0; attempt < 4; attempt++) {
      const grow = this.growthNeeded(bytes, inodes);
      if (grow === 0) return { grewBy: fs.statSync(this.workPath).size - startSize };
      if (attempt === 3) break;
      await this.grow(grow);
    }
    throw new Error(`${this.imagePath}: ${DATA_LABEL} could not be grown enough for ${bytes} bytes in ${inodes} files`);
  }

  /** Bytes the partition must grow by (0 when everything fits). */
  private growthNeeded(bytes: number, inodes: number): number {
    const image = ImageFile.open(this.workPath, false);
    try {
      return growthNeeded(readSuperblock(image, this.partition.offset)!, bytes, inodes);
    } finally {
      image.close();
    }
  }

  private async grow(bytes: number): Promise<void> {
    const image = ImageFile.open(this.workPath, true);
    let newPart: Partition;
    let oldSize: number;
    try {
      oldSize = image.size();
      const gptTail = this.table.kind === 'gpt' ? MiB : 0; // backup GPT after a 1 MiB-aligned end
      const newSize = Math.ceil((oldSize + bytes + gptTail) / IMAGE_ALIGN) * IMAGE_ALIGN;
      fs.ftruncateSync(image.fd, newSize);
      newPart = growLastPartition(image, this.table, this.partition, newSize);
      image.sync();
    } finally {
      image.close();
    }
    await growExt4(this.workPath, newPart.offset, newPart.size, oldSize, `${path.basename(this.imagePath)}:${DATA_LABEL}`);
    this.partition = newPart;
  }

  async commit(): Promise<void> {
    this.assertOpen();
    try {
      await this.writer.close();
      checkInterrupted(); // the last moment the run can still be undone
      replaceWithWorkCopy(this.workPath, this.destination, this.keep);
      this.state = 'committed';
      this.forgetCleanup();
    } catch (err) {
      await this.abort();
      throw err;
    }
    try {
      const dfd = fs.openSync(path.dirname(path.resolve(this.destination)), 'r');
      try {
        fs.fsyncSync(dfd);
      } finally {
        fs.closeSync(dfd);
      }
    } catch {
      // best effort: the rename itself has happened
    }
  }

  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.writer.discard();
    fs.rmSync(this.workPath, { force: true });
    this.forgetCleanup();
  }

  /** For an adopted work copy: nothing to rename on commit. */
  get adopted(): boolean {
    return this.workPath === this.destination;
  }
}

/** Bytes an unprivileged writer may still use on the file system holding `dir`; undefined when unknown. */
function hostFreeBytes(dir: string): number | undefined {
  try {
    const st = fs.statfsSync(dir);
    return st.bavail * st.bsize;
  } catch {
    return undefined;
  }
}

/**
 * Bytes resin-data must grow by to hold `bytes` of content in `inodes` new inodes
 * (0 when it fits), with the margins described at DiskTarget.ensureRoom.
 */
export function growthNeeded(sb: Superblock, bytes: number, inodes: number): number {
  const bs = sb.blockSize;
  const neededBlocks =
    Math.ceil(bytes / bs) + // content
    inodes + // partial last block of every file, one block per directory or long symlink
    Math.ceil((inodes * 40) / bs) + // directory entries
    Math.ceil((bytes * 0.01) / bs) + // extent-tree and index blocks
    Math.ceil((8 * MiB) / bs); // engine metadata (layerdb, imagedb, repositories.json)
  const availableBlocks = Math.max(0, sb.freeBlocksCount - sb.reservedBlocksCount);
  const blockDeficit = Math.max(0, neededBlocks - availableBlocks) * bs;
  const neededInodes = inodes + 64;
  const bytesPerInode = (sb.blocksCount * bs) / sb.inodesCount;
  const inodeDeficit = Math.max(0, neededInodes - sb.freeInodesCount) * bytesPerInode;
  if (blockDeficit === 0 && inodeDeficit === 0) return 0;
  // What one new block group costs: its inode table, two bitmaps, and (at most) a
  // backup superblock and descriptor table (ext4 block_group layout, sparse_super).
  const groupBytes = sb.blocksPerGroup * bs;
  const overhead = (sb.inodesPerGroup * sb.inodeSize + 3 * bs + Math.ceil((sb.groupCount * 2 * sb.descSize) / bs) * bs) / groupBytes;
  const usable = Math.max(0.5, 1 - overhead);
  // Reserved blocks scale with the size too (s_r_blocks_count / s_blocks_count).
  const reservedShare = sb.reservedBlocksCount / sb.blocksCount;
  return Math.ceil(Math.max(blockDeficit / (usable - reservedShare), inodeDeficit));
}

/** For a dry run: what resin-data of an image holds free now, and how much the image would grow. Reads only. */
export function estimateRoom(imagePath: string, bytes: number, inodes: number): { freeBytes: number; freeInodes: number; growBy: number } {
  const { data, table } = inspectBalenaImage(imagePath);
  const image = ImageFile.open(imagePath, false);
  try {
    const sb = readSuperblock(image, data.offset)!;
    const grow = growthNeeded(sb, bytes, inodes);
    const size = image.size();
    const growBy = grow === 0 ? 0 : Math.ceil((size + grow + (table.kind === 'gpt' ? MiB : 0)) / IMAGE_ALIGN) * IMAGE_ALIGN - size;
    return { freeBytes: sb.freeBlocksCount * sb.blockSize, freeInodes: sb.freeInodesCount, growBy };
  } finally {
    image.close();
  }
}

/**
 * The device type of a balenaOS image, from `device-type.json` on its boot partition
 * (`resin-boot`, or `flash-boot` in flasher images), read without mounting.
 */
export async function readDeviceArch(imagePath: string): Promise<{ arch: string; slug: string }> {
  const image = ImageFile.open(imagePath, false);
  let table: PartitionTable | undefined;
  try {
    table = readPartitionTable(image);
  } finally {
    image.close();
  }
  if (!table) throw new Error(`${imagePath} is not a balenaOS disk image: it has no MBR or GPT partition table`);
  const boot = findPartition(table, 'resin-boot', imagePath) ?? findPartition(table, 'flash-boot', imagePath);
  if (!boot) throw new Error(`${imagePath} is not a balenaOS disk image: it has no resin-boot partition`);
  const raw = readFatFile(imagePath, boot, `${imagePath}:${boot.label ?? boot.name ?? 'resin-boot'}`, 'device-type.json');
  if (!raw) throw new Error(`${imagePath}: resin-boot has no device-type.json`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new Error(`${imagePath}: resin-boot's device-type.json is not valid JSON`);
  }
  const o = parsed as { arch?: unknown; slug?: unknown };
  if (typeof o.arch !== 'string' || typeof o.slug !== 'string') {
    throw new Error(`${imagePath}: resin-boot's device-type.json has no "arch" and "slug"`);
  }
  return { arch: o.arch, slug: o.slug };
}

/**
 * The finished work copy, flushed to disk, takes the destination's name in one rename;
 * in place it first gets the replaced image's owner and mode (`keep`).
 */
export function replaceWithWorkCopy(workPath: string, destination: string, keep?: FileOwnership): void {
  const fd = fs.openSync(workPath, 'r');
  try {
    if (keep) {
      fs.fchownSync(fd, keep.uid, keep.gid);
      fs.fchmodSync(fd, keep.mode); // after chown, which clears setuid/setgid
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(workPath, destination);
}
