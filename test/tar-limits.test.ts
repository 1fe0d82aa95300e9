/**
 * Bounds of the tar and archive readers (issue 13, item 14), each hit with one clear line
 * that names the limit: pax/GNU extension payloads over 1 MiB (Go archive/tar's
 * maxSpecialFileSize, which the engine applies), long runs of consecutive extension headers,
 * OCI layouts whose indexes fan out over several levels (read once per distinct blob, not
 * once per path: K^5 paths must not mean K^5 reads), nesting depth, and archives with more
 * files than any image archive holds. And names that are not UTF-8 survive as bytes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { tempDir } from './harness/fixtures.js';
import { CliWorker } from './harness/hostile.js';
import { TarPacker } from '../src/tar/pack.js';
import { emptyHeader } from '../src/tar/header.js';
import { TarParser, MAX_SPECIAL_FILE, MAX_HEADER_RUN } from '../src/tar/parse.js';
import { MAX_ARCHIVE_FILES } from '../src/sources/docker-archive.js';
import { entryPathBytes, fsName, nameFromBytes, nameIsRaw, nameToBytes } from '../src/layer/entry.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function tarOf(files: [string, Buffer][]): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  const p = new TarPacker(out);
  for (const [name, data] of files) await p.add({ ...emptyHeader(), name, size: data.length, mtime: 1_600_000_000_000_000_000n }, data);
  await p.finish();
  out.end();
  return Buffer.concat(chunks);
}

function oneLineError(r: { code: number; stderr: string }, pattern: RegExp, what: string): void {
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(r.code, 1, `${what}: exit 1\n${r.stderr}`);
  assert.equal(lines.length, 1, `${what}: one line\n${r.stderr}`);
  assert.match(lines[0] as string, /^error: /);
  assert.match(lines[0] as string, pattern, what);
}

/** An OCI layout tar whose index chain fans out `k` ways over index.json and `levels` levels of indexes below it. */
async function fanOutLayout(k: number, levels: number): Promise<Buffer> {
  const blobs: [string, Buffer][] = [];
  const add = (b: Buffer): string => {
    const h = sha(b);
    if (!blobs.some(([n]) => n.endsWith(h))) blobs.push([`blobs/sha256/${h}`, b]);
    return `sha256:${h}`;
  };
  const layer = await tarOf([['f', Buffer.from('x')]]);
  const ld = add(layer);
  const cfg = add(Buffer.from(JSON.stringify({ architecture: 'arm64', os: 'linux', rootfs: { type: 'layers', diff_ids: [ld] } })));
  let cur = add(
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { digest: cfg, size: 1 }, layers: [{ digest: ld, size: 1 }] })),
  );
  let type = 'application/vnd.oci.image.manifest.v1+json';
  for (let level = 0; level < levels; level++) {
    const manifests = Array.from({ length: k }, (_, i) => ({ mediaType: type, digest: cur, size: 1, annotations: { n: String(i) } }));
    cur = add(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests })));
    type = 'application/vnd.oci.image.index.v1+json';
  }
  const top = { schemaVersion: 2, manifests: Array.from({ length: k }, (_, i) => ({ mediaType: type, digest: cur, size: 1, annotations: { 'io.containerd.image.name': 'fan/out:1', n: String(i) } })) };
  return tarOf([['oci-layout', Buffer.from('{"imageLayoutVersion":"1.0.0"}')], ['index.json', Buffer.from(JSON.stringify(top))], ...blobs]);
}

test('names are bytes: surrogateescape round trip, and only non-UTF-8 names become Buffers for fs', () => {
  for (const hex of ['', '61', 'ff', 'c3a9', 'e282ac', 'f09f9880', 'eda080', 'c0af', 'f4908080', '62ff2ffe63', 'efbfbd', 'e2', 'f09f98']) {
    const b = Buffer.from(hex, 'hex');
    const name = nameFromBytes(b);
    assert.deepEqual(nameToBytes(name), b, `round trip of ${hex}`);
    const utf8 = Buffer.from(b.toString('utf8'), 'utf8').equals(b);
    assert.equal(nameIsRaw(name), !utf8, `raw? ${hex}`);
    assert.equal(typeof fsName(name), utf8 ? 'string' : 'object');
    if (utf8) assert.equal(name, b.toString('utf8'));
  }
  assert.deepEqual(entryPathBytes({ path: nameFromBytes(Buffer.from('d/\xff', 'latin1')) }), Buffer.from('642fff', 'hex'));
});

test('tar reader: a pax header over 1 MiB and a long run of extension headers are refused, naming the limit', async () => {
  const paxHeader = (value: number): Buffer => {
    const body = ` comment=${'A'.repeat(value)}\n`;
    let n = body.length + 1;
    while (String(n).length + body.length !== n) n = String(n).length + body.length;
    const data = Buffer.from(`${n}${body}`);
    const block = Buffer.alloc(512);
    block.write('PaxHeaders/x', 0);
    block.write('0000644\0', 100);
    block.write('0000000\0', 108);
    block.write('0000000\0', 116);
    block.write(data.length.toString(8).padStart(11, '0') + '\0', 124);
    block.write('00000000000\0', 136);
    block.write('x', 156);
    block.write('ustar\x0000', 257, 'latin1');
    block.fill(0x20, 148, 156);
    let sum = 0;
    for (const c of block) sum += c;
    block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
    return Buffer.concat([block, data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
  };
  const file = await tarOf([['after', Buffer.from('a')]]);
  const read = async (tar: Buffer): Promise<string> => {
    const p = new TarParser((async function* () {
      yield tar;
    })());
    try {
      for (;;) {
        const e = await p.next();
        if (!e) return 'end';
        if (e.header.name === 'after') return 'entry';
      }
    } catch (err) {
      return (err as Error).message;
    }
  };
  assert.equal(await read(Buffer.concat([paxHeader(1000), file])), 'entry');
  assert.match(await read(Buffer.concat([paxHeader(MAX_SPECIAL_FILE + 10), file])), /exceeds the limit of 1048576 bytes \(Go archive\/tar maxSpecialFileSize/);
  const run = Math.ceil(MAX_HEADER_RUN / (512 << 10)) + 1;
  assert.match(await read(Buffer.concat([...Array.from({ length: run }, () => paxHeader(512 << 10)), file])), /more than 8388608 bytes of consecutive extension headers/);
});

test('OCI layout: indexes fanning out 30 ways over 5 levels are read once per blob; nesting and file counts are bounded', { timeout: 600_000 }, async () => {
  const work = tempDir('tplimits-');
  const cli = new CliWorker();
  try {
    const fan = path.join(work, 'fan.tar');
    fs.writeFileSync(fan, await fanOutLayout(30, 4));
    // 30^5 = 24 million paths to one manifest: before, this ran for hours.
    const r = await cli.run(['ls', fan, '--json'], {}, 120_000);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /fan\/out:1/);

    const deep = path.join(work, 'deep.tar');
    fs.writeFileSync(deep, await fanOutLayout(1, 7));
    oneLineError(await cli.run(['ls', deep], {}, 120_000), /nests image indexes more than 4 deep/, 'deep nesting');

    // An archive with more files than any image archive: refused while indexing.
    const many = path.join(work, 'many.tar');
    const empty = Buffer.alloc(0);
    fs.writeFileSync(many, await tarOf([['manifest.json', Buffer.from('[]')], ...Array.from({ length: MAX_ARCHIVE_FILES }, (_, i) => [`f${i}`, empty] as [string, Buffer])]));
    oneLineError(await cli.run(['ls', many], {}, 300_000), /more than 50000 files/, 'many files');
  } finally {
    await cli.close();
  }
});
