/**
 * Fixture engine data roots built with a real dockerd and no network:
 *
 * - source: an engine root whose images together hold every kind of file and attribute a
 *   layer can carry (whiteouts, opaque dirs, hard links, symlinks, user.* and
 *   security.capability xattrs, setuid, big uid/gid, ns mtimes, long and non-ASCII paths,
 *   empty files, FIFOs, a device node), a shared base layer, an image with two tags and
 *   one with a digest reference;
 * - target: a balenaOS-like `resin-data` directory (`docker/` with a supervisor image
 *   sharing the base layer, `resin-data/`, `remove_me_to_reset`);
 * - bare: an engine root a dockerd initialised and that holds no image.
 *
 * Engines are stopped once built. Built once per test process (getFixtures caches it);
 * tests that write get copies (copyTree).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Dockerd } from './dockerd.js';
import { runOk, requireTools } from './exec.js';
import {
  chainIds,
  engineLogProblems,
  layerDiffDir,
  metadataProblems,
  overlayProblems,
  readRepositories,
  snapshotTree,
  type FileRecord,
  type Snapshot,
} from './judge.js';

export interface FixtureImage {
  /** Short name used by the tests: base, appA, appB, appC, appD, unselected, supervisor. */
  key: string;
  /** Full image ID, `sha256:<hex>`. */
  id: string;
  /** Every reference the engine holds for it (tags and digest references). */
  refs: string[];
  /** What `docker run <image>` prints. */
  marker: string;
  /** rootfs.diff_ids, base first. */
  diffIds: string[];
}

export interface Fixtures {
  workDir: string;
  /** Source engine data root (holds image/overlay2/). */
  sourceRoot: string;
  /** Images in the source, by key. */
  images: Record<'base' | 'appA' | 'appB' | 'appC' | 'appD' | 'unselected', FixtureImage>;
  /** Digest reference added to repositories.json for appC. */
  digestRef: string;
  /** The balenaOS-like resin-data directory (pristine: copy it before writing). */
  targetResinData: string;
  /** The supervisor image of the target (shares the base layer with the source's images). */
  supervisor: FixtureImage;
  /** An initialised engine root without images (pristine: copy it before writing). */
  bareEngineRoot: string;
}

const BASE_NS_MTIME = '1500000000.123456789';
const DIR_NS_MTIME = '1600000000.987654321';
const LINK_NS_MTIME = '1400000000.000000001';
/** After 2038 (beyond a signed 32-bit time). */
const FUTURE_MTIME = '4102444800.000000500';
const LONG_DIR = 'long/' + 'a'.repeat(60);
const LONG_NAME = 'b'.repeat(150) + '.txt';
const LONG_LINK_DIR = 'c'.repeat(40) + '/' + 'd'.repeat(80);
const LONG_LINK_TARGET = '../../' + LONG_LINK_DIR + '/target';
const NON_ASCII_FILE = 'ünïcødé-名前.txt';
const NON_ASCII_DIR = 'каталог';

export const MARKER = (key: string): string => `transplant-marker-${key}`;

let cached: Promise<Fixtures> | undefined;

/** Builds the fixtures once per process. */
export function getFixtures(): Promise<Fixtures> {
  cached ??= buildFixtures();
  return cached;
}

/** Copies a tree with every attribute (cp -a keeps owners, modes, ns times, xattrs, hard links, devices). */
export function copyTree(src: string, dst: string): void {
  fs.mkdirSync(path.dirname(dst), { recursive: true });
  runOk('cp', ['-a', '--', src, dst], { timeoutMs: 300_000 });
}

/** A fresh empty temp dir under /tmp (removed at process exit unless TRANSPLANT_KEEP_FIXTURES=1). */
export function tempDir(prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  toRemove.push(d);
  installCleanup();
  return d;
}

const toRemove: string[] = [];
let cleanupInstalled = false;
function installCleanup(): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on('exit', () => {
    if (process.env.TRANSPLANT_KEEP_FIXTURES === '1') return;
    for (const d of toRemove) {
      try {
        fs.rmSync(d, { recursive: true, force: true });
      } catch {
        /* a leftover mount; leave it */
      }
    }
  });
}

function sh(script: string, cwd: string): void {
  runOk('/bin/bash', ['-euo', 'pipefail', '-c', script], { cwd, timeoutMs: 120_000 });
}

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * Shell lines (run as root in the staging dir) that make `dir` hold every kind of file and
 * attribute a layer can carry. Used for the base layer (`data`) and for an upper layer
 * added with ADD (`rich`), so that a layer the target does not share is just as rich.
 */
