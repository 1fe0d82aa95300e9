/**
 * Issue 13 "Disk images that lie" (items 10, 11, 13) and the FAT engine of src/fat/:
 * partition tables that claim too much (GPT entry arrays, partitions past the end, overlaps,
 * EBR chains that loop, two partitions with one label), FAT file systems with broken chains
 * or a nonsensical boot sector, and a bundle whose manifest declares far more content than
 * it holds. Each must be refused with one `error:` line, leaving the input unchanged and no
 * output behind. What the FAT engine writes is judged by fsck.fat -n, mtools and a kernel
 * loop mount.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { buildBalenaImage, extractPartition, sfdiskPartitions } from './harness/balena-image.js';
import { assertOneLineError, show, transplant } from './harness/cli.js';
import { sha256File } from './harness/disk-judge.js';
import { copyImageFile } from '../src/disk/grow.js';
import { repoRoot, requireTools, run, runOk } from './harness/exec.js';
import { tempDir } from './harness/fixtures.js';
import { bootLocation, readBootFile, readBootInfo, writeBootFile, writeSystemConnection } from '../src/balena/boot-partition.js';
import { staticIpKeyfile } from '../src/balena/network.js';

const T = { timeout: 900_000 };
const work = tempDir('tp-hostile-disk-');
const MTOOLS_ENV = { MTOOLS_SKIP_CHECK: '1' };

let built: { mbr: string; gpt: string; bundle: string } | undefined;

/** One MBR and one GPT balenaOS-like image and the sample's bundle, made once; tests work on copies. */
function inputs(): { mbr: string; gpt: string; bundle: string } {
  if (built) return built;
  const mbr = buildBalenaImage(path.join(work, 'build-mbr'), 'mbr.img', { table: 'mbr', dataMiB: 8 }).path;
  const gpt = buildBalenaImage(path.join(work, 'build-gpt'), 'gpt.img', { table: 'gpt', dataMiB: 8 }).path;
  const bundle = path.join(work, 's.bundle');
  const r = transplant(['extract', '--from', path.join(repoRoot(), 'sample', 'device-docker.tar.gz'), '--image', 'sample/hello:2.0', '-o', bundle]);
  assert.equal(r.code, 0, show(r));
  built = { mbr, gpt, bundle };
  return built;
}

let seq = 0;
function copyOf(img: string): string {
  const to = path.join(work, `case-${seq++}-${path.basename(img)}`);
  runOk('cp', ['--sparse=always', img, to]);
  return to;
}

/** Files beside `img` that a run may have left (work copies, resize temp files). */
function leftovers(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.includes('.transplant-'));
}

/**
 * A disk run refused: exit 1 with one `error:` line matching `why`, the input byte for
 * byte as it was, no output and no work file left. Both `ls` and `inject --disk --output`.
 */
function assertRefused(img: string, why: RegExp, what: string, opts: { ls?: boolean; timeoutMs?: number } = {}): void {
  const before = sha256File(img);
  const out = `${img}.out`;
  const runs = [
    ['inject', inputs().bundle, '--disk', img, '--output', out, '--static-ip', '10.0.0.3/24'],
    ...(opts.ls === false ? [] : [['ls', img]]),
  ];
  for (const args of runs) {
    const r = transplant(args, { timeoutMs: opts.timeoutMs ?? 120_000 });
    assertOneLineError(r, `${what}: ${args[0]}`);
    assert.match(r.stderr, why, `${what}: ${args[0]}\n${show(r)}`);
  }
  assert.equal(sha256File(img), before, `${what}: the input image changed`);
  assert.equal(fs.existsSync(out), false, `${what}: an output image was left`);
  assert.deepEqual(leftovers(path.dirname(img)), [], `${what}: work files were left`);
}

// ---- GPT: header and entries rewritten with valid CRCs (what a crafted image does) ----

function u64(b: Buffer, at: number): number {
  return Number(b.readBigUInt64LE(at));
}

