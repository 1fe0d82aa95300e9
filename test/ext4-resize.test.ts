/**
 * Growing ext4 in-process (src/ext4/resize.ts), judged by e2fsprogs 1.47 and the kernel:
 * every growth runs as nobody with a PATH that reaches no e2fsprogs program; the result
 * is e2fsck -fn clean, laid out as resize2fs lays out the same starting file system
 * (compared byte for byte, or by dumpe2fs for the 20 GiB case), mounted by the kernel
 * with its files and the new free space, and grown again by resize2fs as a device does
 * at first boot. Refusals are one line and write nothing.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requireTools, run, runOk } from './harness/exec.js';
import { tempDir } from './harness/fixtures.js';
import { buildBalenaImage, extractPartition, requireImageTools } from './harness/balena-image.js';
import { dataPartition, tableProblems } from './harness/disk-judge.js';

requireImageTools();
requireTools('fallocate', 'mke2fs', 'e2fsck', 'resize2fs', 'dumpe2fs', 'debugfs', 'setpriv', 'mount', 'umount', 'df', 'cp', 'sha256sum');

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const NOW = 1_750_000_000; // stamped by both sides so the results compare byte for byte
const work = tempDir('transplant-ext4-resize-');
fs.chmodSync(work, 0o711);
const mounts: string[] = [];
after(() => {
  for (const m of mounts) run('umount', [m]);
});

/** A small tree for mke2fs -d: files in a few directories, a bigger file, a symlink. */
const content = (() => {
  const d = path.join(work, 'content');
  fs.mkdirSync(path.join(d, 'docker', 'overlay2', 'l'), { recursive: true });
  for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(d, 'docker', 'overlay2', `f${i}`), `file ${i}\n`.repeat(i + 1));
  fs.writeFileSync(path.join(d, 'big.bin'), Buffer.alloc(3 * MiB, 0x5a));
  fs.symlinkSync('../big.bin', path.join(d, 'docker', 'overlay2', 'l', 'link'));
  fs.writeFileSync(path.join(d, 'remove_me_to_reset'), '');
  return d;
})();

function sha256(file: string): string {
  return runOk('sha256sum', [file]).stdout.split(' ')[0] as string;
}

/** A file system made by mke2fs in a plain file of `bytes`. */
function mkfs(name: string, bytes: number, args: string[], withContent = true): string {
  const file = path.join(work, name);
  fs.rmSync(file, { force: true });
  fs.writeFileSync(file, '');
  fs.truncateSync(file, bytes);
  runOk('mke2fs', ['-q', '-F', '-t', 'ext4', ...args, ...(withContent ? ['-d', content] : []), file]);
  fs.chownSync(file, 65534, 65534);
  return file;
}

interface GrowReport {
  uid: number;
  path: string;
  e2fsprogs: string[];
  ms: number;
  result: { oldBlocks: number; newBlocks: number; oldGroups: number; newGroups: number; blockSize: number };
}

const USER_PATH = '/usr/bin:/bin';

/** Flushes what mke2fs and cp left in the page cache, so the timed growths below pay only for their own writes. */
function syncFile(file: string): void {
  const fd = fs.openSync(file, 'r');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}

function asUser(env: Record<string, string>): ReturnType<typeof run> {
  return run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, path.join(__dirname, 'harness', 'ext4-grow-as-user.js')], {
    env: { ...env, PATH: USER_PATH },
    timeoutMs: 600_000,
  });
}

/** Grows `file` (extended to `bytes` first) as nobody, with no e2fsprogs on PATH. */
function growAsUser(file: string, bytes: number): GrowReport {
  const old = fs.statSync(file).size;
  fs.truncateSync(file, bytes);
  syncFile(file);
  const r = asUser({ TRANSPLANT_GROW_MODE: 'fs', TRANSPLANT_GROW_FILE: file, TRANSPLANT_GROW_SIZE: String(bytes), TRANSPLANT_GROW_NOW: String(NOW), TRANSPLANT_GROW_ZERO_FROM: String(old) });
  assert.equal(r.code, 0, `growth as nobody failed:\n${r.stderr}`);
  const report = JSON.parse(r.stdout) as GrowReport;
  assert.equal(report.uid, 65534);
  assert.equal(report.path, USER_PATH, 'PATH holds neither /sbin nor /usr/sbin');
  assert.deepEqual(report.e2fsprogs, [], 'no e2fsprogs program is reachable through PATH');
  return report;
}

