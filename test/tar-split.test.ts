/**
 * tar-split: CRC-64/ISO, generation compared line by line with what a real engine writes
 * for the same tar (`docker import`), reassembly byte for byte, and the first bad file named.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { Dockerd } from './harness/dockerd.js';
import { runOk, requireTools } from './harness/exec.js';
import { tempDir } from './harness/fixtures.js';
import {
  Crc64,
  TarSplitFileError,
  assembleTar,
  assembledDigest,
  crc64,
  disassembleTar,
  readTarSplit,
  type FileOpener,
} from '../src/engine/tar-split.js';
import { HostReader } from '../src/sources/store-reader.js';
import { verifyEngineRoot } from '../src/verify/verify.js';

function fileChunks(file: string): AsyncIterable<Buffer> {
  return fs.createReadStream(file, { highWaterMark: 7777 }) as AsyncIterable<Buffer>;
}

/** The first differing line of two texts, shortened (undefined when equal). */
function firstDifference(ours: string, theirs: string): string | undefined {
  const a = ours.split('\n');
  const b = theirs.split('\n');
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i]) return `line ${i + 1}: ours ${JSON.stringify((a[i] ?? '<none>').slice(0, 200))} engine ${JSON.stringify((b[i] ?? '<none>').slice(0, 200))}`;
  }
  return undefined;
}