/** Rewrites the GPT of `img`: `entries` edits the entry array in both copies; `header` edits the primary header last. CRCs are made valid. */
function rewriteGpt(img: string, edit: { entries?: (arr: Buffer, entrySize: number) => void; header?: (hdr: Buffer) => void }): void {
  const fd = fs.openSync(img, 'r+');
  try {
    const read = (at: number, n: number) => {
      const b = Buffer.alloc(n);
      fs.readSync(fd, b, 0, n, at);
      return b;
    };
    const hdr = read(512, 512);
    const size = hdr.readUInt32LE(80) * hdr.readUInt32LE(84);
    const arr = read(u64(hdr, 72) * 512, size);
    if (edit.entries) {
      edit.entries(arr, hdr.readUInt32LE(84));
      const backupAt = u64(hdr, 32) * 512;
      const bh = read(backupAt, 512);
      fs.writeSync(fd, arr, 0, arr.length, u64(bh, 72) * 512);
      bh.writeUInt32LE(crc32(arr), 88);
      bh.writeUInt32LE(0, 16);
      bh.writeUInt32LE(crc32(bh.subarray(0, bh.readUInt32LE(12))), 16);
      fs.writeSync(fd, bh, 0, 512, backupAt);
      fs.writeSync(fd, arr, 0, arr.length, u64(hdr, 72) * 512);
      hdr.writeUInt32LE(crc32(arr), 88);
    }
    edit.header?.(hdr);
    hdr.writeUInt32LE(0, 16);
    hdr.writeUInt32LE(crc32(hdr.subarray(0, Math.min(512, Math.max(0, hdr.readUInt32LE(12))))), 16);
    fs.writeSync(fd, hdr, 0, 512, 512);
  } finally {
    fs.closeSync(fd);
  }
}

/** The CRC32 of `n` bytes of the file from `at` (zeros past its end), as a crafted header would carry. */
function crcOfRange(img: string, at: number, n: number): number {
  const fd = fs.openSync(img, 'r');
  try {
    let crc = 0;
    const buf = Buffer.alloc(1 << 20);
    for (let done = 0; done < n; ) {
      const k = Math.min(buf.length, n - done);
      buf.fill(0);
      fs.readSync(fd, buf, 0, k, at + done);
      crc = crc32(buf.subarray(0, k), crc);
      done += k;
    }
    return crc;
  } finally {
    fs.closeSync(fd);
  }
}

test('item 11: a GPT header claiming a huge or malformed entry array is refused at once, with one line', T, () => {
  const { gpt } = inputs();
  const cases: Array<[string, (img: string) => void, RegExp]> = [
    // entry size 0, 2^32-1 entries, array CRC of nothing: time linear in the count before.
    ['entry size 0 x 4G entries', (img) => rewriteGpt(img, { header: (h) => { h.writeUInt32LE(0xffffffff, 80); h.writeUInt32LE(0, 84); h.writeUInt32LE(0, 88); } }), /entries of 0 bytes/],
    ['entry size 16', (img) => rewriteGpt(img, { header: (h) => h.writeUInt32LE(16, 84) }), /entries of 16 bytes/],
    ['entry size 132 (not a multiple of 8)', (img) => rewriteGpt(img, { header: (h) => h.writeUInt32LE(132, 84) }), /entries of 132 bytes/],
    [
      '100000 entries of 128 bytes with a matching CRC',
      (img) => rewriteGpt(img, {
        header: (h) => {
          h.writeUInt32LE(100000, 80);
          h.writeUInt32LE(crcOfRange(img, u64(h, 72) * 512, 100000 * 128), 88);
        },
      }),
      /claims 100000 entries/,
    ],
    ['4G entries of 128 bytes', (img) => rewriteGpt(img, { header: (h) => h.writeUInt32LE(0xffffffff, 80) }), /claims 4294967295 entries/],
    ['header size 8', (img) => rewriteGpt(img, { header: (h) => h.writeUInt32LE(8, 12) }), /header claims a size of 8 bytes/],
    ['entry array LBA 2^40', (img) => rewriteGpt(img, { header: (h) => h.writeBigUInt64LE(1n << 40n, 72) }), /entry array LBA \d+ is beyond the end of the file/],
    ['header CRC wrong', (img) => {
      const fd = fs.openSync(img, 'r+');
      fs.writeSync(fd, Buffer.from([0x5a]), 0, 1, 512 + 20);
      fs.closeSync(fd);
    }, /GPT header checksum is wrong/],
    ['backup header damaged', (img) => {
      const hdr = Buffer.alloc(512);
      const fd = fs.openSync(img, 'r+');
      fs.readSync(fd, hdr, 0, 512, 512);
      fs.writeSync(fd, Buffer.alloc(512), 0, 512, u64(hdr, 32) * 512);
      fs.closeSync(fd);
    }, /backup GPT header has no "EFI PART" signature/],
  ];
  for (const [what, craft, why] of cases) {
    const img = copyOf(gpt);
    craft(img);
    assertRefused(img, new RegExp(`partition table is damaged|${why.source}`), what, { timeoutMs: 60_000 });
    assert.match(transplant(['ls', img]).stderr, why, what);
    fs.rmSync(img);
  }
});