function richTreeScript(dir: string): string[] {
  const p = (rel: string): string => q(`${dir}/${rel}`);
  return [
    `mkdir -p ${p('sub')} ${p('sgid-dir')} ${p('sticky-dir')} ${p(LONG_DIR)} ${p(NON_ASCII_DIR)} ${p(LONG_LINK_DIR)}`,
    `: > ${p('empty')}`,
    `printf 'hard linked content\\n' > ${p('hl-a')}`,
    `ln ${p('hl-a')} ${p('hl-b')}`,
    `ln ${p('hl-a')} ${p('sub/hl-c')}`,
    `ln -s /etc/passwd ${p('abs-link')}`,
    `ln -s ../etc/passwd ${p('rel-link')}`,
    `ln -s /nonexistent/target ${p('dangling-link')}`,
    `ln -s ${q(LONG_LINK_TARGET)} ${p('long-link')}`,
    `printf 'long target\\n' > ${p(LONG_LINK_DIR + '/target')}`,
    `printf 'xattrs\\n' > ${p('xattr-file')}`,
    `setfattr -n user.color -v blue ${p('xattr-file')}`,
    `setfattr -n user.binary -v 0x00ff10 ${p('xattr-file')}`,
    `setfattr -n user.dir -v on ${p('sub')}`,
    `printf '#!/bin/sh\\necho cap\\n' > ${p('cap-file')}`,
    `chmod 0755 ${p('cap-file')}`,
    `printf 'suid\\n' > ${p('suid')}`,
    `chmod 4755 ${p('suid')}`,
    `chmod 1777 ${p('sticky-dir')}`,
    `printf 'big ids\\n' > ${p('bigid')}`,
    `chown 100000:200000 ${p('bigid')}`,
    `chown 70000:70001 ${p('sgid-dir')}`,
    `chmod 2775 ${p('sgid-dir')}`,
    `printf 'ns time\\n' > ${p('ns-time')}`,
    `printf 'long\\n' > ${p(LONG_DIR + '/' + LONG_NAME)}`,
    `printf 'non ascii\\n' > ${p(NON_ASCII_FILE)}`,
    `printf 'файл\\n' > ${p(NON_ASCII_DIR + '/файл')}`,
    `mkfifo ${p('fifo')}`,
    `mknod ${p('dev-null')} c 1 3`,
    `printf 'future\\n' > ${p('future')}`,
    // Capabilities after the owner of cap-file is final: chown(2) clears them.
    `setcap cap_net_raw+ep ${p('cap-file')}`,
    `touch -d @${FUTURE_MTIME} ${p('future')}`,
    `touch -d @${BASE_NS_MTIME} ${p('ns-time')} ${p('hl-a')}`,
    `touch -h -d @${LINK_NS_MTIME} ${p('rel-link')}`,
    // Directory times last (creating entries changes them).
    `touch -d @${DIR_NS_MTIME} ${p('sub')}`,
  ];
}

/** What richTreeScript promises, checked in a layer's diff dir snapshot. */
function richTreeProblems(snap: Snapshot, dir: string, problems: string[]): void {
  const e = (rel: string, what: string, ok: (r: FileRecord) => boolean): void =>
    expectAttr(problems, snap, `${dir}/${rel}`, what, ok);
  e('rel-link', 'relative symlink with ns mtime', (r) => r.link === '../etc/passwd' && r.mtime === LINK_NS_MTIME);
  e('abs-link', 'absolute symlink', (r) => r.link === '/etc/passwd');
  e('dangling-link', 'dangling symlink', (r) => r.link === '/nonexistent/target');
  e('long-link', 'symlink target over 100 bytes', (r) => r.link === LONG_LINK_TARGET);
  e('empty', 'empty file', (r) => r.type === 'f' && r.size === 0);
  e('hl-a', 'hard link group of 3', (r) => r.nlink === 3 && r.mtime === BASE_NS_MTIME);
  e('hl-b', 'hard link to hl-a', (r) => r.linkGroup === `${dir}/hl-a`);
  e('sub/hl-c', 'hard link to hl-a', (r) => r.linkGroup === `${dir}/hl-a`);
  e('xattr-file', 'user.* xattrs', (r) => r.xattrs.includes('user.color=0x626c7565') && r.xattrs.includes('user.binary=0x00ff10'));
  e('sub', 'user.* xattr on a directory and ns dir mtime', (r) => r.xattrs.includes('user.dir=0x6f6e') && r.mtime === DIR_NS_MTIME);
  e('cap-file', 'security.capability', (r) => r.xattrs.includes('security.capability=0x'));
  e('suid', 'setuid mode', (r) => r.mode === '4755');
  e('sgid-dir', 'setgid directory, uid/gid 70000:70001', (r) => r.mode === '2775' && r.uid === 70000 && r.gid === 70001);
  e('sticky-dir', 'sticky directory', (r) => r.mode === '1777');
  e('bigid', 'uid/gid above 65535', (r) => r.uid === 100000 && r.gid === 200000);
  e('ns-time', 'nanosecond mtime', (r) => r.mtime === BASE_NS_MTIME);
  e('future', 'mtime after 2038', (r) => r.mtime === FUTURE_MTIME);
  e(`${LONG_DIR}/${LONG_NAME}`, 'path over 100 bytes', (r) => r.type === 'f');
  e(NON_ASCII_FILE, 'non-ASCII name', (r) => r.type === 'f');
  e(`${NON_ASCII_DIR}/файл`, 'non-ASCII directory', (r) => r.type === 'f');
  e('fifo', 'FIFO', (r) => r.type === 'p');
  e('dev-null', 'char device 1:3', (r) => r.type === 'c' && r.rdev === '1:3');
}

