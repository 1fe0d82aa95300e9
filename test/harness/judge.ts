/**
 * Reusable judges for engine data roots and layer trees. Everything about files is read
 * with external tools (GNU find, coreutils stat/sha256sum, attr's getfattr), never with
 * the project's own code, so a bug in our readers cannot hide a bug in our writers.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runOk, requireTools } from './exec.js';
import { nameFromBytes, nameToBytes } from '../../src/layer/entry.js';

/** Every attribute of one file, as external tools report it. */
export interface FileRecord {
  /** find %y: f d l c b p s */
  type: string;
  /** Permission bits in octal including setuid/setgid/sticky (find %m). */
  mode: string;
  uid: number;
  gid: number;
  /** Seconds.nanoseconds (find %T@, nine significant fraction digits). */
  mtime: string;
  /** Content length for files and link length for symlinks; not kept for directories (depends on the file system). */
  size: number;
  nlink: number;
  inode: string;
  /** Symlink target exactly as stored. */
  link?: string;
  /** Device numbers `major:minor` (hex, stat %t:%T) of char/block devices. */
  rdev?: string;
  /** `name=0xHEX` sorted, joined by ' '. */
  xattrs: string;
  /** sha256 of the content of regular files. */
  sha256?: string;
  /** For regular files with nlink > 1: the first path (sorted) of the same inode in this tree. */
  linkGroup?: string;
}

export type Snapshot = Map<string, FileRecord>;

export interface SnapshotOptions {
  /** Paths (relative, '/'-separated) whose subtree is left out, e.g. ['tmp']. */
  exclude?: string[];
}

function splitNul(buf: Buffer): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < buf.length; i++) {
    if (buf[i] === 0) {
      out.push(nameFromBytes(buf.subarray(start, i))); // names are bytes (src/layer/entry.ts)
      start = i + 1;
    }
  }
  return out;
}

function rel(root: string, p: string): string {
  if (p === root) return '.';
  if (!p.startsWith(root + '/')) throw new Error(`${p} is not under ${root}`);
  return p.slice(root.length + 1);
}

/** getfattr quotes '\\', newlines and other control bytes as \ooo (attr's tools/getfattr.c quote()). */
function unquoteGetfattr(latin1: string): string {
  const raw = latin1.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return nameFromBytes(Buffer.from(raw, 'latin1'));
}

/** Reads every attribute of every file below dir (dir itself is '.'). */
export function snapshotTree(dir: string, opts: SnapshotOptions = {}): Snapshot {
  requireTools('find', 'stat', 'getfattr', 'sha256sum');
  const root = path.resolve(dir);
  if (!fs.existsSync(root)) throw new Error(`snapshotTree: ${root} does not exist`);
  const snap: Snapshot = new Map();

  const fields = 10;
  const found = splitNul(
    runOk('find', [root, '-printf', '%P\\0%y\\0%m\\0%U\\0%G\\0%T@\\0%s\\0%i\\0%n\\0%l\\0']).stdoutBytes,
  );
  for (let i = 0; i + fields <= found.length; i += fields) {
    const [p, type, mode, uid, gid, mtime, size, inode, nlink, link] = found.slice(i, i + fields) as string[];
    const key = p === '' ? '.' : (p as string);
    snap.set(key, {
      type: type as string,
      mode: (mode as string).padStart(4, '0'),
      uid: Number(uid),
      gid: Number(gid),
      // GNU find prints ten fraction digits, the last always 0.
      mtime: (mtime as string).replace(/^(\d+\.\d{9})\d*$/, '$1'),
      size: type === 'd' ? 0 : Number(size),
      nlink: Number(nlink),
      inode: inode as string,
      link: type === 'l' ? link : undefined,
      xattrs: '',
    });
  }

  // Device numbers.
  const devs = splitNul(
    runOk('find', [root, '(', '-type', 'c', '-o', '-type', 'b', ')', '-exec', 'stat', '--printf', '%n\\0%t:%T\\0', '{}', '+'])
      .stdoutBytes,
  );
  for (let i = 0; i + 2 <= devs.length; i += 2) {
    const rec = snap.get(rel(root, devs[i] as string));
    if (rec) rec.rdev = devs[i + 1];
  }

  // Extended attributes, every namespace (trusted.* and security.* need root).
  const xa = runOk('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root], {
    timeoutMs: 300_000,
  }).stdoutBytes.toString('latin1');
  let current: FileRecord | undefined;
  const pending = new Map<FileRecord, string[]>();
  for (const line of xa.split('\n')) {
    if (line.startsWith('# file: ')) {
      const p = unquoteGetfattr(line.slice('# file: '.length));
      current = snap.get(rel(root, p));
      if (!current) throw new Error(`getfattr reported ${p}, which find did not list`);
      pending.set(current, []);
    } else if (line.trim() !== '' && current) {
      pending.get(current)?.push(line);
    }
  }
  for (const [rec, lines] of pending) rec.xattrs = lines.sort().join(' ');

  // Content digests.
  const sums = splitNul(
    runOk('find', [root, '-type', 'f', '-exec', 'sha256sum', '-z', '{}', '+'], { timeoutMs: 600_000 }).stdoutBytes,
  );
  for (const s of sums) {
    const hex = s.slice(0, 64);
    const p = s.slice(66);
    const rec = snap.get(rel(root, p));
    if (!rec) throw new Error(`sha256sum reported ${p}, which find did not list`);
    rec.sha256 = hex;
  }

  // Hard-link structure: name each inode by its first path.
  const firstByInode = new Map<string, string>();
  const sorted = [...snap.keys()].sort(byteOrder);
  for (const p of sorted) {
    const rec = snap.get(p) as FileRecord;
    if (rec.type !== 'd' && rec.nlink > 1) {
      const first = firstByInode.get(rec.inode);
      if (first === undefined) firstByInode.set(rec.inode, p);
      rec.linkGroup = first ?? p;
    }
  }

  for (const ex of opts.exclude ?? []) {
    for (const p of [...snap.keys()]) if (p === ex || p.startsWith(ex + '/')) snap.delete(p);
  }
  return snap;
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(nameToBytes(a), nameToBytes(b));
}

