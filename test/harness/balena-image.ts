/**
 * Builds small balenaOS-like disk images with the real tools (sfdisk, mkfs.vfat,
 * mtools, mkfs.ext4), laid out like meta-balena's image_types_balena.bbclass:
 * MBR with p1 resin-boot, p2 resin-rootA, p3 resin-rootB, p4 extended, p5 resin-state,
 * p6 resin-data (logicals), or GPT with the same partitions named by label (data p5).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requireTools, run, runOk } from './exec.js';
import { giveToUser } from './cli.js';

export interface BalenaImageOptions {
  /** Partition table; default 'mbr'. */
  table?: 'mbr' | 'gpt';
  /** resin-data size in MiB; default 64. */
  dataMiB?: number;
  /** Tree copied into resin-data (mkfs.ext4 -d); default: docker/, resin-data/, remove_me_to_reset. */
  dataDir?: string;
  /** Extra mkfs.ext4 options for resin-data (e.g. ['-O', '^metadata_csum']). */
  dataMkfsArgs?: string[];
  /** A flasher image: flash-boot, flash-rootA, flash-rootB, flash-state and no data partition. */
  flasher?: boolean;
  /** For a flasher: the balenaOS image stored in flash-rootA as /opt/<name>.balenaos-img. */
  flasherInner?: string;
  /** Index resin-data's directories (e2fsck -fyD), making htree directories of large ones. */
  indexDirs?: boolean;
  deviceType?: { slug: string; arch: string };
}

export interface BalenaImage {
  path: string;
  table: 'mbr' | 'gpt';
  /** Partitions as sfdisk reports them: number, byte offset, byte size, label. */
  partitions: Array<{ index: number; offset: number; size: number; label: string }>;
  data?: { index: number; offset: number; size: number };
}

const MiB = 1024 * 1024;

export function requireImageTools(): void {
  requireTools('sfdisk', 'sgdisk', 'mkfs.vfat', 'mcopy', 'mkfs.ext4', 'e2fsck', 'resize2fs', 'dumpe2fs');
}

/** The default content of resin-data on a fresh balenaOS image. */
export function defaultDataDir(workDir: string, overlayDirs = 0): string {
  const d = path.join(workDir, 'data-tree');
  fs.mkdirSync(path.join(d, 'docker', 'overlay2', 'l'), { recursive: true, mode: 0o710 });
  for (let i = 0; i < overlayDirs; i++) fs.mkdirSync(path.join(d, 'docker', 'overlay2', `existing-layer-directory-${i}`, 'diff'), { recursive: true });
  fs.mkdirSync(path.join(d, 'docker', 'image', 'overlay2', 'layerdb', 'sha256'), { recursive: true });
  fs.writeFileSync(path.join(d, 'docker', 'image', 'overlay2', 'repositories.json'), '{"Repositories":{}}');
  fs.mkdirSync(path.join(d, 'resin-data'), { recursive: true });
  fs.writeFileSync(path.join(d, 'remove_me_to_reset'), '');
  return d;
}