/** The base layer's files, prepared as root in a staging directory. */
function stageBase(stage: string): void {
  fs.mkdirSync(stage, { recursive: true });
  fs.mkdirSync(path.join(stage, 'bin'));
  fs.copyFileSync('/bin/busybox', path.join(stage, 'bin/busybox'));
  fs.chmodSync(path.join(stage, 'bin/busybox'), 0o755);
  // busybox --install -s, done by hand: absolute symlinks to /bin/busybox.
  const applets = runOk('/bin/busybox', ['--list-full']).stdout.split('\n').filter((l) => l.trim() !== '');
  for (const a of applets) {
    if (a === 'bin/busybox') continue;
    fs.mkdirSync(path.join(stage, path.dirname(a)), { recursive: true });
    fs.symlinkSync('/bin/busybox', path.join(stage, a));
  }
  sh(
    [
      'mkdir -p etc tmp root data/delete-dir/inner data/replace-me/sub',
      'chmod 1777 tmp',
      "printf 'root:x:0:0:root:/root:/bin/sh\\nbig:x:100000:200000::/tmp:/bin/sh\\n' > etc/passwd",
      "printf 'root:x:0:\\nbig:x:200000:\\n' > etc/group",
      "printf 'hello\\n' > data/hello.txt",
      "printf 'delete me\\n' > data/delete-me",
      "printf 'inner\\n' > data/delete-dir/inner/file",
      "printf 'old 1\\n' > data/replace-me/old-1",
      "printf 'old 2\\n' > data/replace-me/sub/old-2",
      ...richTreeScript('data'),
    ].join('\n'),
    stage,
  );
}

/**
 * An image made of the base layer and a second layer as rich as the base one, loaded with
 * `docker load` from an archive written here (manifest.json, config, layer tars). The
 * engine applies a loaded layer with the same code as an import (pkg/archive
 * createTarFile), which keeps ns times and every xattr; a builder ADD loses both.
 */
