/**
 * The store's formats and the bundle's tar codec, judged against real tools and a real
 * engine's own files where possible (GNU tar reads what we write; we read what GNU tar writes).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, createReadStream, rmSync } from 'node:fs';
import { Writable } from 'node:stream';
import * as os from 'node:os';
import * as path from 'node:path';
import { chainIds, newLinkId, sha256Digest } from '../src/engine/digest.js';
import { normalizeReference, parseReference } from '../src/engine/reference.js';
import { mergeReferences } from '../src/engine/repositories.js';
import { emptyHeader, formatPaxTime, parsePaxTime, type TarHeader } from '../src/tar/header.js';
import { TarPacker } from '../src/tar/pack.js';
import { TarParser } from '../src/tar/parse.js';

test('ChainID: parent first, one space (layer/layer.go CreateChainID)', () => {
  const a = 'sha256:' + 'a'.repeat(64);
  const b = 'sha256:' + 'b'.repeat(64);
  assert.deepEqual(chainIds([a]), [a]);
  assert.equal(chainIds([a, b])[1], sha256Digest(`${a} ${b}`));
  assert.throws(() => chainIds(['nope']));
});

test('link IDs are 26 base32 characters', () => {
  for (let i = 0; i < 50; i++) assert.match(newLinkId(), /^[A-Z2-7]{26}$/);
});

test('references normalise to the engine familiar form', () => {
  assert.equal(normalizeReference('busybox'), 'busybox:latest');
  assert.equal(normalizeReference('docker.io/library/busybox:1.36'), 'busybox:1.36');
  assert.equal(normalizeReference('docker.io/myorg/app'), 'myorg/app:latest');
  const d = 'sha256:' + 'c'.repeat(64);
  assert.equal(normalizeReference(`registry2.balena-cloud.com/v2/abc@${d}`), `registry2.balena-cloud.com/v2/abc@${d}`);
  assert.equal(normalizeReference(`app:v1@${d}`), `app@${d}`);
  assert.equal(parseReference('localhost:5000/app:v2').repository, 'localhost:5000/app');
  assert.throws(() => parseReference('myorg/UPPER'), /lowercase/);
  assert.throws(() => parseReference('a@sha256:short'), /digest/);
});

test('repositories merge: tags move, digest references never re-point', () => {
  const id1 = 'sha256:' + '1'.repeat(64);
  const id2 = 'sha256:' + '2'.repeat(64);
  const d = 'sha256:' + 'd'.repeat(64);
  const base = { app: { 'app:v1': id1, [`app@${d}`]: id1 } };
  const moved = mergeReferences(base, [{ key: 'app:v1', imageId: id2 }]);
  assert.deepEqual(moved.moved, [{ key: 'app:v1', from: id1, to: id2 }]);
  assert.equal(base.app['app:v1'], id1, 'input not modified');
  assert.throws(() => mergeReferences(base, [{ key: `app@${d}`, imageId: id2 }]), /re-point/);
  assert.deepEqual(mergeReferences(base, [{ key: 'app:v1', imageId: id1 }]).added, []);
});

test('pax times keep nine digits', () => {
  assert.equal(parsePaxTime('1500000000.987654321'), 1500000000987654321n);
  assert.equal(formatPaxTime(1500000000987654321n), '1500000000.987654321');
  assert.equal(formatPaxTime(1500000000000000000n), '1500000000');
  assert.equal(parsePaxTime('-1.5'), -1500000000n);
});

async function packToFile(file: string, entries: { header: TarHeader; content?: Buffer }[]): Promise<void> {
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
  });
  const p = new TarPacker(sink);
  for (const e of entries) await p.add(e.header, e.content);
  await p.finish();
  writeFileSync(file, Buffer.concat(chunks));
}

test('GNU tar reads every attribute the packer writes', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tp-tar-'));
  try {
    const long = 'd/' + 'x'.repeat(120) + '/é-ü-名前.txt';
    const file = path.join(dir, 'a.tar');
    await packToFile(file, [
      { header: { ...emptyHeader(), name: 'd', type: 'directory', mode: 0o755, mtime: 1n } },
      { header: { ...emptyHeader(), name: long, size: 5, mode: 0o4755, uid: 100000, gid: 200000, mtime: 1500000000987654321n, xattrs: [{ name: 'user.k', value: Buffer.from('v\0binary') }] }, content: Buffer.from('hello') },
      { header: { ...emptyHeader(), name: 'd/wh', type: 'char-device', mode: 0, devmajor: 0, devminor: 0, mtime: 2n * 1_000_000_000n } },
      { header: { ...emptyHeader(), name: 'd/link', type: 'symlink', linkname: '/abs/target', mtime: 3n * 1_000_000_000n } },
      { header: { ...emptyHeader(), name: 'd/hard', type: 'hardlink', linkname: long, mtime: 3n * 1_000_000_000n } },
    ]);
    const listing = execFileSync('tar', ['--numeric-owner', '--full-time', '-tvf', file], { encoding: 'utf8' });
    assert.match(listing, /-rwsr-xr-x 100000\/200000\s+5 2017-07-14 02:40:00\.987654321 d\/x+\/é-ü-名前\.txt/);
    assert.match(listing, /c--------- 0\/0\s+0,0 .* d\/wh/);
    assert.match(listing, /d\/link -> \/abs\/target/);
    assert.match(listing, /d\/hard link to d\/x+/);
    // And our parser reads GNU tar's own pax output, xattrs included.
    const src = path.join(dir, 'src');
    execFileSync('mkdir', ['-p', `${src}/sub`]);
    writeFileSync(`${src}/sub/f`, 'data');
    execFileSync('setfattr', ['-n', 'user.test', '-v', 'xyz', `${src}/sub/f`]);
    execFileSync('touch', ['-d', '@1600000000.123456789', `${src}/sub/f`]);
    const gnu = path.join(dir, 'gnu.tar');
    execFileSync('tar', ['--format=posix', '--xattrs', "--xattrs-include=*", '-C', src, '-cf', gnu, 'sub']);
    const parser = new TarParser(createReadStream(gnu));
    const seen: TarHeader[] = [];
    for await (const e of parser.entries()) {
      if (e.header.name.endsWith('/f')) assert.equal(Buffer.concat(await (async () => { const a: Buffer[] = []; for await (const c of e.content) a.push(c); return a; })()).toString(), 'data');
      seen.push(e.header);
    }
    const f = seen.find((h) => h.name === 'sub/f');
    assert.ok(f, 'sub/f listed');
    assert.equal(f.mtime, 1600000000123456789n);
    assert.deepEqual(f.xattrs.map((x) => [x.name, x.value.toString()]), [['user.test', 'xyz']]);
    assert.ok(parser.trailer.length >= 1024, 'end-of-archive blocks kept as trailer');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a truncated tar fails clearly', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tp-tar-'));
  try {
    const file = path.join(dir, 'a.tar');
    await packToFile(file, [{ header: { ...emptyHeader(), name: 'f', size: 4000 }, content: Buffer.alloc(4000, 1) }]);
    writeFileSync(file, readFileSync(file).subarray(0, 1500));
    const parser = new TarParser(createReadStream(file));
    await assert.rejects(async () => {
      for await (const e of parser.entries()) for await (const _ of e.content) { /* consume */ }
    }, /unexpected end of input/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
