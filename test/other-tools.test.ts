/**
 * Archives other tools write, read as `docker load` reads the same image: skopeo's
 * docker-archive (layers as `<hex>.tar`) and OCI archives (plain and gzip layers), buildah's
 * and podman's OCI and docker archives, and an OCI layout made by umoci (gzip layers, a
 * whiteout from a repack). Each is injected into a bare engine root; the same image as a
 * docker-archive (skopeo copy) goes through a real `docker load`; every layer must match
 * (harness/layer-parity.ts: files with every attribute, tar-split bytes, DiffID, size).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dockerd } from './harness/dockerd.js';
import { requireTools, run, runOk } from './harness/exec.js';
import { copyTree, tempDir } from './harness/fixtures.js';
import { CliWorker } from './harness/hostile.js';
import { chainIds } from './harness/judge.js';
import { layerParityProblems, type LoadWindow } from './harness/layer-parity.js';

interface Made {
  name: string;
  /** What transplant reads. */
  input: string;
  /** The same image as a docker-archive, for docker load. */
  dockerArchive: string;
  reference: string;
}

function rootfs(dir: string, variant: string): void {
  fs.mkdirSync(path.join(dir, 'etc'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'data', 'sub'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'etc', 'hello'), `hello from ${variant}\n`);
  fs.writeFileSync(path.join(dir, 'data', 'sub', 'file'), 'x'.repeat(10_000));
  fs.writeFileSync(path.join(dir, 'data', 'gone'), 'to be deleted\n');
  fs.symlinkSync('../etc/hello', path.join(dir, 'data', 'link'));
  fs.linkSync(path.join(dir, 'etc', 'hello'), path.join(dir, 'data', 'hard'));
  fs.chmodSync(path.join(dir, 'data', 'sub'), 0o2750);
  fs.chownSync(path.join(dir, 'data', 'sub', 'file'), 1234, 5678);
  runOk('touch', ['-d', '@1600000000.5', path.join(dir, 'etc', 'hello')]);
}

