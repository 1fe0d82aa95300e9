/**
 * `transplant verify`: checks an image store the way the engine will use it, with no engine.
 *
 * Engine root (a directory, a resin-data, the resin-data of a disk image):
 * - every image config re-hashed against its ID (image/fs.go drops mismatches);
 * - every layer's metadata well-formed (layer/filestore.go: `diff`, `size`, `cache-id`,
 *   `parent`, no trailing newline) and its ChainID consistent with `diff` and `parent`
 *   (layer/layer.go CreateChainID), its parent present;
 * - every image's whole chain present (image/store.go restores only those);
 * - overlay2: `diff/` present, `link` well-formed with `l/<link>` → `../<cacheID>/diff`,
 *   `lower` naming the parents' links, immediate parent first (overlay2/overlay.go);
 * - every layer's content rebuilt from `tar-split.json.gz` and the files of `diff/`
 *   (layer_store.go assembleTarTo, as `docker save` does), each file's size and CRC checked,
 *   the stream hashed against the DiffID; whiteouts (`.wh.<name>` in the tar) must be
 *   character devices 0/0 in diff/, opaque markers (`<dir>/.wh..wh..opq`) must be
 *   `trusted.overlay.opaque=y` on the directory (pkg/archive/archive_linux.go);
 * - repositories.json parses and names only images that are present.
 * Bundle: configs against IDs (while opening), then each layer rebuilt from the bundle's
 * tar-split and its diff entries (files spooled to a temp dir, as the tar order can differ
 * from the bundle's) and hashed against its DiffID.
 */
import { checkAborted, reportProgress } from '../run/abort.js';
import { nameFromBytes } from '../layer/entry.js';
import { closeSync, createReadStream, createWriteStream, read, promises as fs } from 'node:fs';
import { promisify } from 'node:util';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { chainIds as chainIdsOf, sha256Digest } from '../engine/digest.js';
import { LAST_UPDATED_RE, IMAGEDB_CONTENT, IMAGEDB_METADATA, LAYERDB_SHA, LINKS, REPOSITORIES, cacheDir, diffDir, layerDir, linkPath, linkTarget } from '../engine/layout.js';
import { parseLayerFiles, type LayerRecord } from '../engine/layerdb.js';
import { parseRepositories, type Repositories } from '../engine/repositories.js';
import { FILE, TarSplitFileError, assembledDigest, cleanTarPath, readTarSplit, type FileOpener } from '../engine/tar-split.js';
import { selectImages } from '../selection/select.js';
import { layerDepthProblem } from '../engine/limits.js';
import { configPlatform, type SourceImage } from '../sources/source.js';
import type { StoreReader } from '../sources/store-reader.js';
import type { TreeWriter } from '../targets/tree-writer.js';
import type { BundleSource } from '../bundle/read.js';
import { WHITEOUT_OPAQUE, WHITEOUT_PREFIX } from '../sources/layer-tar.js';
import { UnsafeSourcePath, childPath, closeDir, lstatBelow, openBelowRoot, openRegularBelow, withTop } from '../fsx/beneath.js';

const readAsync = promisify(read);

export interface VerifyReport {
  /** What was checked, for messages. */
  target: string;
  images: number;
  layers: number;
  /** One line per problem; empty when everything holds. */
  problems: string[];
  ok: boolean;
}

/** What a layer file is, for the whiteout checks. */
export interface FileKind {
  kind: 'file' | 'directory' | 'symlink' | 'char-device' | 'other' | 'missing';
  rdev?: { major: number; minor: number };
  opaque?: boolean;
}

/** Reading diff/ files: paths are relative to the reader's root (bytes, since tar names may not be UTF-8). */
export interface LayerFileAccess {
  open(rel: Buffer): AsyncIterable<Buffer>;
  inspect?(rel: Buffer): Promise<FileKind>;
}

export interface VerifyOptions {
  /** Image selectors (reference, ID, ID prefix): check only these and their layers. */
  images?: readonly string[];
  /** How to read layer files; default: through reader.readFile (whole files), or the host when the reader has a `root`. */
  files?: LayerFileAccess;
  /** Skip rebuilding layer content (metadata only). */
  metadataOnly?: boolean;
}

