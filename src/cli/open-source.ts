/**
 * Opens whatever a user names as a source of images, deciding by content, not by name:
 * a directory holding an engine data root, or a bundle file.
 */
import { promises as fs } from 'node:fs';
import { BundleSource } from '../bundle/read.js';
import { EngineRootSource } from '../sources/engine-root.js';
import type { ImageSource } from '../sources/source.js';

export type SourceKind = 'engine-root' | 'bundle' | 'disk-image' | 'unknown';

/** Looks at a path's type and first bytes. */
export async function sniff(file: string): Promise<SourceKind> {
  if (file === '-') return 'bundle';
  let st;
  try {
    st = await fs.stat(file);
  } catch {
    throw new Error(`${file}: no such file or directory`);
  }
  if (st.isDirectory()) return 'engine-root';
  const fh = await fs.open(file, 'r');
  try {
    const head = Buffer.alloc(1024);
    const { bytesRead } = await fh.read(head, 0, 1024, 0);
    const b = head.subarray(0, bytesRead);
    if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) return 'bundle';
    if (b.length >= 512 && b.toString('latin1', 257, 262) === 'ustar') return 'bundle';
    if (b.length >= 512 && b[510] === 0x55 && b[511] === 0xaa) return 'disk-image';
    return 'unknown';
  } finally {
    await fh.close();
  }
}

export async function openSource(file: string): Promise<ImageSource> {
  const kind = await sniff(file);
  switch (kind) {
    case 'engine-root':
      return EngineRootSource.open(file);
    case 'bundle':
      return BundleSource.open(file);
    case 'disk-image':
      throw new Error(`${file} is a disk image; use it as a target (--disk) or list it with transplant ls`);
    default:
      throw new Error(`${file} is neither an engine data root directory nor a transplant bundle`);
  }
}
