/**
 * The `resin-boot` partition: read `device-type.json` / `config.json`, and put files into
 * `system-connections/`, either in a mounted directory or inside the FAT file system of a
 * disk image without mounting it (balena-image-fs `interact`, which drives the `fatfs`
 * package over the image file).
 *
 * The partition is found by label, never by number (see shared/docs/balena-target.md):
 * on GPT by partition name, on MBR by the FAT volume label in the boot sector
 * (balena-image-fs findPartition/getFsLabel; MBR types 0x0b, 0x0c and 0x0e only).
 *
 * Writing into an image happens in place on the path the caller gives, which must be the
 * caller's work copy: fatfs cannot rename or unlink, so a failure half-way leaves that
 * copy unusable and the caller discards it. Each write is read back and compared, and
 * the image file is fsync'ed before returning.
 */
import { constants as fsConstants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { findPartition, interact } from 'balena-image-fs';
import { FileDisk, withOpenFile } from 'file-disk';
import { getPartitions } from 'partitioninfo';

export type BootLocation = { kind: 'directory'; path: string } | { kind: 'image'; path: string; labels: string[] };

export const BOOT_LABELS = ['resin-boot'];
/** The boot partition of a flasher image (meta-balena balena-image-flasher.bb BALENA_BOOT_FS_LABEL). */
export const FLASHER_BOOT_LABELS = ['flash-boot'];
export const SYSTEM_CONNECTIONS = 'system-connections';

/** `--resin-boot <dir>` (a mounted resin-boot) or a disk image file. */
export async function bootLocation(target: string, labels: readonly string[] = BOOT_LABELS): Promise<BootLocation> {
  let st;
  try {
    st = await fsp.stat(target);
  } catch {
    throw new Error(`${target}: does not exist; give a mounted resin-boot directory or a balenaOS disk image`);
  }
  if (st.isDirectory()) {
    // Every resin-boot holds both; catches a wrong mount point (e.g. resin-data) early.
    const has = async (f: string) => fsp.access(path.join(target, f)).then(() => true, () => false);
    if (!(await has('config.json')) && !(await has('device-type.json'))) {
      throw new Error(`${target}: does not look like a mounted resin-boot (no config.json or device-type.json); give the resin-boot mount point`);
    }
    return { kind: 'directory', path: target };
  }
  if (st.isFile() || st.isBlockDevice()) return { kind: 'image', path: target, labels: [...labels] };
  throw new Error(`${target}: is neither a directory nor a disk image file`);
}

export function describeBoot(loc: BootLocation): string {
  return loc.kind === 'directory' ? loc.path : `${loc.path}:${loc.labels[0]}`;
}

function checkRelative(rel: string): string[] {
  const parts = rel.split('/');
  if (rel === '' || rel.startsWith('/') || parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new Error(`internal: invalid resin-boot path ${JSON.stringify(rel)}`);
  }
  return parts;
}

export interface BootPartitionInfo {
  /** Linux-style partition number (5 and up are logical on MBR). */
  index: number;
  offset: number;
  size: number;
  table: 'mbr' | 'gpt';
}

/** Finds the boot partition of an image by label; throws naming the labels searched. */
export async function findBootPartition(imagePath: string, labels: readonly string[] = BOOT_LABELS): Promise<BootPartitionInfo> {
  return withOpenFile(imagePath, 'r', async (handle) => {
    const disk = new FileDisk(handle, true, false, false);
    let info;
    try {
      info = await getPartitions(disk, { includeExtended: false, getLogical: true });
    } catch (e) {
      throw new Error(`${imagePath}: no readable MBR or GPT partition table (${(e as Error).message})`);
    }
    const found = await findPartition(disk, info, [...labels]);
    if (!found) {
      const flasher = !labels.includes('flash-boot') && (await findPartition(disk, info, ['flash-boot'])) !== undefined;
      throw new Error(
        flasher
          ? `${imagePath}: no partition labelled ${labels.join(' or ')}, but a flash-boot one: this is a flasher image (its boot partition is flash-boot)`
          : `${imagePath}: no partition labelled ${labels.join(' or ')}; is it a balenaOS disk image?`,
      );
    }
    const part = (info.partitions as { index: number; offset: number; size: number }[]).find((p) => p.index === found.index);
    if (!part) throw new Error(`${imagePath}: partition ${found.index} vanished from the table`);
    return { index: found.index, offset: part.offset, size: part.size, table: info.type };
  });
}

/** The callback API fatfs offers (a subset of node's fs; no rename, no unlink). */
interface FatFs {
  readFile(p: string, cb: (e: NodeJS.ErrnoException | null, data?: Buffer) => void): void;
  writeFile(p: string, data: Buffer, cb: (e: NodeJS.ErrnoException | null) => void): void;
  mkdir(p: string, cb: (e: NodeJS.ErrnoException | null) => void): void;
  stat(p: string, cb: (e: NodeJS.ErrnoException | null, st?: unknown) => void): void;
}

function fatCall<T>(fn: (cb: (e: NodeJS.ErrnoException | null, v?: T) => void) => void): Promise<T | undefined> {
  return new Promise((resolve, reject) => fn((e, v) => (e ? reject(e) : resolve(v))));
}

/** fatfs reports errors with codes without the leading E (`NOENT`). */
function isNotFound(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'NOENT';
}

async function fatRead(fat: FatFs, p: string): Promise<Buffer | undefined> {
  try {
    return await fatCall<Buffer>((cb) => fat.readFile(p, cb));
  } catch (e) {
    if (isNotFound(e)) return undefined;
    throw new Error(`resin-boot${p}: cannot read (${(e as Error).message})`);
  }
}

async function withBootFat<T>(loc: Extract<BootLocation, { kind: 'image' }>, write: boolean, fn: (fat: FatFs) => Promise<T>): Promise<T> {
  const part = await findBootPartition(loc.path, loc.labels);
  return withOpenFile(loc.path, write ? 'r+' : 'r', async (handle) => {
    const disk = new FileDisk(handle, !write, false, false);
    const result = await interact(disk, part.index, async (fs) => fn(fs as unknown as FatFs));
    if (write) {
      const g = await readGeometry(handle, part.offset, describeBoot(loc));
      if (g.fat32) await fixFat32(handle, g, describeBoot(loc));
      await mirrorFats(handle, g, describeBoot(loc));
      await handle.sync();
    }
    return result;
  });
}

/**
 * Where a FAT file system keeps things, from its boot sector (Microsoft FAT specification,
 * BPB): BytsPerSec @11 u16, SecPerClus @13 u8, RsvdSecCnt @14 u16, NumFATs @16 u8,
 * RootEntCnt @17 u16, TotSec16 @19 u16, FATSz16 @22 u16, TotSec32 @32 u32; FAT32 only:
 * FATSz32 @36 u32, ExtFlags @40 u16, RootClus @44 u32, FSInfo @48 u16.
 */
interface FatGeometry {
  bytesPerSector: number;
  clusterBytes: number;
  fatOffset: number;
  fatBytes: number;
  numFats: number;
  fat32: boolean;
  /** FAT32: bit 7 of ExtFlags set means only one FAT is active (no mirroring). */
  mirrored: boolean;
  rootCluster: number;
  fsInfoOffset: number;
  dataOffset: number;
  clusterCount: number;
}

async function readGeometry(handle: FileHandle, offset: number, where: string): Promise<FatGeometry> {
  const bs = Buffer.alloc(512);
  await handle.read(bs, 0, 512, offset);
  const bytesPerSector = bs.readUInt16LE(11);
  const sectorsPerCluster = bs.readUInt8(13);
  const reserved = bs.readUInt16LE(14);
  const numFats = bs.readUInt8(16);
  const rootEntries = bs.readUInt16LE(17);
  const fatSz16 = bs.readUInt16LE(22);
  const fat32 = fatSz16 === 0;
  const fatSectors = fat32 ? bs.readUInt32LE(36) : fatSz16;
  const totalSectors = bs.readUInt16LE(19) || bs.readUInt32LE(32);
  if (![512, 1024, 2048, 4096].includes(bytesPerSector) || sectorsPerCluster === 0 || numFats < 1 || fatSectors === 0 || bs.readUInt16LE(510) !== 0xaa55) {
    throw new Error(`${where}: the boot sector does not describe a FAT file system`);
  }
  const rootDirSectors = Math.ceil((rootEntries * 32) / bytesPerSector);
  const firstDataSector = reserved + numFats * fatSectors + rootDirSectors;
  return {
    bytesPerSector,
    clusterBytes: sectorsPerCluster * bytesPerSector,
    fatOffset: offset + reserved * bytesPerSector,
    fatBytes: fatSectors * bytesPerSector,
    numFats,
    fat32,
    mirrored: !(fat32 && (bs.readUInt16LE(40) & 0x80) !== 0),
    rootCluster: fat32 ? bs.readUInt32LE(44) : 0,
    fsInfoOffset: fat32 ? offset + bs.readUInt16LE(48) * bytesPerSector : 0,
    dataOffset: offset + firstDataSector * bytesPerSector,
    clusterCount: Math.floor((totalSectors - firstDataSector) / sectorsPerCluster),
  };
}

/**
 * fatfs updates only the first FAT (its vol.js leaves redundant FATs alone), so after a
 * write the copies differ. Copy FAT 1 over the others, as the kernel does when mirroring
 * is on (fs/fat/fatent.c fat_mirror_bhs).
 */
async function mirrorFats(handle: FileHandle, g: FatGeometry, where: string): Promise<void> {
  if (g.numFats === 1 || !g.mirrored) return;
  const chunk = Buffer.alloc(Math.min(g.fatBytes, 1 << 20));
  for (let done = 0; done < g.fatBytes; done += chunk.length) {
    const n = Math.min(chunk.length, g.fatBytes - done);
    const { bytesRead } = await handle.read(chunk, 0, n, g.fatOffset + done);
    if (bytesRead !== n) throw new Error(`${where}: the image ends inside the FAT`);
    for (let copy = 1; copy < g.numFats; copy++) await handle.write(chunk, 0, n, g.fatOffset + copy * g.fatBytes + done);
  }
}

const FAT32_END = 0x0ffffff8;

async function fat32Entry(handle: FileHandle, g: FatGeometry, cluster: number): Promise<number> {
  const b = Buffer.alloc(4);
  await handle.read(b, 0, 4, g.fatOffset + cluster * 4);
  return b.readUInt32LE(0) & 0x0fffffff;
}

/**
 * Two things fatfs gets wrong on FAT32 only, put right after it wrote:
 * - a directory made in the root gets `..` pointing at the root cluster, where the
 *   specification (and fsck.fat) want 0;
 * - the FSInfo free-cluster count (FSI_Free_Count @488, FSI_Nxt_Free @492; signatures
 *   0x41615252 @0 and 0x61417272 @484) is left stale: recounted from FAT 1, next-free
 *   set to "unknown" (0xFFFFFFFF).
 */
async function fixFat32(handle: FileHandle, g: FatGeometry, where: string): Promise<void> {
  const clusterAt = (c: number) => g.dataOffset + (c - 2) * g.clusterBytes;
  const buf = Buffer.alloc(g.clusterBytes);
  let cluster = g.rootCluster;
  for (let hops = 0; cluster >= 2 && cluster < FAT32_END; hops++) {
    if (hops > g.clusterCount) throw new Error(`${where}: the root directory's cluster chain loops`);
    await handle.read(buf, 0, g.clusterBytes, clusterAt(cluster));
    for (let at = 0; at < g.clusterBytes; at += 32) {
      const first = buf[at];
      if (first === 0) break;
      const attr = buf[at + 11];
      if (first === 0xe5 || attr === 0x0f || (attr & 0x08) !== 0 || (attr & 0x10) === 0 || first === 0x2e) continue;
      const sub = (buf.readUInt16LE(at + 20) << 16) | buf.readUInt16LE(at + 26);
      if (sub < 2 || sub >= g.clusterCount + 2) continue;
      const dots = Buffer.alloc(64);
      await handle.read(dots, 0, 64, clusterAt(sub));
      if (dots.toString('latin1', 32, 43) !== '..         ') continue;
      if (((dots.readUInt16LE(32 + 20) << 16) | dots.readUInt16LE(32 + 26)) !== g.rootCluster) continue;
      await handle.write(Buffer.alloc(2), 0, 2, clusterAt(sub) + 32 + 20);
      await handle.write(Buffer.alloc(2), 0, 2, clusterAt(sub) + 32 + 26);
    }
    cluster = await fat32Entry(handle, g, cluster);
  }

  const info = Buffer.alloc(512);
  await handle.read(info, 0, 512, g.fsInfoOffset);
  if (info.readUInt32LE(0) !== 0x41615252 || info.readUInt32LE(484) !== 0x61417272) return;
  let free = 0;
  const chunk = Buffer.alloc(1 << 20);
  const end = (g.clusterCount + 2) * 4;
  for (let done = 8; done < end; done += chunk.length) {
    const n = Math.min(chunk.length, end - done);
    await handle.read(chunk, 0, n, g.fatOffset + done);
    for (let i = 0; i < n; i += 4) if ((chunk.readUInt32LE(i) & 0x0fffffff) === 0) free++;
  }
  info.writeUInt32LE(free, 488);
  info.writeUInt32LE(0xffffffff, 492);
  await handle.write(info, 488, 8, g.fsInfoOffset + 488);
}

/** Reads a file of resin-boot; undefined when it does not exist. */
export async function readBootFile(loc: BootLocation, rel: string): Promise<Buffer | undefined> {
  const parts = checkRelative(rel);
  if (loc.kind === 'directory') {
    try {
      return await fsp.readFile(path.join(loc.path, ...parts));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new Error(`${path.join(loc.path, rel)}: cannot read (${(e as Error).message})`);
    }
  }
  return withBootFat(loc, false, (fat) => fatRead(fat, '/' + parts.join('/')));
}

export interface WriteBootOptions {
  /** Replace an existing file with different content (otherwise refused). */
  overwrite?: boolean;
}

export interface WriteBootResult {
  /** Where it went, for messages. */
  where: string;
  /** The same content was already there; nothing was written. */
  unchanged: boolean;
  /** An existing file with other content was replaced. */
  replaced: boolean;
}

function conflict(where: string): Error {
  return new Error(`${where} already exists with other content; remove it, choose another connection id, or allow overwriting`);
}

/** Writes `rel` (e.g. `system-connections/static-eth0`) into resin-boot, creating its directory. */
export async function writeBootFile(loc: BootLocation, rel: string, content: Buffer | string, options: WriteBootOptions = {}): Promise<WriteBootResult> {
  const parts = checkRelative(rel);
  const data = typeof content === 'string' ? Buffer.from(content, 'utf8') : content;
  const where = `${describeBoot(loc)}/${rel}`;
  if (loc.kind === 'directory') return writeInDirectory(loc.path, parts, data, where, options);

  return withBootFat(loc, true, async (fat) => {
    let dir = '';
    for (const p of parts.slice(0, -1)) {
      dir += '/' + p;
      // fatfs opens the path like a file to stat it: a directory answers ISDIR (and
      // readdir on a file lists its bytes, so it cannot tell either).
      const kind = await fatCall((cb) => fat.stat(dir, cb)).then(
        () => 'file',
        (e: unknown) => {
          const code = (e as NodeJS.ErrnoException).code;
          if (code === 'ISDIR' || code === 'EISDIR') return 'directory';
          if (isNotFound(e)) return 'missing';
          throw new Error(`${describeBoot(loc)}${dir}: ${(e as Error).message}`);
        },
      );
      if (kind === 'missing') await fatCall((cb) => fat.mkdir(dir, cb));
      else if (kind === 'file') throw new Error(`${describeBoot(loc)}${dir} exists and is not a directory`);
    }
    const file = '/' + parts.join('/');
    const existing = await fatRead(fat, file);
    if (existing?.equals(data)) return { where, unchanged: true, replaced: false };
    if (existing && !options.overwrite) throw conflict(where);
    await fatCall((cb) => fat.writeFile(file, data, cb));
    const back = await fatRead(fat, file);
    if (!back?.equals(data)) throw new Error(`${where}: reading back after writing gave other bytes; the image copy is not usable`);
    return { where, unchanged: false, replaced: existing !== undefined };
  });
}

async function writeInDirectory(root: string, parts: string[], data: Buffer, where: string, options: WriteBootOptions): Promise<WriteBootResult> {
  const rootStat = await fsp.stat(root);
  if (!rootStat.isDirectory()) throw new Error(`${root}: is not a directory`);
  let dir = root;
  for (const p of parts.slice(0, -1)) {
    dir = path.join(dir, p);
    const st = await fsp.lstat(dir).catch(() => undefined);
    if (st === undefined) await fsp.mkdir(dir, { mode: 0o755 });
    else if (!st.isDirectory()) throw new Error(`${dir}: exists and is not a directory`);
  }
  const file = path.join(dir, parts[parts.length - 1]);
  const st = await fsp.lstat(file).catch(() => undefined);
  let replaced = false;
  if (st !== undefined) {
    if (!st.isFile()) throw new Error(`${file}: exists and is not a regular file`);
    const existing = await fsp.readFile(file);
    if (existing.equals(data)) return { where, unchanged: true, replaced: false };
    if (!options.overwrite) throw conflict(where);
    replaced = true;
  }
  // Written beside under a name balenaOS skips (`.ignore`), then renamed into place. One
  // left by a killed run (its pid gone) is removed first.
  const base = parts[parts.length - 1] as string;
  for (const name of await fsp.readdir(dir)) {
    const m = name.startsWith(`.${base}.`) ? /^\.(\d+)\.transplant\.ignore$/.exec(name.slice(base.length + 1)) : null;
    if (!m) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ESRCH') await fsp.rm(path.join(dir, name), { force: true });
    }
  }
  const tmp = path.join(dir, `.${base}.${process.pid}.transplant.ignore`);
  const fh = await fsp.open(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (e) {
    await fh.close();
    await fsp.unlink(tmp).catch(() => undefined);
    throw e;
  }
  await fh.close();
  try {
    await fsp.rename(tmp, file);
  } catch (e) {
    await fsp.unlink(tmp).catch(() => undefined);
    throw e;
  }
  const dh = await fsp.open(dir, fsConstants.O_RDONLY);
  try {
    await dh.sync().catch(() => undefined); // vfat may refuse fsync on a directory
  } finally {
    await dh.close();
  }
  return { where, unchanged: false, replaced };
}

/**
 * Checks, without writing, that writeBootFile(loc, rel, content) will succeed: nothing
 * that is not a directory where a directory goes, nothing that is not a regular file in
 * the file's place, and no other content there unless `overwrite`. For runs that must
 * refuse before they write anything else.
 */
export async function checkBootFile(loc: BootLocation, rel: string, content: Buffer | string, options: WriteBootOptions = {}): Promise<void> {
  const parts = checkRelative(rel);
  const data = typeof content === 'string' ? Buffer.from(content, 'utf8') : content;
  const where = `${describeBoot(loc)}/${rel}`;
  if (loc.kind === 'directory') {
    let p = loc.path;
    for (const [i, part] of parts.entries()) {
      p = path.join(p, part);
      const st = await fsp.lstat(p).catch(() => undefined);
      if (st === undefined) return; // created by the write
      const last = i === parts.length - 1;
      if (!last && !st.isDirectory()) throw new Error(`${p}: exists and is not a directory`);
      if (last && !st.isFile()) throw new Error(`${p}: exists and is not a regular file`);
    }
  }
  const existing = await readBootFile(loc, rel);
  if (existing && !existing.equals(data) && !options.overwrite) throw conflict(where);
}

/** checkBootFile for a NetworkManager keyfile in `system-connections/`. */
export async function checkSystemConnection(loc: BootLocation, keyfile: { fileName: string; content: string }, options: WriteBootOptions = {}): Promise<void> {
  return checkBootFile(loc, `${SYSTEM_CONNECTIONS}/${keyfile.fileName}`, keyfile.content, options);
}

/** Puts a NetworkManager keyfile into resin-boot's `system-connections/`. */
export async function writeSystemConnection(
  loc: BootLocation,
  keyfile: { fileName: string; content: string },
  options: WriteBootOptions = {},
): Promise<WriteBootResult> {
  if (!/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(keyfile.fileName)) {
    throw new Error(`internal: unsafe keyfile name ${JSON.stringify(keyfile.fileName)}`);
  }
  return writeBootFile(loc, `${SYSTEM_CONNECTIONS}/${keyfile.fileName}`, keyfile.content, options);
}

export interface BootInfo {
  /** device-type.json's `slug`, else config.json's `deviceType`. */
  slug?: string;
  /** device-type.json's `arch` (e.g. aarch64, armv7hf, amd64). */
  arch?: string;
  deviceType?: Record<string, unknown>;
  config?: Record<string, unknown>;
}

function parseJsonFile(data: Buffer | undefined, where: string): Record<string, unknown> | undefined {
  if (data === undefined) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(data.toString('utf8'));
  } catch {
    throw new Error(`${where}: is not valid JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${where}: is not a JSON object`);
  return v as Record<string, unknown>;
}

/** Reads `device-type.json` and `config.json` from resin-boot (either may be absent). */
export async function readBootInfo(loc: BootLocation): Promise<BootInfo> {
  const d = describeBoot(loc);
  let dt: Buffer | undefined;
  let cj: Buffer | undefined;
  if (loc.kind === 'directory') {
    dt = await readBootFile(loc, 'device-type.json');
    cj = await readBootFile(loc, 'config.json');
  } else {
    [dt, cj] = await withBootFat(loc, false, async (fat) => [await fatRead(fat, '/device-type.json'), await fatRead(fat, '/config.json')]);
  }
  const deviceType = parseJsonFile(dt, `${d}/device-type.json`);
  const config = parseJsonFile(cj, `${d}/config.json`);
  const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined);
  return {
    slug: str(deviceType?.slug) ?? str(config?.deviceType),
    arch: str(deviceType?.arch),
    deviceType,
    config,
  };
}
