import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageFile } from '../ext4/image-file.js';
import { readSuperblock } from '../ext4/superblock.js';
import { Ext4TreeWriter } from '../targets/ext4-tree-writer.js';
import {
  DiskTargetImpl, growthNeeded, inspectBalenaImage, replaceWithWorkCopy, workPathFor,
  type DiskTarget, type DiskTargetOptions, type FileOwnership, type RoomNeeded,
} from './disk-target.js';
import { checkAborted as checkInterrupted, onAbort as onInterrupt } from '../run/abort.js';
import { copyImageFile, growExt4 } from './grow.js';
import { findPartition, growLastPartition, growPartitionInPlace, readPartitionTable, type Partition } from './partition-table.js';

const MiB = 1024 * 1024;
const ALIGN = 4 * MiB;
const INNER_DIR = 'opt';
const INNER_SUFFIX = '.balenaos-img';

/**
 * A balenaOS flasher image: the image the device runs is a file in flash-rootA,
 * `/opt/*.balenaos-img` (shared/docs/balena-target.md). The inner image is streamed out
 * beside the work copy, written like any balenaOS image, and on commit streamed back
 * into flash-rootA, which is grown first when it lacks room (the partitions after it
 * move up; the file system grows in-process like resin-data, src/ext4/resize.ts).
 */
export async function openFlasherTarget(imagePath: string, rootA: Partition, options: DiskTargetOptions): Promise<DiskTarget> {
  const destination = options.output ?? imagePath;
  // An adopted image is already a private work copy: written in place (compressed-image.ts).
  const workPath = options.adopt ? imagePath : workPathFor(destination);
  const innerPath = `${workPath}.inner`;
  let rootWriter: Ext4TreeWriter | undefined;
  const forget = onInterrupt(() => {
    fs.rmSync(workPath, { force: true });
    fs.rmSync(innerPath, { force: true });
  });
  try {
    if (!options.adopt) await copyImageFile(imagePath, workPath);
    const shown = path.basename(options.shownAs ?? imagePath);
    rootWriter = new Ext4TreeWriter(workPath, rootA.offset, { description: `${shown}:flash-rootA` });
    const names = ((await rootWriter.readdir(INNER_DIR)) ?? []).filter((n) => n.endsWith(INNER_SUFFIX));
    if (names.length !== 1) {
      throw new Error(
        `${imagePath} is a balenaOS flasher image, but its flash-rootA holds ${names.length === 0 ? 'no' : names.length} /${INNER_DIR}/*${INNER_SUFFIX} file${names.length === 1 ? '' : 's'}; expected exactly one`,
      );
    }
    const innerRel = `${INNER_DIR}/${names[0]}`;
    const old = (await rootWriter.stat(innerRel))!;
    await rootWriter.copyOut(innerRel, innerPath);
    await rootWriter.suspend();
    let inspected;
    try {
      inspected = inspectBalenaImage(innerPath);
    } catch (err) {
      throw new Error(`${imagePath}: the image inside the flasher (${innerRel}) is not usable: ${(err as Error).message.replace(innerPath, innerRel)}`);
    }
    const inner = new DiskTargetImpl(`${imagePath}:${innerRel}`, innerPath, innerPath, inspected.table, inspected.data, undefined, `${shown}:${innerRel}`);
    return new FlasherTarget(imagePath, destination, workPath, innerPath, innerRel, old, rootA, rootWriter, inner, forget, options.keep);
  } catch (err) {
    forget();
    await rootWriter?.discard();
    fs.rmSync(workPath, { force: true });
    fs.rmSync(innerPath, { force: true });
    throw err;
  }
}

class FlasherTarget implements DiskTarget {
  private state: 'open' | 'committed' | 'aborted' = 'open';

