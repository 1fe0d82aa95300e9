/**
 * A layer tar (as in `docker save` archives and registries) turned into the overlay2 diff/
 * representation exactly as the engine's `docker load` makes it: overlay2 ApplyDiff →
 * pkg/archive/archive.go Unpack with the overlay whiteout converter
 * (pkg/archive/archive_linux.go overlayWhiteoutConverter.ConvertRead):
 *
 * - `<dir>/.wh.<name>` becomes a character device 0/0 named `<dir>/<name>`, mode 0000,
 *   owned by the whiteout entry's uid/gid;
 * - `<dir>/.wh..wh..opq` is not written; `<dir>` gets `trusted.overlay.opaque=y`;
 * - names are cleaned (filepath.Clean); the root entry (`./`) is skipped, so diff/ itself
 *   keeps the 0755 root:root directory overlay2 created;
 * - missing parent directories are created 0755 root:root (MkdirAllAndChownNew);
 * - atime is never before mtime (createTarFile), times before the epoch become the epoch
 *   (pkg/system/chtimes.go), except on symlinks.
 */
import { nameToBytes, type LayerEntry, type LayerItem } from '../layer/entry.js';
import { TarParser, type TarEntry } from '../tar/parse.js';
import type { TarHeader } from '../tar/header.js';
import { cleanTarPath, disassembleTar, hashing } from '../engine/tar-split.js';

export const WHITEOUT_PREFIX = '.wh.';
export const WHITEOUT_OPAQUE = '.wh..wh..opq';

/** What a first pass over a layer tar learns, needed before its entries can be written. */
export interface LayerTarScan {
  /** Directories (layer-relative) that carry an opaque marker somewhere in the tar. */
  opaqueDirs: Set<string>;
  /** layerdb `size`: lstat sizes of files (hard links once) and symlinks (pkg/directory Size). */
  size: number;
  /** diff/ entries the layer makes, its root included. */
  entries: number;
  /** Content bytes of regular files, hard links counted once. */
  bytes: number;
  /**
   * Directories whose own entry comes after something inside them: the engine first makes
   * them as missing parents, then applies the entry's attributes when it arrives. Their
   * headers are written at the first point instead, so each path is written once.
   */
  lateDirs: Map<string, TarHeader>;
  /**
   * The last hard link to each linked path. The engine applies a hard link's own header to
   * the inode it shares (createTarFile, run chrooted in the layer so that its Lstat of the
   * link name finds the target): Lchown, its xattrs, chmod and Chtimes, unless the target
   * is a symlink (then only the owner). So the file ends with the last link's attributes.
   */
  linkHeaders: Map<string, TarHeader>;
}

/**
 * The last few names turned into paths, with their paths. One entry's name is turned into a
 * path by each stage it passes (the scanner, the one-pass ordering, the conversion), and each
 * keeps the path in its own set: handing out the same string keeps one copy per entry in
 * memory instead of one per stage (a layer of 40,000 files holds every path for its duration).
 */
const recentPaths: [string, string][] = [];

/** The layer-relative path of a tar name ('.' for the root); throws for names that leave the layer. */
export function layerPath(name: string, where: string): string {
  for (const [n, p] of recentPaths) if (n === name) return p;
  // Unpack: Clean the name, join it to the layer root, refuse what lands outside it.
  const clean = cleanTarPath(name);
  if (clean === '..' || clean.startsWith('../')) {
    throw new Error(`${where}: entry ${JSON.stringify(name)} points outside the layer (refused like the engine does)`);
  }
  if (clean.includes('\0')) throw new Error(`${where}: entry ${JSON.stringify(name)} has a NUL byte in its name`);
  const rel = clean.replace(/^\/+/, '');
  const path = rel === '' || rel === '.' ? '.' : rel;
  recentPaths.unshift([name, path]);
  if (recentPaths.length > 4) recentPaths.pop();
  return path;
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '.' : p.slice(0, i);
}

function baseOf(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1);
}

/** Classifies one tar entry the way ConvertRead does. */
export function whiteoutKind(path: string): 'opaque' | 'whiteout' | undefined {
  const base = baseOf(path);
  if (base === WHITEOUT_OPAQUE) return 'opaque';
  if (base.startsWith(WHITEOUT_PREFIX)) return 'whiteout';
  return undefined;
}