test('item 10: GPT partitions that overlap, end past the file or end before they start are refused before any write', T, () => {
  const { gpt } = inputs();
  const cases: Array<[string, (arr: Buffer, es: number) => void, RegExp]> = [
    // resin-state (entry 4) moved inside resin-data (entry 5): sfdisk -V reports the overlap.
    ['resin-state inside resin-data', (arr, es) => {
      const dataFirst = arr.readBigUInt64LE(4 * es + 32);
      const len = arr.readBigUInt64LE(3 * es + 40) - arr.readBigUInt64LE(3 * es + 32);
      arr.writeBigUInt64LE(dataFirst + 2048n, 3 * es + 32);
      arr.writeBigUInt64LE(dataFirst + 2048n + len, 3 * es + 40);
    }, /partition 4 and partition 5 overlap|partition 5 and partition 4 overlap/],
    ['resin-rootA stretched over everything after it', (arr, es) => arr.writeBigUInt64LE(arr.readBigUInt64LE(4 * es + 40), 1 * es + 40), /partition 2 and partition 3 overlap/],
    ['resin-data ending 1 TiB past the file', (arr, es) => arr.writeBigUInt64LE(1n << 31n, 4 * es + 40), /GPT partition 5 \(sectors \d+–2147483648\) lies outside the usable sectors/],
    ['resin-data ending before it starts', (arr, es) => arr.writeBigUInt64LE(arr.readBigUInt64LE(4 * es + 32) - 10n, 4 * es + 40), /GPT partition 5 ends \(sector \d+\) before it starts/],
  ];
  for (const [what, edit, why] of cases) {
    const img = copyOf(gpt);
    rewriteGpt(img, { entries: edit });
    if (what.startsWith('resin-state')) assert.match(run('sfdisk', ['-V', img]).stdout + run('sfdisk', ['-V', img]).stderr, /overlap/i, 'sfdisk agrees');
    assertRefused(img, why, what);
    fs.rmSync(img);
  }
});

/** MBR entry `i` (0..3) of the sector at `lba`. */
function editMbr(img: string, lba: number, i: number, fields: { type?: number; start?: number; sectors?: number }): void {
  const fd = fs.openSync(img, 'r+');
  try {
    const s = Buffer.alloc(512);
    fs.readSync(fd, s, 0, 512, lba * 512);
    const e = 446 + i * 16;
    if (fields.type !== undefined) s[e + 4] = fields.type;
    if (fields.start !== undefined) s.writeUInt32LE(fields.start, e + 8);
    if (fields.sectors !== undefined) s.writeUInt32LE(fields.sectors, e + 12);
    fs.writeSync(fd, s, 0, 512, lba * 512);
  } finally {
    fs.closeSync(fd);
  }
}

function mbrEntry(img: string, lba: number, i: number): { type: number; start: number; sectors: number } {
  const fd = fs.openSync(img, 'r');
  try {
    const s = Buffer.alloc(512);
    fs.readSync(fd, s, 0, 512, lba * 512);
    const e = 446 + i * 16;
    return { type: s[e + 4], start: s.readUInt32LE(e + 8), sectors: s.readUInt32LE(e + 12) };
  } finally {
    fs.closeSync(fd);
  }
}

