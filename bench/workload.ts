/**
 * The benchmark workload: a real engine data root holding three images that share a base
 * layer, built once with a real dockerd (`docker load` of an archive written here) and
 * cached under BENCH_DIR/<WORKLOAD_VERSION>/ (default /var/tmp/transplant-bench/).
 *
 *   base    busybox, its applet symlinks and a /usr/lib-like tree (~2,000 files, ~60 MB)
 *   node    base + app/node_modules: ~40,000 small JS-like files in nested packages (~90 MB)
 *   media   base + media/: four 200 MiB files of random-ish data (half random, half text, so
 *           gzip gets them to ~60%, not to nothing)
 *   web     base + a web-app layer (~3,000 files of 4–256 KiB, hard links, symlinks, user.*
 *           xattrs, setuid, uid/gid > 65535) + a layer of whiteouts and an opaque directory
 *
 * Generation needs no network: file content comes from a seeded PRNG.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dockerd } from '../test/harness/dockerd.js';
import { runOk } from '../test/harness/exec.js';

export const WORKLOAD_VERSION = 'w1';

export interface Workload {
  dir: string;
  /** The engine data root holding the images (stopped engine). */
  engineRoot: string;
  /** A gzip tarball of engineRoot (`tar --xattrs -czf`), for the data-root tarball case. */
  tarball: string;
  images: string[];
  bytes: number;
  files: number;
}

/** xorshift32: fast, seeded, deterministic. */
class Rng {
  constructor(private s: number) {}
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  int(n: number): number {
    return this.next() % n;
  }
  fill(buf: Buffer): void {
    for (let i = 0; i + 4 <= buf.length; i += 4) buf.writeUInt32LE(this.next(), i);
  }
}

const WORDS = ['function', 'return', 'const', 'module', 'exports', 'require', 'this', 'value', 'callback', 'options', 'undefined', 'prototype', 'length', 'Object', 'string', 'buffer', 'async', 'await', 'index', 'error'];

function jsLike(rng: Rng, size: number): Buffer {
  const parts: string[] = [];
  let n = 0;
  while (n < size) {
    const line = `  ${WORDS[rng.int(WORDS.length)]} ${WORDS[rng.int(WORDS.length)]}_${rng.int(1000)} = ${WORDS[rng.int(WORDS.length)]}(${rng.int(99999)});\n`;
    parts.push(line);
    n += line.length;
  }
  return Buffer.from(parts.join('')).subarray(0, size);
}

function write(file: string, data: Buffer, mode = 0o644): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, data, { mode });
}

function stageBase(dir: string, rng: Rng): void {
  write(path.join(dir, 'bin/busybox'), fs.readFileSync('/bin/busybox'), 0o755);
  for (const a of runOk('/bin/busybox', ['--list-full']).stdout.split('\n').filter((l) => l.trim() && l !== 'bin/busybox')) {
    fs.mkdirSync(path.join(dir, path.dirname(a)), { recursive: true });
    fs.symlinkSync('/bin/busybox', path.join(dir, a));
  }
  fs.mkdirSync(path.join(dir, 'tmp'), { mode: 0o1777 });
  fs.chmodSync(path.join(dir, 'tmp'), 0o1777);
  write(path.join(dir, 'etc/passwd'), Buffer.from('root:x:0:0:root:/root:/bin/sh\n'));
  const piece = Buffer.allocUnsafe(64 * 1024);
  for (let i = 0; i < 2000; i++) {
    const size = 1024 + rng.int(56 * 1024);
    rng.fill(piece);
    write(path.join(dir, `usr/lib/lib${i % 40}/mod${i}.so`), piece.subarray(0, size), 0o755);
  }
  for (let i = 0; i < 40; i++) write(path.join(dir, `usr/share/doc/pkg${i}/README`), jsLike(rng, 2000));
}