/** One line per file with every attribute except the inode number (which differs between copies). */
export function describeRecord(r: FileRecord): string {
  return [
    r.type,
    r.mode,
    `${r.uid}:${r.gid}`,
    r.mtime,
    r.size,
    `n${r.nlink}`,
    r.linkGroup ? `hl=${r.linkGroup}` : '',
    r.link !== undefined ? `->${r.link}` : '',
    r.rdev ? `dev=${r.rdev}` : '',
    r.xattrs,
    r.sha256 ?? '',
  ].join('|');
}

/** (a) A digest of a whole tree with every attribute of every file. */
export function treeDigest(dir: string, opts: SnapshotOptions = {}): string {
  return digestSnapshot(snapshotTree(dir, opts));
}

export function digestSnapshot(snap: Snapshot): string {
  const h = createHash('sha256');
  for (const p of [...snap.keys()].sort(byteOrder)) {
    h.update(p);
    h.update('\0');
    h.update(describeRecord(snap.get(p) as FileRecord));
    h.update('\n');
  }
  return h.digest('hex');
}

export interface CompareOptions {
  /** Leave the root directory's own attributes out (its existence is still required). */
  ignoreRootAttributes?: boolean;
  /** Compare directory mtimes too (default true). */
  directoryTimes?: boolean;
}

/** Differences between two snapshots, one readable line each (empty when equal). */
export function diffSnapshots(a: Snapshot, b: Snapshot, opts: CompareOptions = {}): string[] {
  const out: string[] = [];
  const keys = new Set([...a.keys(), ...b.keys()]);
  for (const p of [...keys].sort(byteOrder)) {
    const ra = a.get(p);
    const rb = b.get(p);
    if (!ra) {
      out.push(`${p}: only in the second tree`);
      continue;
    }
    if (!rb) {
      out.push(`${p}: only in the first tree`);
      continue;
    }
    if (p === '.' && opts.ignoreRootAttributes) continue;
    const fields: (keyof FileRecord)[] = ['type', 'mode', 'uid', 'gid', 'mtime', 'size', 'nlink', 'linkGroup', 'link', 'rdev', 'xattrs', 'sha256'];
    for (const f of fields) {
      if (f === 'mtime' && ra.type === 'd' && opts.directoryTimes === false) continue;
      if (ra[f] !== rb[f]) out.push(`${p}: ${f} ${JSON.stringify(ra[f])} != ${JSON.stringify(rb[f])}`);
    }
  }
  return out;
}

/**
 * (b) Every file of two layer diff dirs equal in type, mode, owner, ns mtime, xattrs,
 * link target, device numbers, hard-link structure and content. Returns the differences.
 */
export function compareLayerFiles(srcDiffDir: string, dstDiffDir: string, opts: CompareOptions = {}): string[] {
  return diffSnapshots(snapshotTree(srcDiffDir), snapshotTree(dstDiffDir), opts);
}

/** Throws listing the first differences. */
export function assertLayerFilesEqual(srcDiffDir: string, dstDiffDir: string, opts: CompareOptions = {}): void {
  const d = compareLayerFiles(srcDiffDir, dstDiffDir, opts);
  if (d.length > 0) {
    throw new Error(`${dstDiffDir} differs from ${srcDiffDir} (${d.length} differences):\n  ${d.slice(0, 30).join('\n  ')}`);
  }
}

