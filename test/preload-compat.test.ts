/**
 * Issue 12, "What balena preload users expect and do not find": balena preload's options on
 * `transplant preload` / `inject`, end to end at the CLI on real balenaOS-like images
 * (sfdisk, mkfs.vfat, mkfs.ext4 -d): --splash-image into the FAT of resin-boot (and
 * flash-boot) without mounting, judged by fsck.fat -n and read back with mtools; into a
 * mounted resin-boot directory; secure-boot images refused before anything is written;
 * --additional-space and the growth in the result; --dont-check-arch (also from a mounted
 * resin-boot's device-type.json); the pinning flags; the image as preload's argument.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32, deflateSync } from 'node:zlib';
import { buildBalenaImage, buildUserImage, extractPartition, type BalenaImageOptions } from './harness/balena-image.js';
import { assertOneLineError, giveToUser, lsJson, show, spawnTransplant, transplant, userDir } from './harness/cli.js';
import { assertE2fsckClean, dataPartition, listDir, sha256File, tableProblems } from './harness/disk-judge.js';
import { requireTools, run, runOk } from './harness/exec.js';
import { copyTree, getFixtures, tempDir, type Fixtures } from './harness/fixtures.js';

const T = { timeout: 600_000 };
const AMD64 = { slug: 'genericx86-64-ext', arch: 'amd64' };
const AARCH64 = { slug: 'raspberrypi4-64', arch: 'aarch64' };
const MTOOLS_ENV = { MTOOLS_SKIP_CHECK: '1' };

/** A real PNG (signature, IHDR, IDAT, IEND with their CRCs), `w`×`h` RGB of one colour. */
function makePng(w: number, h: number, rgb: [number, number, number]): Buffer {
  const chunk = (type: string, data: Buffer): Buffer => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(type, 4, 'latin1');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])) >>> 0, 0);
    return Buffer.concat([head, data, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type RGB
  const row = Buffer.concat([Buffer.from([0]), Buffer.concat(Array.from({ length: w }, () => Buffer.from(rgb)))]);
  const raw = Buffer.concat(Array.from({ length: h }, () => row));
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

interface Setup {
  fx: Fixtures;
  work: string;
  userWork: string;
  /** fixture/app-a:1.0 as a bundle. */
  bundle: string;
  /** A 64x32 PNG logo of ~100 KiB (bigger than a FAT cluster), and a second, different one. */
  logo: string;
  logoBytes: Buffer;
  oldLogoBytes: Buffer;
  seq: number;
}

let setup: Promise<Setup> | undefined;
function getSetup(): Promise<Setup> {
  setup ??= (async () => {
    requireTools('fsck.fat', 'mcopy', 'mmd', 'mdir', 'debugfs', 'dumpe2fs');
    const fx = await getFixtures();
    const work = tempDir('tp-pcompat-');
    const userWork = userDir(path.join(work, 'u'));
    const bundle = path.join(userWork, 'app-a.bundle');
    const r = transplant(['extract', '--from', fx.sourceRoot, '--image', 'fixture/app-a:1.0', '--output', bundle]);
    assert.equal(r.code, 0, `extract\n${show(r)}`);
    giveToUser(bundle);
    const logo = path.join(userWork, 'logo.png');
    // Noise-like rows so that deflate leaves it large: several clusters in the FAT.
    const big = makePng(64, 32, [200, 30, 90]);
    const noise = Buffer.alloc(100 * 1024);
    for (let i = 0; i < noise.length; i++) noise[i] = (i * 2654435761) >>> 24;
    // A private ancillary chunk (lowercase type) carrying the bulk: still a valid PNG.
    const ilen = big.length - 12; // before IEND
    const extra = Buffer.alloc(12 + noise.length);
    extra.writeUInt32BE(noise.length, 0);
    extra.write('prIv', 4, 'latin1');
    noise.copy(extra, 8);
    extra.writeUInt32BE(crc32(extra.subarray(4, 8 + noise.length)) >>> 0, 8 + noise.length);
    const logoBytes = Buffer.concat([big.subarray(0, ilen), extra, big.subarray(ilen)]);
    fs.writeFileSync(logo, logoBytes);
    giveToUser(logo);
    return { fx, work, userWork, bundle, logo, logoBytes, oldLogoBytes: makePng(8, 8, [0, 0, 255]), seq: 0 };
  })();
  return setup;
}

/** A balenaOS-like image in the user's directory, resin-data from the target fixture. */
function buildImage(s: Setup, name: string, opts: BalenaImageOptions): string {
  return buildUserImage(s.work, s.userWork, name, { dataDir: s.fx.targetResinData, ...opts });
}

/** The byte offset and size of the partition with this label (sfdisk + the FAT/ext4 label). */
function partitionOf(img: string, label: string): { offset: number; size: number } {
  const j = JSON.parse(runOk('sfdisk', ['-J', img]).stdout) as { partitiontable: { partitions: Array<{ start: number; size: number; type: string }> } };
  for (const p of j.partitiontable.partitions) {
    if (['5', 'f', '85'].includes(p.type)) continue;
    const offset = p.start * 512;
    const size = p.size * 512;
    const blkid = run('blkid', ['-p', '-O', String(offset), '-S', String(size), '-s', 'LABEL', '-o', 'value', img]);
    if (blkid.stdout.trim() === label) return { offset, size };
  }
  throw new Error(`${img}: no partition labelled ${label}`);
}

/** A file of the FAT at `offset` read by mtools (undefined when absent). */
function fatFile(img: string, offset: number, rel: string, scratch: string): Buffer | undefined {
  const out = path.join(scratch, `fat-read-${process.pid}`);
  fs.rmSync(out, { force: true });
  const r = run('mcopy', ['-n', '-i', `${img}@@${offset}`, `::/${rel}`, out], { env: MTOOLS_ENV });
  if (r.code !== 0) return undefined;
  const data = fs.readFileSync(out);
  fs.rmSync(out);
  return data;
}

function fatDir(img: string, offset: number, rel: string): string[] {
  const r = run('mdir', ['-b', '-i', `${img}@@${offset}`, `::/${rel}`], { env: MTOOLS_ENV });
  assert.equal(r.code, 0, `mdir ::/${rel}: ${r.stderr}`);
  return r.stdout.split('\n').filter(Boolean).map((l) => path.posix.basename(l.trim().replace(/\/$/, ''))).sort();
}

function fatPut(img: string, offset: number, rel: string, data: Buffer | string, scratch: string): void {
  const src = path.join(scratch, `fat-put-${process.pid}`);
  fs.writeFileSync(src, data);
  const dir = path.posix.dirname(rel);
  if (dir !== '.') run('mmd', ['-D', 's', '-i', `${img}@@${offset}`, `::/${dir}`], { env: MTOOLS_ENV });
  runOk('mcopy', ['-o', '-i', `${img}@@${offset}`, src, `::/${rel}`], { env: MTOOLS_ENV });
  fs.rmSync(src);
}

function assertFatClean(img: string, part: { offset: number; size: number }, scratch: string, what: string): void {
  const copy = extractPartition(img, part.offset, part.size, path.join(scratch, `fat-${process.pid}.img`));
  try {
    const r = run('fsck.fat', ['-n', copy]);
    assert.equal(r.code, 0, `${what}: fsck.fat -n\n${r.stdout}${r.stderr}`);
    assert.doesNotMatch(r.stdout, /differ|wrong|Free cluster|lost|orphan/i, `${what}: fsck.fat -n\n${r.stdout}`);
  } finally {
    fs.rmSync(copy, { force: true });
  }
}

function leftovers(dir: string, before: string[]): string[] {
  return listDir(dir).filter((f) => !before.includes(f));
}

test('--splash-image: written into resin-boot of MBR and GPT images without mounting (balena-logo.png, resin-logo.png where only it exists, splash/ made where missing), as an unprivileged user; FAT and ext4 judged', T, async () => {
  const s = await getSetup();
  const cases: { name: string; table: 'mbr' | 'gpt'; existing?: string; want: string; absent?: string }[] = [
    { name: 'splash-current.img', table: 'mbr', existing: 'splash/balena-logo.png', want: 'splash/balena-logo.png' },
    { name: 'splash-old.img', table: 'gpt', existing: 'splash/resin-logo.png', want: 'splash/resin-logo.png', absent: 'balena-logo.png' },
    { name: 'splash-none.img', table: 'mbr', want: 'splash/balena-logo.png' },
  ];
  for (const c of cases) {
    const img = buildImage(s, c.name, { table: c.table, dataMiB: 16, deviceType: AMD64 });
    const boot = partitionOf(img, 'resin-boot');
    if (c.existing) fatPut(img, boot.offset, c.existing, s.oldLogoBytes, s.work);
    const dirBefore = listDir(s.userWork);
    const cmd = c.table === 'gpt'
      ? ['preload', img, '--from', s.bundle, '--image', 'fixture/app-a:1.0', '-s', s.logo, '--json']
      : ['inject', s.bundle, '--disk', img, '--splash-image', s.logo, '--json'];
    const r = transplant(cmd, { asUser: true });
    assert.equal(r.code, 0, `${c.name}\n${show(r)}`);
    const out = JSON.parse(r.stdout) as { splash: string[] };
    assert.deepEqual(out.splash, [`${img}:resin-boot/${c.want}`], `${c.name}: --json names where the logo went`);
    assert.deepEqual(leftovers(s.userWork, dirBefore), [], `${c.name}: nothing left beside the image`);
    assert.ok(fatFile(img, boot.offset, c.want, s.work)?.equals(s.logoBytes), `${c.name}: ${c.want} holds the PNG (read by mtools)`);
    const names = fatDir(img, boot.offset, 'splash');
    assert.deepEqual(names, [path.posix.basename(c.want)], `${c.name}: splash/ holds exactly the one logo`);
    if (c.absent) assert.ok(!names.includes(c.absent), `${c.name}: no ${c.absent} made beside the older name`);
    assert.ok(fatFile(img, boot.offset, 'config.json', s.work), `${c.name}: config.json still there`);
    assertFatClean(img, boot, s.work, c.name);
    assert.deepEqual(tableProblems(img, c.table), []);
    assertE2fsckClean(img, s.work);
    assert.ok(lsJson(img).some((i) => i.id === s.fx.images.appA.id), `${c.name}: the image was injected too`);
  }
});

test('--splash-image on a flasher image: flash-boot of the flasher and resin-boot of the inner image both get it', T, async () => {
  const s = await getSetup();
  const buildDir = path.join(s.work, `build-${++s.seq}`);
  const inner = buildBalenaImage(path.join(buildDir, 'inner'), 'inner.img', { table: 'mbr', dataMiB: 16, dataDir: s.fx.targetResinData, deviceType: AMD64 });
  // The inner image has the older name only: each boot partition decides for itself.
  fatPut(inner.path, partitionOf(inner.path, 'resin-boot').offset, 'splash/resin-logo.png', s.oldLogoBytes, s.work);
  const built = buildBalenaImage(buildDir, 'flasher-splash.img', { table: 'mbr', flasher: true, flasherInner: inner.path, deviceType: AMD64 });
  const img = path.join(s.userWork, 'flasher-splash.img');
  fs.renameSync(built.path, img);
  fs.rmSync(buildDir, { recursive: true, force: true });
  giveToUser(img);
  const flashBoot = partitionOf(img, 'flash-boot');
  fatPut(img, flashBoot.offset, 'splash/balena-logo.png', s.oldLogoBytes, s.work);

  const r = transplant(['inject', s.bundle, '--disk', img, '--splash-image', s.logo], { asUser: true });
  assert.equal(r.code, 0, show(r));
  assert.match(r.stdout, /splash logo in .*flash-boot\/splash\/balena-logo\.png and .*resin-boot\/splash\/resin-logo\.png/, show(r));
  assert.ok(fatFile(img, flashBoot.offset, 'splash/balena-logo.png', s.work)?.equals(s.logoBytes), 'flash-boot/splash/balena-logo.png holds the PNG');
  assertFatClean(img, flashBoot, s.work, 'flash-boot');
  // The inner image out of flash-rootA (debugfs, no mount).
  const rootA = partitionOf(img, 'flash-rootA');
  const part = extractPartition(img, rootA.offset, rootA.size, path.join(s.work, 'flasher-rootA.ext4'));
  const innerAfter = path.join(s.work, 'flasher-inner-after.img');
  try {
    const fsck = run('e2fsck', ['-fn', part]);
    assert.equal(fsck.code, 0, `flash-rootA: e2fsck -fn\n${fsck.stdout}${fsck.stderr}`);
    runOk('debugfs', ['-R', `dump /opt/balena-image-raspberrypi4-64.balenaos-img ${innerAfter}`, part]);
  } finally {
    fs.rmSync(part, { force: true });
  }
  const innerBoot = partitionOf(innerAfter, 'resin-boot');
  assert.ok(fatFile(innerAfter, innerBoot.offset, 'splash/resin-logo.png', s.work)?.equals(s.logoBytes), 'inner resin-boot/splash/resin-logo.png holds the PNG');
  assert.deepEqual(fatDir(innerAfter, innerBoot.offset, 'splash'), ['resin-logo.png']);
  assertFatClean(innerAfter, innerBoot, s.work, 'inner resin-boot');
  assertE2fsckClean(innerAfter, s.work);
  fs.rmSync(innerAfter);
});

test('--splash-image into a mounted resin-boot (--resin-boot DIR with --resin-data); the architecture is checked against its device-type.json unless --dont-check-arch', T, async () => {
  const s = await getSetup();
  const boot = path.join(s.work, 'boot-dir');
  fs.mkdirSync(path.join(boot, 'splash'), { recursive: true });
  fs.writeFileSync(path.join(boot, 'config.json'), JSON.stringify({ deviceType: AARCH64.slug }));
  fs.writeFileSync(path.join(boot, 'device-type.json'), JSON.stringify(AARCH64));
  fs.writeFileSync(path.join(boot, 'splash', 'resin-logo.png'), s.oldLogoBytes);
  const root = path.join(s.work, 'rd-arch');
  copyTree(s.fx.targetResinData, root);
  const before = listDir(root);

  // aarch64 device, amd64 image: refused, naming the option; nothing written in either directory.
  let r = transplant(['inject', s.bundle, '--resin-data', root, '--resin-boot', boot, '--splash-image', s.logo]);
  assertOneLineError(r, 'amd64 image onto an aarch64 resin-boot');
  assert.match(r.stderr, /amd64.*raspberrypi4-64 \(aarch64\).*--dont-check-arch/, show(r));
  assert.deepEqual(listDir(root), before, 'resin-data unchanged');
  assert.ok(fs.readFileSync(path.join(boot, 'splash', 'resin-logo.png')).equals(s.oldLogoBytes), 'the old logo is still there');

  r = transplant(['inject', s.bundle, '--resin-data', root, '--resin-boot', boot, '--splash-image', s.logo, '--dont-check-arch']);
  assert.equal(r.code, 0, show(r));
  assert.match(r.stderr, /^warning: .*amd64.*aarch64/m, 'a warning per image');
  assert.ok(fs.readFileSync(path.join(boot, 'splash', 'resin-logo.png')).equals(s.logoBytes), 'resin-logo.png (the name there) holds the PNG');
  assert.deepEqual(fs.readdirSync(path.join(boot, 'splash')), ['resin-logo.png'], 'no other file in splash/');
  assert.match(r.stdout, new RegExp(`splash logo in ${boot}/splash/resin-logo\\.png`));

  // A device-type.json of the image's own architecture: no flag needed; splash/ made when missing.
  const boot2 = path.join(s.work, 'boot-dir2');
  fs.mkdirSync(boot2);
  fs.writeFileSync(path.join(boot2, 'device-type.json'), JSON.stringify(AMD64));
  const root2 = path.join(s.work, 'rd-arch2');
  copyTree(s.fx.targetResinData, root2);
  r = transplant(['preload', '--from', s.bundle, '--image', 'fixture/app-a:1.0', '--resin-data', root2, '--resin-boot', boot2, '--splash-image', s.logo]);
  assert.equal(r.code, 0, show(r));
  assert.ok(fs.readFileSync(path.join(boot2, 'splash', 'balena-logo.png')).equals(s.logoBytes));
});

test('--splash-image refuses what is not a PNG, a missing file, and a run with no resin-boot to write it to, with one line, changing nothing', T, async () => {
  const s = await getSetup();
  const img = buildImage(s, 'splash-bad.img', { table: 'mbr', dataMiB: 8, deviceType: AMD64 });
  const jpeg = path.join(s.userWork, 'logo.jpg');
  fs.writeFileSync(jpeg, Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 16, 0x4a, 0x46, 0x49, 0x46, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0xff, 0xd9]));
  const truncated = path.join(s.userWork, 'truncated.png');
  fs.writeFileSync(truncated, s.logoBytes.subarray(0, 12));
  giveToUser(jpeg);
  giveToUser(truncated);
  const sha = sha256File(img);
  const dirBefore = listDir(s.userWork);
  for (const [file, want] of [
    [jpeg, /logo\.jpg: it is not a PNG image \(no PNG signature\)/],
    [truncated, /truncated\.png: it is not a PNG image \(no IHDR chunk/],
    [path.join(s.userWork, 'nope.png'), /nope\.png: no such file/],
    [s.userWork, /is not a regular file/],
  ] as const) {
    const r = transplant(['inject', s.bundle, '--disk', img, '--splash-image', file], { asUser: true });
    assertOneLineError(r, `--splash-image ${path.basename(file)}`);
    assert.match(r.stderr, want, show(r));
    assert.equal(sha256File(img), sha, 'the image is unchanged');
    assert.deepEqual(listDir(s.userWork), dirBefore, 'nothing left beside it');
  }
  // splash/ taken by a file, or the logo's name by a directory: refused before the images are written.
  for (const [what, craft, want] of [
    ['a file named splash', (i: string, off: number) => fatPut(i, off, 'splash', 'not a directory\n', s.work), /:resin-boot\/splash exists and is not a directory/],
    ['a directory named balena-logo.png', (i: string, off: number) => runOk('mmd', ['-i', `${i}@@${off}`, '::/splash', '::/splash/balena-logo.png'], { env: MTOOLS_ENV }), /:resin-boot\/splash\/balena-logo\.png exists and is a directory/],
  ] as const) {
    const odd = buildImage(s, `splash-odd-${what.length}.img`, { table: 'mbr', dataMiB: 8, deviceType: AMD64 });
    craft(odd, partitionOf(odd, 'resin-boot').offset);
    const oddSha = sha256File(odd);
    const before = listDir(s.userWork);
    const r = transplant(['inject', s.bundle, '--disk', odd, '--splash-image', s.logo], { asUser: true });
    assertOneLineError(r, what);
    assert.match(r.stderr, want, show(r));
    assert.equal(sha256File(odd), oddSha, `${what}: the image is unchanged`);
    assert.deepEqual(listDir(s.userWork), before, `${what}: nothing left beside it`);
  }
  const root = path.join(s.work, 'rd-nosplash');
  copyTree(s.fx.targetResinData, root);
  const r = transplant(['inject', s.bundle, '--resin-data', root, '--splash-image', s.logo]);
  assert.equal(r.code, 2, show(r));
  assert.match(r.stderr, /^error: --splash-image goes into resin-boot: give --resin-boot <dir> or --disk <image>/);
});

test('secure-boot images (config.json "installer": {"secureboot": true}) are refused before anything is written: resin-boot, a flasher\'s flash-boot, a mounted resin-boot', T, async () => {
  const s = await getSetup();
  const sbConfig = JSON.stringify({ deviceType: AMD64.slug, installer: { secureboot: true } });
  const plain = buildImage(s, 'sb-plain.img', { table: 'gpt', dataMiB: 8, deviceType: AMD64 });
  fatPut(plain, partitionOf(plain, 'resin-boot').offset, 'config.json', sbConfig, s.work);
  const flasher = buildImage(s, 'sb-flasher.img', { table: 'mbr', flasher: true, deviceType: AMD64 });
  fatPut(flasher, partitionOf(flasher, 'flash-boot').offset, 'config.json', sbConfig, s.work);
  for (const [img, label] of [[plain, 'resin-boot'], [flasher, 'flash-boot']] as const) {
    const sha = sha256File(img);
    const dirBefore = listDir(s.userWork);
    for (const args of [['inject', s.bundle, '--disk', img], ['inject', s.bundle, '--disk', img, '--dry-run'], ['preload', img, '--from', s.bundle, '--image', 'fixture/app-a:1.0', '--output', path.join(s.userWork, 'out.img')]]) {
      const r = transplant(args, { asUser: true });
      assertOneLineError(r, `${args.join(' ')}`);
      assert.match(r.stderr, new RegExp(`${label}/config\\.json has "installer": \\{"secureboot": true\\}: this is a secure-boot image.*not supported`), show(r));
      assert.equal(sha256File(img), sha, `${path.basename(img)} unchanged`);
      assert.deepEqual(listDir(s.userWork), dirBefore, 'nothing written beside it (no --output, no work copy)');
    }
  }
  // "installer": {"secureboot": false} is an ordinary image.
  fatPut(plain, partitionOf(plain, 'resin-boot').offset, 'config.json', JSON.stringify({ deviceType: AMD64.slug, installer: { secureboot: false } }), s.work);
  const ok = transplant(['inject', s.bundle, '--disk', plain], { asUser: true });
  assert.equal(ok.code, 0, show(ok));

  const boot = path.join(s.work, 'sb-boot');
  fs.mkdirSync(boot);
  fs.writeFileSync(path.join(boot, 'config.json'), sbConfig);
  const root = path.join(s.work, 'rd-sb');
  copyTree(s.fx.targetResinData, root);
  const before = listDir(root);
  const r = transplant(['inject', s.bundle, '--resin-data', root, '--resin-boot', boot, '--splash-image', s.logo]);
  assertOneLineError(r, 'mounted secure-boot resin-boot');
  assert.match(r.stderr, /sb-boot\/config\.json has "installer"/);
  assert.deepEqual(listDir(root), before);
  assert.deepEqual(fs.readdirSync(boot), ['config.json']);
});

/** Free bytes of resin-data (dumpe2fs -h on a copy of it), less the blocks reserved for root. */
function dataFree(img: string, scratch: string): number {
  const p = dataPartition(img);
  const copy = extractPartition(img, p.offset, p.size, path.join(scratch, `data-${process.pid}.ext4`));
  try {
    const out = runOk('dumpe2fs', ['-h', copy]).stdout;
    const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(out)?.[1]);
    return (field('Free blocks') - field('Reserved block count')) * field('Block size');
  } finally {
    fs.rmSync(copy, { force: true });
  }
}