/** Scans entries (used as the visitor of disassembleTar): opaque dirs and the counts. */
export class LayerTarScanner {
  private readonly opaqueDirs = new Set<string>();
  private readonly made = new Set<string>(['.']);
  /** Paths made as missing parents and not (yet) by their own entry. */
  private readonly implicit = new Set<string>();
  private readonly lateDirs = new Map<string, TarHeader>();
  private readonly linkHeaders = new Map<string, TarHeader>();
  private size = 0;
  private bytes = 0;

  constructor(private readonly where: string) {}

  visit(entry: TarEntry): void {
    const h = entry.header;
    if (h.type === 'pax-global') return;
    if (h.type === 'contiguous') {
      // Go's reader keeps typeflag '7'; createTarFile has no case for it.
      throw new Error(`${this.where}: ${h.name} is a contiguous file (tar type '7'), which the engine refuses (unhandled tar header type 55)`);
    }
    const path = layerPath(h.name, this.where);
    if (path === '.') return;
    this.parents(path);
    const w = whiteoutKind(path);
    if (w === 'opaque') {
      this.opaqueDirs.add(parentOf(path));
      return;
    }
    const target = w === 'whiteout' ? `${parentOf(path) === '.' ? '' : parentOf(path) + '/'}${baseOf(path).slice(WHITEOUT_PREFIX.length)}` : path;
    if (this.implicit.has(target)) {
      this.implicit.delete(target);
      if (h.type === 'directory' && w === undefined) this.lateDirs.set(target, h);
      else throw new Error(`${this.where}: ${h.name} replaces a directory the layer already put files in (the engine would delete them)`);
    }
    this.made.add(target);
    if (w === 'whiteout') return;
    if (h.type === 'hardlink') {
      try {
        this.linkHeaders.set(layerPath(h.linkname, this.where), h);
      } catch {
        /* refused when the entries are written */
      }
    }
    if (h.type === 'file') {
      this.size += h.size;
      this.bytes += h.size;
    } else if (h.type === 'symlink') {
      this.size += nameToBytes(h.linkname).length;
    }
  }

  private parents(path: string): void {
    for (let p = parentOf(path); p !== '.' && !this.made.has(p); p = parentOf(p)) {
      this.made.add(p);
      this.implicit.add(p);
    }
  }

  result(): LayerTarScan {
    return { opaqueDirs: this.opaqueDirs, size: this.size, entries: this.made.size, bytes: this.bytes, lateDirs: this.lateDirs, linkHeaders: this.linkHeaders };
  }
}

const OPAQUE_XATTR = { name: 'trusted.overlay.opaque', value: Buffer.from('y') };

/**
 * The times createTarFile gives an entry: atime is never before mtime; Chtimes (pkg/system/
 * chtimes.go) turns times before the epoch into the epoch, except on symlinks (LUtimesNano).
 * Directories get their times again at the end of Unpack (from the header as it is, an
 * absent atime becoming the epoch), but then overlay2's ApplyDiff walks the new diff/ to
 * size it (directory.Size), which on a relatime mount sets every directory's atime to the
 * engine's clock: that is what the store keeps, so directories get `now`.
 */
function entryTimes(h: TarHeader, kind: 'symlink' | 'directory' | 'other', now: bigint): { mtime: bigint; atime: bigint } {
  let mtime = h.mtime;
  let atime = kind === 'directory' ? now : h.atime !== undefined && h.atime > mtime ? h.atime : mtime;
  if (kind !== 'symlink') {
    if (mtime < 0n) mtime = 0n;
    if (atime < 0n) atime = 0n;
  }
  return { mtime, atime };
}

/**
 * Converts the entries of a layer tar to diff/ items, in order (the root first). `scan` comes
 * from a first pass over the same tar (opaque markers may follow their directory's children).
 * `now` is the time given to what the engine creates itself (the root, implicit parents).
 */
