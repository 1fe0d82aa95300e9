/**
 * Writing straight into a balenaOS disk image: partitions found by label, the ext4
 * TreeWriter (every entry kind and attribute), growth, abort, refusal. Judges:
 * e2fsck -fn, sfdisk -V, sgdisk -v, a kernel loop mount read with find/stat/getfattr.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { estimateRoom, openDiskTarget, readDeviceArch, inspectBalenaImage } from '../src/disk/disk-target.js';
import { crc32c } from '../src/ext4/crc32c.js';
import type { LayerEntry } from '../src/layer/entry.js';
import { encodeTime } from '../src/ext4/inode.js';
import { ImageFile } from '../src/ext4/image-file.js';
import { readPartitionTable } from '../src/disk/partition-table.js';
import { buildBalenaImage, defaultDataDir, extractPartition, requireImageTools, sfdiskPartitions, type BalenaImage } from './harness/balena-image.js';
import { compareMounted, fullTree, writeTree } from './harness/layer-tree.js';
import { requireTools, run, runOk } from './harness/exec.js';
import { tempDir } from './harness/fixtures.js';

requireImageTools();
requireTools('getfattr', 'setpriv', 'mount', 'umount', 'find', 'stat', 'dd');

const work = tempDir('transplant-ext4-');
const mounts: string[] = [];
after(() => {
  for (const m of mounts) run('umount', [m]);
});

function sha256File(p: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(p, 'r');
  const buf = Buffer.allocUnsafe(1024 * 1024);
  for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  fs.closeSync(fd);
  return h.digest('hex');
}

function dataPartition(img: string): { offset: number; size: number } {
  const t = readPartitionTable(ImageFile.open(img, false))!;
  const p = t.partitions.find((x) => x.label === 'resin-data')!;
  return { offset: p.offset, size: p.size };
}

/** e2fsck -fn on a copy of the data partition; returns its output when not clean. */
function fsck(img: string): string | undefined {
  const { offset, size } = dataPartition(img);
  const copy = extractPartition(img, offset, size, path.join(work, `fsck-${process.pid}.img`));
  const r = run('e2fsck', ['-fn', copy]);
  fs.rmSync(copy, { force: true });
  return r.code === 0 ? undefined : r.stdout + r.stderr;
}

function tableCheck(img: string, kind: 'mbr' | 'gpt'): void {
  const r = kind === 'gpt' ? run('sgdisk', ['-v', img]) : run('sfdisk', ['-V', img]);
  assert.equal(r.code, 0, `partition table check failed: ${r.stdout}${r.stderr}`);
  if (kind === 'gpt') assert.match(r.stdout, /No problems found/);
  else assert.match(r.stdout, /No errors detected/);
}

function mountData(img: string): string {
  const { offset, size } = dataPartition(img);
  const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
  runOk('mount', ['-t', 'ext4', '-o', `loop,ro,offset=${offset},sizelimit=${size}`, img, mnt]);
  mounts.push(mnt);
  return mnt;
}

function unmount(mnt: string): void {
  runOk('umount', [mnt]);
  mounts.splice(mounts.indexOf(mnt), 1);
}

describe('ext4 format helpers', () => {
  test('crc32c matches the Castagnoli check value (with the usual inversions done outside)', () => {
    assert.equal((crc32c(0xffffffff, Buffer.from('123456789')) ^ 0xffffffff) >>> 0, 0xe3069283);
  });
  test('times: ns << 2 | epoch bits, signed 32-bit seconds', () => {
    assert.deepEqual(encodeTime(1_700_000_000_123_456_789n), { seconds: 1_700_000_000, extra: 123_456_789 * 4 });
    assert.deepEqual(encodeTime((2n ** 31n + 5n) * 1_000_000_000n), { seconds: 2 ** 31 + 5, extra: 1 });
    assert.deepEqual(encodeTime(-1_500_000_000n), { seconds: 2 ** 32 - 2, extra: 500_000_000 * 4 });
  });
});