test('--additional-space leaves that much free in resin-data, growing the image for it; the growth is in the result line and in --json', T, async () => {
  const s = await getSetup();
  const MiB = 1024 * 1024;
  const a = buildImage(s, 'space-none.img', { table: 'mbr', dataMiB: 8, deviceType: AMD64 });
  const b = buildImage(s, 'space-64m.img', { table: 'mbr', dataMiB: 8, deviceType: AMD64 });
  const sizeA = fs.statSync(a).size;
  const sizeB = fs.statSync(b).size;

  let r = transplant(['inject', s.bundle, '--disk', a, '--json'], { asUser: true });
  assert.equal(r.code, 0, show(r));
  const growA = (JSON.parse(r.stdout) as { imageGrowthBytes: number }).imageGrowthBytes;
  assert.equal(growA, fs.statSync(a).size - sizeA, '--json imageGrowthBytes is what the file grew by');
  const freeA = dataFree(a, s.work);
  assert.ok(freeA < 64 * MiB, `without the option resin-data keeps less than 64 MiB free (${freeA})`);

  r = transplant(['preload', b, '--from', s.bundle, '--image', 'fixture/app-a:1.0', '--additional-space', '64M'], { asUser: true });
  assert.equal(r.code, 0, show(r));
  const grewB = fs.statSync(b).size - sizeB;
  assert.ok(grewB >= 64 * MiB, `the image grew by at least 64 MiB (${grewB})`);
  assert.match(r.stdout, /; the image grew by \d+(\.\d)? (MB|GB)$/m, show(r));
  const freeB = dataFree(b, s.work);
  assert.ok(freeB >= 64 * MiB, `resin-data has at least 64 MiB free after the run (${freeB})`);
  assertE2fsckClean(b, s.work);
  assert.deepEqual(tableProblems(b, 'mbr'), []);
  assert.ok(lsJson(b).some((i) => i.id === s.fx.images.appA.id));
  // Nothing left to copy: still grown for the space asked for.
  const sizeB2 = fs.statSync(b).size;
  r = transplant(['inject', s.bundle, '--disk', b, '--additional-space', '128MiB', '--json'], { asUser: true });
  assert.equal(r.code, 0, show(r));
  const again = JSON.parse(r.stdout) as { changed: boolean; imageGrowthBytes: number };
  assert.equal(again.changed, false, 'the image already held everything');
  assert.equal(again.imageGrowthBytes, fs.statSync(b).size - sizeB2);
  assert.ok(dataFree(b, s.work) >= 128 * MiB, 'resin-data has at least 128 MiB free');
  assertE2fsckClean(b, s.work);

  // Plain bytes as balena takes them; a dry run counts the space too.
  const c = buildImage(s, 'space-dry.img', { table: 'mbr', dataMiB: 8, deviceType: AMD64 });
  r = transplant(['inject', s.bundle, '--disk', c, '--dry-run', '--additional-space', String(32 * MiB)], { asUser: true });
  assert.equal(r.code, 0, show(r));
  assert.match(r.stdout, /the image would grow by/);

  const sha = sha256File(c);
  for (const bad of ['lots', '-5', '12Q', '']) {
    const e = transplant(['inject', s.bundle, '--disk', c, '--additional-space', bad], { asUser: true });
    assertOneLineError(e, `--additional-space ${bad}`);
    assert.match(e.stderr, /--additional-space .*not a size/);
  }
  assert.equal(sha256File(c), sha);
  const root = path.join(s.work, 'rd-space');
  copyTree(s.fx.targetResinData, root);
  const e = transplant(['inject', s.bundle, '--resin-data', root, '--additional-space', '1G']);
  assert.equal(e.code, 2, show(e));
  assert.match(e.stderr, /--additional-space goes with --disk/);
});

