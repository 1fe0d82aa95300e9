/**
 * Byte-parity with `docker load` on unusual tars: every case of the corpus
 * (harness/tar-corpus.ts: GNU tar in each format, Python's tarfile, hand-made header forms,
 * broken tars; layers laid out as docker save, skopeo/crane and other tools do) is loaded by
 * a real `docker load` (one dockerd, one load per case) and by transplant along every path:
 *
 *   archive → engine root, archive → bundle → engine root, engine root → engine root,
 *   engine root → disk image (inject --disk; names that are not UTF-8 stored as bytes too).
 *
 * Where the engine stores the layer, transplant must store the same files with every
 * attribute at the same paths (harness/judge.ts), the same tar-split bytes and the same
 * DiffID/size; where the engine refuses it, transplant refuses it with one `error:` line and
 * leaves the target as it was. (GNU sparse files, which the engine expands and cannot save
 * back, may be refused.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { Dockerd } from './harness/dockerd.js';
import { requireTools } from './harness/exec.js';
import { copyTree, tempDir } from './harness/fixtures.js';
import { assertOneLineError, show } from './harness/cli.js';
import type { RunResult } from './harness/exec.js';
import { CliWorker } from './harness/hostile.js';
import { layerDiffDir, snapshotTree, treeDigest } from './harness/judge.js';
import { buildBalenaImage } from './harness/balena-image.js';
import { assertE2fsckClean, withMountedData } from './harness/disk-judge.js';
import { nameIsRaw } from '../src/layer/entry.js';
import { layerParityProblems } from './harness/layer-parity.js';
import { buildTarCorpus, type CorpusCase } from './harness/tar-corpus.js';

interface EngineResult {
  loaded: boolean;
  stderr: string;
  /** Wall-clock window of the load (s): what the engine made itself has its times in it. */
  from: number;
  to: number;
}

