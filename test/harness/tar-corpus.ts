/**
 * A corpus of unusual layer tars, each wrapped as a one-layer image archive, for the
 * differential test against `docker load` (test/parity.test.ts):
 *
 * - GNU tar in every --format (gnu, oldgnu, posix with xattrs and ns times, ustar, v7), and
 *   its sparse files (pax GNU.sparse 0.1 and 1.0, old GNU type S) and incremental dumps;
 * - Python's tarfile (PAX with and without global headers, GNU, USTAR) and hand-made header
 *   blocks (tar-corpus.py): consecutive pax headers, global headers, lone pax headers, old
 *   GNU prefixes, star and v7 headers, signed checksums, base-256 numbers, names that are
 *   not UTF-8, and broken tars.
 *
 * The archives vary the way other tools lay them out: `<64 hex>/layer.tar` (docker save),
 * `<hex>.tar` and gzip-compressed layers (skopeo, crane), any other path manifest.json names.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import { repoRoot, requireTools, runOk } from './exec.js';

export interface CorpusCase {
  /** Case name (also the image's repository: `corpus/<name>:1`). */
  name: string;
  /** The uncompressed layer tar. */
  layer: string;
  /** The image archive holding it. */
  archive: string;
  /** sha256: of the layer tar. */
  diffId: string;
  reference: string;
  /** The engine loads it but transplant may refuse it (with one line): GNU sparse files. */
  refusalAccepted?: boolean;
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A tree with every attribute a layer can carry, and names that are not UTF-8. */
function sourceTree(dir: string, opts: { simple?: boolean } = {}): void {
  const at = (...p: (string | Buffer)[]): Buffer => Buffer.concat([Buffer.from(dir + '/'), ...p.map((x) => (Buffer.isBuffer(x) ? x : Buffer.from(x)))]);
  fs.mkdirSync(at('d/sub'), { recursive: true });
  fs.writeFileSync(at('d/file'), 'content\n');
  fs.writeFileSync(at('d/empty'), '');
  fs.symlinkSync('file', at('d/rel-link'));
  fs.symlinkSync('/etc/passwd', at('d/abs-link'));
  fs.linkSync(at('d/file'), at('d/hard'));
  fs.writeFileSync(at('d/sub/', Buffer.from([0x62, 0xff, 0xfe, 0x2e, 0x74])), 'raw name\n');
  fs.symlinkSync(Buffer.from([0x74, 0xe9]), at('d/raw-target'));
  fs.writeFileSync(at('d/.wh.whited'), '');
  fs.chmodSync(at('d/file'), 0o4755);
  fs.chmodSync(at('d/sub'), 0o2775);
  fs.chownSync(at('d/empty'), 1000, 2000);
  if (!opts.simple) {
    fs.mkdirSync(at('long/' + 'x'.repeat(90)), { recursive: true });
    fs.writeFileSync(at('long/' + 'x'.repeat(90) + '/' + 'y'.repeat(110)), 'long\n');
    runOk('mkfifo', [dir + '/d/fifo']);
    runOk('setfattr', ['-n', 'user.note', '-v', 'hello', dir + '/d/file']);
    runOk('touch', ['-h', '-d', '@1600000000.123456789', dir + '/d/rel-link']);
  }
  runOk('touch', ['-d', '@1600000000.987654321', dir + '/d/file']);
  runOk('touch', ['-d', '@1500000000', dir + '/d/sub', dir + '/d']);
}

function gnuTar(out: string, src: string, args: string[], names: string[]): void {
  runOk('tar', ['-C', src, '--numeric-owner', '-cf', out, ...args, ...names]);
}