function stageNodeModules(dir: string, rng: Rng): void {
  let files = 0;
  for (let p = 0; files < 40_000; p++) {
    const pkg = path.join(dir, 'app/node_modules', p % 7 === 0 ? `@scope${p % 13}/pkg${p}` : `pkg${p}`);
    write(path.join(pkg, 'package.json'), Buffer.from(JSON.stringify({ name: `pkg${p}`, version: `1.${p % 10}.0`, main: 'lib/index.js' }, null, 2)));
    files++;
    const n = 5 + rng.int(40);
    for (let f = 0; f < n; f++) {
      const sub = f % 3 === 0 ? 'lib' : f % 3 === 1 ? 'lib/internal' : `dist/esm/d${f % 4}`;
      write(path.join(pkg, sub, `file${f}.js`), jsLike(rng, 200 + rng.int(4000)));
      files++;
    }
  }
}

function stageMedia(dir: string, rng: Rng): void {
  fs.mkdirSync(path.join(dir, 'media'), { recursive: true });
  const chunk = Buffer.allocUnsafe(1 << 20);
  const text = jsLike(rng, 1 << 20);
  for (let i = 0; i < 4; i++) {
    const fd = fs.openSync(path.join(dir, `media/blob${i}.bin`), 'w', 0o644);
    for (let m = 0; m < 200; m++) {
      if (m % 2 === 0) {
        rng.fill(chunk);
        fs.writeSync(fd, chunk);
      } else fs.writeSync(fd, text);
    }
    fs.closeSync(fd);
  }
}

function stageWeb(dir: string, rng: Rng): void {
  const piece = Buffer.allocUnsafe(256 * 1024);
  for (let i = 0; i < 3000; i++) {
    const size = 4096 + rng.int(i % 10 === 0 ? 252 * 1024 : 60 * 1024);
    if (i % 2 === 0) {
      rng.fill(piece);
      write(path.join(dir, `srv/www/assets/a${i % 30}/f${i}.bin`), piece.subarray(0, size));
    } else write(path.join(dir, `srv/www/pages/p${i % 50}/page${i}.html`), jsLike(rng, size));
  }
  write(path.join(dir, 'srv/bin/tool'), Buffer.from('#!/bin/sh\necho tool\n'), 0o755);
  fs.chmodSync(path.join(dir, 'srv/bin/tool'), 0o4755);
  for (let i = 0; i < 50; i++) fs.linkSync(path.join(dir, 'srv/bin/tool'), path.join(dir, `srv/bin/tool-link${i}`));
  for (let i = 0; i < 200; i++) fs.symlinkSync(`../www/pages/p${i % 50}`, path.join(dir, 'srv/bin', `l${i}`));
  runOk('setfattr', ['-n', 'user.bench', '-v', 'xattr-value', path.join(dir, 'srv/www')]);
  for (let j = 1; j < 200; j += 2) runOk('setfattr', ['-n', 'user.tag', '-v', `t${j}`, path.join(dir, `srv/www/pages/p${j % 50}/page${j}.html`)]);
  fs.chownSync(path.join(dir, 'srv/www/pages'), 100000, 200000);
}

function stageWhiteouts(dir: string): void {
  // docker load turns `.wh.<name>` into overlay whiteouts, `.wh..wh..opq` into an opaque dir.
  write(path.join(dir, 'usr/lib/lib0/.wh.mod0.so'), Buffer.alloc(0));
  write(path.join(dir, 'usr/share/doc/.wh.pkg1'), Buffer.alloc(0));
  write(path.join(dir, 'usr/share/doc/pkg2/.wh..wh..opq'), Buffer.alloc(0));
  write(path.join(dir, 'usr/share/doc/pkg2/NEW'), Buffer.from('new\n'));
}