function sha256File(file: string): string {
  return 'sha256:' + createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Opens tar names under an extracted copy (byte names, as the engine's PathFileGetter does). */
function opener(root: string): FileOpener {
  return (_name, nameBytes) => fs.createReadStream(Buffer.concat([Buffer.from(root + '/'), nameBytes])) as AsyncIterable<Buffer>;
}

/** A tree with what layer tars hold: long and non-UTF-8 names, hard links, xattrs, empty and block-sized files. */
function stage(dir: string): void {
  requireTools('tar', 'setfattr', 'mkfifo', 'bash');
  fs.mkdirSync(dir, { recursive: true });
  runOk('/bin/bash', ['-euo', 'pipefail', '-c', [
    'mkdir -p etc "deep/' + 'x'.repeat(90) + '/' + 'y'.repeat(90) + '" "ünï/каталог"',
    'printf "hello\\n" > etc/hello',
    ': > etc/empty',
    'head -c 512 /dev/zero | tr "\\0" a > etc/block',
    'head -c 1048579 /dev/urandom > etc/big',
    'ln etc/hello etc/hello-link',
    'ln -s ../etc/hello etc/rel-link',
    'printf "long\\n" > "deep/' + 'x'.repeat(90) + '/' + 'y'.repeat(90) + '/' + 'z'.repeat(120) + '"',
    'printf "raw\\n" > $\'etc/raw-\\xff-name\'',
    'printf "x\\n" > "ünï/каталог/файл <&>"',
    'setfattr -n user.k -v v etc/hello',
    'mkfifo etc/fifo',
    'touch -d @1500000000.123456789 etc/hello',
    'mkdir -p gone && : > gone/.wh.deleted && : > gone/.wh..wh..opq',
  ].join('\n')], { cwd: dir });
}

test('crc64: the CRC-64/ISO check value, and streaming equals one shot', () => {
  assert.equal(crc64(Buffer.from('123456789')).toString('hex'), 'b90956c775a41001');
  assert.equal(crc64(Buffer.alloc(0)).toString('hex'), '0000000000000000');
  const data = Buffer.alloc(100_003);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7919) & 0xff;
  // Against a bit-at-a-time reference (the definition, no tables).
  const reference = (d: Buffer): string => {
    let crc = 0xffffffffffffffffn;
    for (const byte of d) {
      crc ^= BigInt(byte);
      for (let k = 0; k < 8; k++) crc = crc & 1n ? (crc >> 1n) ^ 0xd800000000000000n : crc >> 1n;
    }
    return (crc ^ 0xffffffffffffffffn).toString(16).padStart(16, '0');
  };
  for (const len of [0, 1, 7, 8, 9, 15, 16, 17, 1000]) assert.equal(crc64(data.subarray(3, 3 + len)).toString('hex'), reference(data.subarray(3, 3 + len)), `length ${len}`);
  const c = new Crc64();
  for (let off = 0; off < data.length; off += 997) c.update(data.subarray(off, off + 997));
  assert.deepEqual(c.digest(), crc64(data));
  // Throughput (a layer of 100 MB must not take minutes).
  const big = Buffer.alloc(64 << 20, 7);
  const t0 = process.hrtime.bigint();
  crc64(big);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  assert.ok(ms < 4000, `crc64 of 64 MiB took ${ms} ms`);
});

test('tar-split: generated from GNU tar archives (pax and gnu formats) it rebuilds them byte for byte', { timeout: 120_000 }, async () => {
  const work = tempDir('tpts-');
  const src = path.join(work, 'src');
  stage(src);
  for (const format of ['posix', 'gnu']) {
    const tarFile = path.join(work, `layer-${format}.tar`);
    const args = ['--format=' + format, '--numeric-owner', '--sort=name', '-C', src, '-cf', tarFile, '.'];
    if (format === 'posix') args.unshift('--xattrs', '--xattrs-include=*');
    runOk('tar', args);
    const r = await disassembleTar(fileChunks(tarFile));
    assert.equal(r.diffId, sha256File(tarFile), `${format}: DiffID`);
    assert.equal(r.bytes, fs.statSync(tarFile).size);
    // GNU tar pads the archive to 10 KiB records: the extra zeros are kept in the last segment.
    const lines = gunzipSync(r.tarSplit).toString('utf8').trimEnd().split('\n');
    const last = JSON.parse(lines[lines.length - 1] as string) as { type: number; payload: string };
    assert.equal(last.type, 2);
    const rebuilt: Buffer[] = [];
    for await (const c of assembleTar(r.tarSplit, opener(src))) rebuilt.push(c);
    assert.ok(Buffer.concat(rebuilt).equals(fs.readFileSync(tarFile)), `${format}: rebuilt tar differs from the original`);
    // Names that are not UTF-8 are stored as name_raw.
    assert.ok(lines.some((l) => l.includes('"name_raw":')), `${format}: no name_raw line`);
    assert.ok(lines.some((l) => l.includes('\\u003c\\u0026\\u003e')), `${format}: names are not escaped as Go escapes them`);
  }
});

test('tar-split: identical to the tar-split a real engine writes for the same layer, and rebuilt from its diff/', { timeout: 300_000 }, async () => {
  const work = tempDir('tpts-engine-');
  const src = path.join(work, 'src');
  stage(src);
  const tarFile = path.join(work, 'layer.tar');
  runOk('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '--sort=name', '-C', src, '-cf', tarFile, '.']);
  const ours = await disassembleTar(fileChunks(tarFile));
  const root = path.join(work, 'engine');
  const d = await Dockerd.start({ dataRoot: root });
  try {
    d.docker(['import', tarFile, 'tarsplit/test:1']);
  } finally {
    await d.stop();
  }
  d.cleanup();
  const layerdb = path.join(root, 'image', 'overlay2', 'layerdb', 'sha256');
  const layers = fs.readdirSync(layerdb).filter((h) => /^[0-9a-f]{64}$/.test(h));
  assert.equal(layers.length, 1);
  const dir = path.join(layerdb, layers[0] as string);
  assert.equal(fs.readFileSync(path.join(dir, 'diff'), 'utf8'), ours.diffId, 'the engine computed another DiffID');
  const theirs = fs.readFileSync(path.join(dir, 'tar-split.json.gz'));
  assert.equal(firstDifference(gunzipSync(ours.tarSplit).toString('utf8'), gunzipSync(theirs).toString('utf8')), undefined);
  // Rebuilt from the engine's own tar-split and diff/ (whiteouts there are char devices; they carry no content).
  const cacheId = fs.readFileSync(path.join(dir, 'cache-id'), 'utf8');
  const diff = path.join(root, 'overlay2', cacheId, 'diff');
  const r = await assembledDigest(theirs, opener(diff));
  assert.equal(r.diffId, ours.diffId);
  const r2 = await assembledDigest(ours.tarSplit, opener(diff));
  assert.equal(r2.diffId, ours.diffId);
  // verify handles the non-UTF-8 name, the whiteout and the opaque directory of this layer.
  const report = await verifyEngineRoot(new HostReader(root), '');
  assert.deepEqual(report.problems, []);
  assert.equal(report.layers, 1);
});

test('tar-split: a changed or truncated file is named; a corrupt tar-split is one clear error', { timeout: 60_000 }, async () => {
  const work = tempDir('tpts-bad-');
  const src = path.join(work, 'src');
  stage(src);
  const tarFile = path.join(work, 'layer.tar');
  runOk('tar', ['--format=posix', '--numeric-owner', '--sort=name', '-C', src, '-cf', tarFile, '.']);
  const r = await disassembleTar(fileChunks(tarFile));

  const big = path.join(src, 'etc/big');
  const data = fs.readFileSync(big);
  data[500_000] ^= 1;
  fs.writeFileSync(big, data);
  await assert.rejects(assembledDigest(r.tarSplit, opener(src), 'layer L'), (e: unknown) => {
    assert.ok(e instanceof TarSplitFileError);
    assert.equal(e.file, './etc/big');
    assert.match(e.message, /etc\/big does not match the checksum/);
    return true;
  });
  data[500_000] ^= 1;
  fs.writeFileSync(big, data.subarray(0, 1000));
  await assert.rejects(assembledDigest(r.tarSplit, opener(src)), /etc\/big holds 1000 bytes, the layer recorded 1048579/);
  fs.rmSync(big);
  await assert.rejects(assembledDigest(r.tarSplit, opener(src)), /etc\/big: cannot be read/);

  await assert.rejects(assembledDigest(gzipSync('{"type":2,"payload":"AAAA","position":0}\nnot json\n'), opener(src), 'layer L'), /layer L: line 2 of the tar-split is not JSON/);
  await assert.rejects(assembledDigest(Buffer.from([0x1f, 0x8b, 8, 0, 1, 2, 3]), opener(src), 'layer L'), /^Error: layer L: cannot read the tar-split/);
  await assert.rejects(
    (async () => {
      for await (const _ of readTarSplit(gzipSync('{"type":2,"payload":"","position":3}\n'), 'layer L')) {
        /* */
      }
    })(),
    /position 3/,
  );
});
