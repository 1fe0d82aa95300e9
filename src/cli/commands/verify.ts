/** transplant verify: checks an engine root, resin-data, disk image or bundle without an engine. */
import { promises as fs } from 'node:fs';
import { BundleSource } from '../../bundle/read.js';
import { findEngineRoot } from '../../sources/engine-root.js';
import { HostReader } from '../../sources/store-reader.js';
import { verifyBundle, verifyEngineRoot, type VerifyReport } from '../../verify/verify.js';
import { sniff } from '../open-source.js';
import type { Output } from '../output.js';

export interface VerifyCommandOptions {
  image: string[];
  json?: boolean;
}

async function verifyDirectory(dir: string, images: string[]): Promise<VerifyReport> {
  const reader = new HostReader(dir);
  const prefix = await findEngineRoot(reader);
  if (prefix === undefined) throw new Error(`${dir} does not hold an engine data root (looked for image/overlay2/ in it, in docker/ and in var/lib/docker/)`);
  return verifyEngineRoot(reader, prefix, { images });
}

async function verifyDisk(image: string, images: string[]): Promise<VerifyReport> {
  // The ext4 reader of the disk target; loaded lazily so that the rest works without it.
  const { DiskImageReader } = await import('../../disk/read-only.js');
  const reader = await DiskImageReader.open(image, `${image}:resin-data`);
  try {
    const prefix = await findEngineRoot(reader);
    if (prefix === undefined) throw new Error(`${image}: its resin-data partition holds no engine data root (no docker/image/overlay2)`);
    return await verifyEngineRoot(reader, prefix, { images });
  } finally {
    await reader.close();
  }
}

export function formatReport(r: VerifyReport): string {
  const head = `${r.target}: ${r.images} image(s), ${r.layers} layer(s) checked`;
  if (r.ok) return `${head}: OK`;
  return [`${head}: ${r.problems.length} problem(s)`, ...r.problems.map((p) => `  ${p}`)].join('\n');
}

export async function verifyCommand(target: string, opts: VerifyCommandOptions, out: Output): Promise<void> {
  let st;
  try {
    st = await fs.stat(target);
  } catch {
    throw new Error(`${target}: no such file or directory`);
  }
  let report: VerifyReport;
  if (st.isDirectory()) report = await verifyDirectory(target, opts.image);
  else {
    const kind = await sniff(target);
    if (kind === 'disk-image') report = await verifyDisk(target, opts.image);
    else if (kind === 'bundle') {
      const bundle = await BundleSource.open(target);
      try {
        report = await verifyBundle(bundle, { images: opts.image });
      } finally {
        await bundle.close();
      }
    } else throw new Error(`${target} is neither an engine data root, a resin-data directory, a balenaOS disk image nor a transplant bundle`);
  }
  out.data(report, () => formatReport(report));
  if (!report.ok) throw new Error(`verification of ${report.target} failed: ${report.problems[0]}${report.problems.length > 1 ? ` (and ${report.problems.length - 1} more)` : ''}`);
}