export async function* layerItemsFromTar(
  entries: AsyncIterable<TarEntry>,
  scan: LayerTarScan,
  where: string,
  now: bigint,
): AsyncGenerator<LayerItem> {
  const made = new Map<string, LayerEntry['kind']>();
  const dirXattrs = (path: string, h?: TarHeader): LayerEntry['xattrs'] => {
    const own = (h?.xattrs ?? []).filter((x) => !(x.name === OPAQUE_XATTR.name && scan.opaqueDirs.has(path)));
    return scan.opaqueDirs.has(path) ? [...own, OPAQUE_XATTR] : own;
  };
  const engineDir = (path: string): LayerEntry => {
    const late = scan.lateDirs.get(path);
    if (late) {
      // The entry comes later in the tar; the engine ends with its attributes (createTarFile on an existing directory).
      const { mtime, atime } = entryTimes(late, 'directory', now);
      return { path, kind: 'directory', mode: late.mode & 0o7777, uid: late.uid, gid: late.gid, mtime, atime, size: 0, xattrs: dirXattrs(path, late) };
    }
    // MkdirAllAndChownNew(parent, 0755, root).
    return { path, kind: 'directory', mode: 0o755, uid: 0, gid: 0, mtime: now, atime: now, size: 0, xattrs: dirXattrs(path) };
  };
  made.set('.', 'directory');
  yield { entry: engineDir('.') };

  for await (const te of entries) {
    const h = te.header;
    if (h.type === 'pax-global') continue;
    const path = layerPath(h.name, where);
    if (path === '.') continue; // Unpack: an existing directory named "." is skipped

    // Missing parents, as MkdirAllAndChownNew makes them.
    const missing: string[] = [];
    for (let p = parentOf(path); p !== '.' && !made.has(p); p = parentOf(p)) missing.unshift(p);
    for (const p of missing) {
      made.set(p, 'directory');
      yield { entry: engineDir(p) };
    }
    const parentKind = made.get(parentOf(path));
    if (parentKind !== 'directory') throw new Error(`${where}: ${h.name} is inside ${parentOf(path)}, which is not a directory`);

    const w = whiteoutKind(path);
    if (w === 'opaque') continue; // the xattr is on its directory already (scan)
    if (w === 'whiteout') {
      const target = `${parentOf(path) === '.' ? '' : parentOf(path) + '/'}${baseOf(path).slice(WHITEOUT_PREFIX.length)}`;
      if (made.has(target)) throw new Error(`${where}: ${h.name} deletes ${target}, which the same layer also adds (the engine refuses this layer)`);
      made.set(target, 'char-device');
      // ConvertRead mknods the device and chowns it; nothing sets its times (the engine's clock).
      const mtime = now;
      const atime = now;
      yield {
        entry: { path: target, kind: 'char-device', mode: 0, uid: h.uid, gid: h.gid, mtime, atime, size: 0, devMajor: 0, devMinor: 0, xattrs: [] },
      };
      continue;
    }

    if (h.type === 'directory' && scan.lateDirs.has(path) && made.get(path) === 'directory') continue; // written as a parent already
    const existing = made.get(path);
    if (existing !== undefined && !(existing === 'directory' && h.type === 'directory')) {
      throw new Error(`${where}: ${h.name} appears twice in the layer (the engine refuses duplicate entries)`);
    }
    let { mtime, atime } = entryTimes(h, h.type === 'symlink' ? 'symlink' : h.type === 'directory' ? 'directory' : 'other', now);
    let xattrs = h.type === 'directory' ? dirXattrs(path, h) : h.xattrs;
    let owner = { mode: h.mode & 0o7777, uid: h.uid, gid: h.gid };
    const link = h.type !== 'directory' ? scan.linkHeaders.get(path) : undefined;
    if (link) {
      // The last hard link's header ends on this inode (see LayerTarScan.linkHeaders): its
      // chown drops security.capability (the kernel's killpriv), then its xattrs are set.
      owner = { ...owner, uid: link.uid, gid: link.gid };
      if (h.type !== 'symlink') {
        owner.mode = link.mode & 0o7777;
        ({ mtime, atime } = entryTimes(link, 'other', now));
        const merged = new Map(xattrs.filter((x) => x.name !== 'security.capability').map((x) => [x.name, x.value]));
        for (const x of link.xattrs) merged.set(x.name, x.value);
        xattrs = [...merged].map(([name, value]) => ({ name, value }));
      }
    }
    const base: LayerEntry = { path, kind: 'file', ...owner, mtime, atime, size: 0, xattrs };
    switch (h.type) {
      case 'file':
        made.set(path, 'file');
        yield { entry: { ...base, kind: 'file', size: h.size }, content: te.content };
        break;
      case 'directory':
        made.set(path, 'directory');
        yield { entry: { ...base, kind: 'directory' } };
        break;
      case 'symlink':
        made.set(path, 'symlink');
        yield { entry: { ...base, kind: 'symlink', linkTarget: h.linkname } };
        break;
      case 'hardlink': {
        const target = layerPath(h.linkname, where);
        const kind = made.get(target);
        if (kind === undefined || kind === 'directory') {
          throw new Error(`${where}: hard link ${h.name} points to ${h.linkname}, which is not an earlier file of the layer`);
        }
        made.set(path, 'hardlink');
        yield { entry: { ...base, kind: 'hardlink', linkTarget: target } };
        break;
      }
      case 'char-device':
      case 'block-device':
        made.set(path, h.type);
        yield { entry: { ...base, kind: h.type, devMajor: h.devmajor, devMinor: h.devminor } };
        break;
      case 'fifo':
        made.set(path, 'fifo');
        yield { entry: { ...base, kind: 'fifo' } };
        break;
      default:
        throw new Error(`${where}: ${h.name} has tar type ${h.type}, which a layer cannot hold`);
    }
  }
}

