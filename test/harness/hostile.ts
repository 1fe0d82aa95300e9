/**
 * Hostile and broken inputs, built by the tests themselves (nothing checked in): synthetic
 * images whose layers hold path tricks, packed as a bundle, a data-root tarball or a
 * `docker save` archive with our own TarPacker, or with raw blocks where it would refuse.
 *
 * A layer is a list of HostileEntry; `name` is relative to the layer root and gets the
 * container format's prefix (`layers/<chain>/diff/`, `var/lib/docker/overlay2/<cache>/diff/`,
 * nothing in a layer.tar) unless `raw` is set, so that `../`, absolute names and names
 * outside the layer reach the reader exactly as written.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { Writable } from 'node:stream';
import { Worker, isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { emptyHeader, type TarHeader, type TarType } from '../../src/tar/header.js';
import { TarPacker } from '../../src/tar/pack.js';
import { chainIds as chainIdsOf } from '../../src/engine/digest.js';

export interface HostileEntry {
  name: string;
  type?: TarType;
  content?: Buffer | string;
  /** symlink target as stored; hard-link target relative to the layer root (prefixed like name unless linkRaw). */
  linkname?: string;
  raw?: boolean;
  linkRaw?: boolean;
  mode?: number;
  uid?: number;
  gid?: number;
  xattrs?: { name: string; value: Buffer }[];
}

export type HostileLayer = HostileEntry[];

/** What must happen with an input: refused (exit 1, target unchanged), or either way as long as nothing escapes. */
export type Expectation = 'refused' | 'accepted' | 'either';

export interface HostileCase {
  name: string;
  layers: HostileLayer[];
  expect: Expectation;
  /** For accepted inputs: problems found in the injected top layer's diff dir (e.g. a symlink not stored as is). */
  check?: (diffDir: string) => string[];
  /** Only for these containers (default all). */
  only?: Container[];
}

export type Container = 'bundle' | 'tarball' | 'archive';

const NS = 1_000_000_000n;
/** A fixed time with nanoseconds: the packer writes a pax header for it (data-root tarballs must have pax). */
const MTIME = 1_600_000_000n * NS + 123_456_789n;

function collect(): { out: Writable; done: () => Buffer } {
  const parts: Buffer[] = [];
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      parts.push(chunk);
      cb();
    },
  });
  return { out, done: () => Buffer.concat(parts) };
}

function header(name: string, type: TarType, size: number, over: Partial<TarHeader> = {}): TarHeader {
  return { ...emptyHeader(), name, type, size, mode: type === 'directory' ? 0o755 : 0o644, mtime: MTIME, ...over };
}

function contentOf(e: HostileEntry): Buffer {
  return e.content === undefined ? Buffer.alloc(0) : Buffer.isBuffer(e.content) ? e.content : Buffer.from(e.content);
}

async function addEntry(tar: TarPacker, e: HostileEntry, prefix: string): Promise<void> {
  const type = e.type ?? 'file';
  const name = e.raw ? e.name : prefix + e.name;
  const linkname = e.linkname === undefined ? '' : type === 'hardlink' && !e.linkRaw ? prefix + e.linkname : e.linkname;
  const data = type === 'file' ? contentOf(e) : Buffer.alloc(0);
  const h = header(name, type, data.length, { linkname, xattrs: e.xattrs ?? [] });
  if (e.mode !== undefined) h.mode = e.mode;
  if (e.uid !== undefined) h.uid = e.uid;
  if (e.gid !== undefined) h.gid = e.gid;
  await tar.add(h, data);
}

export const sha256 = (b: Buffer | string): string => 'sha256:' + createHash('sha256').update(b).digest('hex');

/** A layer as a plain layer tar (docker save / registry form). */
export async function layerTar(layer: HostileLayer): Promise<Buffer> {
  const { out, done } = collect();
  const tar = new TarPacker(out);
  for (const e of layer) await addEntry(tar, e, '');
  await tar.finish();
  return done();
}

export interface SyntheticImage {
  config: Buffer;
  id: string;
  diffIds: string[];
  chainIds: string[];
  ref: string;
  layerTars: Buffer[];
}

export async function syntheticImage(layers: HostileLayer[], ref = 'hostile/case:1'): Promise<SyntheticImage> {
  const layerTars: Buffer[] = [];
  for (const l of layers) layerTars.push(await layerTar(l));
  const diffIds = layerTars.map((t) => sha256(t));
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/true'] },
      rootfs: { type: 'layers', diff_ids: diffIds },
      history: diffIds.map(() => ({ created_by: 'hostile' })),
    }),
  );
  return { config, id: sha256(config), diffIds, chainIds: chainIdsOf(diffIds), ref, layerTars };
}