/** Builds an image in `workDir` (created if needed) and returns where its partitions are. */
export function buildBalenaImage(workDir: string, name: string, opts: BalenaImageOptions = {}): BalenaImage {
  requireImageTools();
  fs.mkdirSync(workDir, { recursive: true });
  const table = opts.table ?? 'mbr';
  const dataMiB = opts.dataMiB ?? 64;
  const img = path.join(workDir, name);
  const prefix = opts.flasher ? 'flash' : 'resin';
  // sizes in MiB; 4 MiB alignment like balenaOS
  const innerMiB = opts.flasherInner ? Math.ceil(fs.statSync(opts.flasherInner).size / MiB) : 0;
  const parts = [
    { label: `${prefix}-boot`, mib: 12, kind: 'vfat' },
    { label: `${prefix}-rootA`, mib: 8 + Math.ceil((innerMiB * 1.1) / 4) * 4, kind: 'ext4' },
    { label: `${prefix}-rootB`, mib: 8, kind: 'ext4' },
    { label: `${prefix}-state`, mib: 4, kind: 'ext4' },
    ...(opts.flasher ? [] : [{ label: 'resin-data', mib: dataMiB, kind: 'ext4' }]),
  ];
  // MBR logicals each need an EBR in front: leave 4 MiB between them.
  const total = 4 + parts.reduce((n, p) => n + p.mib + 4, 0) + 4;
  fs.rmSync(img, { force: true });
  fs.writeFileSync(img, '');
  fs.truncateSync(img, total * MiB);

  const S = MiB / 512;
  let script: string;
  if (table === 'gpt') {
    let at = 4 * S;
    const lines = parts.map((p) => {
      const type = p.kind === 'vfat' ? 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7' : '0FC63DAF-8483-4772-8E79-3D69E4C7984F';
      const l = `start=${at}, size=${p.mib * S}, type=${type}, name="${p.label}"`;
      at += (p.mib + 4) * S;
      return l;
    });
    script = `label: gpt\n${lines.join('\n')}\n`;
  } else {
    let at = 4 * S;
    const lines: string[] = [];
    parts.forEach((p, i) => {
      if (i === 3) {
        // p4 extended to the end, then logicals each after a 4 MiB gap holding its EBR
        lines.push(`start=${at}, type=5`);
        at += 4 * S;
      }
      const type = p.kind === 'vfat' ? 'c' : '83';
      lines.push(`start=${at}, size=${p.mib * S}, type=${type}${i === 0 ? ', bootable' : ''}`);
      at += (p.mib + 4) * S;
    });
    script = `label: dos\n${lines.join('\n')}\n`;
  }
  runOk('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', img], { input: script });

  const layout = JSON.parse(runOk('sfdisk', ['-J', img]).stdout) as {
    partitiontable: { sectorsize?: number; partitions: Array<{ node: string; start: number; size: number; type: string }> };
  };
  const found = layout.partitiontable.partitions
    .map((p) => ({ index: Number(/(\d+)$/.exec(p.node)![1]), offset: p.start * 512, size: p.size * 512, type: p.type }))
    .filter((p) => !(table === 'mbr' && ['5', 'f', '85'].includes(p.type)));
  if (found.length !== parts.length) throw new Error(`harness: sfdisk made ${found.length} partitions, expected ${parts.length}`);

  const result: BalenaImage = { path: img, table, partitions: [] };
  const dt = opts.deviceType ?? { slug: 'raspberrypi4-64', arch: 'aarch64' };
  parts.forEach((p, i) => {
    const where = found[i];
    const fsFile = path.join(workDir, `${name}.p${where.index}`);
    fs.rmSync(fsFile, { force: true });
    if (p.kind === 'vfat') {
      fs.writeFileSync(fsFile, '');
      fs.truncateSync(fsFile, where.size);
      runOk('mkfs.vfat', ['-n', p.label, fsFile]);
      const dtJson = path.join(workDir, 'device-type.json');
      fs.writeFileSync(dtJson, JSON.stringify({ slug: dt.slug, arch: dt.arch, name: 'Test device', yocto: { deployArtifact: 'balena-image' } }));
      const cfg = path.join(workDir, 'config.json');
      fs.writeFileSync(cfg, JSON.stringify({ deviceType: dt.slug, hostname: 'balena' }));
      runOk('mcopy', ['-i', fsFile, dtJson, cfg, '::'], { env: { MTOOLS_SKIP_CHECK: '1' } });
    } else {
      const args = ['-q', '-F', '-L', p.label, '-E', 'root_owner=0:0'];
      if (p.label === 'resin-data') {
        args.push('-i', '8192', '-d', opts.dataDir ?? defaultDataDir(path.join(workDir, `${name}.tree`)), ...(opts.dataMkfsArgs ?? []));
      } else if (p.label === 'flash-rootA' && opts.flasherInner) {
        const tree = path.join(workDir, `${name}.rootA`);
        fs.rmSync(tree, { recursive: true, force: true });
        fs.mkdirSync(path.join(tree, 'opt'), { recursive: true });
        fs.linkSync(opts.flasherInner, path.join(tree, 'opt', 'balena-image-raspberrypi4-64.balenaos-img'));
        // Real flash-rootA partitions are large enough for 4 KiB blocks.
        args.push('-b', '4096', '-d', tree);
      } else {
        // Some content to find unchanged after partitions move.
        const tree = path.join(workDir, `${name}.${p.label}`);
        fs.rmSync(tree, { recursive: true, force: true });
        fs.mkdirSync(tree, { recursive: true });
        fs.writeFileSync(path.join(tree, 'marker'), `${p.label}\n`);
        args.push('-d', tree);
      }
      runOk('mkfs.ext4', [...args, fsFile, `${where.size / 1024}k`]);
      if (p.label === 'resin-data' && opts.indexDirs) {
        const r = run('e2fsck', ['-fyD', fsFile]);
        if (r.code > 1) throw new Error(`harness: e2fsck -fyD failed: ${r.stdout}${r.stderr}`);
      }
    }
    runOk('dd', [`if=${fsFile}`, `of=${img}`, 'bs=1M', `seek=${where.offset}`, 'oflag=seek_bytes', 'conv=notrunc,sparse', 'status=none']);
    fs.rmSync(fsFile, { force: true });
    result.partitions.push({ index: where.index, offset: where.offset, size: where.size, label: p.label });
    if (p.label === 'resin-data') result.data = { index: where.index, offset: where.offset, size: where.size };
  });
  return result;
}

/** Copies the partition holding [offset, offset+size) into its own file (for e2fsck, dumpe2fs). */
export function extractPartition(img: string, offset: number, size: number, to: string): string {
  fs.rmSync(to, { force: true });
  runOk('dd', [`if=${img}`, `of=${to}`, 'bs=1M', `skip=${offset}`, `count=${size}`, 'iflag=skip_bytes,count_bytes', 'conv=sparse', 'status=none']);
  return to;
}

/** Partitions as sfdisk -J reports them now (offset/size in bytes, GPT name when any). */
export function sfdiskPartitions(img: string): Array<{ index: number; offset: number; size: number; name?: string; type: string }> {
  const layout = JSON.parse(runOk('sfdisk', ['-J', img]).stdout) as {
    partitiontable: { partitions: Array<{ node: string; start: number; size: number; type: string; name?: string }> };
  };
  return layout.partitiontable.partitions.map((p) => ({
    index: Number(/(\d+)$/.exec(p.node)![1]), offset: p.start * 512, size: p.size * 512, name: p.name, type: p.type,
  }));
}

/**
 * A balenaOS-like image built in a scratch directory below `scratch` (resin-data made from
 * `opts.dataDir`), then moved to `userDir/name` and given to the unprivileged user.
 */
export function buildUserImage(scratch: string, userDir: string, name: string, opts: BalenaImageOptions): string {
  const buildDir = fs.mkdtempSync(path.join(scratch, 'build-'));
  const img = buildBalenaImage(buildDir, name, opts);
  const dest = path.join(userDir, name);
  fs.renameSync(img.path, dest);
  fs.rmSync(buildDir, { recursive: true, force: true });
  return giveToUser(dest);
}