/** (c) Engine log lines that mean a layer or image was dropped or data deleted. */
export const BAD_LOG_PATTERNS: RegExp[] = [/Failed to load layer/i, /not restoring image/i, /Pruned/, /failed to verify/i];

export function engineLogProblems(log: string): string[] {
  return log.split('\n').filter((l) => BAD_LOG_PATTERNS.some((re) => re.test(l)));
}

// ---- engine data root structure -------------------------------------------------

function readText(p: string): string | undefined {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return undefined;
  }
}

function listDir(p: string): string[] {
  try {
    return fs.readdirSync(p);
  } catch {
    return [];
  }
}

export function layerdbDir(engineRoot: string): string {
  return path.join(engineRoot, 'image', 'overlay2', 'layerdb');
}

/** ChainIDs of a list of DiffIDs, base first (layer/layer.go CreateChainID: parent + " " + diffID). */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev === undefined ? d : 'sha256:' + createHash('sha256').update(`${prev} ${d}`).digest('hex'));
  }
  return out;
}

function hexOf(id: string): string {
  return id.startsWith('sha256:') ? id.slice(7) : id;
}

/** The overlay2 directory name of a layer, or undefined when the engine root lacks that layer. */
export function layerCacheId(engineRoot: string, chainId: string): string | undefined {
  return readText(path.join(layerdbDir(engineRoot), 'sha256', hexOf(chainId), 'cache-id'));
}

/**
 * ChainID -> cache ID of every layer of these images in an engine root, as it is now (to check
 * afterwards that an injection reused them); throws when a layer is missing.
 */
export function layerCacheIds(engineRoot: string, images: readonly { diffIds: readonly string[] }[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const img of images) {
    for (const chain of chainIds([...img.diffIds])) {
      const id = layerCacheId(engineRoot, chain);
      if (id === undefined) throw new Error(`${engineRoot} has no layer ${chain}`);
      out.set(chain, id);
    }
  }
  return out;
}

/** The diff/ directory of a layer; throws when the layer is missing. */
export function layerDiffDir(engineRoot: string, chainId: string): string {
  const id = layerCacheId(engineRoot, chainId);
  if (id === undefined) throw new Error(`${engineRoot} has no layer ${chainId}`);
  return path.join(engineRoot, 'overlay2', id, 'diff');
}

/**
 * (d) overlay2 holds no directory that no layer or container uses, every layer's
 * directory exists, every `l/` link resolves and points at a layer, and every `lower`
 * names the links of the layer's ancestors, immediate parent first
 * (daemon/graphdriver/overlay2/overlay.go getLower).
 */
export function overlayProblems(engineRoot: string): string[] {
  const problems: string[] = [];
  const ov = path.join(engineRoot, 'overlay2');
  const db = layerdbDir(engineRoot);
  const used = new Set<string>();
  const layers = new Map<string, { cacheId: string; parent?: string }>();
  for (const hex of listDir(path.join(db, 'sha256'))) {
    const dir = path.join(db, 'sha256', hex);
    const cacheId = readText(path.join(dir, 'cache-id'));
    if (cacheId === undefined) {
      problems.push(`layerdb/sha256/${hex} has no cache-id`);
      continue;
    }
    const parent = readText(path.join(dir, 'parent'));
    layers.set(`sha256:${hex}`, { cacheId, parent });
    used.add(cacheId);
    if (!fs.existsSync(path.join(ov, cacheId, 'diff'))) problems.push(`layer sha256:${hex}: overlay2/${cacheId}/diff is missing`);
  }
  for (const m of listDir(path.join(db, 'mounts'))) {
    for (const f of ['mount-id', 'init-id']) {
      const id = readText(path.join(db, 'mounts', m, f));
      if (id !== undefined) used.add(id);
    }
  }
  for (const t of listDir(path.join(db, 'tmp'))) problems.push(`layerdb/tmp holds ${t} (the engine deletes it at start)`);

  const links = new Map<string, string>(); // link name -> cache id
  for (const name of listDir(ov)) {
    if (name === 'l') continue;
    if (!used.has(name)) problems.push(`overlay2/${name} is used by no layer or container (the engine deletes it)`);
    const link = readText(path.join(ov, name, 'link'));
    if (link === undefined) {
      problems.push(`overlay2/${name} has no link file`);
      continue;
    }
    links.set(link, name);
    const target = readLink(path.join(ov, 'l', link));
    if (target !== `../${name}/diff`) problems.push(`overlay2/l/${link} should point to ../${name}/diff but is ${target ?? 'missing'}`);
  }
  for (const l of listDir(path.join(ov, 'l'))) {
    const target = readLink(path.join(ov, 'l', l));
    if (target === undefined) {
      problems.push(`overlay2/l/${l} is not a symlink`);
      continue;
    }
    if (!fs.existsSync(path.join(ov, 'l', l) + '/')) problems.push(`overlay2/l/${l} -> ${target} does not resolve`);
    const m = /^\.\.\/([^/]+)\/diff$/.exec(target);
    if (!m || links.get(l) !== m[1]) problems.push(`overlay2/l/${l} -> ${target} is not the link of that directory`);
  }

  // lower files of layers.
  for (const [chainId, layer] of layers) {
    const lower = readText(path.join(ov, layer.cacheId, 'lower'));
    const expected: string[] = [];
    let p = layer.parent;
    let guard = 0;
    while (p !== undefined && guard++ < 1000) {
      const parent = layers.get(p);
      if (!parent) {
        problems.push(`layer ${chainId}: parent ${p} is not in layerdb`);
        break;
      }
      const link = readText(path.join(ov, parent.cacheId, 'link'));
      expected.push(`l/${link ?? '?'}`);
      p = parent.parent;
    }
    if (layer.parent === undefined) {
      if (lower !== undefined) problems.push(`base layer ${chainId} (overlay2/${layer.cacheId}) has a lower file`);
    } else if (lower !== expected.join(':')) {
      problems.push(`layer ${chainId}: overlay2/${layer.cacheId}/lower is ${JSON.stringify(lower)}, expected ${JSON.stringify(expected.join(':'))}`);
    }
  }
  return problems;
}