function countEntries(layer: HostileLayer): { entries: number; bytes: number } {
  return { entries: layer.length + 1, bytes: layer.reduce((n, e) => n + ((e.type ?? 'file') === 'file' ? contentOf(e).length : 0), 0) };
}

/** A transplant bundle (src/bundle/format.ts) with these layers; no tar-split (content is not checked against one). */
export async function bundleBytes(layers: HostileLayer[], opts: { ref?: string; references?: string[] } = {}): Promise<Buffer> {
  const img = await syntheticImage(layers, opts.ref);
  const { out, done } = collect();
  const tar = new TarPacker(out);
  const manifest = {
    format: 'balena-transplant-bundle',
    version: 1,
    createdBy: 'hostile test',
    createdAt: new Date(0).toISOString(),
    images: [{ id: img.id, references: opts.references ?? [img.ref], chainIds: img.chainIds, architecture: 'amd64', os: 'linux' }],
    layers: layers.map((l, i) => ({
      chainId: img.chainIds[i],
      diffId: img.diffIds[i],
      parent: i > 0 ? img.chainIds[i - 1] : undefined,
      size: countEntries(l).bytes,
      hasTarSplit: false,
      ...countEntries(l),
    })),
  };
  const m = Buffer.from(JSON.stringify(manifest));
  await tar.add(header('transplant-bundle.json', 'file', m.length), m);
  await tar.add(header(`images/${img.id.slice(7)}.json`, 'file', img.config.length), img.config);
  let total = 0;
  for (const [i, l] of layers.entries()) {
    const prefix = `layers/${(img.chainIds[i] as string).slice(7)}/diff`;
    await tar.add(header(prefix, 'directory', 0));
    for (const e of l) await addEntry(tar, e, prefix + '/');
    total += l.length + 1;
  }
  const t = Buffer.from(JSON.stringify({ layers: layers.length, entries: total }));
  await tar.add(header('transplant-bundle.end', 'file', t.length), t);
  await tar.finish();
  return done();
}

/** A `docker save` archive (legacy layout: manifest.json, <id>.json, <n>/layer.tar). */
export async function dockerArchiveBytes(layers: HostileLayer[], opts: { ref?: string; manifestLayers?: string[]; manifestConfig?: string } = {}): Promise<Buffer> {
  const img = await syntheticImage(layers, opts.ref);
  const { out, done } = collect();
  const tar = new TarPacker(out);
  const names = img.layerTars.map((_, i) => `${String(i).padStart(64, 'a')}/layer.tar`);
  const configName = `${img.id.slice(7)}.json`;
  const manifest = Buffer.from(JSON.stringify([{ Config: opts.manifestConfig ?? configName, RepoTags: [img.ref], Layers: opts.manifestLayers ?? names }]));
  for (const [i, t] of img.layerTars.entries()) {
    await tar.add(header(`${String(i).padStart(64, 'a')}`, 'directory', 0));
    await tar.add(header(names[i] as string, 'file', t.length), t);
  }
  await tar.add(header(configName, 'file', img.config.length), img.config);
  await tar.add(header('manifest.json', 'file', manifest.length), manifest);
  await tar.finish();
  return done();
}

