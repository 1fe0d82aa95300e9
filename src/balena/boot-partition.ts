/**
 * The `resin-boot` partition: read `device-type.json` / `config.json`, and put files into
 * `system-connections/`, either in a mounted directory or inside the FAT file system of a
 * disk image without mounting it (our own FAT engine, src/fat/).
 *
 * The partition is found by label, never by number (see shared/docs/balena-target.md),
 * with the one rule every command uses (disk/partition-table.ts findPartition: GPT name,
 * else the file-system label).
 *
 * Writing into an image happens in place on the path the caller gives, which must be the
 * caller's work copy. The partition table and the FAT are checked before anything is
 * written (a damaged one is refused with one line); each write is read back and compared,
 * and the image file is fsync'ed before returning.
 */
import { constants as fsConstants, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { ImageFile } from '../ext4/image-file.js';
import { findPartition, readPartitionTable } from '../disk/partition-table.js';
import { FatVolume } from '../fat/volume.js';

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
  let image: ImageFile;
  try {
    image = ImageFile.open(imagePath, false);
  } catch (e) {
    throw new Error(`${imagePath}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const table = readPartitionTable(image);
    if (!table) throw new Error(`${imagePath}: no readable MBR or GPT partition table`);
    let found;
    for (const label of labels) {
      found = findPartition(table, label, imagePath);
      if (found) break;
    }
    if (!found) {
      const flasher = !labels.includes('flash-boot') && findPartition(table, 'flash-boot', imagePath) !== undefined;
      throw new Error(
        flasher
          ? `${imagePath}: no partition labelled ${labels.join(' or ')}, but a flash-boot one: this is a flasher image (its boot partition is flash-boot)`
          : `${imagePath}: no partition labelled ${labels.join(' or ')}; is it a balenaOS disk image?`,
      );
    }
    return { index: found.index, offset: found.offset, size: found.size, table: table.kind };
  } finally {
    image.close();
  }
}

async function withBootFat<T>(loc: Extract<BootLocation, { kind: 'image' }>, write: boolean, fn: (fat: FatVolume) => T): Promise<T> {
  const part = await findBootPartition(loc.path, loc.labels);
  const image = ImageFile.open(loc.path, write);
  try {
    const fat = FatVolume.open(image, part.offset, part.size, describeBoot(loc));
    const result = fn(fat);
    if (write) fat.flush();
    return result;
  } finally {
    image.close();
  }
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
  return withBootFat(loc, false, (fat) => fat.readFile(parts.join('/')));
}

/** What is at `rel` in resin-boot: a file, a directory (anything else in a mounted one counts as a file), or nothing. */
export async function bootPathKind(loc: BootLocation, rel: string): Promise<'file' | 'directory' | undefined> {
  const parts = checkRelative(rel);
  if (loc.kind === 'directory') {
    const st = await fsp.lstat(path.join(loc.path, ...parts)).catch(() => undefined);
    return st === undefined ? undefined : st.isDirectory() ? 'directory' : 'file';
  }
  return withBootFat(loc, false, (fat) => fat.kind(parts.join('/')));
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

  return withBootFat(loc, true, (fat) => {
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      const kind = fat.kind(dir);
      if (kind === undefined) fat.mkdir(dir);
      else if (kind === 'file') throw new Error(`${describeBoot(loc)}/${dir} exists and is not a directory`);
    }
    const file = parts.join('/');
    if (fat.kind(file) === 'directory') throw new Error(`${where} exists and is a directory`);
    const existing = fat.readFile(file);
    if (existing?.equals(data)) return { where, unchanged: true, replaced: false };
    if (existing && !options.overwrite) throw conflict(where);
    fat.writeFile(file, data);
    const back = fat.readFile(file);
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
    [dt, cj] = await withBootFat(loc, false, (fat) => [fat.readFile('device-type.json'), fat.readFile('config.json')]);
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