/** The same growth by resize2fs 1.47 on a copy (same time stamp, inode tables zeroed as ours are). */
function growWithResize2fs(before: string, name: string, bytes: number): { file: string; ms: number } {
  const file = path.join(work, name);
  fs.rmSync(file, { force: true });
  runOk('cp', ['--sparse=always', before, file]);
  fs.truncateSync(file, bytes);
  const t0 = process.hrtime.bigint();
  syncFile(file);
  // -f: a file system last mounted by the kernel has s_lastcheck < s_mtime (judged clean by e2fsck -fn before).
  runOk('resize2fs', ['-f', file], { env: { E2FSPROGS_FAKE_TIME: String(NOW), RESIZE2FS_FORCE_ITABLE_INIT: '1' }, timeoutMs: 600_000 });
  return { file, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}

function assertClean(file: string, what: string): void {
  const r = run('e2fsck', ['-fn', file], { timeoutMs: 600_000 });
  assert.equal(r.code, 0, `${what}: e2fsck -fn is not clean:\n${r.stdout}${r.stderr}`);
}

/** dumpe2fs without the lines that hold the write time, the lifetime write count and the superblock checksum. */
function dump(file: string): string[] {
  const r = runOk('dumpe2fs', [file], { timeoutMs: 300_000 });
  return r.stdout.split('\n').filter((l) => !/^(Last write time|Lifetime writes|Checksum):/.test(l));
}

function firstDifference(a: string[], b: string[]): string | undefined {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) return `line ${i + 1}:\n  ours:      ${a[i]}\n  resize2fs: ${b[i]}`;
  return undefined;
}

/**
 * Byte comparison of two grown file systems. Allowed to differ: s_kbytes_written (a
 * statistic of the writer's I/O) and so the superblock checksum, in every superblock copy.
 */
function byteDifferences(ours: string, theirs: string): string[] {
  const sb = Buffer.alloc(1024);
  const fdA = fs.openSync(ours, 'r');
  const fdB = fs.openSync(theirs, 'r');
  try {
    fs.readSync(fdA, sb, 0, 1024, 1024);
    const bs = 1024 << sb.readUInt32LE(0x18);
    const bpg = sb.readUInt32LE(0x20);
    const fdb = sb.readUInt32LE(0x14);
    // Where the superblock copy of the group holding `off` starts (block 0's copy sits at byte 1024).
    const allowed = (off: number): boolean => {
      const group = Math.floor((Math.floor(off / bs) - fdb) / bpg);
      const base = group <= 0 ? 1024 : (fdb + group * bpg) * bs;
      const inSb = off - base;
      return (inSb >= 0x178 && inSb < 0x180) || (inSb >= 0x3fc && inSb < 0x400);
    };
    const size = Math.max(fs.fstatSync(fdA).size, fs.fstatSync(fdB).size);
    const a = Buffer.alloc(4 * MiB);
    const b = Buffer.alloc(4 * MiB);
    const out: string[] = [];
    for (let pos = 0; pos < size && out.length < 10; pos += a.length) {
      a.fill(0);
      b.fill(0);
      fs.readSync(fdA, a, 0, a.length, pos);
      fs.readSync(fdB, b, 0, b.length, pos);
      if (a.equals(b)) continue;
      for (let i = 0; i < a.length && out.length < 10; i++) {
        if (a[i] !== b[i] && !allowed(pos + i)) out.push(`byte ${pos + i} (block ${Math.floor((pos + i) / bs)}): ours ${a[i]}, resize2fs ${b[i]}`);
      }
    }
    return out;
  } finally {
    fs.closeSync(fdA);
    fs.closeSync(fdB);
  }
}