const LINK_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** A data-root tarball as `tar -c --xattrs /var/lib/docker` makes it (under var/lib/docker/). */
export async function rootfsTarballBytes(layers: HostileLayer[], opts: { ref?: string; cacheIds?: string[] } = {}): Promise<Buffer> {
  const img = await syntheticImage(layers, opts.ref);
  const { out, done } = collect();
  const tar = new TarPacker(out);
  const root = 'var/lib/docker/';
  const dir = async (n: string): Promise<void> => tar.add(header(root + n, 'directory', 0, { mode: 0o700 }));
  const file = async (n: string, data: Buffer | string): Promise<void> => {
    const b = Buffer.from(data);
    await tar.add(header(root + n, 'file', b.length), b);
  };
  for (const d of ['image', 'image/overlay2', 'image/overlay2/layerdb', 'image/overlay2/layerdb/sha256', 'image/overlay2/imagedb', 'image/overlay2/imagedb/content', 'image/overlay2/imagedb/content/sha256', 'overlay2', 'overlay2/l']) await dir(d);
  const cacheIds = layers.map((_, i) => opts.cacheIds?.[i] ?? createHash('sha256').update(`cache-${i}-${img.id}`).digest('hex'));
  const links = layers.map((_, i) => Array.from(createHash('sha256').update(`link-${i}-${img.id}`).digest()).slice(0, 26).map((b) => LINK_ALPHABET[b % 32]).join(''));
  for (const [i, l] of layers.entries()) {
    const chain = (img.chainIds[i] as string).slice(7);
    await dir(`image/overlay2/layerdb/sha256/${chain}`);
    await file(`image/overlay2/layerdb/sha256/${chain}/diff`, img.diffIds[i] as string);
    await file(`image/overlay2/layerdb/sha256/${chain}/size`, String(countEntries(l).bytes));
    await file(`image/overlay2/layerdb/sha256/${chain}/cache-id`, cacheIds[i] as string);
    if (i > 0) await file(`image/overlay2/layerdb/sha256/${chain}/parent`, img.chainIds[i - 1] as string);
  }
  await file(`image/overlay2/imagedb/content/sha256/${img.id.slice(7)}`, img.config);
  const [name, tag] = img.ref.split(':') as [string, string];
  await file('image/overlay2/repositories.json', JSON.stringify({ Repositories: { [name]: { [`${name}:${tag}`]: img.id } } }));
  for (const [i, l] of layers.entries()) {
    const c = cacheIds[i] as string;
    await dir(`overlay2/${c}`);
    await tar.add(header(`${root}overlay2/${c}/diff`, 'directory', 0));
    for (const e of l) await addEntry(tar, e, `${root}overlay2/${c}/diff/`);
    await file(`overlay2/${c}/link`, links[i] as string);
    if (i > 0) await file(`overlay2/${c}/lower`, links.slice(0, i).reverse().map((k) => `l/${k}`).join(':'));
    await tar.add(header(`${root}overlay2/l/${links[i]}`, 'symlink', 0, { linkname: `../${c}/diff` }));
  }
  await tar.finish();
  return done();
}

export async function containerBytes(kind: Container, layers: HostileLayer[]): Promise<Buffer> {
  return kind === 'bundle' ? bundleBytes(layers) : kind === 'tarball' ? rootfsTarballBytes(layers) : dockerArchiveBytes(layers);
}

export const containerFileName = (kind: Container): string => (kind === 'bundle' ? 'in.bundle' : kind === 'tarball' ? 'docker.tar' : 'image.tar');

/** One 512-byte ustar header block with any bytes in its name field (for what encodeHeader would not write). */
export function rawHeaderBlock(name: Buffer, opts: { type?: string; size?: number; linkname?: Buffer; mode?: number } = {}): Buffer {
  const b = Buffer.alloc(512);
  name.copy(b, 0, 0, Math.min(100, name.length));
  b.write((opts.mode ?? 0o644).toString(8).padStart(7, '0') + '\0', 100, 'latin1');
  b.write('0000000\0', 108, 'latin1');
  b.write('0000000\0', 116, 'latin1');
  b.write((opts.size ?? 0).toString(8).padStart(11, '0') + '\0', 124, 'latin1');
  b.write('13000000000\0', 136, 'latin1');
  b.write(opts.type ?? '0', 156, 'latin1');
  if (opts.linkname) opts.linkname.copy(b, 157, 0, Math.min(100, opts.linkname.length));
  b.write('ustar\0', 257, 'latin1');
  b.write('00', 263, 'latin1');
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : (b[i] as number);
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return b;
}

// ---- the corpus ---------------------------------------------------------------------------

/** The canary file every escape aims at; tests create its directory beside the target. */
export interface Aim {
  /** Absolute path of the canary directory. */
  canary: string;
  /** The target's depth below the temp root, so that enough '../' reach the canary. */
  ups: string;
}

const dirE = (name: string): HostileEntry => ({ name, type: 'directory' });
const fileE = (name: string, content = 'pwned'): HostileEntry => ({ name, content });

/**
 * Each trick of guarantee 1, aimed at `aim.canary`. A layer also holds an ordinary file
 * (`ok`) so that an accepted input visibly wrote something.
 */