function tarLayer(stage: string, out: string): string {
  runOk('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '--sort=name', '-C', stage, '-cf', out, '.'], { timeoutMs: 600_000 });
  return 'sha256:' + runOk('sha256sum', [out], { timeoutMs: 600_000 }).stdout.slice(0, 64);
}

function dirStats(root: string): { bytes: number; files: number } {
  const out = runOk('/bin/bash', ['-c', `find ${JSON.stringify(root)} -xdev -printf '%s\\n' | awk '{n++; s+=$1} END {print n, s}'`], { timeoutMs: 600_000 }).stdout.trim().split(' ');
  return { files: Number(out[0]), bytes: Number(out[1]) };
}

export const IMAGES = ['bench/node:1', 'bench/media:1', 'bench/web:1'];

/** Builds the workload (or finds it built) and returns where it is. */
export async function getWorkload(benchDir: string, log: (s: string) => void): Promise<Workload> {
  const dir = path.join(benchDir, WORKLOAD_VERSION);
  const engineRoot = path.join(dir, 'engine');
  const tarball = path.join(dir, 'docker.tar.gz');
  const done = path.join(dir, 'complete.json');
  if (fs.existsSync(done)) {
    const s = JSON.parse(fs.readFileSync(done, 'utf8')) as { bytes: number; files: number };
    return { dir, engineRoot, tarball, images: IMAGES, ...s };
  }
  log(`building the workload in ${dir} (once; a few minutes)`);
  fs.rmSync(dir, { recursive: true, force: true });
  const stage = path.join(dir, 'stage');
  const archive = path.join(dir, 'archive');
  fs.mkdirSync(archive, { recursive: true });
  const rng = new Rng(0x5eed1234);
  const layers: Record<string, string> = {};
  const builders: Array<[string, (d: string) => void]> = [
    ['base', (d) => stageBase(d, rng)],
    ['node', (d) => stageNodeModules(d, rng)],
    ['media', (d) => stageMedia(d, rng)],
    ['web', (d) => stageWeb(d, rng)],
    ['whiteouts', (d) => stageWhiteouts(d)],
  ];
  for (const [name, build] of builders) {
    const d = path.join(stage, name);
    fs.mkdirSync(d, { recursive: true });
    build(d);
    fs.mkdirSync(path.join(archive, name), { recursive: true });
    layers[name] = tarLayer(d, path.join(archive, name, 'layer.tar'));
    fs.rmSync(d, { recursive: true, force: true });
    log(`  layer ${name}: ${layers[name]}`);
  }
  const arch = process.arch === 'arm64' ? 'arm64' : 'amd64';
  const manifest: Array<{ Config: string; RepoTags: string[]; Layers: string[] }> = [];
  const imageLayers: Record<string, string[]> = { 'bench/node:1': ['base', 'node'], 'bench/media:1': ['base', 'media'], 'bench/web:1': ['base', 'web', 'whiteouts'] };
  for (const [ref, names] of Object.entries(imageLayers)) {
    const config = JSON.stringify({
      architecture: arch,
      os: 'linux',
      config: { Cmd: ['/bin/sh', '-c', `echo ${ref}`] },
      rootfs: { type: 'layers', diff_ids: names.map((n) => layers[n]) },
    });
    const configName = createHash('sha256').update(config).digest('hex') + '.json';
    fs.writeFileSync(path.join(archive, configName), config);
    manifest.push({ Config: configName, RepoTags: [ref], Layers: names.map((n) => `${n}/layer.tar`) });
  }
  fs.writeFileSync(path.join(archive, 'manifest.json'), JSON.stringify(manifest));
  const d = await Dockerd.start({ dataRoot: engineRoot });
  try {
    const loadTar = path.join(dir, 'load.tar');
    runOk('tar', ['-C', archive, '-cf', loadTar, '.'], { timeoutMs: 600_000 });
    fs.rmSync(archive, { recursive: true, force: true });
    d.docker(['load', '-q', '-i', loadTar], { timeoutMs: 1_200_000 });
    fs.rmSync(loadTar);
    for (const ref of IMAGES) {
      const out = d.docker(['run', '--rm', '--network', 'none', ref], { timeoutMs: 60_000 }).trim();
      if (out !== ref) throw new Error(`workload image ${ref} printed ${JSON.stringify(out)}`);
    }
    d.docker(['container', 'prune', '-f']);
    await d.stop();
  } catch (err) {
    await d.stop().catch(() => undefined);
    throw err;
  }
  d.cleanup();
  // The engine leaves runtime state (containers, network, buildkit …) behind: the bench copies
  // overlay2/ and image/ only, which is what an image move is about.
  log('  making docker.tar.gz of the engine root');
  runOk('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', engineRoot, '-czf', tarball, 'overlay2', 'image'], { timeoutMs: 1_200_000 });
  const s = dirStats(path.join(engineRoot, 'overlay2'));
  fs.rmSync(stage, { recursive: true, force: true });
  fs.writeFileSync(done, JSON.stringify(s));
  return { dir, engineRoot, tarball, images: IMAGES, ...s };
}