/**
 * First pass over a layer tar (docker save archives, registry blobs): its tar-split, the
 * counts and opaque directories layerItemsFromTar needs, and the DiffID it hashes to.
 */
export async function scanLayerTar(
  tar: AsyncIterable<Buffer>,
  where: string,
  options: Parameters<typeof disassembleTar>[3] = {},
): Promise<{ scan: LayerTarScan; tarSplit: Buffer; diffId: string }> {
  const scanner = new LayerTarScanner(where);
  const r = await disassembleTar(tar, where, async (e) => scanner.visit(e), options);
  return { scan: scanner.result(), tarSplit: r.tarSplit, diffId: r.diffId };
}

/**
 * Second pass: the layer tar's entries as diff/ items (layerItemsFromTar), then a check that
 * the tar hashed to `diffId` once read to its end (`changed` gives the message otherwise).
 */
export async function* layerTarItems(
  tar: AsyncIterable<Buffer>,
  scan: LayerTarScan,
  where: string,
  now: bigint,
  diffId: string,
  changed: (actual: string) => Error,
): AsyncGenerator<LayerItem> {
  const hashed = hashing(tar);
  const parser = new TarParser(hashed.stream);
  const entries = async function* (): AsyncGenerator<TarEntry> {
    for (;;) {
      let e: TarEntry | undefined;
      try {
        e = await parser.next();
      } catch (err) {
        throw new Error(`${where}: corrupt or truncated tar (${(err as Error).message})`);
      }
      if (!e) return;
      yield e;
    }
  };
  try {
    yield* layerItemsFromTar(entries(), scan, where, now);
    const actual = hashed.result().diffId;
    if (actual !== diffId) throw changed(actual);
  } finally {
    await parser.close().catch(() => undefined);
  }
}

/**
 * Thrown by streamLayerTar when a layer cannot be converted in one pass: an opaque marker
 * after its directory's contents, or a directory's own entry after something inside it
 * (the engine fixes both up on its file system; a stream of items cannot go back).
 */
export class LayerOrderError extends Error {}

/** What streamLayerTar knows once its items have been read to the end. */
export interface StreamedLayer {
  size: number;
  entries: number;
  bytes: number;
  tarSplit: Buffer;
}

/**
 * One pass over a layer tar: its diff/ items as they arrive, while the tar-split, counts and
 * DiffID are made from the same bytes (disassembleTar drives the tar; each entry is handed
 * on and the tar waits until the consumer is done with it). Opaque markers are found by
 * holding each directory until the next entry is seen: docker, containerd and buildkit all
 * write `<dir>/.wh..wh..opq` right after `<dir>` (pkg/archive addTarFile with the overlay
 * whiteout converter). A layer in another order throws LayerOrderError before anything
 * wrong is handed on; the caller then takes the two-pass road (scanLayerTar, layerTarItems).
 */