/** Writes every case's layer tar into `dir` and returns their paths by case name. */
function layerTars(dir: string): Map<string, { file: string; refusalAccepted?: boolean }> {
  requireTools('python3', 'tar', 'setfattr', 'mkfifo', 'truncate');
  const layers = path.join(dir, 'layers');
  fs.mkdirSync(layers, { recursive: true });
  runOk('python3', [path.join(repoRoot(), 'test', 'harness', 'tar-corpus.py'), layers]);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  sourceTree(src);
  const simple = path.join(dir, 'src-simple');
  fs.mkdirSync(simple);
  sourceTree(simple, { simple: true });
  const gnu = (name: string, args: string[], from = src, names = ['d', 'long']): void => gnuTar(path.join(layers, `${name}.tar`), from, args, names);
  gnu('gnutar-gnu', ['--format=gnu']);
  gnu('gnutar-oldgnu', ['--format=oldgnu']);
  gnu('gnutar-posix', ['--format=posix', '--xattrs', '--xattrs-include=*']);
  gnu('gnutar-ustar', ['--format=ustar'], simple, ['d']);
  gnu('gnutar-v7', ['--format=v7'], simple, ['d']);
  // Sparse files: pax GNU.sparse 1.0 and 0.1, and the old GNU 'S' type.
  const sparse = path.join(dir, 'src-sparse');
  fs.mkdirSync(sparse);
  runOk('truncate', ['-s', '8M', path.join(sparse, 'holes')]);
  fs.appendFileSync(path.join(sparse, 'holes'), 'end\n');
  gnu('gnutar-posix-sparse-1.0', ['--format=posix', '--sparse', '--sparse-version=1.0'], sparse, ['holes']);
  gnu('gnutar-posix-sparse-0.1', ['--format=posix', '--sparse', '--sparse-version=0.1'], sparse, ['holes']);
  gnu('gnutar-gnu-sparse', ['--format=gnu', '--sparse'], sparse, ['holes']);
  // An incremental dump: GNU dumpdir ('D') entries.
  gnu('gnutar-incremental', ['--format=gnu', `--listed-incremental=${path.join(dir, 'snar')}`], simple, ['d']);
  const out = new Map<string, { file: string; refusalAccepted?: boolean }>();
  for (const f of fs.readdirSync(layers).sort()) {
    const name = f.replace(/\.tar$/, '');
    out.set(name, { file: path.join(layers, f), refusalAccepted: /sparse-(1\.0|0\.1)$/.test(name) });
  }
  return out;
}

type Layout = 'docker-save' | 'hex-tar' | 'gzip-blob' | 'any-path';

/** A one-layer image archive around a layer tar, laid out as `layout`. */
function imageArchive(file: string, layer: Buffer, reference: string, layout: Layout, scratch: string): string {
  const diffId = `sha256:${sha256(layer)}`;
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/true'] }, rootfs: { type: 'layers', diff_ids: [diffId] } }));
  const configHex = sha256(config);
  fs.rmSync(scratch, { recursive: true, force: true });
  fs.mkdirSync(scratch, { recursive: true });
  let layerPath: string;
  let blob = layer;
  switch (layout) {
    case 'docker-save':
      layerPath = `${sha256(Buffer.from(reference))}/layer.tar`;
      break;
    case 'hex-tar':
      layerPath = `${sha256(layer)}.tar`;
      break;
    case 'gzip-blob':
      blob = gzipSync(layer);
      layerPath = `blobs/sha256/${sha256(blob)}`;
      break;
    case 'any-path':
      layerPath = 'some dir/any name.bin';
      break;
  }
  fs.mkdirSync(path.dirname(path.join(scratch, layerPath)), { recursive: true });
  fs.writeFileSync(path.join(scratch, layerPath), blob);
  fs.writeFileSync(path.join(scratch, `${configHex}.json`), config);
  fs.writeFileSync(path.join(scratch, 'manifest.json'), JSON.stringify([{ Config: `${configHex}.json`, RepoTags: [reference], Layers: [layerPath] }]));
  runOk('tar', ['-C', scratch, '-cf', file, 'manifest.json', `${configHex}.json`, layerPath.split('/')[0] as string]);
  return diffId;
}

/** Builds the corpus under `dir`: each case's layer and its image archive. */
export function buildTarCorpus(dir: string): CorpusCase[] {
  const layouts: Layout[] = ['docker-save', 'hex-tar', 'gzip-blob', 'any-path'];
  const cases: CorpusCase[] = [];
  let i = 0;
  for (const [name, { file, refusalAccepted }] of layerTars(dir)) {
    const reference = `corpus/${name.toLowerCase().replace(/[^a-z0-9]+/g, '-')}:1`;
    const archive = path.join(dir, 'archives', `${name}.tar`);
    fs.mkdirSync(path.dirname(archive), { recursive: true });
    const diffId = imageArchive(archive, fs.readFileSync(file), reference, layouts[i++ % layouts.length] as Layout, path.join(dir, 'scratch'));
    cases.push({ name, layer: file, archive, diffId, reference, refusalAccepted });
  }
  return cases;
}