test('item 10: MBR tables that overlap, loop or leave the file are refused before any write', T, () => {
  const { mbr } = inputs();
  const size = fs.statSync(mbr).size / 512;
  const ext = mbrEntry(mbr, 0, 3).start;
  const cases: Array<[string, (img: string) => void, RegExp]> = [
    ['p2 over the extended partition', (img) => editMbr(img, 0, 1, { sectors: size - mbrEntry(img, 0, 1).start }), /partition 2 overlaps the extended partition 4/],
    ['p1 over p2', (img) => editMbr(img, 0, 0, { sectors: mbrEntry(img, 0, 1).start }), /partition 1 and partition 2 overlap/],
    ['the file truncated inside resin-data', (img) => fs.truncateSync(img, fs.statSync(img).size - 16 * 1024 * 1024), /ends beyond the end of the file/],
    ['the first EBR linking to itself', (img) => editMbr(img, ext, 1, { type: 5, start: 0, sectors: 8 }), /EBR chain loops/],
    ['the last EBR linking back to the first', (img) => {
      const second = ext + mbrEntry(img, ext, 1).start;
      editMbr(img, second, 1, { type: 5, start: 0, sectors: 8 });
    }, /EBR chain loops/],
    ['a logical partition claiming 2 TiB', (img) => {
      const second = ext + mbrEntry(img, ext, 1).start;
      editMbr(img, second, 0, { sectors: 0xfffffff0 });
    }, /logical partition 6 .* does not lie inside the extended partition/],
    ['the extended partition at sector 0', (img) => editMbr(img, 0, 3, { start: 0 }), /starts at sector 0, over the MBR/],
  ];
  for (const [what, craft, why] of cases) {
    const img = copyOf(mbr);
    craft(img);
    assertRefused(img, why, what);
    fs.rmSync(img);
  }
});

test('one rule finds partitions for every command: two partitions labelled resin-data are refused, not guessed', T, () => {
  requireTools('tune2fs');
  const { mbr } = inputs();
  const img = copyOf(mbr);
  // resin-rootB (p3) relabelled resin-data: before, `ls` and `inject` used whichever came first.
  const p3 = sfdiskPartitions(img).find((p) => p.index === 3)!;
  const part = extractPartition(img, p3.offset, p3.size, path.join(work, 'p3.ext4'));
  runOk('tune2fs', ['-L', 'resin-data', part]);
  runOk('dd', [`if=${part}`, `of=${img}`, 'bs=1M', `seek=${p3.offset}`, 'oflag=seek_bytes', 'conv=notrunc', 'status=none']);
  fs.rmSync(part);
  assertRefused(img, /partitions 3 and 6 are both labelled resin-data; refusing to guess/, 'two resin-data');
  fs.rmSync(img);
});

// ---- FAT: the harness's resin-boot (mkfs.vfat, FAT12/16) with its FAT or entries broken ----

interface FatLayout {
  offset: number;
  bps: number;
  spc: number;
  fat: number;
  fatBytes: number;
  numFats: number;
  root: number;
  bits: 12 | 16;
}

function fatLayout(img: string): FatLayout {
  const offset = sfdiskPartitions(img).find((p) => p.index === 1)!.offset;
  const bs = Buffer.alloc(512);
  const fd = fs.openSync(img, 'r');
  fs.readSync(fd, bs, 0, 512, offset);
  fs.closeSync(fd);
  const bps = bs.readUInt16LE(11);
  const fatBytes = bs.readUInt16LE(22) * bps;
  const numFats = bs[16];
  const fat = offset + bs.readUInt16LE(14) * bps;
  const bits = bs.toString('latin1', 0x36, 0x3b) === 'FAT12' ? 12 : 16;
  assert.match(bs.toString('latin1', 0x36, 0x3b), /FAT1[26]/, 'the harness makes resin-boot FAT12/16');
  return { offset, bps, spc: bs[13], fat, fatBytes, numFats, root: fat + numFats * fatBytes, bits };
}