/** Mounts a file system file read-only (kernel loop), checks the content and that df sees the size; returns df's free bytes. */
function assertMountable(file: string, what: string): void {
  const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
  runOk('mount', ['-t', 'ext4', '-o', 'loop,ro', file, mnt]);
  mounts.push(mnt);
  try {
    for (const f of ['big.bin', 'remove_me_to_reset', 'docker/overlay2/f0', 'docker/overlay2/f299']) {
      assert.equal(sha256(path.join(mnt, f)), sha256(path.join(content, f)), `${what}: ${f} as the kernel reads it`);
    }
    assert.equal(fs.readdirSync(path.join(mnt, 'docker', 'overlay2')).length, 301, `${what}: every directory entry`);
    assert.equal(fs.readlinkSync(path.join(mnt, 'docker/overlay2/l/link')), '../big.bin');
    const sb = Buffer.alloc(1024);
    const fd = fs.openSync(file, 'r');
    fs.readSync(fd, sb, 0, 1024, 1024);
    fs.closeSync(fd);
    const bs = 1024 << sb.readUInt32LE(0x18);
    const is64 = (sb.readUInt32LE(0x60) & 0x80) !== 0;
    const free = sb.readUInt32LE(0x0c) + (is64 ? sb.readUInt32LE(0x158) * 2 ** 32 : 0);
    const st = fs.statfsSync(mnt);
    // statfs' free blocks are the superblock's free blocks (less nothing: no delalloc on a read-only mount).
    assert.equal(st.bfree * st.bsize, free * bs, `${what}: the kernel sees the new free space`);
  } finally {
    runOk('umount', [mnt]);
    mounts.splice(mounts.indexOf(mnt), 1);
    fs.rmdirSync(mnt);
  }
}

interface Case {
  name: string;
  args: string[];
  from: number;
  to: number;
  /** Fill the file system to about this share of its blocks before growing. */
  fill?: number;
}

const matrix: Case[] = [
  { name: '4k-default', args: ['-b', '4096'], from: 48 * MiB, to: 700 * MiB },
  { name: '1k-default', args: ['-b', '1024'], from: 48 * MiB, to: 700 * MiB },
  { name: '2k-default', args: ['-b', '2048'], from: 48 * MiB, to: 700 * MiB },
  { name: '4k-no-metadata_csum-uninit_bg', args: ['-b', '4096', '-O', '^metadata_csum,uninit_bg'], from: 48 * MiB, to: 700 * MiB },
  { name: '1k-no-metadata_csum-uninit_bg', args: ['-b', '1024', '-O', '^metadata_csum,uninit_bg'], from: 48 * MiB, to: 700 * MiB },
  { name: '4k-no-checksums', args: ['-b', '4096', '-O', '^metadata_csum,^uninit_bg'], from: 48 * MiB, to: 700 * MiB },
  { name: '1k-no-checksums', args: ['-b', '1024', '-O', '^metadata_csum,^uninit_bg'], from: 48 * MiB, to: 700 * MiB },
  { name: '4k-32bit', args: ['-b', '4096', '-O', '^64bit'], from: 48 * MiB, to: 700 * MiB },
  { name: '1k-32bit-no-metadata_csum', args: ['-b', '1024', '-O', '^64bit,^metadata_csum'], from: 48 * MiB, to: 700 * MiB },
  { name: '4k-no-flex_bg', args: ['-b', '4096', '-O', '^flex_bg'], from: 48 * MiB, to: 700 * MiB },
  { name: '1k-no-flex_bg', args: ['-b', '1024', '-O', '^flex_bg'], from: 48 * MiB, to: 700 * MiB },
  { name: '4k-flex_bg-4', args: ['-b', '4096', '-G', '4'], from: 48 * MiB, to: 700 * MiB },
  { name: '4k-no-resize_inode', args: ['-b', '4096', '-O', '^resize_inode'], from: 48 * MiB, to: 700 * MiB },
  { name: '4k-no-resize_inode-no-sparse_super', args: ['-b', '4096', '-O', '^resize_inode,^sparse_super'], from: 48 * MiB, to: 700 * MiB },
  { name: '4k-128-byte-inodes', args: ['-b', '4096', '-I', '128'], from: 48 * MiB, to: 700 * MiB },
  { name: '4k-ext2-like', args: ['-b', '4096', '-O', '^has_journal,^extent,^huge_file,^flex_bg,^metadata_csum,^64bit,^dir_nlink,^extra_isize'], from: 48 * MiB, to: 700 * MiB },
  { name: '4k-few-inodes', args: ['-b', '4096', '-N', '512'], from: 48 * MiB, to: 700 * MiB },
  { name: '1k-nearly-full', args: ['-b', '1024'], from: 48 * MiB, to: 300 * MiB, fill: 0.97 },
  { name: '4k-nearly-full', args: ['-b', '4096'], from: 48 * MiB, to: 300 * MiB, fill: 0.97 },
  { name: '4k-nearly-full-no-flex_bg', args: ['-b', '4096', '-O', '^flex_bg'], from: 48 * MiB, to: 300 * MiB, fill: 0.97 },
  { name: '4k-within-last-group', args: ['-b', '4096'], from: 40 * MiB, to: 44 * MiB },
];