export function hostileCases(aim: Aim): HostileCase[] {
  const up = aim.ups;
  const abs = `${aim.canary}/pwned-abs`;
  return [
    { name: 'a ../ path', layers: [[fileE('ok'), fileE(`${up}canary/pwned-dotdot`)]], expect: 'refused' },
    { name: 'a path with ../ in its middle', layers: [[dirE('a'), fileE(`a/../../${up}canary/pwned-mid`)]], expect: 'refused' },
    // Absolute names: a layer tar's are made relative (the engine does the same); a bundle's or a tarball's fall outside the layer.
    { name: 'an absolute name', layers: [[fileE('ok'), { name: abs, raw: true, content: 'pwned' }]], expect: 'either' },
    {
      name: 'a symlink to the canary, then a file through it',
      layers: [[{ name: 'lnk', type: 'symlink', linkname: aim.canary }, fileE('lnk/pwned-through')]],
      expect: 'refused',
    },
    {
      name: 'a relative symlink up and out, then a directory and a file through it',
      layers: [[{ name: 'up', type: 'symlink', linkname: `${up}canary` }, dirE('up/sub'), fileE('up/sub/pwned-rel')]],
      expect: 'refused',
    },
    {
      name: 'a directory replaced by a symlink, then a file below it',
      layers: [[dirE('d'), { name: 'd', type: 'symlink', linkname: aim.canary }, fileE('d/pwned-replaced')]],
      expect: 'either',
      only: ['tarball', 'archive'],
    },
    {
      name: 'a symlink in a lower layer, then a file through it in the upper layer',
      layers: [[{ name: 'via', type: 'symlink', linkname: aim.canary }], [dirE('via'), fileE('via/pwned-upper')]],
      expect: 'either',
    },
    {
      name: 'symlinks are content: absolute and escaping targets stored as they are',
      layers: [[{ name: 'abs-link', type: 'symlink', linkname: aim.canary + '/file' }, { name: 'rel-link', type: 'symlink', linkname: `../../../../../../..${aim.canary}` }, { name: 'dangling', type: 'symlink', linkname: '/nonexistent/x' }, fileE('ok')]],
      expect: 'accepted',
      check: (diff) => {
        const p: string[] = [];
        for (const [n, t] of [['abs-link', aim.canary + '/file'], ['rel-link', `../../../../../../..${aim.canary}`], ['dangling', '/nonexistent/x']] as const) {
          let got: string | undefined;
          try {
            got = fs.readlinkSync(`${diff}/${n}`);
          } catch {
            got = undefined;
          }
          if (got !== t) p.push(`${n}: symlink target ${JSON.stringify(got)}, expected ${JSON.stringify(t)}`);
        }
        return p;
      },
    },
    {
      name: 'a file written over a symlink to the canary file',
      layers: [[{ name: 'over', type: 'symlink', linkname: aim.canary + '/file' }, fileE('over', 'pwned-over')]],
      expect: 'either',
      only: ['tarball', 'archive'],
    },
    {
      name: 'a hard link to a file outside the layer (../)',
      layers: [[fileE('ok'), { name: 'hl', type: 'hardlink', linkname: `${up}canary/file` }]],
      expect: 'refused',
    },
    {
      name: 'a hard link with an absolute target',
      layers: [[fileE('ok'), { name: 'hl', type: 'hardlink', linkname: aim.canary + '/file', linkRaw: true }]],
      expect: 'either',
    },
    {
      name: 'a hard link to a symlink that points out, then content written to the link',
      layers: [[{ name: 's', type: 'symlink', linkname: aim.canary + '/file' }, { name: 'h', type: 'hardlink', linkname: 's' }, fileE('h', 'pwned-hl')]],
      expect: 'either',
      only: ['tarball', 'archive'],
    },
    {
      name: 'a hard link through a symlinked directory',
      layers: [[{ name: 'sd', type: 'symlink', linkname: aim.canary }, { name: 'h2', type: 'hardlink', linkname: 'sd/file' }]],
      expect: 'refused',
    },
    { name: 'duplicate entries', layers: [[fileE('dup', 'one'), fileE('dup', 'two')]], expect: 'either' },
    { name: 'a NUL byte in a name', layers: [[fileE('ok'), fileE('nul\0/../../x')]], expect: 'refused' },
    { name: 'a NUL byte in a symlink target', layers: [[{ name: 'nl', type: 'symlink', linkname: 'a\0b' }]], expect: 'refused' },
    { name: 'an overlong name component', layers: [[fileE('x'.repeat(300))]], expect: 'refused' },
    { name: 'a device node named ../', layers: [[{ name: `${up}canary/pwned-dev`, type: 'char-device' }]], expect: 'refused' },
    { name: 'a whiteout of ..', layers: [[dirE('w'), fileE('w/.wh...', '')]], expect: 'either', only: ['archive'] },
    { name: 'an entry named . inside a path', layers: [[dirE('p'), fileE('p/./q')]], expect: 'either' },
    {
      name: 'a path longer than PATH_MAX (4096 bytes)',
      layers: [[...Array.from({ length: 40 }, (_, i) => dirE(Array.from({ length: i + 1 }, (_, j) => `${j}`.padStart(120, 'd')).join('/'))), fileE(Array.from({ length: 40 }, (_, j) => `${j}`.padStart(120, 'd')).join('/') + '/deep')]],
      expect: 'either',
    },
    {
      name: 'a hard link to a directory',
      layers: [[dirE('dir'), { name: 'hl-dir', type: 'hardlink', linkname: 'dir' }]],
      expect: 'refused',
    },
  ];
}