export function streamLayerTar(
  tar: AsyncIterable<Buffer>,
  where: string,
  now: bigint,
  diffId: string,
  options: Parameters<typeof disassembleTar>[3] = {},
): { items: AsyncGenerator<LayerItem>; result: () => StreamedLayer } {
  type Offer = { entry: TarEntry; release: (abort: boolean) => void } | { end: true } | { error: unknown };
  const offers: Offer[] = [];
  let taker: ((o: Offer) => void) | undefined;
  const offer = (o: Offer): void => {
    if (taker) {
      const t = taker;
      taker = undefined;
      t(o);
    } else offers.push(o);
  };
  const take = (): Promise<Offer> => (offers.length > 0 ? Promise.resolve(offers.shift() as Offer) : new Promise((r) => (taker = r)));

  const scanner = new LayerTarScanner(where);
  let final: StreamedLayer | undefined;
  let started = false;
  const start = (): void => {
    if (started) return;
    started = true;
    disassembleTar(
      tar,
      where,
      (entry, content) =>
        new Promise<void>((resolve, reject) => {
          offer({
            entry: { ...entry, content } as TarEntry,
            release: (abort) => (abort ? reject(new Error(`${where}: not read to the end`)) : resolve()),
          });
        }),
      options,
    ).then(
      (r) => {
        if (r.diffId !== diffId) offer({ error: new Error(`${where} hashes to DiffID ${r.diffId}, not to ${diffId} as its image config says: refused`) });
        else {
          const s = scanner.result();
          final = { size: s.size, entries: s.entries, bytes: s.bytes, tarSplit: r.tarSplit };
          offer({ end: true });
        }
      },
      (error: unknown) => offer({ error }),
    );
  };

  // The tar's entries, each released (its rest drained by disassembleTar) when the next is asked for.
  async function* entries(): AsyncGenerator<TarEntry> {
    start();
    let release: ((abort: boolean) => void) | undefined;
    try {
      for (;;) {
        release?.(false);
        release = undefined;
        const o = await take();
        if ('error' in o) throw o.error;
        if ('end' in o) return;
        release = o.release;
        yield o.entry;
      }
    } finally {
      release?.(true);
    }
  }

  // A scan filled in as entries pass (layerItemsFromTar reads it when it writes a directory).
  const scan: LayerTarScan = { opaqueDirs: new Set(), size: 0, entries: 0, bytes: 0, lateDirs: new Map(), linkHeaders: new Map() };
  // A hard link whose header carries other attributes than its target's ends on the target's
  // inode (LayerTarScan.linkHeaders), which was handed on already: only the two passes can do that.
  const attrs = (h: TarHeader): string =>
    `${h.mode}:${h.uid}:${h.gid}:${h.mtime}:${h.atime ?? ''}:${h.xattrs.map((x) => `${x.name}=${x.value.toString('hex')}`).join(',')}`;
  const handedAttrs = new Map<string, string>();
  const handedOn = new Set<string>(['.']);
  const handOn = (p: string): void => {
    for (let q = p; q !== '.' && !handedOn.has(q); q = parentOf(q)) handedOn.add(q);
  };
  async function* ordered(): AsyncGenerator<TarEntry> {
    let held: TarEntry | undefined;
    for await (const e of entries()) {
      const h = e.header;
      if (h.type === 'pax-global') continue;
      scanner.visit(e);
      const p = layerPath(h.name, where);
      if (h.type === 'file') handedAttrs.set(p, attrs(h));
      if (h.type === 'hardlink') {
        const target = handedAttrs.get(layerPath(h.linkname, where));
        if (target !== undefined && target !== attrs(h)) throw new LayerOrderError(`${where}: the hard link ${h.name} changes its target's attributes`);
      }
      if (scanner.result().lateDirs.has(p)) throw new LayerOrderError(`${where}: ${h.name} comes after entries inside it`);
      if (whiteoutKind(p) === 'opaque') {
        const dir = parentOf(p);
        if (handedOn.has(dir)) throw new LayerOrderError(`${where}: the opaque marker ${h.name} comes after other entries of its directory`);
        scan.opaqueDirs.add(dir);
      }
      if (held) {
        handOn(layerPath(held.header.name, where));
        yield held;
        held = undefined;
      }
      if (h.type === 'directory') {
        held = e;
        continue;
      }
      handOn(p);
      yield e;
    }
    if (held) {
      handOn(layerPath(held.header.name, where));
      yield held;
    }
  }

  return {
    items: layerItemsFromTar(ordered(), scan, where, now),
    result: () => {
      if (!final) throw new Error(`${where}: the layer was not read to its end`);
      return final;
    },
  };
}