  constructor(
    readonly imagePath: string,
    readonly destination: string,
    readonly workPath: string,
    private readonly innerPath: string,
    private readonly innerRel: string,
    private readonly old: { mode: number; uid: number; gid: number; allocated: number },
    private readonly rootA: Partition,
    private readonly rootWriter: Ext4TreeWriter,
    private readonly inner: DiskTargetImpl,
    /** Unregisters the removal of the work files on a signal. */
    private readonly forgetCleanup: () => void,
    private readonly keep?: FileOwnership,
  ) {}

  get bootImagePath(): string {
    return this.innerPath;
  }
  get writer(): Ext4TreeWriter {
    return this.inner.writer;
  }
  get partition(): Partition {
    return this.inner.partition;
  }
  get tableKind(): 'mbr' | 'gpt' {
    return this.inner.tableKind;
  }

  async ensureRoom(bytes: number, inodes: number): Promise<RoomNeeded> {
    if (this.state !== 'open') throw new Error(`the disk target ${this.imagePath} is already ${this.state}`);
    return this.inner.ensureRoom(bytes, inodes);
  }

  async commit(): Promise<void> {
    if (this.state !== 'open') throw new Error(`the disk target ${this.imagePath} is already ${this.state}`);
    try {
      await this.inner.commit(); // closes the inner file system; the inner image stays at innerPath
      const innerSize = fs.statSync(this.innerPath).size;
      await this.makeRoomInRootA(innerSize);
      const now = BigInt(Date.now()) * 1_000_000n;
      await this.rootWriter.remove(this.innerRel);
      await this.rootWriter.writeEntry(
        INNER_DIR,
        {
          path: path.posix.basename(this.innerRel), kind: 'file', mode: this.old.mode & 0o7777, uid: this.old.uid, gid: this.old.gid,
          mtime: now, atime: now, size: innerSize, xattrs: [],
        },
        fs.createReadStream(this.innerPath, { highWaterMark: MiB }),
      );
      await this.rootWriter.close();
      checkInterrupted(); // the last moment the run can still be undone
      replaceWithWorkCopy(this.workPath, this.destination, this.keep);
      fs.rmSync(this.innerPath, { force: true });
      this.state = 'committed';
      this.forgetCleanup();
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  /**
   * The inner image is written back densely: flash-rootA needs its full size, less what
   * the old copy occupied. When that does not fit, flash-rootA grows (partitions after it
   * move up by the same amount).
   */
  private async makeRoomInRootA(innerSize: number): Promise<void> {
    await this.rootWriter.suspend();
    const image = ImageFile.open(this.workPath, true);
    let grown: Partition | undefined;
    let zeroFrom = Infinity;
    try {
      const sb = readSuperblock(image, this.rootA.offset)!;
      // Freed by removing the old copy, then needed by the new one (with its extent blocks).
      const freedBlocks = Math.floor(this.old.allocated / sb.blockSize);
      const adjusted = { ...sb, freeBlocksCount: sb.freeBlocksCount + freedBlocks };
      const grow = growthNeeded(adjusted, innerSize, 1);
      if (grow === 0) return;
      const delta = Math.ceil(grow / ALIGN) * ALIGN;
      const table = readPartitionTable(image)!;
      const part = findPartition(table, 'flash-rootA', this.imagePath)!;
      const oldImageSize = image.size();
      const last = table.partitions.every((p) => p === part || p.offset + p.size <= part.offset);
      if (last) {
        const newSize = Math.ceil((oldImageSize + delta + (table.kind === 'gpt' ? MiB : 0)) / ALIGN) * ALIGN;
        fs.ftruncateSync(image.fd, newSize);
        grown = growLastPartition(image, table, part, newSize);
        zeroFrom = oldImageSize;
      } else {
        grown = growPartitionInPlace(image, table, part, delta);
      }
      image.sync();
    } finally {
      image.close();
    }
    if (grown) await growExt4(this.workPath, grown.offset, grown.size, zeroFrom, `${path.basename(this.imagePath)}:flash-rootA`);
  }

  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.inner.abort();
    await this.rootWriter.discard();
    fs.rmSync(this.workPath, { force: true });
    fs.rmSync(this.innerPath, { force: true });
    this.forgetCleanup();
  }
}