test('archives from skopeo, buildah, podman and umoci: inject equals docker load of the same image', { timeout: 1_200_000 }, async () => {
  requireTools('skopeo', 'buildah', 'podman', 'umoci', 'tar');
  const work = tempDir('tptools-');
  const made: Made[] = [];
  const policy = path.join(work, 'policy.json');
  fs.writeFileSync(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  const skopeo = (args: string[]): void => void runOk('skopeo', ['--policy', policy, ...args], { timeoutMs: 300_000 });

  // umoci: an OCI layout, two gzip layers (the second deletes a file: a whiteout).
  const layout = path.join(work, 'umoci-layout');
  const bundle = path.join(work, 'umoci-bundle');
  runOk('umoci', ['init', '--layout', layout]);
  runOk('umoci', ['new', '--image', `${layout}:t`]);
  runOk('umoci', ['unpack', '--image', `${layout}:t`, bundle]);
  rootfs(path.join(bundle, 'rootfs'), 'umoci');
  runOk('umoci', ['repack', '--image', `${layout}:t`, bundle]);
  fs.rmSync(path.join(bundle, 'rootfs', 'data', 'gone'));
  fs.writeFileSync(path.join(bundle, 'rootfs', 'etc', 'second'), 'second layer\n');
  runOk('umoci', ['repack', '--image', `${layout}:t`, bundle]);
  runOk('umoci', ['config', '--image', `${layout}:t`, '--config.cmd', '/bin/true']);
  const umociTar = path.join(work, 'umoci.tar');
  runOk('tar', ['-C', layout, '-cf', umociTar, '.']);
  const umociDocker = path.join(work, 'umoci-docker.tar');
  skopeo(['copy', `oci:${layout}:t`, `docker-archive:${umociDocker}:tools/umoci:1`]);
  made.push({ name: 'umoci OCI layout (tar)', input: umociTar, dockerArchive: umociDocker, reference: 'tools/umoci:1' });

  // skopeo: docker-archive (<hex>.tar layers), OCI archive plain and gzip-compressed.
  const skDocker = path.join(work, 'skopeo-docker.tar');
  skopeo(['copy', `oci:${layout}:t`, `docker-archive:${skDocker}:tools/skopeo:1`]);
  made.push({ name: 'skopeo docker-archive', input: skDocker, dockerArchive: skDocker, reference: 'tools/skopeo:1' });
  const skOci = path.join(work, 'skopeo-oci.tar');
  skopeo(['copy', `docker-archive:${skDocker}`, `oci-archive:${skOci}:tools/skopeo-oci:1`]);
  made.push({ name: 'skopeo oci-archive', input: skOci, dockerArchive: skDocker, reference: 'tools/skopeo:1' });
  const skOciGz = path.join(work, 'skopeo-oci-gzip.tar');
  skopeo(['copy', '--dest-compress', '--dest-compress-format', 'gzip', `docker-archive:${skDocker}`, `oci-archive:${skOciGz}:tools/skopeo-gz:1`]);
  made.push({ name: 'skopeo oci-archive (gzip layers)', input: skOciGz, dockerArchive: skDocker, reference: 'tools/skopeo:1' });

  // buildah and podman (one containers/storage, vfs driver, in the scratch directory).
  const store = ['--root', path.join(work, 'cs-root'), '--runroot', path.join(work, 'cs-run'), '--storage-driver', 'vfs'];
  const buildah = (args: string[]): string => runOk('buildah', [...store, ...args], { timeoutMs: 300_000 }).stdout.trim();
  const ctr = buildah(['from', 'scratch']);
  const src = path.join(work, 'buildah-src');
  rootfs(src, 'buildah');
  buildah(['copy', ctr, src, '/']);
  buildah(['config', '--cmd', '/bin/true', ctr]);
  buildah(['commit', ctr, 'tools/buildah:1']);
  const bOci = path.join(work, 'buildah-oci.tar');
  buildah(['push', 'tools/buildah:1', `oci-archive:${bOci}:tools/buildah:1`]);
  const bDocker = path.join(work, 'buildah-docker.tar');
  buildah(['push', 'tools/buildah:1', `docker-archive:${bDocker}:tools/buildah:1`]);
  made.push({ name: 'buildah oci-archive', input: bOci, dockerArchive: bDocker, reference: 'tools/buildah:1' });
  made.push({ name: 'buildah docker-archive', input: bDocker, dockerArchive: bDocker, reference: 'tools/buildah:1' });
  const pOci = path.join(work, 'podman-oci.tar');
  const p = run('podman', [...store, '--cgroup-manager', 'cgroupfs', '--events-backend', 'none', 'save', '--format', 'oci-archive', '-o', pOci, 'localhost/tools/buildah:1'], { timeoutMs: 300_000 });
  assert.equal(p.code, 0, `podman save: ${p.stderr}`);
  made.push({ name: 'podman oci-archive', input: pOci, dockerArchive: bDocker, reference: 'tools/buildah:1' });

  // docker load of each docker-archive, in one engine.
  const bare = path.join(work, 'bare');
  let d = await Dockerd.start({ dataRoot: bare });
  await d.stop();
  d.cleanup();
  const engineRoot = path.join(work, 'engine');
  copyTree(bare, engineRoot);
  const window: LoadWindow = { from: Date.now() / 1000, to: 0 };
  d = await Dockerd.start({ dataRoot: engineRoot });
  const diffIds = new Map<string, string[]>();
  try {
    for (const a of new Set(made.map((m) => m.dockerArchive))) d.docker(['load', '-q', '-i', a], { timeoutMs: 300_000 });
    for (const ref of new Set(made.map((m) => m.reference))) {
      diffIds.set(ref, JSON.parse(d.docker(['image', 'inspect', '--format', '{{json .RootFS.Layers}}', ref])) as string[]);
    }
  } finally {
    await d.stop();
  }
  d.cleanup();
  window.to = Date.now() / 1000;

  const cli = new CliWorker();
  const problems: string[] = [];
  try {
    for (const m of made) {
      const target = path.join(work, `target-${m.name.replace(/\W+/g, '-')}`);
      copyTree(bare, target);
      const r = await cli.run(['inject', m.input, '--engine-root', target], {}, 300_000);
      if (r.code !== 0) {
        problems.push(`${m.name}: inject failed: ${r.stderr.trim()}`);
        continue;
      }
      const ids = diffIds.get(m.reference) as string[];
      assert.ok(ids.length >= 1, `${m.reference} has layers`);
      for (const chain of chainIds(ids)) problems.push(...layerParityProblems(engineRoot, target, chain, window, false).map((l) => `${m.name}: ${l}`));
      const v = await cli.run(['verify', target], {}, 300_000);
      if (v.code !== 0) problems.push(`${m.name}: verify: ${v.stdout}${v.stderr}`);
    }
  } finally {
    await cli.close();
  }
  assert.deepEqual(problems, []);
});