/** Fills a file system (as root, through a kernel mount) to `share` of its blocks. */
function fill(file: string, share: number): void {
  const mnt = fs.mkdtempSync(path.join(work, 'fill-'));
  runOk('mount', ['-t', 'ext4', '-o', 'loop', file, mnt]);
  mounts.push(mnt);
  try {
    const st = fs.statfsSync(mnt);
    const want = Math.floor(st.blocks * share) - (st.blocks - st.bfree);
    if (want > 0) runOk('fallocate', ['-l', String(want * st.bsize), path.join(mnt, 'filler')]);
  } finally {
    runOk('umount', [mnt]);
    mounts.splice(mounts.indexOf(mnt), 1);
    fs.rmdirSync(mnt);
  }
  // The kernel's unmount leaves s_lastcheck < s_mtime, as on a device: the growth must not mind.
  assertClean(file, 'after filling');
}

describe('ext4 growth in-process: the mke2fs matrix, judged against resize2fs', () => {
  for (const c of matrix) {
    test(`${c.name}: ${c.from / MiB} MiB -> ${c.to / MiB} MiB`, () => {
      const file = mkfs(`${c.name}.img`, c.from, c.args);
      if (c.fill) fill(file, c.fill);
      const before = path.join(work, `${c.name}.before`);
      runOk('cp', ['--sparse=always', file, before]);
      const report = growAsUser(file, c.to);
      assert.ok(report.result.newBlocks > report.result.oldBlocks, 'it grew');
      assertClean(file, c.name);
      const ref = growWithResize2fs(before, `${c.name}.resize2fs`, c.to);
      assert.equal(firstDifference(dump(file), dump(ref.file)), undefined, 'dumpe2fs differs from what resize2fs makes');
      assert.deepEqual(byteDifferences(file, ref.file), [], 'bytes differ from what resize2fs writes');
      assertMountable(file, c.name);
      // A device's first boot: the partition grows again and resize2fs grows the file system.
      // Without -f resize2fs checks the state itself; a file system the kernel mounted (fill) needs -f.
      fs.truncateSync(file, c.to + 200 * MiB);
      runOk('resize2fs', c.fill ? ['-f', file] : [file]);
      assertClean(file, `${c.name} after resize2fs`);
      for (const f of [file, before, ref.file]) fs.rmSync(f, { force: true });
    });
  }
});