/** Writes bytes to a file and returns its path. */
export function writeInput(file: string, bytes: Buffer): string {
  fs.writeFileSync(file, bytes);
  return file;
}

export interface InProcessResult {
  code: number;
  stdout: string;
  stderr: string;
}

interface WorkerRequest {
  id: number;
  args: string[];
  env: Record<string, string>;
}

/**
 * The CLI's main() in a worker thread of this process (same code path as `transplant …` up
 * to process.exit), capturing what it prints; the worker's own process.stdout/stderr and env
 * are replaced, never the test runner's. Saves a Node start per run, which matters for the
 * hundreds of runs of the fuzz and hostile tests.
 */
export class CliWorker {
  private readonly worker: Worker;
  private next = 0;
  private readonly waiting = new Map<number, { resolve: (r: InProcessResult) => void; reject: (e: Error) => void }>();

  constructor() {
    this.worker = new Worker(__filename, { workerData: { transplantCliWorker: true }, stdout: true, stderr: true });
    this.worker.on('message', (m: { id: number; result?: InProcessResult; crash?: string }) => {
      const w = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      if (m.result) w?.resolve(m.result);
      else w?.reject(new Error(`the CLI crashed in-process: ${m.crash ?? '?'}`));
    });
    this.worker.on('error', (e) => {
      for (const w of this.waiting.values()) w.reject(e);
      this.waiting.clear();
    });
    this.worker.unref();
  }

  run(args: readonly string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<InProcessResult> {
    const id = this.next++;
    return new Promise<InProcessResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`transplant ${args.join(' ')} did not finish within ${timeoutMs} ms (a hang)`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.worker.postMessage({ id, args: [...args], env } satisfies WorkerRequest);
    });
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}

function serveCli(): void {
  const port = parentPort as MessagePort;
  let out: string[] = [];
  let err: string[] = [];
  const capture = (into: () => string[]) =>
    ((chunk: string | Uint8Array, ...rest: unknown[]): boolean => {
      into().push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      const cb = rest.find((r) => typeof r === 'function') as (() => void) | undefined;
      cb?.();
      return true;
    }) as typeof process.stdout.write;
  // main() installs its signal handlers on every call: many runs in one process are expected here.
  process.setMaxListeners(0);
  process.stdout.write = capture(() => out);
  process.stderr.write = capture(() => err);
  // One run at a time: the next request waits for the previous one.
  let chain = Promise.resolve();
  port.on('message', (m: WorkerRequest) => {
    chain = chain.then(async () => {
      const { main } = (await import('../../src/cli/main.js')) as { main: (argv: string[]) => Promise<number> };
      out = [];
      err = [];
      const saved = { ...process.env };
      Object.assign(process.env, m.env);
      try {
        const code = await main(['node', 'transplant', ...m.args]);
        port.postMessage({ id: m.id, result: { code, stdout: out.join(''), stderr: err.join('') } });
      } catch (e) {
        port.postMessage({ id: m.id, crash: (e as Error).stack ?? String(e) });
      } finally {
        for (const k of Object.keys(m.env)) {
          if (saved[k] === undefined) delete process.env[k];
          else process.env[k] = saved[k];
        }
      }
    });
  });
}

if (!isMainThread && (workerData as { transplantCliWorker?: boolean } | null)?.transplantCliWorker) serveCli();

// ---- a big image, for interrupting runs midway ------------------------------------------

export interface BigImage {
  archive: string;
  ref: string;
  id: string;
  diffIds: string[];
  marker: string;
}