function loadRichImage(d: Dockerd, work: string, baseTar: string, ref: string, key: string): void {
  const stage = path.join(work, 'rich-stage');
  const archive = path.join(work, 'rich-image');
  fs.mkdirSync(stage, { recursive: true });
  fs.mkdirSync(path.join(archive, 'base'), { recursive: true });
  fs.mkdirSync(path.join(archive, 'rich'), { recursive: true });
  sh(['mkdir rich', ...richTreeScript('rich')].join('\n'), stage);
  const richTar = path.join(archive, 'rich', 'layer.tar');
  runOk('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '--sort=name', '-C', stage, '-cf', richTar, 'rich']);
  fs.rmSync(stage, { recursive: true, force: true });
  fs.copyFileSync(baseTar, path.join(archive, 'base', 'layer.tar'));
  const sha = (f: string): string => 'sha256:' + runOk('sha256sum', [f]).stdout.slice(0, 64);
  const [arch, osName] = d.docker(['image', 'inspect', '--format', '{{.Architecture}} {{.Os}}', 'fixture/base:latest']).trim().split(' ');
  const config = JSON.stringify({
    architecture: arch,
    os: osName,
    config: { Cmd: ['/bin/sh', '-c', `echo ${MARKER(key)}`] },
    rootfs: { type: 'layers', diff_ids: [sha(baseTar), sha(richTar)] },
  });
  const configName = createHash('sha256').update(config).digest('hex') + '.json';
  fs.writeFileSync(path.join(archive, configName), config);
  fs.writeFileSync(
    path.join(archive, 'manifest.json'),
    JSON.stringify([{ Config: configName, RepoTags: [ref], Layers: ['base/layer.tar', 'rich/layer.tar'] }]),
  );
  const tarball = path.join(work, 'rich-image.tar');
  runOk('tar', ['-C', archive, '-cf', tarball, '.']);
  d.docker(['load', '-q', '-i', tarball], { timeoutMs: 300_000 });
  fs.rmSync(archive, { recursive: true, force: true });
  fs.rmSync(tarball);
}

function dockerfile(from: string, runs: string[], key: string): string {
  return [
    `FROM ${from}`,
    ...runs.map((r) => `RUN ${r}`),
    `CMD ["/bin/sh", "-c", "echo ${MARKER(key)}"]`,
    '',
  ].join('\n');
}

function build(d: Dockerd, tags: string[], file: string): void {
  // Legacy builder (DOCKER_BUILDKIT=0 in the client env), no context, no network.
  d.docker(['build', '--network', 'none', '--rm', '--force-rm', '-q', ...tags.flatMap((t) => ['-t', t]), '-'], {
    input: file,
    timeoutMs: 300_000,
  });
}

function inspect(d: Dockerd, ref: string): { id: string; diffIds: string[] } {
  const out = d.docker(['image', 'inspect', '--format', '{{.Id}} {{json .RootFS.Layers}}', ref]).trim();
  const sp = out.indexOf(' ');
  return { id: out.slice(0, sp), diffIds: JSON.parse(out.slice(sp + 1)) as string[] };
}

function expectAttr(problems: string[], snap: Snapshot, p: string, what: string, ok: (r: FileRecord) => boolean): void {
  const r = snap.get(p);
  if (!r) problems.push(`${p} is missing (${what})`);
  else if (!ok(r)) problems.push(`${p}: ${what} did not survive (${JSON.stringify(r)})`);
}

/**
 * Checks, in the overlay2 diff dirs of a built source root, that every attribute the
 * fixtures promise really landed (the engine can silently drop xattrs). Returns problems.
 */
export function fixtureAttributeProblems(sourceRoot: string, images: Fixtures['images']): string[] {
  const problems: string[] = [];
  const [baseChain] = chainIds(images.base.diffIds);
  const base = snapshotTree(layerDiffDir(sourceRoot, baseChain as string));
  const e = (p: string, what: string, ok: (r: FileRecord) => boolean): void => expectAttr(problems, base, p, what, ok);
  e('bin/busybox', 'regular file 0755', (r) => r.type === 'f' && r.mode === '0755');
  e('bin/sh', 'absolute symlink', (r) => r.type === 'l' && r.link === '/bin/busybox');
  richTreeProblems(base, 'data', problems);
  const d1 = snapshotTree(layerDiffDir(sourceRoot, chainIds(images.appD.diffIds)[1] as string));
  richTreeProblems(d1, 'rich', problems);
  const nsTimes = [...base.values()].filter((r) => !/\.0{9}$/.test(r.mtime)).length;
  if (nsTimes < 10) problems.push(`only ${nsTimes} files of the base layer have sub-second mtimes`);

  // appA's first RUN: whiteouts and an opaque directory.
  const aChains = chainIds(images.appA.diffIds);
  const a1 = snapshotTree(layerDiffDir(sourceRoot, aChains[1] as string));
  expectAttr(problems, a1, 'data/delete-me', 'whiteout (char device 0:0) of a file', (r) => r.type === 'c' && r.rdev === '0:0');
  expectAttr(problems, a1, 'data/delete-dir', 'whiteout of a directory', (r) => r.type === 'c' && r.rdev === '0:0');
  expectAttr(problems, a1, 'data/replace-me', 'opaque directory (trusted.overlay.opaque=y)', (r) => r.type === 'd' && r.xattrs.includes('trusted.overlay.opaque=0x79'));
  expectAttr(problems, a1, 'data/replace-me/new-file', 'file in the opaque directory', (r) => r.type === 'f');
  // appA's second RUN: a hard link made in an upper layer, big ids.
  const a2 = snapshotTree(layerDiffDir(sourceRoot, aChains[2] as string));
  expectAttr(problems, a2, 'data/hello-link', 'hard link made in an upper layer', (r) => r.linkGroup === 'data/hello-link' || r.linkGroup === 'data/hello.txt');
  expectAttr(problems, a2, 'data/sub/added', 'uid/gid above 65535 in an upper layer', (r) => r.uid === 123456 && r.gid === 654321);
  const b1 = snapshotTree(layerDiffDir(sourceRoot, chainIds(images.appB.diffIds)[1] as string));
  expectAttr(problems, b1, 'data/b-fifo', 'FIFO in an upper layer', (r) => r.type === 'p');
  expectAttr(problems, b1, 'data/hl-b', 'whiteout of a hard link', (r) => r.type === 'c' && r.rdev === '0:0');
  return problems;
}

async function buildFixtures(): Promise<Fixtures> {
  requireTools('tar', 'cp', 'setfattr', 'getfattr', 'setcap', 'mkfifo', 'mknod', 'touch', 'find', 'stat', 'sha256sum', '/bin/busybox');
  const work = tempDir('tpfx-');
  const sourceRoot = path.join(work, 'source');
  const stage = path.join(work, 'stage');
  stageBase(stage);
  const baseTar = path.join(work, 'base.tar');
  // GNU tar, pax format: ns times, xattrs of every namespace (SCHILY.xattr.*), numeric ids.
  runOk('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '--sort=name', '-C', stage, '-cf', baseTar, '.']);
  fs.rmSync(stage, { recursive: true, force: true });

  const supervisorRef = 'balena/aarch64-supervisor:v17';
  const supervisorTar = path.join(work, 'supervisor.tar');
  const keys = ['base', 'appA', 'appB', 'appC', 'appD', 'unselected'] as const;
  const tags: Record<(typeof keys)[number], string[]> = {
    base: ['fixture/base:latest', 'fixture/base:v1'],
    appA: ['fixture/app-a:1.0'],
    appB: ['fixture/app-b:latest'],
    appC: ['fixture/app-c:2'],
    appD: ['fixture/app-d:3.1'],
    unselected: ['fixture/unselected:1'],
  };

  let d = await Dockerd.start({ dataRoot: sourceRoot });
  try {
    d.docker(['import', '--change', `CMD ["/bin/sh", "-c", "echo ${MARKER('base')}"]`, baseTar, 'fixture/base:latest']);
    d.docker(['tag', 'fixture/base:latest', 'fixture/base:v1']);
    build(d, tags.appA, dockerfile('fixture/base:latest', [
      'rm /data/delete-me && rm -rf /data/delete-dir /data/replace-me && mkdir /data/replace-me && echo replaced > /data/replace-me/new-file',
      'ln /data/hello.txt /data/hello-link && echo added > /data/sub/added && chown 123456:654321 /data/sub/added && chmod 0640 /data/sub/added',
    ], 'appA'));
    build(d, tags.appB, dockerfile('fixture/base:latest', [
      'echo b > /data/b-file && rm /data/hl-b && mkfifo /data/b-fifo',
    ], 'appB'));
    build(d, tags.appC, dockerfile('fixture/app-a:1.0', [
      'mkdir -p /data/c/deeper && echo c > /data/c/deeper/file && ln -s ../c/deeper/file /data/c/rel && rm /data/replace-me/new-file',
    ], 'appC'));
    // appD: an upper layer as rich as the base one (in a target that shares the base, it is copied).
    loadRichImage(d, work, baseTar, tags.appD[0] as string, 'appD');
    build(d, tags.unselected, dockerfile('fixture/base:latest', ['echo unselected > /data/u-file'], 'unselected'));
    build(d, [supervisorRef], dockerfile('fixture/base:latest', ['echo supervisor > /supervisor.txt'], 'supervisor'));
    d.docker(['save', '-o', supervisorTar, supervisorRef], { timeoutMs: 300_000 });
    d.docker(['rmi', supervisorRef]);
    await d.stop();
  } catch (err) {
    await d.stop().catch(() => undefined);
    throw new Error(`building the source fixture failed: ${(err as Error).message}\nengine log: ${d.log().slice(-3000)}`);
  }

  // A digest reference, added while the engine is stopped (reference/store.go does not
  // cross-check it against a manifest).
  const digestRef = 'fixture/app-c@sha256:' + createHash('sha256').update('fixture app-c manifest').digest('hex');
  const reposPath = path.join(sourceRoot, 'image', 'overlay2', 'repositories.json');
  const repos = JSON.parse(fs.readFileSync(reposPath, 'utf8')) as { Repositories: Record<string, Record<string, string>> };
  const appCId = repos.Repositories['fixture/app-c']?.['fixture/app-c:2'];
  if (!appCId) throw new Error('fixture/app-c:2 is missing from the source repositories.json');
  repos.Repositories['fixture/app-c'] = { ...repos.Repositories['fixture/app-c'], [digestRef]: appCId };
  fs.writeFileSync(reposPath, JSON.stringify(repos), { mode: 0o600 });

  // Restart: every reference resolves, every image runs and prints its marker, nothing is dropped.
  const images = {} as Fixtures['images'];
  d = await Dockerd.start({ dataRoot: sourceRoot });
  try {
    for (const k of keys) {
      const { id, diffIds } = inspect(d, tags[k][0] as string);
      const refs = [...tags[k]];
      if (k === 'appC') refs.push(digestRef);
      for (const r of refs) {
        const other = inspect(d, r).id;
        if (other !== id) throw new Error(`${r} resolves to ${other}, expected ${id}`);
      }
      const out = d.docker(['run', '--rm', '--network', 'none', tags[k][0] as string], { timeoutMs: 60_000 }).trim();
      if (out !== MARKER(k)) throw new Error(`${tags[k][0]} printed ${JSON.stringify(out)}, expected ${MARKER(k)}`);
      images[k] = { key: k, id, refs, marker: MARKER(k), diffIds };
    }
    await d.stop();
  } catch (err) {
    await d.stop().catch(() => undefined);
    throw new Error(`checking the source fixture failed: ${(err as Error).message}`);
  }
  const logProblems = engineLogProblems(d.log());
  if (logProblems.length > 0) throw new Error(`source engine log: ${logProblems.join('; ')}`);
  d.cleanup();

  const base = images.base.diffIds[0];
  for (const k of keys) {
    if (images[k].diffIds[0] !== base) throw new Error(`${k} does not share the base layer`);
  }
  const problems = [
    ...fixtureAttributeProblems(sourceRoot, images),
    ...overlayProblems(sourceRoot),
    ...metadataProblems(sourceRoot),
  ];
  const repoMap = readRepositories(sourceRoot);
  if (repoMap.get(digestRef) !== images.appC.id) problems.push(`repositories.json lost ${digestRef}`);
  if (problems.length > 0) throw new Error(`the source fixture is not what the tests need:\n  ${problems.join('\n  ')}`);

  // Target: a balenaOS-like resin-data with the supervisor loaded into its engine root.
  const targetResinData = path.join(work, 'target', 'resin-data');
  const targetEngine = path.join(targetResinData, 'docker');
  let supervisor: FixtureImage;
  d = await Dockerd.start({ dataRoot: targetEngine });
  try {
    d.docker(['load', '-q', '-i', supervisorTar], { timeoutMs: 300_000 });
    const { id, diffIds } = inspect(d, supervisorRef);
    const out = d.docker(['run', '--rm', '--network', 'none', supervisorRef], { timeoutMs: 60_000 }).trim();
    if (out !== MARKER('supervisor')) throw new Error(`${supervisorRef} printed ${JSON.stringify(out)}`);
    supervisor = { key: 'supervisor', id, refs: [supervisorRef], marker: MARKER('supervisor'), diffIds };
    await d.stop();
  } catch (err) {
    await d.stop().catch(() => undefined);
    throw new Error(`building the target fixture failed: ${(err as Error).message}`);
  }
  d.cleanup();
  fs.rmSync(supervisorTar);
  if (supervisor.diffIds[0] !== base) throw new Error('the supervisor does not share the base layer');
  fs.mkdirSync(path.join(targetResinData, 'resin-data'), { recursive: true });
  fs.writeFileSync(path.join(targetResinData, 'remove_me_to_reset'), '');
  const targetProblems = [...overlayProblems(targetEngine), ...metadataProblems(targetEngine)];
  if (targetProblems.length > 0) throw new Error(`the target fixture is broken:\n  ${targetProblems.join('\n  ')}`);

  // Bare: an engine root as a fresh dockerd leaves it.
  const bareEngineRoot = path.join(work, 'bare', 'docker');
  d = await Dockerd.start({ dataRoot: bareEngineRoot });
  await d.stop();
  d.cleanup();

  return { workDir: work, sourceRoot, images, digestRef, targetResinData, supervisor, bareEngineRoot };
}
