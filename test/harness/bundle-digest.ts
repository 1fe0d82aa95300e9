/**
 * A semantic description of a bundle, for comparing bundles made from different sources of
 * the same images: the manifest's images and layers, config and tar-split digests, and every
 * entry of every layer with every attribute and a content digest. Independent of entry order,
 * of which member of a hard-link group came first, of atime (which reading changes) and of
 * the creation time. Read with the project's tar parser (itself tested against GNU tar).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { TarParser } from '../../src/tar/parse.js';

interface EntryRecord {
  type: string;
  mode: string;
  owner: string;
  mtime: string;
  size: number;
  sha256?: string;
  link?: string;
  dev?: string;
  xattrs: string;
  hardlinkTo?: string;
}

export interface BundleDescription {
  images: string[];
  layers: string[];
  /** `layer <chain> path` -> every attribute, one line. */
  entries: Map<string, string>;
  /** Layer ChainIDs in the order their content appears. */
  contentOrder: string[];
}

export interface DescribeOptions {
  /** Include the manifest's `bytes` (sources that do not walk layers estimate it). */
  bytes?: boolean;
}

export async function describeBundle(file: string, opts: DescribeOptions = {}): Promise<BundleDescription> {
  const parser = new TarParser(createReadStream(file, { highWaterMark: 1 << 20 }));
  const records = new Map<string, EntryRecord>();
  const images: string[] = [];
  const layers: string[] = [];
  const contentOrder: string[] = [];
  try {
    for (;;) {
      const e = await parser.next();
      if (!e) break;
      const h = e.header;
      const hash = createHash('sha256');
      for await (const c of e.content) hash.update(c);
      const name = h.name.replace(/\/+$/, '');
      if (name === 'transplant-bundle.json') {
        const m = JSON.parse(await readText(file, name)) as {
          images: { id: string; references: string[]; chainIds: string[]; architecture: string; os: string; lastUpdated?: string }[];
          layers: { chainId: string; diffId: string; parent?: string; size: number; cacheId?: string; link?: string; hasTarSplit: boolean; entries: number; bytes: number }[];
        };
        for (const i of m.images) images.push(JSON.stringify({ ...i, references: [...i.references].sort() }));
        for (const l of m.layers) {
          const { bytes, ...rest } = l;
          layers.push(JSON.stringify(opts.bytes ? l : rest));
        }
        images.sort();
        layers.sort();
        continue;
      }
      if (name === 'transplant-bundle.end') continue;
      const m = /^layers\/([0-9a-f]{64})\/diff(?:\/(.*))?$/.exec(name);
      if (!m) {
        images.push(`${name} sha256=${hash.digest('hex')}`);
        continue;
      }
      const chain = m[1] as string;
      if (contentOrder[contentOrder.length - 1] !== chain) contentOrder.push(chain);
      const rel = m[2] ?? '.';
      const rec: EntryRecord = {
        type: h.type,
        mode: h.mode.toString(8).padStart(4, '0'),
        owner: `${h.uid}:${h.gid}`,
        mtime: h.mtime.toString(),
        size: h.type === 'file' ? h.size : 0,
        xattrs: h.xattrs.map((x) => `${x.name}=${x.value.toString('hex')}`).sort().join(' '),
      };
      if (h.type === 'file') rec.sha256 = hash.digest('hex');
      if (h.type === 'symlink') rec.link = h.linkname;
      if (h.type === 'char-device' || h.type === 'block-device') rec.dev = `${h.devmajor}:${h.devminor}`;
      if (h.type === 'hardlink') rec.hardlinkTo = `${chain} ${h.linkname.replace(/^layers\/[0-9a-f]{64}\/diff\//, '')}`;
      records.set(`${chain} ${rel}`, rec);
    }
  } finally {
    await parser.close();
  }
  // Hard links: every member of a group described by the file's attributes and the whole group.
  const groups = new Map<string, string[]>();
  for (const [key, r] of records) {
    if (r.hardlinkTo) {
      const g = groups.get(r.hardlinkTo) ?? [r.hardlinkTo];
      g.push(key);
      groups.set(r.hardlinkTo, g);
    }
  }
  const entries = new Map<string, string>();
  for (const [key, r] of records) {
    let rec = r;
    let group: string[] | undefined = groups.get(key);
    if (r.hardlinkTo) {
      const target = records.get(r.hardlinkTo);
      if (!target) throw new Error(`${file}: hard link ${key} points to ${r.hardlinkTo}, which is not in the bundle`);
      rec = { ...target };
      group = groups.get(r.hardlinkTo);
    }
    const { hardlinkTo: _h, ...attrs } = rec;
    entries.set(key, JSON.stringify({ ...attrs, type: group ? 'file' : attrs.type, links: group ? [...group].sort() : undefined }));
  }
  return { images, layers, entries, contentOrder };
}

async function readText(file: string, entryName: string): Promise<string> {
  const parser = new TarParser(createReadStream(file));
  try {
    for (;;) {
      const e = await parser.next();
      if (!e) throw new Error(`${file}: no ${entryName}`);
      if (e.header.name === entryName) {
        const parts: Buffer[] = [];
        for await (const c of e.content) parts.push(c);
        return Buffer.concat(parts).toString('utf8');
      }
    }
  } finally {
    await parser.close();
  }
}

/** Differences between two descriptions, one line each (empty when equal). */
export function compareBundles(a: BundleDescription, b: BundleDescription, names: [string, string] = ['a', 'b']): string[] {
  const out: string[] = [];
  const list = (x: string[], y: string[], what: string): void => {
    const sx = new Set(x);
    const sy = new Set(y);
    for (const v of x) if (!sy.has(v)) out.push(`${what} only in ${names[0]}: ${v}`);
    for (const v of y) if (!sx.has(v)) out.push(`${what} only in ${names[1]}: ${v}`);
  };
  list(a.images, b.images, 'image/config/tar-split');
  list(a.layers, b.layers, 'layer record');
  for (const [k, v] of a.entries) {
    const w = b.entries.get(k);
    if (w === undefined) out.push(`entry only in ${names[0]}: ${k}`);
    else if (w !== v) out.push(`entry ${k} differs:\n    ${names[0]}: ${v}\n    ${names[1]}: ${w}`);
  }
  for (const k of b.entries.keys()) if (!a.entries.has(k)) out.push(`entry only in ${names[1]}: ${k}`);
  return out;
}
