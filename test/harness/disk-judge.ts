/**
 * Judging a balenaOS disk image after a write, with the real tools: sfdisk/sgdisk for the
 * partition table, e2fsck on a copy of resin-data, a kernel loop mount for everything an
 * engine has to read, mtools for resin-boot.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { extractPartition, sfdiskPartitions } from './balena-image.js';
import { requireTools, run, runOk } from './exec.js';

export function sha256File(file: string): string {
  return runOk('sha256sum', [file]).stdout.slice(0, 64);
}

/** Files in a directory, sorted (hidden ones included). */
export function listDir(dir: string): string[] {
  return fs.readdirSync(dir).sort();
}

export interface DataPartition {
  index: number;
  offset: number;
  size: number;
}

/**
 * resin-data as sfdisk sees it now: by GPT name, or (MBR, no names) the last partition that
 * is not the extended one (balenaOS keeps data last).
 */
export function dataPartition(img: string): DataPartition {
  const parts = sfdiskPartitions(img);
  const named = parts.find((p) => p.name === 'resin-data');
  if (named) return { index: named.index, offset: named.offset, size: named.size };
  const plain = parts.filter((p) => !['5', 'f', '85'].includes(p.type)).sort((a, b) => b.offset - a.offset);
  const last = plain[0];
  if (!last) throw new Error(`${img}: sfdisk finds no partition`);
  return { index: last.index, offset: last.offset, size: last.size };
}

/** sfdisk -V (and sgdisk -v for GPT) find nothing wrong with the table. */
export function tableProblems(img: string, table: 'mbr' | 'gpt'): string[] {
  requireTools('sfdisk', 'sgdisk');
  const problems: string[] = [];
  const v = run('sfdisk', ['-V', img]);
  if (v.code !== 0 || !/No errors detected/.test(v.stdout)) problems.push(`sfdisk -V: exit ${v.code}: ${(v.stdout + v.stderr).trim()}`);
  if (table === 'gpt') {
    const g = run('sgdisk', ['-v', img]);
    if (g.code !== 0 || !/No problems found/.test(g.stdout)) problems.push(`sgdisk -v: exit ${g.code}: ${(g.stdout + g.stderr).trim()}`);
  }
  return problems;
}

/** e2fsck -fn on a copy of the partition: '' when clean, else what it said. */
export function e2fsckProblems(img: string, part: DataPartition, scratch: string): string {
  requireTools('e2fsck', 'dd');
  const copy = extractPartition(img, part.offset, part.size, path.join(scratch, `fsck-${path.basename(img)}.ext4`));
  try {
    const r = run('e2fsck', ['-fn', copy], { timeoutMs: 300_000 });
    return r.code === 0 ? '' : `e2fsck -fn exited ${r.code}:\n${(r.stdout + r.stderr).trim().slice(0, 4000)}`;
  } finally {
    fs.rmSync(copy, { force: true });
  }
}

/** e2fsck -fn on a copy of resin-data is clean. */
export function assertE2fsckClean(img: string, scratch: string): void {
  const msg = e2fsckProblems(img, dataPartition(img), scratch);
  assert.equal(msg, '', `${img}: resin-data is not clean\n${msg}`);
}

/**
 * Loop-mounts resin-data of an image (read-write unless asked; the kernel's ext4 is the judge), runs fn
 * with the mount point, and always unmounts (detaching the loop device).
 */
export async function withMountedData<T>(
  img: string,
  scratch: string,
  fn: (mnt: string) => Promise<T> | T,
  opts: { readOnly?: boolean } = {},
): Promise<T> {
  requireTools('mount', 'umount');
  const part = dataPartition(img);
  const mnt = fs.mkdtempSync(path.join(scratch, 'mnt-'));
  // ro,noload: not even the journal is replayed, the image stays byte-for-byte as it is.
  const mode = opts.readOnly ? 'ro,noload,' : '';
  runOk('mount', ['-t', 'ext4', '-o', `${mode}loop,offset=${part.offset},sizelimit=${part.size}`, img, mnt]);
  try {
    return await fn(mnt);
  } finally {
    let r = run('umount', [mnt]);
    for (let i = 0; r.code !== 0 && i < 20; i++) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      r = run('umount', [mnt]);
    }
    if (r.code !== 0) run('umount', ['-l', mnt]);
    fs.rmdirSync(mnt);
  }
}

/** A file from the FAT partition at `offset` of an image, read with mtools (undefined when absent). */
export function mtoolsRead(img: string, offset: number, file: string): string | undefined {
  requireTools('mcopy');
  const r = run('mcopy', ['-n', '-i', `${img}@@${offset}`, `::/${file}`, '-'], { env: { MTOOLS_SKIP_CHECK: '1' } });
  return r.code === 0 ? r.stdout : undefined;
}

/** NetworkManager's own keyfile reader (Debian network-manager, nmcli >= 1.42 --offline): exit 0 when it accepts the keyfile. */
export function nmcliAccepts(keyfile: string): { code: number; stdout: string; stderr: string } {
  requireTools('nmcli');
  const id = /^id=(.*)$/m.exec(keyfile)?.[1] ?? 'x';
  return run('nmcli', ['--offline', 'connection', 'modify', 'connection.id', id], { input: keyfile, timeoutMs: 20_000 });
}
