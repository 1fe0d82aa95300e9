/**
 * A TreeWriter that writes a tar stream instead of a file system: an engine data root as
 * a tarball (what `tar -cf - /var/lib/docker` gives on a device), made by an unprivileged
 * user with every attribute intact. Layer content streams out as it is written; the
 * engine's metadata (small files, directories, links) is kept in memory, renamed there,
 * and written at close(), directories first.
 */
import type { Writable } from 'node:stream';
import type { LayerEntry } from '../layer/entry.js';
import { emptyHeader } from '../tar/header.js';
import { tarHeaderOf } from '../layer/tar-entry.js';
import { TarPacker } from '../tar/pack.js';
import type { FreeSpace, TreeWriter } from './tree-writer.js';

type Node =
  | { kind: 'directory'; mode: number }
  | { kind: 'file'; mode: number; data: Buffer }
  | { kind: 'symlink'; target: string };

export class TarTreeWriter implements TreeWriter {
  private readonly tar: TarPacker;
  private readonly nodes = new Map<string, Node>();
  /** Directories and files written as layer content (paths as given). */
  private readonly streamed = new Set<string>();
  private readonly mtime = BigInt(Date.now()) * 1_000_000n;
  private closed = false;

  constructor(
    out: Writable,
    /** Prefix of every name in the tarball, e.g. `var/lib/docker`. */
    private readonly prefix: string,
    readonly description = 'tarball',
  ) {
    this.tar = new TarPacker(out);
  }

  private name(p: string): string {
    return [this.prefix, p].filter(Boolean).join('/');
  }

  async readFile(p: string): Promise<Buffer | undefined> {
    const n = this.nodes.get(p);
    return n?.kind === 'file' ? n.data : undefined;
  }

  async readdir(p: string): Promise<string[] | undefined> {
    if (this.nodes.get(p)?.kind !== 'directory') return undefined;
    const prefix = p === '' ? '' : `${p}/`;
    const names = new Set<string>();
    for (const key of [...this.nodes.keys(), ...this.streamed]) {
      if (key.startsWith(prefix) && key.length > prefix.length) names.add(key.slice(prefix.length).split('/')[0]);
    }
    return [...names];
  }

  async kindOf(p: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined> {
    if (this.streamed.has(p)) return 'other';
    return this.nodes.get(p)?.kind;
  }

  async readlink(p: string): Promise<string | undefined> {
    const n = this.nodes.get(p);
    return n?.kind === 'symlink' ? n.target : undefined;
  }

  async freeSpace(): Promise<FreeSpace | undefined> {
    return undefined;
  }

  async mkdirp(p: string, mode: number): Promise<void> {
    const parts = p.split('/');
    for (let i = 1; i <= parts.length; i++) {
      const sub = parts.slice(0, i).join('/');
      if (!this.nodes.has(sub)) this.nodes.set(sub, { kind: 'directory', mode });
    }
  }

  async writeFile(p: string, data: Buffer, mode: number): Promise<void> {
    this.nodes.set(p, { kind: 'file', mode, data: Buffer.from(data) });
  }

  async symlink(target: string, p: string): Promise<void> {
    this.nodes.set(p, { kind: 'symlink', target });
  }

  async rename(from: string, to: string): Promise<void> {
    for (const [key, node] of [...this.nodes]) {
      if (key === from || key.startsWith(`${from}/`)) {
        this.nodes.delete(key);
        this.nodes.set(to + key.slice(from.length), node);
      }
    }
  }

  async remove(p: string): Promise<void> {
    for (const key of [...this.nodes.keys()]) if (key === p || key.startsWith(`${p}/`)) this.nodes.delete(key);
  }

  async writeEntry(root: string, entry: LayerEntry, content?: AsyncIterable<Buffer>): Promise<void> {
    const p = entry.path === '.' ? root : `${root}/${entry.path}`;
    if (entry.path === '.') this.nodes.delete(root);
    this.streamed.add(p);
    const header = tarHeaderOf(entry, this.name(p), this.name(`${root}/${entry.linkTarget ?? ''}`));
    await this.tar.add(header, content);
  }

  async finishTree(): Promise<void> {
    /* tar entries carry their own times */
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const keys = [...this.nodes.keys()].sort();
    for (const key of keys) {
      const node = this.nodes.get(key) as Node;
      const base = { ...emptyHeader(), name: this.name(key), mtime: this.mtime };
      if (node.kind === 'directory') await this.tar.add({ ...base, type: 'directory', mode: node.mode });
      else if (node.kind === 'symlink') await this.tar.add({ ...base, type: 'symlink', mode: 0o777, linkname: node.target });
      else await this.tar.add({ ...base, type: 'file', mode: node.mode, size: node.data.length }, node.data);
    }
    await this.tar.finish();
  }
}