function readLink(p: string): string | undefined {
  try {
    return fs.readlinkSync(p);
  } catch {
    return undefined;
  }
}

/**
 * (e) No metadata file under layerdb, imagedb, repositories.json, overlay2 link/lower ends
 * with a newline (several are parsed without trimming: layer/filestore.go); and every
 * imagedb config hashes to its name (image/fs.go re-hashes on every read).
 */
export function metadataProblems(engineRoot: string): string[] {
  const problems: string[] = [];
  const check = (p: string): void => {
    const b = fs.readFileSync(p);
    if (b.length > 0 && (b[b.length - 1] === 0x0a || b[b.length - 1] === 0x0d)) {
      problems.push(`${path.relative(engineRoot, p)} ends with a newline`);
    }
  };
  const walk = (dir: string, fn: (p: string) => void): void => {
    for (const e of listDir(dir)) {
      const p = path.join(dir, e);
      const st = fs.lstatSync(p);
      if (st.isDirectory()) walk(p, fn);
      else if (st.isFile()) fn(p);
    }
  };
  const img = path.join(engineRoot, 'image', 'overlay2');
  walk(layerdbDir(engineRoot), (p) => {
    if (!p.endsWith('.gz')) check(p);
  });
  walk(path.join(img, 'imagedb', 'metadata'), check);
  const repos = path.join(img, 'repositories.json');
  if (fs.existsSync(repos)) {
    check(repos);
    try {
      JSON.parse(fs.readFileSync(repos, 'utf8'));
    } catch (e) {
      problems.push(`repositories.json is not JSON: ${(e as Error).message}`);
    }
  }
  for (const d of listDir(path.join(engineRoot, 'overlay2'))) {
    for (const f of ['link', 'lower']) {
      const p = path.join(engineRoot, 'overlay2', d, f);
      if (fs.existsSync(p)) check(p);
    }
  }
  const content = path.join(img, 'imagedb', 'content', 'sha256');
  for (const hex of listDir(content)) {
    const got = createHash('sha256').update(fs.readFileSync(path.join(content, hex))).digest('hex');
    if (got !== hex) problems.push(`imagedb/content/sha256/${hex} hashes to ${got}`);
  }
  return problems;
}

/** repositories.json as a map reference -> image ID (empty when absent). */
export function readRepositories(engineRoot: string): Map<string, string> {
  const out = new Map<string, string>();
  const text = readText(path.join(engineRoot, 'image', 'overlay2', 'repositories.json'));
  if (text === undefined) return out;
  const parsed = JSON.parse(text) as { Repositories?: Record<string, Record<string, string>> };
  for (const refs of Object.values(parsed.Repositories ?? {})) {
    for (const [ref, id] of Object.entries(refs)) out.set(ref, id);
  }
  return out;
}

/** The config JSON of an image in an engine root. */
export function readImageConfig(engineRoot: string, imageId: string): { rootfs: { diff_ids: string[] } } & Record<string, unknown> {
  const p = path.join(engineRoot, 'image', 'overlay2', 'imagedb', 'content', 'sha256', hexOf(imageId));
  return JSON.parse(fs.readFileSync(p, 'utf8')) as { rootfs: { diff_ids: string[] } } & Record<string, unknown>;
}