describe('ext4 growth in-process: a 192 MiB resin-data grown to 2 GiB and to 20 GiB, then by resize2fs as at first boot', () => {
  for (const [blocks, to, then] of [
    ['1024', 2 * GiB, 8 * GiB],
    ['4096', 2 * GiB, 8 * GiB],
    ['1024', 20 * GiB, 40 * GiB],
    ['4096', 20 * GiB, 64 * GiB],
  ] as const) {
    test(`${blocks}-byte blocks: 192 MiB -> ${to / GiB} GiB -> (resize2fs) ${then / GiB} GiB`, (t) => {
      const name = `resin-data-${blocks}-${to / GiB}g`;
      const file = mkfs(`${name}.img`, 192 * MiB, ['-b', blocks, '-L', 'resin-data']);
      const before = path.join(work, `${name}.before`);
      runOk('cp', ['--sparse=always', file, before]);
      const report = growAsUser(file, to);
      assertClean(file, name);
      const ref = growWithResize2fs(before, `${name}.resize2fs`, to);
      assert.equal(firstDifference(dump(file), dump(ref.file)), undefined, 'dumpe2fs differs from what resize2fs makes');
      if (to <= 2 * GiB) assert.deepEqual(byteDifferences(file, ref.file), [], 'bytes differ from what resize2fs writes');
      t.diagnostic(`${name}: ${report.result.oldGroups} -> ${report.result.newGroups} groups; in-process ${report.ms.toFixed(0)} ms, resize2fs ${ref.ms.toFixed(0)} ms; disk used ${(fs.statSync(file).blocks * 512) / MiB} MiB vs ${(fs.statSync(ref.file).blocks * 512) / MiB} MiB`);
      fs.rmSync(ref.file, { force: true });
      fs.rmSync(before, { force: true });
      assertMountable(file, name);
      fs.truncateSync(file, then);
      runOk('resize2fs', [file], { timeoutMs: 600_000 });
      assertClean(file, `${name} after resize2fs to ${then / GiB} GiB`);
      assertMountable(file, `${name} after resize2fs`);
      fs.rmSync(file, { force: true });
    });
  }
});