function setFat(img: string, l: FatLayout, cluster: number, value: number): void {
  const fd = fs.openSync(img, 'r+');
  try {
    for (let k = 0; k < l.numFats; k++) {
      const base = l.fat + k * l.fatBytes;
      if (l.bits === 16) {
        const b = Buffer.alloc(2);
        b.writeUInt16LE(value);
        fs.writeSync(fd, b, 0, 2, base + cluster * 2);
      } else {
        const at = base + cluster + (cluster >> 1);
        const b = Buffer.alloc(2);
        fs.readSync(fd, b, 0, 2, at);
        const v = b.readUInt16LE();
        b.writeUInt16LE(cluster & 1 ? (v & 0x000f) | (value << 4) : (v & 0xf000) | value);
        fs.writeSync(fd, b, 0, 2, at);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Byte offset of the short root entry whose name starts with `prefix` (mcopy's DEVICE~1JSO, CONFIG~1JSO). */
function rootEntry(img: string, l: FatLayout, prefix: string): { at: number; cluster: number } {
  const buf = Buffer.alloc(16 * 1024);
  const fd = fs.openSync(img, 'r');
  fs.readSync(fd, buf, 0, buf.length, l.root);
  fs.closeSync(fd);
  for (let at = 0; at < buf.length; at += 32) {
    if (buf[at] === 0) break;
    if (buf[at + 11] === 0x0f || buf[at] === 0xe5) continue;
    if (buf.toString('latin1', at, at + prefix.length) === prefix) return { at: l.root + at, cluster: buf.readUInt16LE(at + 26) };
  }
  throw new Error(`harness: no root entry ${prefix}`);
}

function patch(img: string, at: number, bytes: Buffer): void {
  const fd = fs.openSync(img, 'r+');
  fs.writeSync(fd, bytes, 0, bytes.length, at);
  fs.closeSync(fd);
}

const u16 = (v: number) => Buffer.from([v & 0xff, v >> 8]);
const u32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };

test('item 10: a corrupt resin-boot FAT is refused with one line before anything is written; device-type.json is never overwritten', T, () => {
  requireTools('mcopy', 'fsck.fat');
  const { gpt } = inputs();
  const cases: Array<[string, (img: string, l: FatLayout) => void, RegExp]> = [
    ["device-type.json's cluster marked free", (img, l) => setFat(img, l, rootEntry(img, l, 'DEVICE').cluster, 0), /resin-boot\/device-type\.json: its cluster chain reaches cluster \d+, which the FAT marks free/],
    ['device-type.json claiming 1 MiB, its cluster chained to itself', (img, l) => {
      const e = rootEntry(img, l, 'DEVICE');
      patch(img, e.at + 28, u32(1 << 20));
      setFat(img, l, e.cluster, e.cluster);
    }, /device-type\.json: its cluster chain loops/],
    ['device-type.json claiming 4 GiB', (img, l) => patch(img, rootEntry(img, l, 'DEVICE').at + 28, u32(0xffffffff)), /device-type\.json: 4294967295 bytes, but its cluster chain holds/],
    ["device-type.json's first cluster far outside", (img, l) => patch(img, rootEntry(img, l, 'DEVICE').at + 26, u16(l.bits === 12 ? 0xff0 : 0xfff0)), /device-type\.json: its cluster chain points to cluster \d+, outside/],
    ['config.json cross-linked into device-type.json', (img, l) => patch(img, rootEntry(img, l, 'CONFIG').at + 26, u16(rootEntry(img, l, 'DEVICE').cluster)), /cross-linked with .*resin-boot\/(device-type|config)\.json/],
    ['0 sectors per cluster', (img, l) => patch(img, l.offset + 13, Buffer.from([0])), /FAT boot sector is not valid \(0 sectors per cluster\)/],
    ['0 bytes per sector', (img, l) => patch(img, l.offset + 11, u16(0)), /FAT boot sector is not valid \(0 bytes per sector\)/],
    ['a FAT of 65535 sectors', (img, l) => patch(img, l.offset + 22, u16(0xffff)), /FAT boot sector is not valid/],
    ['65535 root entries', (img, l) => patch(img, l.offset + 17, u16(0xffff)), /FAT boot sector is not valid/],
  ];
  for (const [what, craft, why] of cases) {
    const img = copyOf(gpt);
    craft(img, fatLayout(img));
    assertRefused(img, why, what, { ls: false });
    fs.rmSync(img);
  }
});

// ---- The FAT engine writing: FAT12, FAT16, FAT32 judged by fsck.fat, mtools and the kernel ----

/** An MBR image with one FAT partition labelled resin-boot made by mkfs.vfat, holding device-type.json, config.json and splash/. */
function fatImage(name: string, mib: number, mkfs: string[]): { img: string; offset: number; size: number } {
  const img = path.join(work, name);
  fs.writeFileSync(img, '');
  fs.truncateSync(img, (mib + 2) * 1024 * 1024);
  runOk('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', img], { input: `label: dos\nstart=2048, size=${mib * 2048}, type=c\n` });
  const part = `${img}.fat`;
  fs.writeFileSync(part, '');
  fs.truncateSync(part, mib * 1024 * 1024);
  runOk('mkfs.vfat', [...mkfs, '-n', 'resin-boot', part]);
  const src = path.join(work, `${name}.src`);
  fs.mkdirSync(path.join(src, 'splash'), { recursive: true });
  fs.writeFileSync(path.join(src, 'device-type.json'), JSON.stringify({ slug: 'raspberrypi4-64', arch: 'aarch64' }));
  fs.writeFileSync(path.join(src, 'config.json'), JSON.stringify({ deviceType: 'raspberrypi4-64' }));
  fs.writeFileSync(path.join(src, 'splash', 'balena-logo.png'), randomBytes(3000));
  runOk('mcopy', ['-s', '-i', part, path.join(src, 'device-type.json'), path.join(src, 'config.json'), path.join(src, 'splash'), '::'], { env: MTOOLS_ENV });
  runOk('dd', [`if=${part}`, `of=${img}`, 'bs=1M', 'seek=1', 'conv=notrunc', 'status=none']);
  fs.rmSync(part);
  return { img, offset: 1024 * 1024, size: mib * 1024 * 1024 };
}

function fsckFatClean(img: string, offset: number, size: number): void {
  const part = extractPartition(img, offset, size, path.join(work, 'judge.fat'));
  const r = run('fsck.fat', ['-n', part]);
  fs.rmSync(part);
  assert.equal(r.code, 0, `fsck.fat -n: ${r.stdout}${r.stderr}`);
  assert.doesNotMatch(r.stdout, /differ|wrong|Free cluster|lost|cross|invalid|bad/i, r.stdout);
}

function mtoolsBytes(img: string, offset: number, file: string): Buffer {
  const r = run('mcopy', ['-n', '-i', `${img}@@${offset}`, `::/${file}`, '-'], { env: MTOOLS_ENV });
  assert.equal(r.code, 0, `mcopy ${file}: ${r.stderr}`);
  return r.stdoutBytes;
}

/** What the FAT engine tests wrote, for the kernel to read back. */
const written: Array<{ fatName: string; img: string; offset: number; size: number; expected: Map<string, Buffer> }> = [];

for (const [fatName, mib, mkfs] of [
  ['FAT12', 2, ['-F', '12', '-s', '1']],
  ['FAT16', 20, ['-F', '16', '-s', '1']],
  ['FAT32', 40, ['-F', '32', '-s', '1']],
] as const) {
  test(`FAT engine (${fatName}): long names, replaced and new files, new and growing directories; fsck.fat and mtools agree`, T, async () => {
    requireTools('mkfs.vfat', 'mcopy', 'mdir', 'fsck.fat', 'sfdisk');
    const { img, offset, size } = fatImage(`engine-${fatName}.img`, mib, [...mkfs]);
    const loc = await bootLocation(img);
    const expected = new Map<string, Buffer>();
    const put = async (rel: string, data: Buffer, overwrite = false) => {
      const r = await writeBootFile(loc, rel, data, { overwrite });
      expected.set(rel, data);
      return r;
    };
    // device-type.json is refused without overwrite, then replaced by a larger one (several clusters).
    await assert.rejects(writeBootFile(loc, 'device-type.json', '{}'), /device-type\.json already exists with other content/);
    const dt = Buffer.from(JSON.stringify({ slug: 'raspberrypi4-64', arch: 'aarch64', pad: 'x'.repeat(1500) }));
    assert.equal((await put('device-type.json', dt, true)).replaced, true);
    // config.json replaced by a smaller one: the freed clusters are free again (fsck counts them).
    await put('config.json', Buffer.from('{"deviceType":"raspberrypi4-64","hostname":"x"}'), true);
    await put('splash/balena-logo.png', randomBytes(70_000), true);
    await put('splash/resin-logo.png', randomBytes(513));
    // A new directory with many long names: it grows past its first cluster (512-byte clusters).
    for (let i = 0; i < 30; i++) {
      const k = staticIpKeyfile({ specs: `10.0.${i}.5/24`, interfaceName: `eth${i}` });
      const name = `connection-number-${String(i).padStart(2, '0')}-with-a-long-name`;
      await writeSystemConnection(loc, { fileName: name, content: k.content });
      expected.set(`system-connections/${name}`, Buffer.from(k.content));
    }
    await put('EMPTY', Buffer.alloc(0));
    await put('MixedCase.Name.With.Dots', Buffer.from('dots'));
    // Same short-name basis many times: numeric tails ~1, ~2, … stay unique.
    for (let i = 0; i < 12; i++) await put(`system-connections/static-eth${i}.nmconnection`, Buffer.from(`k${i}`));

    // Our own reader.
    for (const [rel, data] of expected) assert.deepEqual(await readBootFile(loc, rel), data, `readBootFile ${rel}`);
    assert.equal((await readBootInfo(loc)).arch, 'aarch64');
    // fsck.fat: no errors, FATs equal, free count (FSInfo on FAT32) right.
    fsckFatClean(img, offset, size);
    // mtools reads every file back, by its long name.
    for (const [rel, data] of expected) assert.deepEqual(mtoolsBytes(img, offset, rel), data, `mcopy ${rel}`);
    const listing = runOk('mdir', ['-b', '-i', `${img}@@${offset}`, '::/system-connections'], { env: MTOOLS_ENV }).stdout;
    assert.match(listing, /connection-number-29-with-a-long-name/);
    written.push({ fatName, img, offset, size, expected });
  });
}

test('another FAT implementation (fusefat, through FUSE) reads back every name and byte the FAT engine wrote (FAT12, FAT16, FAT32)', T, () => {
  // The judge is fusefat, not the kernel's vfat: this kind of machine's kernel is built without
  // CONFIG_VFAT_FS (see /proc/filesystems) but has FUSE. fusefat takes a whole file system, so
  // the partition is copied out of the image first.
  requireTools('fusefat', 'umount');
  assert.equal(written.length, 3, 'the FAT engine tests ran first');
  for (const { fatName, img, offset, size, expected } of written) {
    const part = path.join(work, `${fatName}-boot.part`);
    const fd = fs.openSync(img, 'r');
    const buf = Buffer.alloc(size);
    fs.readSync(fd, buf, 0, size, offset);
    fs.closeSync(fd);
    fs.writeFileSync(part, buf);
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    runOk('fusefat', ['-o', 'ro', part, mnt]);
    try {
      for (const [rel, data] of expected) assert.deepEqual(fs.readFileSync(path.join(mnt, rel)), data, `${fatName}: fusefat ${rel}`);
      const names = fs.readdirSync(path.join(mnt, 'system-connections')).filter((n) => n !== '.' && n !== '..');
      assert.equal(names.length, 42, `${fatName}: ${names.join(' ')}`);
      assert.ok(names.includes('static-eth11.nmconnection') && names.includes('connection-number-00-with-a-long-name'), names.join(' '));
      assert.ok(fs.readdirSync(mnt).includes('MixedCase.Name.With.Dots'));
    } finally {
      runOk('umount', [mnt]);
      fs.rmdirSync(mnt);
      fs.rmSync(part);
    }
  }
});

// ---- Item 13: a bundle whose manifest declares 50 GB of content ----

/** A copy of `bundle` whose manifest (its first entry) is changed by the Python statements `code` on `m`. */
function rebundle(bundle: string, to: string, code: string): void {
  requireTools('python3');
  const py = [
    'import sys, tarfile, json, io',
    'tin = tarfile.open(sys.argv[1], "r:"); tout = tarfile.open(sys.argv[2], "w:", format=tarfile.PAX_FORMAT); first = True',
    'for ti in tin:',
    '    data = tin.extractfile(ti).read() if ti.isfile() else None',
    '    if first:',
    '        m = json.loads(data); exec(sys.argv[3], {"m": m}); data = json.dumps(m).encode(); ti.size = len(data); first = False',
    '    tout.addfile(ti, io.BytesIO(data) if data is not None else None)',
    'tout.close()',
  ].join('\n');
  runOk('python3', ['-c', py, bundle, to, code]);
}

test('item 13: a manifest declaring 50 GB in a 40 KB bundle never grows the image: refused from a file and from standard input', T, () => {
  const { gpt, bundle } = inputs();
  const lie = path.join(work, 'lie.bundle');
  rebundle(bundle, lie, 'm["layers"][1]["bytes"] = 50 * 10**9; m["layers"][1]["size"] = 50 * 10**9');
  const img = copyOf(gpt);
  const before = sha256File(img);
  const out = `${img}.out`;
  const r = transplant(['inject', lie, '--disk', img, '--output', out], { timeoutMs: 120_000 });
  assertOneLineError(r, 'lying bundle');
  assert.match(r.stderr, /lie\.bundle: its layers declare 50000000\d+ bytes in \d+ files, more than the \d+ bytes the input can hold/);
  assert.equal(fs.existsSync(out), false, 'no output image');
  assert.deepEqual(leftovers(work), []);
  // Standard input is spooled, so its size bounds the manifest too; the spool is removed.
  const tmp = fs.mkdtempSync(path.join(work, 'tmpdir-'));
  const piped = run(process.execPath, [path.join(repoRoot(), 'bin', 'transplant'), 'inject', '-', '--disk', img, '--output', out], {
    input: fs.readFileSync(lie), env: { TMPDIR: tmp }, timeoutMs: 120_000,
  });
  assertOneLineError(piped, 'lying bundle on stdin');
  assert.match(piped.stderr, /standard input: its layers declare 50000000\d+ bytes/);
  assert.deepEqual(fs.readdirSync(tmp), [], 'the spool of standard input is removed');
  assert.equal(fs.existsSync(out), false);
  assert.equal(sha256File(img), before, 'the input image changed');
  // The honest bundle still goes in, through standard input too.
  const ok = run(process.execPath, [path.join(repoRoot(), 'bin', 'transplant'), 'inject', '-', '--disk', img, '--output', out], {
    input: fs.readFileSync(bundle), env: { TMPDIR: tmp }, timeoutMs: 300_000,
  });
  assert.equal(ok.code, 0, show(ok));
  assert.ok(fs.statSync(out).size <= fs.statSync(img).size + 64 * 1024 * 1024, 'no growth beyond what the content needs');
  assert.deepEqual(fs.readdirSync(tmp), []);
  fs.rmSync(out);
  fs.rmSync(img);
});

test('item 13: a lie small enough to pass the size bound is caught when the layer arrives, and the run is undone', T, () => {
  const { gpt, bundle } = inputs();
  // gzip: the bound is 1032 times the file (deflate's limit), so 2 MB declared passes planning.
  const lie = path.join(work, 'lie2m.bundle');
  rebundle(bundle, lie, 'm["layers"][1]["bytes"] = 2 * 10**6');
  runOk('gzip', ['-9', '-f', lie]);
  const img = copyOf(gpt);
  const before = sha256File(img);
  const out = `${img}.out`;
  const r = transplant(['inject', `${lie}.gz`, '--disk', img, '--output', out], { timeoutMs: 300_000 });
  assertOneLineError(r, 'lie within the bound');
  assert.match(r.stderr, /holds \d+ bytes of files, the manifest says 2000000 \(corrupt bundle\)/);
  assert.equal(fs.existsSync(out), false);
  assert.deepEqual(leftovers(work), []);
  assert.equal(sha256File(img), before);
  fs.rmSync(img);
});

/** Bytes the sparse work copy of `img` takes: its non-zero MiB chunks (src/disk/grow.ts copies MiB by MiB, leaving zero ones as holes). */
/** Bytes a work copy of `img` occupies, made the way transplant makes it (its data ranges, zero MiB runs left as holes). */
async function workCopyBytes(img: string): Promise<number> {
  const copy = `${img}.measure`;
  await copyImageFile(img, copy);
  try {
    return fs.statSync(copy).blocks * 512;
  } finally {
    fs.rmSync(copy);
  }
}

test('item 13: content declared beyond the free space where the work copy lives is refused before the image grows', T, async () => {
  requireTools('mount', 'umount', 'gzip');
  const { gpt, bundle } = inputs();
  // 3 MB declared in a gzip'd bundle passes the input-size bound; the output's file system
  // has room for the work copy and 1 MiB more.
  const lie = path.join(work, 'lie3m.bundle');
  rebundle(bundle, lie, 'm["layers"][1]["bytes"] = 3 * 10**6');
  runOk('gzip', ['-9', '-f', lie]);
  const img = copyOf(gpt);
  const before = sha256File(img);
  const mnt = fs.mkdtempSync(path.join(work, 'small-'));
  runOk('mount', ['-t', 'tmpfs', '-o', `size=${(await workCopyBytes(img)) + (1 << 20)}`, 'tmpfs', mnt]);
  try {
    const out = path.join(mnt, 'out.img');
    const r = transplant(['inject', `${lie}.gz`, '--disk', img, '--output', out], { timeoutMs: 300_000 });
    assertOneLineError(r, 'declared content beyond the free space');
    assert.match(r.stderr, /the planned content takes \d+ bytes, but only \d+ bytes are free in .*small-/);
    assert.deepEqual(fs.readdirSync(mnt), [], 'no output and no work copy left');
  } finally {
    runOk('umount', [mnt]);
    fs.rmdirSync(mnt);
  }
  assert.equal(sha256File(img), before);
  fs.rmSync(img);
});
