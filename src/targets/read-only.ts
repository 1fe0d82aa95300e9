/**
 * A TreeWriter that only reads: what a dry run plans against, so that planning needs no
 * work copy of a disk image and cannot change anything.
 */
import type { StoreReader } from '../sources/store-reader.js';
import type { FreeSpace, TreeWriter } from './tree-writer.js';

export class ReadOnlyTreeWriter implements TreeWriter {
  readonly description: string;

  constructor(
    private readonly reader: StoreReader & { readlink?: (p: string) => Promise<string | undefined>; close?: () => Promise<void> },
  ) {
    this.description = reader.description;
  }

  readFile(p: string): Promise<Buffer | undefined> {
    return this.reader.readFile(p);
  }
  readdir(p: string): Promise<string[] | undefined> {
    return this.reader.readdir(p);
  }
  kindOf(p: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined> {
    return this.reader.kindOf(p);
  }
  async readlink(p: string): Promise<string | undefined> {
    return this.reader.readlink?.(p);
  }
  async freeSpace(): Promise<FreeSpace | undefined> {
    return undefined;
  }

  private refuse(): never {
    throw new Error(`${this.description} is open read-only (a dry run writes nothing)`);
  }
  async mkdirp(): Promise<void> {
    this.refuse();
  }
  async writeFile(): Promise<void> {
    this.refuse();
  }
  async symlink(): Promise<void> {
    this.refuse();
  }
  async rename(): Promise<void> {
    this.refuse();
  }
  async remove(): Promise<void> {
    this.refuse();
  }
  async writeEntry(): Promise<void> {
    this.refuse();
  }
  async finishTree(): Promise<void> {
    this.refuse();
  }
  async close(): Promise<void> {
    await this.reader.close?.();
  }
}