/** Packs entries into a tar file, streaming, and returns its sha256 digest. */
async function packToFile(file: string, fill: (tar: TarPacker) => Promise<void>): Promise<string> {
  const hash = createHash('sha256');
  const out = fs.createWriteStream(file);
  const tee = new Writable({
    write(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      if (out.write(chunk)) cb();
      else out.once('drain', () => cb());
    },
    final(cb) {
      out.end(() => cb());
    },
  });
  const tar = new TarPacker(tee);
  await fill(tar);
  await tar.finish();
  await new Promise<void>((resolve, reject) => {
    tee.on('error', reject);
    tee.end(() => resolve());
  });
  return 'sha256:' + hash.digest('hex');
}

async function* fileContent(file: string): AsyncGenerator<Buffer> {
  for await (const c of fs.createReadStream(file, { highWaterMark: 1 << 20 })) yield c as Buffer;
}

/** Deterministic non-repeating bytes (xorshift32), so that nothing compresses or dedups them away. */
async function* noise(size: number, seed: number): AsyncGenerator<Buffer> {
  let x = seed >>> 0 || 1;
  const piece = 1 << 20;
  for (let done = 0; done < size; done += piece) {
    const n = Math.min(piece, size - done);
    const b = Buffer.allocUnsafe(n + 3);
    for (let i = 0; i < n; i += 4) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      b.writeUInt32LE(x, i);
    }
    yield b.subarray(0, n);
  }
}

/**
 * A `docker save` archive of an image that runs (/bin/busybox from busybox-static) with a
 * second layer of `smallFiles` small files and `bigFiles` files of `bigSize` bytes, written
 * to `dir` without holding any layer in memory.
 */
export async function bigImageArchive(dir: string, opts: { smallFiles: number; bigFiles: number; bigSize: number; busybox?: string }): Promise<BigImage> {
  const busybox = opts.busybox ?? '/bin/busybox';
  if (!fs.existsSync(busybox)) throw new Error(`${busybox} is missing: install busybox-static (see .ci/run)`);
  fs.mkdirSync(dir, { recursive: true });
  const marker = 'transplant-marker-big';
  const l1 = `${dir}/l1.tar`;
  const l2 = `${dir}/l2.tar`;
  const bb = fs.statSync(busybox).size;
  const d1 = await packToFile(l1, async (tar) => {
    await tar.add(header('bin/', 'directory', 0));
    await tar.add(header('bin/busybox', 'file', bb, { mode: 0o755 }), fileContent(busybox));
    for (const app of ['sh', 'echo', 'cat', 'ls']) await tar.add(header(`bin/${app}`, 'symlink', 0, { linkname: '/bin/busybox', mode: 0o777 }));
  });
  const d2 = await packToFile(l2, async (tar) => {
    await tar.add(header('data/', 'directory', 0));
    for (let d = 0; d < Math.ceil(opts.smallFiles / 500); d++) {
      await tar.add(header(`data/d${d}/`, 'directory', 0));
      for (let i = d * 500; i < Math.min(opts.smallFiles, (d + 1) * 500); i++) {
        const body = Buffer.from(`small file ${i} `.repeat(1 + (i % 97)));
        await tar.add(header(`data/d${d}/f${i}`, 'file', body.length, { uid: 1000 + (i % 3), mode: 0o640 }), body);
      }
    }
    for (let i = 0; i < opts.bigFiles; i++) await tar.add(header(`data/big${i}`, 'file', opts.bigSize), noise(opts.bigSize, 7 + i));
  });
  const diffIds = [d1, d2];
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/sh', '-c', `echo ${marker}`], Env: ['PATH=/bin'] },
      rootfs: { type: 'layers', diff_ids: diffIds },
      history: [{ created_by: 'busybox' }, { created_by: 'data' }],
    }),
  );
  const id = sha256(config);
  const ref = 'fixture/big:1';
  const manifest = Buffer.from(JSON.stringify([{ Config: `${id.slice(7)}.json`, RepoTags: [ref], Layers: ['l1/layer.tar', 'l2/layer.tar'] }]));
  const archive = `${dir}/big-image.tar`;
  await packToFile(archive, async (tar) => {
    for (const [n, f] of [['l1', l1], ['l2', l2]] as const) {
      await tar.add(header(`${n}/`, 'directory', 0));
      await tar.add(header(`${n}/layer.tar`, 'file', fs.statSync(f).size), fileContent(f));
    }
    await tar.add(header(`${id.slice(7)}.json`, 'file', config.length), config);
    await tar.add(header('manifest.json', 'file', manifest.length), manifest);
  });
  fs.rmSync(l1);
  fs.rmSync(l2);
  return { archive, ref, id, diffIds, marker };
}