const MAX_PROBLEMS_PER_LAYER = 5;

/**
 * Host access for a reader rooted at a host directory (HostReader has `root`): every path
 * opened below it one component at a time, never through a symlink, and only regular files
 * read (fsx/beneath.ts), as the engine-root source reads them.
 */
export function hostFileAccess(root: string): LayerFileAccess {
  return {
    open: (rel) =>
      (async function* () {
        const opened = withTop(root, (top) => openRegularBelow(top, rel, root));
        if (!opened) throw new Error('no such file');
        try {
          for (;;) {
            const buf = Buffer.allocUnsafe(1 << 20);
            const { bytesRead } = await readAsync(opened.fd, buf, 0, buf.length, null);
            if (bytesRead === 0) return;
            yield buf.subarray(0, bytesRead);
          }
        } finally {
          closeSync(opened.fd);
        }
      })(),
    inspect: async (rel) => {
      let st;
      try {
        st = withTop(root, (top) => lstatBelow(top, rel, root));
      } catch (e) {
        if (e instanceof UnsafeSourcePath) return { kind: 'symlink' };
        throw e;
      }
      if (!st) return { kind: 'missing' };
      if (st.isCharacterDevice()) {
        const { deviceNumbers } = await import('../sources/diff-tree.js');
        return { kind: 'char-device', rdev: deviceNumbers(st.rdev) };
      }
      if (st.isDirectory()) {
        const { listXattrs } = await import('../fsx/index.js');
        const dir = openBelowRoot(root, rel, root);
        if (!dir) return { kind: 'missing' };
        try {
          const opaque = listXattrs(childPath(dir, '.')).some((x) => x.name === 'trusted.overlay.opaque' && x.value.toString('latin1') === 'y');
          return { kind: 'directory', opaque };
        } finally {
          closeDir(dir);
        }
      }
      return { kind: st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other' };
    },
  };
}

/**
 * The reader as verify uses it: what cannot be read (a symlink, a FIFO, a file over its
 * limit) is a problem of the report, read as missing, never an exception.
 */
function tolerant(reader: StoreReader, problems: string[]): StoreReader {
  const note = (e: unknown): undefined => {
    const m = (e as Error).message;
    if (!problems.includes(m)) problems.push(m);
    return undefined;
  };
  return {
    description: reader.description,
    readFile: (p) => reader.readFile(p).catch(note),
    readdir: (p) => reader.readdir(p).catch(note),
    kindOf: (p) => reader.kindOf(p).catch((e: unknown) => (note(e), 'symlink' as const)),
    ...(typeof (reader as { root?: unknown }).root === 'string' ? { root: (reader as unknown as { root: string }).root } : {}),
    ...('readlink' in reader ? { readlink: (reader as Pick<TreeWriter, 'readlink'>).readlink.bind(reader) } : {}),
  } as StoreReader;
}

function readerFileAccess(reader: StoreReader): LayerFileAccess {
  const root = (reader as { root?: unknown }).root;
  if (typeof root === 'string') return hostFileAccess(root);
  // A reader with its own streaming access (the ext4 engine of a disk image).
  const own = (reader as { fileAccess?: () => LayerFileAccess }).fileAccess;
  if (typeof own === 'function') return own.call(reader);
  // A file system the host cannot read directly (ext4 in a disk image): whole files, and
  // file types only (devices show as 'other'; xattrs are not visible through a StoreReader).
  return {
    open: (rel) =>
      (async function* () {
        const data = await reader.readFile(nameFromBytes(rel));
        if (!data) throw new Error('no such file');
        yield data;
      })(),
    inspect: async (rel) => {
      const k = await reader.kindOf(nameFromBytes(rel));
      if (k === undefined) return { kind: 'missing' };
      if (k === 'other') return { kind: 'char-device', rdev: { major: 0, minor: 0 } };
      return { kind: k, opaque: k === 'directory' ? true : undefined };
    },
  };
}

/** Engine-side path of a tar name inside a layer's diff/ (filepath.Join(diff, name)); undefined when it escapes. */
function inLayer(name: string): string | undefined {
  const c = cleanTarPath('/' + name).slice(1);
  return c.startsWith('..') ? undefined : c;
}

/**
 * Checks an engine data root (`prefix` inside `reader`, '' when the reader is rooted at it).
 * Never throws for what it finds wrong: every problem is a line of the report.
 */
export async function verifyEngineRoot(given: StoreReader, prefix: string, options: VerifyOptions = {}): Promise<VerifyReport> {
  const at = (p: string): string => (prefix ? `${prefix}/${p}` : p);
  const files = options.files ?? readerFileAccess(given);
  const where = given.description;
  const problems: string[] = [];
  const reader = tolerant(given, problems);

  // Images.
  const images: SourceImage[] = [];
  for (const hex of ((await reader.readdir(at(IMAGEDB_CONTENT))) ?? []).sort()) {
    if (!/^[0-9a-f]{64}$/.test(hex)) {
      problems.push(`image store: unexpected file ${IMAGEDB_CONTENT}/${hex}`);
      continue;
    }
    const id = `sha256:${hex}`;
    const config = await reader.readFile(at(`${IMAGEDB_CONTENT}/${hex}`));
    if (!config) {
      problems.push(`image ${id}: its config is not a readable file`);
      continue;
    }
    if (sha256Digest(config) !== id) {
      problems.push(`image ${id}: its config hashes to ${sha256Digest(config)} (the engine drops this image)`);
      continue;
    }
    // imagedb/metadata/<id>/lastUpdated: RFC 3339 with nanoseconds, no newline (a malformed one breaks docker image inspect).
    const lastUpdated = await reader.readFile(at(`${IMAGEDB_METADATA}/${hex}/lastUpdated`));
    if (lastUpdated && !LAST_UPDATED_RE.test(lastUpdated.toString('latin1'))) {
      problems.push(`image ${id}: metadata lastUpdated is not an RFC 3339 time without a newline (${JSON.stringify(lastUpdated.toString('latin1').slice(0, 60))})`);
    }
    try {
      const p = configPlatform(config);
      images.push({ id, config, references: [], chainIds: chainIdsOf(p.diffIds), architecture: p.architecture, os: p.os });
    } catch (e) {
      problems.push(`image ${id}: ${(e as Error).message}`);
    }
  }

  // References.
  let repos: Repositories = {};
  try {
    repos = parseRepositories(await reader.readFile(at(REPOSITORIES)), `${where}: ${REPOSITORIES}`);
  } catch (e) {
    problems.push((e as Error).message);
  }
  const present = new Set(images.map((i) => i.id));
  for (const [, refs] of Object.entries(repos)) {
    for (const [key, id] of Object.entries(refs)) {
      const img = images.find((i) => i.id === id);
      if (img) img.references.push(key);
      else if (!present.has(id)) problems.push(`repositories.json: ${key} names image ${id}, which is not in the image store`);
    }
  }

  // Which images and layers to check.
  let selected = images;
  if (options.images && options.images.length > 0) selected = selectImages(options.images, images, where);
  for (const img of selected) {
    const deep = layerDepthProblem(img.chainIds.length, img.references[0] ?? img.id);
    if (deep) problems.push(deep);
  }
  const wanted = new Set<string>();
  for (const img of selected) for (const c of img.chainIds) wanted.add(c);
  const allLayers = ((await reader.readdir(at(LAYERDB_SHA))) ?? []).filter((h) => /^[0-9a-f]{64}$/.test(h)).map((h) => `sha256:${h}`);
  const layerIds = options.images && options.images.length > 0 ? [...wanted] : [...new Set([...allLayers, ...wanted])];

  // Layer metadata.
  const records = new Map<string, LayerRecord>();
  const links = new Map<string, string>();
  for (const chainId of layerIds.sort()) {
    const dir = at(layerDir(chainId));
    if ((await reader.kindOf(dir)) !== 'directory') continue; // reported per image below
    const read = (n: string): Promise<Buffer | undefined> => reader.readFile(`${dir}/${n}`);
    let rec: LayerRecord;
    try {
      rec = parseLayerFiles(chainId, { diff: await read('diff'), size: await read('size'), 'cache-id': await read('cache-id'), parent: await read('parent') }, 'layer store');
    } catch (e) {
      problems.push((e as Error).message.replace(/^layer store: /, '') + ' (a trailing newline or a missing file makes the engine skip it)');
      continue;
    }
    const expect = rec.parent ? sha256Digest(`${rec.parent} ${rec.diffId}`) : rec.diffId;
    if (expect !== chainId) problems.push(`layer ${chainId}: its diff and parent make the ChainID ${expect}`);
    const descriptor = await read('descriptor.json');
    if (descriptor) {
      try {
        JSON.parse(descriptor.toString('utf8'));
      } catch {
        problems.push(`layer ${chainId}: descriptor.json is not valid JSON`);
      }
    }
    records.set(chainId, rec);
  }
  for (const rec of records.values()) {
    if (rec.parent && !records.has(rec.parent) && (await reader.kindOf(at(layerDir(rec.parent)))) !== 'directory') {
      problems.push(`layer ${rec.chainId}: its parent ${rec.parent} is missing`);
    }
  }
  for (const img of selected) {
    for (const c of img.chainIds) {
      if (!records.has(c)) {
        problems.push(`image ${img.id}${img.references[0] ? ` (${img.references[0]})` : ''}: layer ${c} is missing or broken, so the engine drops the image`);
        break;
      }
    }
  }

  // overlay2 directories, links and lower chains.
  for (const rec of records.values()) {
    const l = `layer ${rec.chainId} (overlay2/${rec.cacheId})`;
    if ((await reader.kindOf(at(diffDir(rec.cacheId)))) !== 'directory') {
      problems.push(`${l}: diff/ is missing`);
      continue;
    }
    const link = (await reader.readFile(at(`${cacheDir(rec.cacheId)}/link`)))?.toString('latin1');
    if (link === undefined || !/^[A-Z2-7]{26}$/.test(link)) {
      problems.push(`${l}: link file missing or malformed${link !== undefined ? ` (${JSON.stringify(link.slice(0, 40))})` : ''}`);
      continue;
    }
    links.set(rec.chainId, link);
    const readlink = (reader as Partial<Pick<TreeWriter, 'readlink'>>).readlink?.bind(reader);
    const target = readlink ? await readlink(at(linkPath(link))) : undefined;
    const kind = await reader.kindOf(at(linkPath(link)));
    if (kind !== 'symlink') problems.push(`${l}: ${LINKS}/${link} is missing (every container start would fail)`);
    else if (target !== undefined && target !== linkTarget(rec.cacheId)) problems.push(`${l}: ${LINKS}/${link} points to ${target}, not ${linkTarget(rec.cacheId)}`);
  }
  for (const rec of records.values()) {
    if (!links.has(rec.chainId)) continue;
    const lower = (await reader.readFile(at(`${cacheDir(rec.cacheId)}/lower`)))?.toString('latin1');
    const l = `layer ${rec.chainId} (overlay2/${rec.cacheId})`;
    if (!rec.parent) {
      if (lower !== undefined) problems.push(`${l}: a base layer with a lower file`);
      continue;
    }
    const chain: string[] = [];
    let complete = true;
    for (let p: string | undefined = rec.parent; p; p = records.get(p)?.parent) {
      const pl = links.get(p);
      if (!pl) {
        complete = false;
        break;
      }
      chain.push(`l/${pl}`);
    }
    if (lower === undefined) problems.push(`${l}: lower file missing`);
    else if (complete && lower !== chain.join(':')) problems.push(`${l}: lower is ${JSON.stringify(lower.slice(0, 200))}, expected ${JSON.stringify(chain.join(':').slice(0, 200))}`);
  }

  // Content.
  if (!options.metadataOnly) {
    // Progress: the layers' content sizes (layerdb `size`), reported as each layer is done.
    const total = [...records.values()].reduce((n, r) => n + r.size, 0);
    let done = 0;
    let index = 0;
    for (const rec of records.values()) {
      checkAborted(); // a layer's rebuild can be long: an aborted run stops before the next
      reportProgress('verify', done, total, { chainId: rec.chainId, index: index++, count: records.size });
      done += rec.size;
      if (!links.has(rec.chainId) && (await reader.kindOf(at(diffDir(rec.cacheId)))) !== 'directory') continue;
      const ts = await reader.readFile(at(`${layerDir(rec.chainId)}/tar-split.json.gz`));
      if (!ts) {
        problems.push(`layer ${rec.chainId}: no tar-split.json.gz (docker save, push and balena deltas of it would fail)`);
        continue;
      }
      const diff = at(diffDir(rec.cacheId));
      problems.push(...(await checkLayerContent(rec.chainId, rec.diffId, ts, diff, files)));
    }
    if (records.size > 0) reportProgress('verify', done, total, { chainId: [...records.keys()].at(-1) as string, index: records.size - 1, count: records.size });
  }
  return { target: where, images: selected.length, layers: records.size, problems, ok: problems.length === 0 };
}

/** Rebuilds one layer from its tar-split and its files under `diff` (reader-relative); returns problems. */
async function checkLayerContent(chainId: string, diffId: string, tarSplit: Buffer, diff: string, files: LayerFileAccess): Promise<string[]> {
  const problems: string[] = [];
  const layer = `layer ${chainId}`;
  // Names are handled as bytes (latin1 round-trips every byte): tar names need not be UTF-8.
  const rel = (nameBytes: Buffer): Buffer | undefined => {
    const p = inLayer(nameBytes.toString('latin1'));
    return p === undefined ? undefined : Buffer.concat([Buffer.from(diff), Buffer.from(p === '' ? '' : `/${p}`, 'latin1')]);
  };
  const opener: FileOpener = (_name, nameBytes) => {
    const r = rel(nameBytes);
    if (!r) throw new Error('its name leaves the layer');
    return files.open(r);
  };
  try {
    const r = await assembledDigest(tarSplit, opener, layer);
    if (r.diffId !== diffId) problems.push(`${layer}: its rebuilt content hashes to ${r.diffId}, not to its DiffID ${diffId} (docker save would fail)`);
  } catch (e) {
    if (e instanceof TarSplitFileError) problems.push(`${layer}: file ${e.file}: ${e.message.slice(e.message.indexOf(e.file) + e.file.length).replace(/^:?\s*/, '')}`);
    else problems.push((e as Error).message);
    return problems;
  }
  // Whiteouts and opaque markers, which carry no content in the tar.
  if (files.inspect) {
    for await (const e of readTarSplit(tarSplit, layer)) {
      if (e.type !== FILE) continue;
      const name = e.name.toString('utf8');
      const p = inLayer(e.name.toString('latin1'));
      if (p === undefined) continue;
      const base = p.slice(p.lastIndexOf('/') + 1);
      const dir = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '';
      if (base === WHITEOUT_OPAQUE) {
        const k = await files.inspect(Buffer.from(dir ? `${diff}/${dir}` : diff, 'latin1'));
        if (k.kind !== 'directory' || !k.opaque) problems.push(`${layer}: ${Buffer.from(dir || '.', 'latin1').toString('utf8')} must be an opaque directory (trusted.overlay.opaque=y) for ${name}`);
      } else if (base.startsWith(WHITEOUT_PREFIX)) {
        const target = (dir ? `${dir}/` : '') + base.slice(WHITEOUT_PREFIX.length);
        const k = await files.inspect(Buffer.from(`${diff}/${target}`, 'latin1'));
        if (k.kind !== 'char-device' || k.rdev?.major !== 0 || k.rdev?.minor !== 0) {
          problems.push(`${layer}: ${Buffer.from(target, 'latin1').toString('utf8')} must be a whiteout (character device 0/0) for ${name}, found ${k.kind}`);
        }
      }
      if (problems.length >= MAX_PROBLEMS_PER_LAYER) break;
    }
  }
  return problems;
}

/**
 * Checks a bundle: configs against IDs (BundleSource.open already refuses mismatches), then
 * each layer's content rebuilt from its tar-split and its diff entries.
 */
export async function verifyBundle(bundle: BundleSource, options: VerifyOptions = {}): Promise<VerifyReport> {
  const problems: string[] = [];
  const manifest = bundle.getManifest();
  const images = await bundle.images();
  const selected = options.images && options.images.length > 0 ? selectImages(options.images, images, bundle.description) : images;
  for (const img of selected) {
    const deep = layerDepthProblem(img.chainIds.length, img.references[0] ?? img.id);
    if (deep) problems.push(deep);
  }
  const wanted = new Set(selected.flatMap((i) => i.chainIds));
  const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'transplant-verify-'));
  let layers = 0;
  const chosen = manifest.layers.filter((l) => wanted.has(l.chainId));
  const total = chosen.reduce((n, l) => n + l.bytes, 0);
  let done = 0;
  try {
    for (const l of chosen) {
      reportProgress('verify', done, total, { chainId: l.chainId, index: layers, count: chosen.length });
      done += l.bytes;
      layers++;
      const expect = l.parent ? sha256Digest(`${l.parent} ${l.diffId}`) : l.diffId;
      if (expect !== l.chainId) problems.push(`layer ${l.chainId}: its DiffID and parent make the ChainID ${expect}`);
      const meta = await bundle.layer(l.chainId);
      const dir = path.join(scratch, l.chainId.slice(7));
      await fs.mkdir(dir);
      // Spool regular files (tar order may differ from the bundle's), remember whiteouts and opaque dirs.
      const kinds = new Map<string, FileKind>();
      const fileOf = new Map<string, string>();
      let n = 0;
      for await (const { entry, content } of bundle.layerItems(l.chainId)) {
        checkAborted();
        if (entry.kind === 'file' && content) {
          const f = path.join(dir, String(n++));
          await pipeline(Readable.from(content), createWriteStream(f));
          fileOf.set(entry.path, f);
          kinds.set(entry.path, { kind: 'file' });
        } else if (entry.kind === 'hardlink' && entry.linkTarget !== undefined) {
          const f = fileOf.get(entry.linkTarget);
          if (f) fileOf.set(entry.path, f);
          kinds.set(entry.path, { kind: 'file' });
        } else if (entry.kind === 'char-device') {
          kinds.set(entry.path, { kind: 'char-device', rdev: { major: entry.devMajor ?? 0, minor: entry.devMinor ?? 0 } });
        } else if (entry.kind === 'directory') {
          kinds.set(entry.path, { kind: 'directory', opaque: entry.xattrs.some((x) => x.name === 'trusted.overlay.opaque' && x.value.toString('latin1') === 'y') });
        } else {
          kinds.set(entry.path, { kind: entry.kind === 'symlink' ? 'symlink' : 'other' });
        }
      }
      if (!meta.tarSplit) {
        problems.push(`layer ${l.chainId}: the bundle carries no tar-split for it (docker save and push of it would fail)`);
      } else {
        const access: LayerFileAccess = {
          open: (rel) => {
            const p = rel.toString('utf8').replace(/^diff\/?/, '') || '.';
            const f = fileOf.get(p);
            if (!f) throw new Error('no such file in the bundle');
            return createReadStream(f) as AsyncIterable<Buffer>;
          },
          inspect: async (rel) => kinds.get(rel.toString('utf8').replace(/^diff\/?/, '') || '.') ?? { kind: 'missing' },
        };
        problems.push(...(await checkLayerContent(l.chainId, l.diffId, meta.tarSplit, 'diff', access)));
      }
      await fs.rm(dir, { recursive: true, force: true });
    }
    const last = chosen.at(-1);
    if (last) reportProgress('verify', done, total, { chainId: last.chainId, index: chosen.length - 1, count: chosen.length });
    await bundle.drain();
  } catch (e) {
    problems.push((e as Error).message);
  } finally {
    await fs.rm(scratch, { recursive: true, force: true });
  }
  return { target: bundle.description, images: selected.length, layers, problems, ok: problems.length === 0 };
}
