/** verify: checks an engine root, resin-data, disk image or bundle without an engine. */
import { promises as fs } from 'node:fs';
import { BundleSource } from '../bundle/read.js';
import { findEngineRoot } from '../sources/engine-root.js';
import { HostReader } from '../sources/store-reader.js';
import { verifyBundle, verifyEngineRoot, type VerifyReport } from '../verify/verify.js';
import { sniff } from '../sources/open.js';
import { TransplantError } from '../errors.js';
import { libraryCall, type RunOptions } from './options.js';

export interface VerifyOptions extends RunOptions {
  /** Check only these images (references, IDs or ID prefixes) and their layers. */
  image?: string[];
}

/**
 * What was checked and what is wrong. `ok` false is a store that does not hold: the call
 * resolves with the problems; it rejects only when the check could not run.
 */
export interface VerifyResult {
  target: string;
  ok: boolean;
  imageCount: number;
  layerCount: number;
  /** One line per problem; empty when everything holds. */
  problems: string[];
}

function result(r: VerifyReport): VerifyResult {
  return { target: r.target, ok: r.ok, imageCount: r.images, layerCount: r.layers, problems: r.problems };
}

async function verifyDirectory(dir: string, images: string[]): Promise<VerifyReport> {
  const reader = new HostReader(dir);
  const prefix = await findEngineRoot(reader);
  if (prefix === undefined) throw new Error(`${dir} does not hold an engine data root (looked for image/overlay2/ in it, in docker/ and in var/lib/docker/)`);
  return verifyEngineRoot(reader, prefix, { images });
}

async function verifyDisk(image: string, images: string[]): Promise<VerifyReport> {
  // The ext4 reader of the disk target; loaded lazily so that the rest works without it.
  const { DiskImageReader } = await import('../disk/read-only.js');
  const reader = await DiskImageReader.open(image, `${image}:resin-data`);
  try {
    const prefix = await findEngineRoot(reader);
    if (prefix === undefined) throw new Error(`${image}: its resin-data partition holds no engine data root (no docker/image/overlay2)`);
    return await verifyEngineRoot(reader, prefix, { images });
  } finally {
    await reader.close();
  }
}

async function verifyIn(target: string, images: string[]): Promise<VerifyReport> {
  let st;
  try {
    st = await fs.stat(target);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EACCES') throw new TransplantError('PERMISSION_DENIED', `${target}: permission denied: run as root`);
    throw new TransplantError('NOT_FOUND', `${target}: no such file or directory`);
  }
  if (st.isDirectory()) return verifyDirectory(target, images);
  const kind = await sniff(target);
  if (kind === 'disk-image') return verifyDisk(target, images);
  if (kind === 'bundle') {
    const bundle = await BundleSource.open(target);
    try {
      return await verifyBundle(bundle, { images });
    } finally {
      await bundle.close();
    }
  }
  throw new Error(`${target} is neither an engine data root, a resin-data directory, a balenaOS disk image nor a transplant bundle`);
}

/** Checks `target` as the engine would use it (what `transplant verify --json` prints). */
export async function verify(target: string, options: VerifyOptions = {}): Promise<VerifyResult> {
  return libraryCall(options, async () => result(await verifyIn(target, options.image ?? [])), target);
}