test('--dont-check-arch (balena\'s name) injects into an image of another architecture; the refusal names it (its older alias --force: disk.test.ts)', T, async () => {
  const s = await getSetup();
  const arm = buildImage(s, 'arch-arm.img', { table: 'mbr', dataMiB: 8, deviceType: AARCH64 });
  const sha = sha256File(arm);
  let r = transplant(['inject', s.bundle, '--disk', arm], { asUser: true });
  assertOneLineError(r, 'amd64 into aarch64');
  assert.match(r.stderr, /fixture\/app-a:1\.0 is amd64, the image is for raspberrypi4-64 \(aarch64\): the device could not run it; pass --dont-check-arch/);
  assert.equal(sha256File(arm), sha);
  r = transplant(['preload', arm, '--from', s.bundle, '--image', 'fixture/app-a:1.0', '--dont-check-arch'], { asUser: true });
  assert.equal(r.code, 0, show(r));
  assert.match(r.stderr, /^warning: fixture\/app-a:1\.0 is amd64/m);
  assertE2fsckClean(arm, s.work);
  assert.ok(lsJson(arm).some((i) => i.id === s.fx.images.appA.id));
});

test('pinning: --pin-device / --pin-device-to-release / -p / --no-pin-device need --apps and say so; with --apps they set pinDevice in the apps.json written into the image', T, async () => {
  const s = await getSetup();
  const APP = 'a1b2c3d4e5f60718293a4b5c6d7e8f90';
  const COMMIT = '0123456789abcdef0123456789abcdef';
  const apps = {
    config: {},
    pinDevice: true,
    apps: { [APP]: { id: 77, name: 'fleet', class: 'fleet', releases: { [COMMIT]: { id: 88, services: { main: { id: 1, image_id: 2, image: 'fixture/app-a:1.0', environment: {}, labels: {} } } } } } },
  };
  const appsFile = path.join(s.userWork, 'pin-apps.json');
  fs.writeFileSync(appsFile, JSON.stringify(apps));
  giveToUser(appsFile);
  const img = buildImage(s, 'pin.img', { table: 'mbr', dataMiB: 8, deviceType: AMD64 });
  const sha = sha256File(img);
  for (const flag of ['--pin-device', '--pin-device-to-release', '-p', '--no-pin-device', '--no-pin-device-to-release']) {
    const r = transplant(['preload', img, '--from', s.bundle, '--image', 'fixture/app-a:1.0', flag], { asUser: true });
    assert.equal(r.code, 2, `${flag} without --apps\n${show(r)}`);
    assert.match(r.stderr, /^error: --(no-)?pin-device sets pinDevice in the apps\.json it writes: it needs --apps <file>/, show(r));
  }
  assert.equal(sha256File(img), sha, 'the image is unchanged');
  const contradict = transplant(['preload', img, '--from', s.bundle, '--apps', appsFile, '--pin-device', '--no-pin-device-to-release'], { asUser: true });
  assertOneLineError(contradict, 'contradicting pin flags');
  const twoImages = transplant(['preload', img, '--disk', path.join(s.userWork, 'other.img'), '--from', s.bundle, '--apps', appsFile], { asUser: true });
  assertOneLineError(twoImages, 'positional image and another --disk');
  assert.match(twoImages.stderr, /two disk images given/);
  // balena preload's --fleet / --commit (-f / -c) fetch a release from balenaCloud: refused, saying what to give instead.
  for (const flag of [['--fleet', 'myorg/myfleet'], ['-c', 'e1f2592fc6ee949e68756d4f4a48e49bff8d72a0']]) {
    const r = transplant(['preload', img, '--from', s.bundle, ...flag], { asUser: true });
    assertOneLineError(r, flag[0] as string);
    assert.match(r.stderr, /transplant does not fetch a release from balenaCloud; give the release's target state with --apps <file>/);
  }

  const readApps = (image: string): Record<string, unknown> => {
    const p = dataPartition(image);
    const copy = extractPartition(image, p.offset, p.size, path.join(s.work, `pin-data-${process.pid}.ext4`));
    try {
      return JSON.parse(runOk('debugfs', ['-R', 'cat /apps.json', copy]).stdout) as Record<string, unknown>;
    } finally {
      fs.rmSync(copy, { force: true });
    }
  };
  // The file says pinDevice: true; --no-pin-device-to-release overrides it.
  let r = transplant(['preload', img, '--from', s.bundle, '--apps', appsFile, '--no-pin-device-to-release'], { asUser: true });
  assert.equal(r.code, 0, show(r));
  assert.notEqual(readApps(img).pinDevice, true, 'pinDevice is not true after --no-pin-device-to-release');
  const img2 = buildImage(s, 'pin2.img', { table: 'gpt', dataMiB: 8, deviceType: AMD64 });
  fs.writeFileSync(appsFile, JSON.stringify({ ...apps, pinDevice: undefined }));
  r = transplant(['preload', img2, '--from', s.bundle, '--apps', appsFile, '-p'], { asUser: true });
  assert.equal(r.code, 0, show(r));
  assert.equal(readApps(img2).pinDevice, true, '-p sets pinDevice');
  assertE2fsckClean(img2, s.work);
});

/** Python's zipfile (python3 is in .ci/run): a zip of `files` with the given method, zip64 when asked. */
function makeZip(zip: string, files: string[], method: 'deflate' | 'stored', zip64 = false): void {
  const script = [
    'import sys, zipfile, os',
    'm = zipfile.ZIP_DEFLATED if sys.argv[2] == "deflate" else zipfile.ZIP_STORED',
    'with zipfile.ZipFile(sys.argv[1], "w", compression=m, allowZip64=True) as z:',
    '    for f in sys.argv[4:]:',
    '        with open(f, "rb") as src, z.open(zipfile.ZipInfo.from_file(f, os.path.basename(f)), "w", force_zip64=(sys.argv[3] == "1")) as dst:',
    '            while True:',
    '                b = src.read(1 << 20)',
    '                if not b: break',
    '                dst.write(b)',
  ].join('\n');
  runOk('python3', ['-c', script, zip, method, zip64 ? '1' : '0', ...files]);
}

/** The plain image a compressed result holds, decompressed by the real tool, for the judges. */
function decompressWithTool(file: string, to: string): string {
  const tool = file.endsWith('.gz') ? 'gzip' : file.endsWith('.xz') ? 'xz' : 'zstd';
  const r = run('sh', ['-c', `${tool} -dc "$1" | cp --sparse=always /dev/stdin "$2"`, 'sh', file, to]);
  assert.equal(r.code, 0, `${tool} -dc ${file}: ${r.stderr}`);
  return to;
}

test('compressed images: --disk balena.img.gz|.xz|.zst|.bz2|.zip (deflate, stored, zip64) decompressed into the work copy, the result under the decompressed name or --output, compressed on the way out for .gz/.xz/.zst; the input is never written', T, async () => {
  requireTools('gzip', 'xz', 'zstd', 'bzip2', 'python3');
  const s = await getSetup();
  const base = buildImage(s, 'comp-base.img', { table: 'mbr', dataMiB: 8, deviceType: AMD64 });
  const baseSha = sha256File(base);
  const inputs: { name: string; make: (to: string) => void; output?: string }[] = [
    { name: 'c1.img.gz', make: (to) => runOk('sh', ['-c', `gzip -c "${base}" > "${to}"`]) },
    { name: 'c2.img.xz', make: (to) => runOk('sh', ['-c', `xz -T0 -c "${base}" > "${to}"`]), output: 'c2-out.img.zst' },
    { name: 'c3.img.zst', make: (to) => runOk('sh', ['-c', `zstd -q -c "${base}" > "${to}"`]), output: 'c3-out.img.gz' },
    { name: 'c4.zip', make: (to) => makeZip(to, [base], 'deflate'), output: 'c4-out.img.xz' },
    { name: 'c5.img.zip', make: (to) => makeZip(to, [base], 'stored', true) },
    // bzip2: older release pages and hand-made archives; decompressed through the bzip2 tool.
    { name: 'c6.img.bz2', make: (to) => runOk('sh', ['-c', `bzip2 -c "${base}" > "${to}"`]) },
  ];
  for (const c of inputs) {
    const input = path.join(s.userWork, c.name);
    c.make(input);
    giveToUser(input);
    const inSha = sha256File(input);
    const dirBefore = listDir(s.userWork);
    const args = ['preload', input, '--from', s.bundle, '--image', 'fixture/app-a:1.0', '--splash-image', s.logo, '--json'];
    if (c.output) args.push('--output', path.join(s.userWork, c.output));
    const r = transplant(args, { asUser: true });
    assert.equal(r.code, 0, `${c.name}\n${show(r)}`);
    assert.equal(sha256File(input), inSha, `${c.name}: the input is unchanged`);
    assert.equal(sha256File(base), baseSha);
    const resultName = c.output ?? (c.name === 'c4.zip' ? 'c4' : c.name.replace(/\.(gz|xz|zst|zip|bz2)$/, ''));
    assert.deepEqual(leftovers(s.userWork, dirBefore), [resultName], `${c.name}: only the result was added (no work copy left)`);
    const result = path.join(s.userWork, resultName);
    const plain = c.output ? decompressWithTool(result, path.join(s.work, `${resultName}.plain`)) : result;
    assert.deepEqual(tableProblems(plain, 'mbr'), [], `${c.name}: partition table`);
    assertE2fsckClean(plain, s.work);
    assert.ok(lsJson(plain).some((i) => i.id === s.fx.images.appA.id), `${c.name}: the result holds the injected image`);
    const boot = partitionOf(plain, 'resin-boot');
    assert.ok(fatFile(plain, boot.offset, 'splash/balena-logo.png', s.work)?.equals(s.logoBytes), `${c.name}: the splash logo is in the result`);
    assertFatClean(plain, boot, s.work, c.name);
    // Messages name the user's file, never the work copy.
    assert.doesNotMatch(r.stdout + r.stderr, /\.transplant-\d+-/, `${c.name}: a work copy name leaked into the output\n${show(r)}`);
    if (plain !== result) fs.rmSync(plain);
  }
});

test('compressed images: damaged or unusable ones are refused with one line, leaving nothing behind', T, async () => {
  requireTools('gzip', 'python3');
  const s = await getSetup();
  const base = buildImage(s, 'compbad-base.img', { table: 'mbr', dataMiB: 8, deviceType: AMD64 });
  const gz = path.join(s.userWork, 'cut.img.gz');
  runOk('sh', ['-c', `gzip -c "${base}" | head -c 200000 > "${gz}"`]);
  const two = path.join(s.userWork, 'two.zip');
  const other = path.join(s.work, 'README');
  fs.writeFileSync(other, 'hello\n');
  makeZip(two, [base, other], 'deflate');
  const notImage = path.join(s.userWork, 'notimage.img.gz');
  runOk('sh', ['-c', `head -c 3000000 /dev/zero | gzip -c > "${notImage}"`]);
  const exists = path.join(s.userWork, 'exists.img.gz');
  runOk('sh', ['-c', `gzip -c "${base}" > "${exists}"`]);
  fs.writeFileSync(path.join(s.userWork, 'exists.img'), 'mine\n');
  for (const f of [gz, two, notImage, exists]) giveToUser(f);
  giveToUser(path.join(s.userWork, 'exists.img'));
  const cases: [string, RegExp][] = [
    [gz, /cut\.img\.gz|unexpected end|gzip/i],
    [two, /two\.zip: the zip archive holds 2 files; expected exactly one/],
    [notImage, /notimage\.img\.gz \(decompressed\) is not a balenaOS disk image/],
    [exists, /the result would be .*exists\.img, which exists; give --output/],
  ];
  for (const [file, want] of cases) {
    const sha = sha256File(file);
    const dirBefore = listDir(s.userWork);
    const r = transplant(['inject', s.bundle, '--disk', file], { asUser: true });
    assertOneLineError(r, path.basename(file));
    assert.match(r.stderr, want, show(r));
    assert.equal(sha256File(file), sha);
    assert.deepEqual(listDir(s.userWork), dirBefore, `${path.basename(file)}: nothing left behind`);
  }
  assert.equal(fs.readFileSync(path.join(s.userWork, 'exists.img'), 'utf8'), 'mine\n', 'an existing file is never overwritten by default');
});

test('compressed images: SIGINT while the image is being decompressed leaves nothing behind; after SIGKILL the next run removes the stale work copy', T, async () => {
  requireTools('gzip');
  const s = await getSetup();
  // A 160 MiB file of random bytes in resin-data makes decompression take a while.
  const tree = path.join(s.work, 'sig-tree');
  copyTree(s.fx.targetResinData, tree);
  runOk('dd', ['if=/dev/urandom', `of=${path.join(tree, 'resin-data', 'random.bin')}`, 'bs=1M', 'count=160', 'status=none']);
  const base = buildImage(s, 'compsig-base.img', { table: 'mbr', dataMiB: 200, deviceType: AMD64, dataDir: tree });
  fs.rmSync(tree, { recursive: true, force: true });
  const gz = path.join(s.userWork, 'sig.img.gz');
  runOk('sh', ['-c', `gzip -1 -c "${base}" > "${gz}"`]);
  giveToUser(gz);
  fs.rmSync(base);
  const sha = sha256File(gz);
  for (const signal of ['SIGINT', 'SIGKILL'] as const) {
    const dirBefore = listDir(s.userWork);
    const child = spawnTransplant(['inject', s.bundle, '--disk', gz], { asUser: true });
    let stderr = '';
    child.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
    child.stdout?.resume();
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    let sent = false;
    for (let i = 0; i < 30_000 && !sent; i++) {
      if (fs.readdirSync(s.userWork).some((f) => f.startsWith('.sig.img.transplant-'))) {
        child.kill(signal);
        sent = true;
      } else await new Promise((r) => setTimeout(r, 2));
    }
    assert.ok(sent, 'the work copy appeared');
    const code = await exited;
    assert.equal(sha256File(gz), sha, 'the compressed input is unchanged');
    assert.ok(!fs.existsSync(path.join(s.userWork, 'sig.img')), 'no result was made');
    if (signal === 'SIGINT') {
      assert.equal(code, 130, `exit 130 after SIGINT\n${stderr}`);
      assert.match(stderr, /^error: interrupted by SIGINT/m);
      assert.deepEqual(leftovers(s.userWork, dirBefore), [], 'nothing left behind after SIGINT');
    } else {
      const left = leftovers(s.userWork, dirBefore);
      assert.ok(left.length >= 1 && left.every((f) => f.startsWith('.sig.img.transplant-')), `SIGKILL leaves only the work copy: ${left.join(', ')}`);
      // The next run (here one that completes) removes the dead run's work copy.
      const r = transplant(['inject', s.bundle, '--disk', gz], { asUser: true });
      assert.equal(r.code, 0, show(r));
      assert.deepEqual(leftovers(s.userWork, dirBefore), ['sig.img'], 'the stale work copy is gone; only the result was added');
      assertE2fsckClean(path.join(s.userWork, 'sig.img'), s.work);
    }
  }
});