test('tar corpus: docker load and transplant store the same layers (archive → root, archive → bundle → root, root → root, root → disk)', { timeout: 1_800_000 }, async () => {
  requireTools('python3', 'tar');
  const work = tempDir('tpparity-');
  const cases = buildTarCorpus(path.join(work, 'corpus'));

  // A bare engine root, copied for the engine and for each of transplant's targets.
  const bare = path.join(work, 'bare');
  let d = await Dockerd.start({ dataRoot: bare });
  await d.stop();
  d.cleanup();
  const engineRoot = path.join(work, 'engine');
  copyTree(bare, engineRoot);

  const engine = new Map<string, EngineResult>();
  d = await Dockerd.start({ dataRoot: engineRoot });
  try {
    for (const c of cases) {
      const from = Date.now() / 1000;
      const r = d.dockerRaw(['load', '-q', '-i', c.archive], { timeoutMs: 120_000 });
      engine.set(c.name, { loaded: r.code === 0, stderr: r.stderr.trim(), from, to: Date.now() / 1000 });
    }
  } finally {
    await d.stop();
  }
  d.cleanup();

  // The corpus holds what this test is about (the engine's verdicts this test relies on).
  const verdict = (name: string): boolean | undefined => engine.get(name)?.loaded;
  for (const name of ['pax-consecutive', 'pax-global-middle', 'lone-pax', 'lone-pax-no-end', 'oldgnu-prefix', 'star', 'v7', 'py-pax', 'py-pax-global', 'gnutar-posix', 'gnutar-posix-sparse-1.0']) {
    assert.equal(verdict(name), true, `docker load loads ${name}: ${engine.get(name)?.stderr}`);
  }
  for (const name of ['broken-zero-then-header', 'broken-checksum', 'broken-pax-huge', 'broken-contiguous', 'gnutar-gnu-sparse', 'pax-global-twice']) {
    assert.equal(verdict(name), false, `docker load refuses ${name}`);
  }

  // The CLI in a worker thread: a hundred runs without a Node start each.
  const cli = new CliWorker();
  const transplant = async (args: string[]): Promise<RunResult> => {
    const r = await cli.run(args, {}, 300_000);
    return { ...r, stdoutBytes: Buffer.from(r.stdout) };
  };
  const problems: string[] = [];
  const toRoot = path.join(work, 'archive-to-root');
  const viaBundle = path.join(work, 'archive-bundle-root');
  copyTree(bare, toRoot);
  copyTree(bare, viaBundle);
  const loaded: CorpusCase[] = [];
  for (const c of cases) {
    const e = engine.get(c.name) as EngineResult;
    try {
      // The whole target's digest, to show a refusal left it as it was (taken only where one may come).
      const before = !e.loaded || c.refusalAccepted ? treeDigest(toRoot) : '';
      const r = await transplant(['inject', c.archive, '--engine-root', toRoot]);
      const bundle = path.join(work, `${c.name}.bundle`);
      const x = await transplant(['extract', '--from', c.archive, '--image', c.reference, '-o', bundle]);
      if (!e.loaded || (c.refusalAccepted && r.code !== 0)) {
        // Refused: one line, the target untouched (and no bundle made from it).
        assertOneLineError(r, `inject of what the engine refuses (${e.stderr})`);
        assert.equal(treeDigest(toRoot), before, 'a refused inject left the target as it was');
        assertOneLineError(x, 'extract of what the engine refuses');
        continue;
      }
      assert.equal(r.code, 0, `inject\n${show(r)}`);
      assert.equal(x.code, 0, `extract\n${show(x)}`);
      const b = await transplant(['inject', bundle, '--engine-root', viaBundle]);
      assert.equal(b.code, 0, `inject of the bundle\n${show(b)}`);
      problems.push(...layerParityProblems(engineRoot, toRoot, c.diffId, e, false).map((l) => `archive → root: ${c.name}: ${l}`));
      problems.push(...layerParityProblems(engineRoot, viaBundle, c.diffId, e, false).map((l) => `archive → bundle → root: ${c.name}: ${l}`));
      loaded.push(c);
    } catch (err) {
      problems.push(`${c.name} (docker load: ${e.loaded ? 'loaded' : e.stderr}): ${(err as Error).message}`);
    }
  }

  // The engine's own root as a source: copied exactly, engine-made times included.
  const rootToRoot = path.join(work, 'root-to-root');
  copyTree(bare, rootToRoot);
  const rr = await transplant(['inject', engineRoot, '--engine-root', rootToRoot, ...loaded.flatMap((c) => ['--image', c.reference])]);
  assert.equal(rr.code, 0, `root → root\n${show(rr)}`);
  for (const c of loaded) problems.push(...layerParityProblems(engineRoot, rootToRoot, c.diffId, engine.get(c.name) as EngineResult, true).map((l) => `root → root: ${c.name}: ${l}`));

  // Engine root → disk image (resin-data written in-process by the ext4 engine): every layer,
  // names that are not UTF-8 included (ext4 directory entries and symlink targets are bytes).
  const rawNamed = (c: CorpusCase): boolean =>
    [...snapshotTree(layerDiffDir(engineRoot, c.diffId))].some(([p, r]) => nameIsRaw(p) || (r.link !== undefined && nameIsRaw(r.link)));
  assert.ok(loaded.some(rawNamed), 'the corpus has a layer with a non-UTF-8 name');
  const img = buildBalenaImage(path.join(work, 'disk'), 'balena.img', { dataMiB: 96, dataMkfsArgs: ['-b', '4096'], deviceType: { slug: 'genericx86-64-ext', arch: 'amd64' } });
  const dk = await transplant(['inject', engineRoot, '--disk', img.path, ...loaded.flatMap((c) => ['--image', c.reference])]);
  assert.equal(dk.code, 0, `root → disk\n${show(dk)}`);
  assertE2fsckClean(img.path, work);
  await withMountedData(img.path, work, (mnt) => {
    for (const c of loaded) {
      problems.push(...layerParityProblems(engineRoot, path.join(mnt, 'docker'), c.diffId, engine.get(c.name) as EngineResult, true).map((l) => `root → disk: ${c.name}: ${l}`));
    }
  }, { readOnly: true });

  const v = await transplant(['verify', toRoot]);
  await cli.close();
  assert.deepEqual(problems, []);
  assert.equal(v.code, 0, show(v));
});