/** Runs a growth as nobody that must be refused: one `error:` line naming `reason`, the file unchanged. */
function assertRefused(file: string, bytes: number, reason: RegExp): void {
  const old = fs.statSync(file).size;
  if (bytes > old) fs.truncateSync(file, bytes);
  const hash = sha256(file);
  const r = asUser({ TRANSPLANT_GROW_MODE: 'fs', TRANSPLANT_GROW_FILE: file, TRANSPLANT_GROW_SIZE: String(bytes), TRANSPLANT_GROW_ZERO_FROM: String(old) });
  assert.equal(r.code, 1, `refused with exit 1\n${r.stdout}${r.stderr}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `one line:\n${r.stderr}`);
  assert.match(lines[0] as string, /^error: \S/);
  assert.match(lines[0] as string, reason);
  assert.equal(sha256(file), hash, 'nothing written');
}

function debugfsWrite(file: string, ...requests: string[]): void {
  for (const req of requests) runOk('debugfs', ['-w', '-R', req, file]);
}

describe('ext4 growth in-process: what it refuses, with one line and no write', () => {
  test('more group descriptor blocks than reserved (small -E resize=), and none reserved (no resize_inode)', () => {
    const small = mkfs('few-reserved.img', 48 * MiB, ['-b', '1024', '-E', 'resize=300000']); // 2 reserved GDT blocks; 88 groups need 5 more
    assertRefused(small, 700 * MiB, /more group descriptor block\(s\) but only \d+ are reserved/);
    const none = mkfs('no-resize-inode.img', 48 * MiB, ['-b', '1024', '-O', '^resize_inode']);
    assertRefused(none, 700 * MiB, /no resize_inode/);
  });

  for (const [feature, args] of [
    ['meta_bg', ['-O', '^resize_inode,meta_bg']],
    ['bigalloc', ['-O', 'bigalloc', '-C', '16384']],
    ['inline_data', ['-O', 'inline_data']],
    ['sparse_super2', ['-O', 'sparse_super2']],
    ['quota', ['-O', 'quota']],
    ['mmp', ['-O', 'mmp']],
  ] as const) {
    test(`a file system with ${feature}`, () => {
      const file = mkfs(`feature-${feature}.img`, 64 * MiB, ['-b', '4096', ...args], false);
      assertRefused(file, 512 * MiB, new RegExp(`features transplant cannot grow \\(.*${feature}`));
    });
  }

  test('not cleanly unmounted, errors recorded, a journal to recover, orphans', () => {
    const cases: Array<[string, string[], RegExp]> = [
      ['state-dirty', ['ssv state 0'], /not cleanly unmounted/],
      ['state-error', ['ssv state 3'], /not cleanly unmounted or has errors/],
      ['recover', ['feature needs_recovery'], /needs_recovery|journal needs recovery/],
      ['orphans', ['ssv last_orphan 12'], /orphan/],
    ];
    for (const [name, reqs, reason] of cases) {
      const file = mkfs(`unclean-${name}.img`, 64 * MiB, ['-b', '4096']);
      debugfsWrite(file, ...reqs);
      assertRefused(file, 512 * MiB, reason);
    }
  });

  test('hostile: damaged superblock, descriptor, bitmaps, resize inode', () => {
    const patch = (name: string, at: (sb: Buffer) => number, bytes: Buffer) => {
      const file = mkfs(`hostile-${name}.img`, 64 * MiB, ['-b', '4096']);
      const fd = fs.openSync(file, 'r+');
      const sb = Buffer.alloc(1024);
      fs.readSync(fd, sb, 0, 1024, 1024);
      fs.writeSync(fd, bytes, 0, bytes.length, at(sb));
      fs.closeSync(fd);
      return file;
    };
    // One flipped byte in the superblock: its checksum no longer matches.
    assertRefused(patch('sb', () => 1024 + 0x100, Buffer.from([0x55])), 512 * MiB, /superblock checksum is wrong/);
    // A descriptor's block bitmap moved: its checksum no longer matches.
    assertRefused(patch('desc', () => 4096 + 0, Buffer.from([0x77])), 512 * MiB, /group descriptor 0 has a wrong checksum/);
    // A block bitmap claiming free blocks that files use (used blocks cleared).
    const file = mkfs('hostile-bitmap.img', 64 * MiB, ['-b', '4096']);
    const bb = Number(/Block bitmap at (\d+)/.exec(runOk('dumpe2fs', [file]).stdout)![1]);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, Buffer.alloc(64), 0, 64, bb * 4096 + 64);
    fs.closeSync(fd);
    assertRefused(file, 512 * MiB, /block bitmap of group 0 has a wrong checksum/);
    // The same without metadata_csum: the bitmap no longer matches the free count.
    const plain = mkfs('hostile-bitmap-plain.img', 64 * MiB, ['-b', '4096', '-O', '^metadata_csum,^uninit_bg']);
    const bb2 = Number(/Block bitmap at (\d+)/.exec(runOk('dumpe2fs', [plain]).stdout)![1]);
    const fd2 = fs.openSync(plain, 'r+');
    fs.writeSync(fd2, Buffer.alloc(64), 0, 64, bb2 * 4096 + 64);
    fs.closeSync(fd2);
    assertRefused(plain, 512 * MiB, /block bitmap of group 0 does not match its free block count/);
    // The resize inode without its double-indirect block (where the reserved GDT blocks are listed).
    const ri = mkfs('hostile-resize-inode.img', 64 * MiB, ['-b', '4096', '-I', '256']);
    const itable = Number(/Inode table at (\d+)/.exec(runOk('dumpe2fs', [ri]).stdout)![1]);
    const fd3 = fs.openSync(ri, 'r+');
    fs.writeSync(fd3, Buffer.alloc(4), 0, 4, itable * 4096 + 6 * 256 + 0x28 + 13 * 4);
    fs.closeSync(fd3);
    assertRefused(ri, 512 * MiB, /resize inode is damaged/);
    // Not ext4 at all.
    const zero = path.join(work, 'zeros.img');
    fs.writeFileSync(zero, Buffer.alloc(4 * MiB));
    fs.chownSync(zero, 65534, 65534);
    assertRefused(zero, 64 * MiB, /no ext4 file system/);
  });

  test('a smaller partition is refused (growth only)', () => {
    const file = mkfs('shrink.img', 64 * MiB, ['-b', '4096']);
    assertRefused(file, 32 * MiB, /smaller than the file system/);
  });
});

describe('the disk path grows with no e2fsprogs at run time', () => {
  test('no file under src/disk or src/ext4 starts a program (no child_process), and grow.ts names no e2fsprogs program', () => {
    const root = path.join(__dirname, '..', '..', 'src');
    for (const dir of ['disk', 'ext4']) {
      for (const f of fs.readdirSync(path.join(root, dir))) {
        const text = fs.readFileSync(path.join(root, dir, f), 'utf8');
        assert.doesNotMatch(text, /child_process/, `src/${dir}/${f} starts programs`);
      }
    }
    const grow = fs.readFileSync(path.join(root, 'disk', 'grow.ts'), 'utf8');
    assert.doesNotMatch(grow, /spawn|exec|findTool|'e2fsck'|'resize2fs'/);
  });

  test('a resin-data without resize_inode that would need more descriptor blocks: one line, the image unchanged, no work copy left', () => {
    const dir = path.join(work, 'disk-refused');
    const img = buildBalenaImage(dir, 'refused.img', { table: 'mbr', dataMiB: 16, dataMkfsArgs: ['-b', '1024', '-O', '^resize_inode'] });
    fs.chownSync(dir, 65534, 65534);
    fs.chownSync(img.path, 65534, 65534);
    const hash = sha256(img.path);
    const files = fs.readdirSync(dir).sort();
    const r = asUser({ TRANSPLANT_GROW_MODE: 'disk', TRANSPLANT_GROW_IMAGE: img.path, TRANSPLANT_GROW_BYTES: String(300 * MiB) });
    assert.equal(r.code, 1, r.stdout + r.stderr);
    const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0] as string, /^error: refused\.img:resin-data: growing to \d+ blocks needs \d+ more group descriptor block\(s\) and the file system has no resize_inode/);
    assert.equal(sha256(img.path), hash, 'the image is unchanged');
    assert.deepEqual(fs.readdirSync(dir).sort(), files, 'no work copy left');
  });

  for (const kind of ['mbr', 'gpt'] as const) {
    test(`${kind}: ensureRoom grows a balenaOS image's resin-data as nobody with PATH=${USER_PATH}; then resize2fs grows it again as the device does`, () => {
      const dir = path.join(work, `disk-${kind}`);
      const img = buildBalenaImage(dir, 'grow.img', { table: kind, dataMiB: 16 });
      fs.chownSync(dir, 65534, 65534);
      fs.chownSync(img.path, 65534, 65534);
      const before = dataPartition(img.path);
      const r = asUser({ TRANSPLANT_GROW_MODE: 'disk', TRANSPLANT_GROW_IMAGE: img.path, TRANSPLANT_GROW_BYTES: String(300 * MiB) });
      assert.equal(r.code, 0, r.stderr);
      const report = JSON.parse(r.stdout) as { uid: number; e2fsprogs: string[]; result: { grewBy: number } };
      assert.equal(report.uid, 65534);
      assert.deepEqual(report.e2fsprogs, []);
      assert.ok(report.result.grewBy > 300 * MiB, `grew by ${report.result.grewBy}`);
      assert.deepEqual(fs.readdirSync(dir).filter((n) => n.includes('.transplant') || n.includes('.resize')), [], 'no work or side copy left');
      const after = dataPartition(img.path);
      assert.equal(after.offset, before.offset);
      assert.ok(after.size > before.size + 300 * MiB);
      assert.deepEqual(tableProblems(img.path, kind), []);
      const part = extractPartition(img.path, after.offset, after.size, path.join(work, `disk-${kind}-data.img`));
      assertClean(part, `${kind} resin-data`);
      const sb = Buffer.alloc(1024);
      const fd = fs.openSync(part, 'r');
      fs.readSync(fd, sb, 0, 1024, 1024);
      fs.closeSync(fd);
      const bs = 1024 << sb.readUInt32LE(0x18);
      assert.ok(sb.readUInt32LE(4) * bs > after.size - 8 * MiB, 'the file system fills the grown partition');
      // First boot: the partition reaches the end of the card, resize2fs grows the file system.
      fs.truncateSync(part, after.size + 1 * GiB);
      runOk('resize2fs', [part]);
      assertClean(part, `${kind} resin-data after resize2fs`);
      fs.rmSync(part, { force: true });
    });
  }
});