describe('writing into a balenaOS image', () => {
  for (const kind of ['mbr', 'gpt'] as const) {
    test(`${kind}: every entry kind and attribute lands as the kernel expects`, async () => {
      const img = buildBalenaImage(path.join(work, kind), `balena-${kind}.img`, { table: kind, dataMiB: 64 });
      assert.deepEqual(await readDeviceArch(img.path), { arch: 'aarch64', slug: 'raspberrypi4-64' });
      const tree = await fullTree(3000);
      const target = await openDiskTarget(img.path);
      assert.equal(target.tableKind, kind);
      assert.equal(target.bootImagePath, target.workPath);
      assert.equal(target.partition.offset, img.data!.offset);
      assert.equal(await target.writer.kindOf('remove_me_to_reset'), 'file');
      assert.deepEqual((await target.writer.readdir('docker'))?.sort(), ['image', 'overlay2']);
      const before = await target.writer.freeSpace();
      assert.ok(before && before.bytes > 20 * 1024 * 1024 && before.inodes > 4000);
      const root = 'docker/overlay2/abc/diff';
      const t0 = Date.now();
      await writeTree(target.writer, root, tree);
      // Engine metadata calls, read back before closing.
      await target.writer.writeFile('docker/overlay2/abc/link', Buffer.from('ABCDEF'), 0o644);
      await target.writer.symlink('../abc/diff', 'docker/overlay2/l/ABCDEF');
      await target.writer.writeFile('docker/tmp.json', Buffer.from('{"a":1}'), 0o600);
      await target.writer.rename('docker/tmp.json', 'docker/image/overlay2/repositories.json');
      assert.equal((await target.writer.readFile('docker/image/overlay2/repositories.json'))?.toString(), '{"a":1}');
      assert.equal(await target.writer.readlink('docker/overlay2/l/ABCDEF'), '../abc/diff');
      assert.equal(await target.writer.kindOf(`${root}/opaque/gone`), 'other');
      assert.equal(await target.writer.kindOf(`${root}/bin/link`), 'symlink');
      await target.writer.mkdirp('docker/scratch/x', 0o700);
      await target.writer.writeFile('docker/scratch/x/f', Buffer.from('x'), 0o600);
      await target.writer.remove('docker/scratch');
      assert.equal(await target.writer.kindOf('docker/scratch'), undefined);
      await target.commit();
      const secs = (Date.now() - t0) / 1000;
      console.log(`# ${kind}: wrote ${tree.inodes} entries, ${(tree.bytes / 1e6).toFixed(1)} MB in ${secs.toFixed(2)} s`);
      assert.ok(!fs.existsSync(target.workPath), 'work copy left behind');

      assert.equal(fsck(img.path), undefined);
      tableCheck(img.path, kind);
      const mnt = mountData(img.path);
      try {
        const problems = compareMounted(path.join(mnt, root), tree.expected);
        assert.deepEqual(problems.slice(0, 30), []);
        assert.equal(fs.readFileSync(path.join(mnt, 'docker/image/overlay2/repositories.json'), 'utf8'), '{"a":1}');
        assert.equal(fs.readlinkSync(path.join(mnt, 'docker/overlay2/l/ABCDEF')), '../abc/diff');
        assert.equal(fs.statSync(path.join(mnt, 'docker/overlay2/abc/link')).mode & 0o7777, 0o644);
        assert.ok(fs.existsSync(path.join(mnt, 'remove_me_to_reset')));
        assert.deepEqual(fs.readdirSync(mnt).filter((n) => n.startsWith('.transplant')), [], 'xattr holder files left behind');
        assert.ok(!fs.existsSync(path.join(mnt, 'docker/scratch')));
      } finally {
        unmount(mnt);
      }
    });
  }

  const variants: Array<[string, string[]]> = [
    ['4 KiB blocks', ['-b', '4096']],
    ['no metadata_csum', ['-O', '^metadata_csum']],
    ['metadata_csum_seed', ['-O', 'metadata_csum_seed', '-U', 'random']],
    ['128-byte inodes', ['-I', '128']],
  ];
  for (const [name, mkfsArgs] of variants) {
    test(`${name}, writing next to htree directories: clean and exact`, async () => {
      const dir = path.join(work, `variant-${name.replace(/\W+/g, '-')}`);
      const img = buildBalenaImage(dir, 'v.img', {
        table: 'gpt', dataMiB: 48, dataMkfsArgs: mkfsArgs, indexDirs: true, dataDir: defaultDataDir(path.join(dir, 'tree'), 1500),
      });
      const tree = await fullTree(600);
      const target = await openDiskTarget(img.path);
      await writeTree(target.writer, 'docker/overlay2/new/diff', tree);
      // A whiteout straight into the (indexed) overlay2 directory, then a hard link to it elsewhere.
      const wh = { path: 'zz-whiteout', kind: 'char-device' as const, mode: 0, uid: 0, gid: 0, mtime: 5n, atime: 5n, size: 0, xattrs: [], devMajor: 0, devMinor: 0 };
      await target.writer.writeEntry('docker/overlay2', wh);
      await target.writer.writeEntry('docker', { ...wh, path: 'wh-link', kind: 'hardlink', linkTarget: 'overlay2/zz-whiteout' });
      await target.commit();
      assert.equal(fsck(img.path), undefined);
      const mnt = mountData(img.path);
      try {
        const secondsOnly = mkfsArgs.includes('128');
        assert.deepEqual(compareMounted(path.join(mnt, 'docker/overlay2/new/diff'), tree.expected, { secondsOnly }).slice(0, 30), []);
        const st = fs.lstatSync(path.join(mnt, 'docker/overlay2/zz-whiteout'));
        assert.ok(st.isCharacterDevice() && st.rdev === 0);
        assert.equal(fs.lstatSync(path.join(mnt, 'docker/wh-link')).ino, st.ino);
        assert.equal(fs.readdirSync(path.join(mnt, 'docker/overlay2')).length, 1500 + 3);
        assert.match(runOk('find', [path.join(mnt, 'docker'), '-maxdepth', '2', '-name', 'zz-whiteout', '-type', 'c']).stdout, /zz-whiteout/);
      } finally {
        unmount(mnt);
      }
    });
  }

  test('a full file system gives one clear error, and estimateRoom agrees with ensureRoom', async () => {
    const img = buildBalenaImage(path.join(work, 'full'), 'full.img', { table: 'mbr', dataMiB: 8 });
    const estimate = estimateRoom(img.path, 30 * 1024 * 1024, 500);
    assert.ok(estimate.growBy > 0 && estimate.freeBytes < 8 * 1024 * 1024);
    const target = await openDiskTarget(img.path);
    try {
      await target.writer.mkdirp('d', 0o755);
      const size = 20 * 1024 * 1024;
      await assert.rejects(
        target.writer.writeEntry('d', { path: 'big', kind: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 0n, atime: 0n, size, xattrs: [] }, (async function* () {
          const b = Buffer.alloc(1024 * 1024, 1);
          for (let i = 0; i < 20; i++) yield b;
        })()),
        /no space left for d\/big \(out of blocks\); the target must be grown first/,
      );
    } finally {
      await target.abort();
    }
    const again = await openDiskTarget(img.path);
    try {
      assert.deepEqual(await again.ensureRoom(30 * 1024 * 1024, 500), { grewBy: estimate.growBy });
    } finally {
      await again.abort();
    }
  });

  test('the writing works as an ordinary user (nobody), on a file that user owns', async () => {
    const dir = path.join(work, 'user');
    const img = buildBalenaImage(dir, 'user.img', { table: 'mbr', dataMiB: 32 });
    fs.chmodSync(work, 0o711); // mkdtemp made it 0700: let nobody reach its own directory
    fs.chownSync(dir, 65534, 65534);
    fs.chownSync(img.path, 65534, 65534);
    const r = run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, path.join(__dirname, 'harness', 'ext4-write-as-user.js')], {
      env: { TRANSPLANT_USER_WRITE_IMAGE: img.path, TRANSPLANT_USER_WRITE_FILES: '200', PATH: '/usr/bin:/bin' },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { uid: 65534, ok: true });
    assert.equal(fs.statSync(img.path).uid, 65534);
    assert.equal(fsck(img.path), undefined);
    const mnt = mountData(img.path);
    try {
      const tree = await fullTree(200);
      assert.deepEqual(compareMounted(path.join(mnt, 'docker/overlay2/user/diff'), tree.expected).slice(0, 30), []);
    } finally {
      unmount(mnt);
    }
  });

  for (const kind of ['mbr', 'gpt'] as const) {
    test(`${kind}: ensureRoom grows file, partitions and file system when resin-data is too small`, async () => {
      const img = buildBalenaImage(path.join(work, `grow-${kind}`), 'grow.img', { table: kind, dataMiB: 16 });
      const oldSize = fs.statSync(img.path).size;
      const target = await openDiskTarget(img.path);
      const free0 = (await target.writer.freeSpace())!;
      const want = 60 * 1024 * 1024;
      assert.ok(free0.bytes < want);
      const { grewBy } = await target.ensureRoom(want, 3000);
      assert.ok(grewBy > 0 && grewBy % (4 * 1024 * 1024) === 0, `grewBy ${grewBy}`);
      const free1 = (await target.writer.freeSpace())!;
      assert.ok(free1.bytes >= want, `free after growth ${free1.bytes}`);
      assert.ok(free1.inodes >= 3000);
      assert.deepEqual(await target.ensureRoom(want, 3000), { grewBy: 0 });
      // Fill a good part of the new room.
      const tree = await fullTree(2000);
      await writeTree(target.writer, 'docker/overlay2/grown/diff', tree);
      await target.commit();

      assert.equal(fs.statSync(img.path).size, oldSize + grewBy);
      tableCheck(img.path, kind);
      const parts = sfdiskPartitions(img.path);
      const data = parts[parts.length - 1];
      assert.equal(data.offset, img.data!.offset, 'data partition moved');
      assert.ok(data.size > img.data!.size + 40 * 1024 * 1024, `data partition ${data.size}`);
      assert.equal(data.offset % (4 * 1024 * 1024), 0);
      if (kind === 'mbr') {
        const ext = parts.find((p) => p.type === '5')!;
        assert.equal(ext.offset + ext.size, oldSize + grewBy, 'extended partition does not reach the end');
        assert.equal(data.offset + data.size, oldSize + grewBy);
      }
      assert.equal(fsck(img.path), undefined);
      const dump = runOk('dumpe2fs', ['-h', extractPartition(img.path, data.offset, data.size, path.join(work, 'dump.img'))]).stdout;
      const blocks = Number(/Block count:\s+(\d+)/.exec(dump)![1]);
      const bsize = Number(/Block size:\s+(\d+)/.exec(dump)![1]);
      assert.equal(blocks * bsize, data.size, 'file system does not fill its partition');
      const mnt = mountData(img.path);
      try {
        assert.deepEqual(compareMounted(path.join(mnt, 'docker/overlay2/grown/diff'), tree.expected).slice(0, 30), []);
      } finally {
        unmount(mnt);
      }
    });
  }

  for (const kind of ['mbr', 'gpt'] as const) {
    test(`${kind} flasher: the inner image is written, flash-rootA grows and the partitions after it move intact`, async () => {
      const dir = path.join(work, `flasher-${kind}`);
      const inner = buildBalenaImage(dir, 'inner.img', { table: 'mbr', dataMiB: 16 });
      const flasher = buildBalenaImage(dir, 'flasher.img', { table: kind, flasher: true, flasherInner: inner.path });
      const before = sfdiskPartitions(flasher.path);
      const sums = new Map<string, string>();
      for (const p of flasher.partitions.filter((x) => x.label === 'flash-rootB' || x.label === 'flash-state')) {
        sums.set(p.label, sha256File(extractPartition(flasher.path, p.offset, p.size, path.join(dir, `${p.label}.before`))));
      }
      const target = await openDiskTarget(flasher.path);
      assert.equal(target.tableKind, 'mbr'); // the inner image's table
      assert.notEqual(target.bootImagePath, target.workPath);
      assert.equal(inspectBalenaImage(target.bootImagePath).data.offset, inner.data!.offset);
      const tree = await fullTree(300);
      assert.ok((await target.ensureRoom(40 * 1024 * 1024, 1000)).grewBy > 0);
      await writeTree(target.writer, 'docker/overlay2/f/diff', tree);
      await target.commit();
      assert.ok(!fs.existsSync(target.workPath));

      tableCheck(flasher.path, kind);
      const after = sfdiskPartitions(flasher.path);
      const rootA = flasher.partitions.find((p) => p.label === 'flash-rootA')!;
      const rootANow = after.find((p) => p.offset === rootA.offset)!;
      const delta = rootANow.size - rootA.size;
      assert.ok(delta > 0 && delta % (4 * 1024 * 1024) === 0, `flash-rootA grew by ${delta}`);
      for (const p of flasher.partitions.filter((x) => x.label === 'flash-rootB' || x.label === 'flash-state')) {
        const moved = after.find((q) => q.offset === p.offset + delta && q.size === p.size);
        assert.ok(moved, `${p.label} did not move by ${delta}: ${JSON.stringify(after)} (before ${JSON.stringify(before)})`);
        assert.equal(sha256File(extractPartition(flasher.path, moved.offset, moved.size, path.join(dir, `${p.label}.after`))), sums.get(p.label), `${p.label} changed`);
      }
      const rootAFile = extractPartition(flasher.path, rootANow.offset, rootANow.size, path.join(dir, 'rootA.after'));
      assert.equal(run('e2fsck', ['-fn', rootAFile]).code, 0, 'flash-rootA is not clean');
      const innerOut = path.join(dir, 'inner.after.img');
      runOk('debugfs', ['-R', `dump /opt/balena-image-raspberrypi4-64.balenaos-img ${innerOut}`, rootAFile]);
      assert.ok(fs.statSync(innerOut).size > fs.statSync(inner.path).size);
      tableCheck(innerOut, 'mbr');
      assert.equal(fsck(innerOut), undefined);
      const mnt = mountData(innerOut);
      try {
        assert.deepEqual(compareMounted(path.join(mnt, 'docker/overlay2/f/diff'), tree.expected).slice(0, 30), []);
      } finally {
        unmount(mnt);
      }
    });
  }

  test('abort leaves the original byte for byte unchanged, with no work files left', async () => {
    const dir = path.join(work, 'abort');
    const img = buildBalenaImage(dir, 'abort.img', { table: 'gpt', dataMiB: 16 });
    const before = sha256File(img.path);
    const listBefore = fs.readdirSync(dir).sort();
    // The work file of a run that was killed (pid 2^22+1 does not exist) is cleaned up.
    fs.writeFileSync(path.join(dir, `.abort.img.transplant-${2 ** 22 + 1}-0badc0de`), 'stale');
    const target = await openDiskTarget(img.path);
    await target.ensureRoom(40 * 1024 * 1024, 100);
    await writeTree(target.writer, 'docker/overlay2/x/diff', await fullTree(50));
    await target.abort();
    await target.abort();
    assert.equal(sha256File(img.path), before);
    assert.deepEqual(fs.readdirSync(dir).sort(), listBefore);
  });

  test('--output leaves the input untouched and writes the result there', async () => {
    const dir = path.join(work, 'output');
    const img = buildBalenaImage(dir, 'in.img', { table: 'mbr', dataMiB: 16 });
    const before = sha256File(img.path);
    const out = path.join(dir, 'out.img');
    const target = await openDiskTarget(img.path, { output: out });
    await target.writer.writeFile('apps.json', Buffer.from('{}'), 0o644);
    await target.commit();
    assert.equal(sha256File(img.path), before);
    assert.equal(fsck(out), undefined);
    const t = await openDiskTarget(out);
    assert.equal((await t.writer.readFile('apps.json'))?.toString(), '{}');
    await t.abort();
  });

  test('a file that is not a balenaOS image is refused and left untouched', async () => {
    const dir = path.join(work, 'refuse');
    fs.mkdirSync(dir, { recursive: true });
    // A bare ext4 file system (no partition table).
    const bare = path.join(dir, 'bare.img');
    fs.writeFileSync(bare, '');
    fs.truncateSync(bare, 16 * 1024 * 1024);
    runOk('mkfs.ext4', ['-q', '-L', 'resin-data', bare]);
    // A partitioned disk without resin-data.
    const other = buildBalenaImage(dir, 'flasher.img', { flasher: true });
    const random = path.join(dir, 'random.bin');
    fs.writeFileSync(random, Buffer.alloc(4096, 7));
    const cases: Array<[string, RegExp]> = [
      [bare, /not a balenaOS disk image: it has no MBR or GPT partition table/],
      [other.path, /flasher image, but its flash-rootA holds no \/opt\/\*\.balenaos-img file/],
      [random, /not a balenaOS disk image/],
    ];
    for (const [file, message] of cases) {
      const sum = sha256File(file);
      const listBefore = fs.readdirSync(dir).sort();
      await assert.rejects(openDiskTarget(file), message);
      assert.equal(sha256File(file), sum);
      assert.deepEqual(fs.readdirSync(dir).sort(), listBefore);
    }
    // A plain MBR disk whose partitions carry other labels.
    const img = buildBalenaImage(path.join(dir, 'x'), 'nolabel.img', { table: 'mbr', dataMiB: 8, dataMkfsArgs: ['-L', 'other'] });
    await assert.rejects(openDiskTarget(img.path), /no resin-data partition/);
    assert.throws(() => inspectBalenaImage(path.join(dir, 'missing.img')), /cannot open/);
  });

  test('a file system that was not cleanly unmounted is refused before anything is written', async () => {
    const img: BalenaImage = buildBalenaImage(path.join(work, 'dirty'), 'dirty.img', { table: 'mbr', dataMiB: 8 });
    // s_state (superblock byte 0x3A) = 0: not clean.
    const fd = fs.openSync(img.path, 'r+');
    fs.writeSync(fd, Buffer.from([0, 0]), 0, 2, img.data!.offset + 1024 + 0x3a);
    fs.closeSync(fd);
    const sum = sha256File(img.path);
    await assert.rejects(openDiskTarget(img.path), /not cleanly unmounted/);
    assert.equal(sha256File(img.path), sum);
  });

  test('paths that escape, and writing through a symlink, are refused', async () => {
    const img = buildBalenaImage(path.join(work, 'paths'), 'paths.img', { table: 'gpt', dataMiB: 8 });
    const target = await openDiskTarget(img.path);
    try {
      const w = target.writer;
      const e = (p: string, extra: Partial<LayerEntry> = {}): LayerEntry => ({ path: p, kind: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 0n, atime: 0n, size: 0, xattrs: [], ...extra });
      await w.mkdirp('r', 0o755);
      await w.symlink('/docker', 'r/link');
      await w.symlink('..', 'r/up');
      for (const bad of ['../x', 'a/../../x', '/etc/passwd', 'a//b', './x']) {
        await assert.rejects(w.writeEntry('r', e(bad)), /refusing path/, bad);
      }
      await assert.rejects(w.writeEntry('r', e('h', { kind: 'hardlink', linkTarget: '../remove_me_to_reset' })), /refusing path/);
      await assert.rejects(w.writeEntry('r', e('link/x')), /is not a directory/);
      await assert.rejects(w.writeEntry('r', e('up/x')), /is not a directory/);
      await assert.rejects(w.mkdirp('r/link/sub', 0o755), /exists and is not a directory/);
      await assert.rejects(w.writeFile('r/up/evil', Buffer.from('x'), 0o644), /is not a directory/);
      await assert.rejects(w.writeEntry('r', e('.', { kind: 'file' })), /root of a tree must be a directory/);
      assert.equal(await w.readFile('r/link/image/overlay2/repositories.json'), undefined, 'read through a symlink');
      assert.equal(await w.kindOf('r/up/remove_me_to_reset'), undefined);
      assert.equal(await w.kindOf('docker/x'), undefined);
      assert.equal(await w.kindOf('evil'), undefined);
    } finally {
      await target.abort();
    }
  });

  test('xattrs that do not fit in one block are refused before writing, naming the file', async () => {
    const img = buildBalenaImage(path.join(work, 'bigx'), 'bigx.img', { table: 'mbr', dataMiB: 8 });
    const target = await openDiskTarget(img.path);
    try {
      await target.writer.mkdirp('d', 0o755);
      await assert.rejects(
        target.writer.writeEntry('d', {
          path: 'f', kind: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 0n, atime: 0n, size: 0,
          xattrs: [{ name: 'user.big', value: Buffer.alloc(5000) }],
        }),
        /d\/f: its extended attributes need \d+ bytes, more than one \d+-byte block holds/,
      );
      assert.equal(await target.writer.kindOf('d/f'), undefined);
    } finally {
      await target.abort();
    }
  });

  test('directories with thousands of subdirectories, symlinks and hard links (the binding does not expand a full directory block itself)', async () => {
    const img = buildBalenaImage(path.join(work, 'wide'), 'wide.img', { table: 'mbr', dataMiB: 48 });
    const target = await openDiskTarget(img.path);
    const base = { mode: 0o755, uid: 0, gid: 0, mtime: 1_700_000_000_000_000_001n, atime: 1_700_000_000_000_000_001n, size: 0, xattrs: [] };
    try {
      await target.writer.mkdirp('w', 0o755);
      await target.writer.writeEntry('w', { ...base, path: '.', kind: 'directory' });
      await target.writer.writeEntry('w', { ...base, path: 'file', kind: 'file', mode: 0o644, size: 1 }, (async function* () { yield Buffer.from('x'); })());
      for (let i = 0; i < 1500; i++) await target.writer.writeEntry('w', { ...base, path: `pkg-${i}`, kind: 'directory' });
      for (let i = 0; i < 300; i++) await target.writer.writeEntry('w', { ...base, path: `ln-${i}`, kind: 'symlink', mode: 0o777, linkTarget: `pkg-${i}` });
      for (let i = 0; i < 300; i++) await target.writer.writeEntry('w', { ...base, path: `hard-${i}`, kind: 'hardlink', mode: 0o644, linkTarget: 'file' });
      await target.writer.finishTree('w');
      await target.commit();
    } catch (e) {
      await target.abort();
      throw e;
    }
    assert.equal(fsck(img.path), undefined);
    const mnt = mountData(img.path);
    try {
      const names = fs.readdirSync(path.join(mnt, 'w'));
      assert.equal(names.filter((n) => n.startsWith('pkg-')).length, 1500);
      assert.equal(names.filter((n) => n.startsWith('ln-')).length, 300);
      assert.equal(fs.statSync(path.join(mnt, 'w', 'file')).nlink, 301);
      assert.ok(!names.some((n) => n.startsWith('.transplant-expand')), 'no placeholder left');
      assert.equal(fs.lstatSync(path.join(mnt, 'w', 'pkg-1499')).isDirectory(), true);
    } finally {
      unmount(mnt);
    }
  });
});
