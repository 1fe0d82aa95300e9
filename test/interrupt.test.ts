/**
 * Interrupted runs (issue "Hostile and broken input, interrupted runs", part 3): an injection
 * into a balenaOS-like resin-data killed with SIGKILL at several moments, the same target
 * each time (so every rerun meets what the killed runs left: orphan overlay2 dirs,
 * layerdb/tmp/write-set-*, l/ links, .tmp-* files). After each kill a copy of the target is
 * judged by a real engine: it starts, every reference in repositories.json resolves to its
 * image, every image it names runs (the supervisor included), no layer fails to load. Then a complete injection on the
 * target itself, judged like core.test.ts (files, links, metadata, a real engine running and
 * saving every image, nothing pruned).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dockerd } from './harness/dockerd.js';
import { show, spawnTransplant, transplant } from './harness/cli.js';
import { copyTree, getFixtures, tempDir, type FixtureImage } from './harness/fixtures.js';
import { layerCacheId, metadataProblems, overlayProblems, readRepositories } from './harness/judge.js';
import { verifyInjectedEngineRoot } from './harness/verify.js';
import { bigImageArchive } from './harness/hostile.js';

const T = { timeout: 900_000 };

/** What an engine must still do with a target whose injection was killed. */
async function judgeKilled(resinData: string, supervisor: FixtureImage, known: FixtureImage[], label: string): Promise<string[]> {
  const root = path.join(resinData, 'docker');
  const problems: string[] = [];
  // A config still being written sits under a name that is not a digest: image/fs.go skips it.
  problems.push(...metadataProblems(root).filter((p) => !/imagedb\/content\/sha256\/\.tmp-/.test(p)).map((p) => `${label}: on disk: ${p}`));
  // Leftovers the engine prunes are allowed; anything about a layer the engine loads is not.
  const usedCacheIds = new Set<string>();
  for (const hex of fs.readdirSync(path.join(root, 'image', 'overlay2', 'layerdb', 'sha256'))) {
    const c = layerCacheId(root, `sha256:${hex}`);
    if (c) usedCacheIds.add(c);
  }
  for (const p of overlayProblems(root)) {
    const leftover =
      /used by no layer or container|layerdb\/tmp holds/.test(p) ||
      [...fs.readdirSync(path.join(root, 'overlay2'))].some((d) => !usedCacheIds.has(d) && p.includes(d));
    if (!leftover) problems.push(`${label}: on disk: ${p}`);
  }
  const refs = readRepositories(root);
  const d = await Dockerd.start({ dataRoot: root });
  try {
    for (const [ref, id] of refs) {
      const r = d.dockerRaw(['image', 'inspect', '--format', '{{.Id}}', ref]);
      if (r.code !== 0) problems.push(`${label}: engine: ${ref} (in repositories.json) does not resolve: ${r.stderr.trim()}`);
      else if (r.stdout.trim() !== id) problems.push(`${label}: engine: ${ref} resolves to ${r.stdout.trim()}, repositories.json says ${id}`);
    }
    // Every image repositories.json names runs (the supervisor always is one) and prints its marker.
    for (const id of new Set([supervisor.id, ...refs.values()])) {
      const img = [supervisor, ...known].find((k) => k.id === id);
      const run = d.dockerRaw(['run', '--rm', '--network', 'none', id], { timeoutMs: 60_000 });
      if (run.code !== 0 || (img && run.stdout.trim() !== img.marker)) problems.push(`${label}: engine: ${img?.key ?? id} does not run: ${run.stderr.trim()} ${run.stdout.trim()}`);
    }
  } finally {
    await d.stop();
  }
  for (const line of d.log().split('\n')) {
    if (/Failed to load layer|not restoring image|failed to verify/i.test(line)) problems.push(`${label}: engine log: ${line.slice(0, 300)}`);
  }
  if (problems.length === 0) d.cleanup();
  else problems.push(`${label}: (engine log kept in ${d.logFile})`);
  return problems;
}

type Trigger = { label: string; atMs?: number; when?: (engineRoot: string) => boolean };

/** Starts an injection and SIGKILLs it at the trigger; returns how it ended. */
async function killedRun(args: string[], engineRoot: string, trigger: Trigger): Promise<{ killed: boolean; code: number | null; stderr: string; ms: number }> {
  const child = spawnTransplant(args);
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  child.stdout?.resume();
  const started = Date.now();
  let killed = false;
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const poll = setInterval(() => {
    if (killed || child.exitCode !== null) return;
    const due = trigger.atMs !== undefined ? Date.now() - started >= trigger.atMs : (trigger.when?.(engineRoot) ?? false);
    if (due) {
      killed = child.kill('SIGKILL');
    }
  }, 5);
  const code = await exited;
  clearInterval(poll);
  return { killed, code, stderr, ms: Date.now() - started };
}

/** A partial bundle that has grown past its first megabyte. */
function anyPartial(dir: string): boolean {
  return fs.readdirSync(dir).some((n) => n.includes('.partial-') && fs.statSync(path.join(dir, n)).size > 1 << 20);
}

test('inject killed with SIGKILL at several moments: the engine still starts and runs the supervisor; a rerun completes it', T, async () => {
  const fx = await getFixtures();
  const work = tempDir('tpint-');
  const big = await bigImageArchive(path.join(work, 'big'), { smallFiles: 3000, bigFiles: 3, bigSize: 48 << 20 });

  // A source engine root holding the fixtures and the big image (docker load), extracted into one bundle.
  const src = path.join(work, 'src');
  copyTree(fx.sourceRoot, src);
  const d = await Dockerd.start({ dataRoot: src });
  try {
    d.docker(['load', '-q', '-i', big.archive], { timeoutMs: 300_000 });
  } finally {
    await d.stop();
  }
  d.cleanup();
  fs.rmSync(big.archive);
  const bigImage: FixtureImage = { key: 'big', id: big.id, refs: [big.ref], marker: big.marker, diffIds: big.diffIds };
  const injected = [fx.images.appA, bigImage, fx.images.appD];
  const bundle = path.join(work, 'interrupt.bundle');
  const x = transplant(['extract', '--from', src, ...injected.flatMap((i) => ['--image', i.refs[0] as string]), '--output', bundle]);
  assert.equal(x.code, 0, show(x));

  // How long a complete run takes here (machines differ a lot).
  const reference = path.join(work, 'reference', 'resin-data');
  copyTree(fx.targetResinData, reference);
  const t0 = Date.now();
  const full = transplant(['inject', bundle, '--resin-data', reference]);
  const duration = Date.now() - t0;
  assert.equal(full.code, 0, show(full));
  fs.rmSync(path.dirname(reference), { recursive: true, force: true });

  const resinData = path.join(work, 'target', 'resin-data');
  copyTree(fx.targetResinData, resinData);
  const engineRoot = path.join(resinData, 'docker');
  // Event triggers fire on a name that was not there when the run started (earlier killed runs left some).
  const appears = (dir: string, re: RegExp): ((r: string) => boolean) => {
    const list = (): string[] => {
      try {
        return fs.readdirSync(path.join(engineRoot, dir)).filter((n) => re.test(n));
      } catch {
        return [];
      }
    };
    const before = new Set(list());
    return () => list().some((n) => !before.has(n));
  };
  const triggers: (() => Trigger)[] = [
    () => ({ label: `after ${Math.round(duration * 0.2)} ms`, atMs: duration * 0.2 }),
    () => ({ label: 'when a layerdb entry waits in layerdb/tmp', when: appears('image/overlay2/layerdb/tmp', /^write-set-/) }),
    () => ({ label: `after ${Math.round(duration * 0.5)} ms`, atMs: duration * 0.5 }),
    () => ({ label: 'when a layer appears in layerdb', when: appears('image/overlay2/layerdb/sha256', /^[0-9a-f]{64}$/) }),
    () => ({ label: 'when an image config is being written', when: appears('image/overlay2/imagedb/content/sha256', /^\.tmp-/) }),
    () => ({ label: 'when repositories.json is being replaced', when: appears('image/overlay2', /^\.tmp-repositories/) }),
    () => ({ label: `after ${Math.round(duration * 0.85)} ms`, atMs: duration * 0.85 }),
  ];
  const problems: string[] = [];
  const outcomes: string[] = [];
  for (const [i, makeTrigger] of triggers.entries()) {
    const trigger = makeTrigger();
    const r = await killedRun(['inject', bundle, '--resin-data', resinData], engineRoot, trigger);
    outcomes.push(`${trigger.label}: ${r.killed ? `killed after ${r.ms} ms` : `finished first (exit ${r.code})`}`);
    if (!r.killed) assert.equal(r.code, 0, `a run that was not killed ends well\n${r.stderr}`);
    // The engine judges a copy: the target itself keeps its leftovers for the next run.
    const copy = path.join(work, `judge-${i}`, 'resin-data');
    copyTree(resinData, copy);
    problems.push(...(await judgeKilled(copy, fx.supervisor, [...injected, ...Object.values(fx.images)], trigger.label)));
    fs.rmSync(path.dirname(copy), { recursive: true, force: true });
  }
  assert.ok(outcomes.filter((o) => o.includes('killed')).length >= 3, `at least three runs were killed midway:\n${outcomes.join('\n')}`);
  assert.deepEqual(problems, [], problems.join('\n'));

  // A killed extract leaves no file under the bundle's name (only its .partial-* beside it).
  const out = path.join(work, 'extract-out', 'killed.bundle');
  fs.mkdirSync(path.dirname(out));
  const ex = await killedRun(['extract', '--from', src, '--image', big.ref, '--output', out], engineRoot, { label: 'extract', when: () => anyPartial(path.dirname(out)) });
  if (ex.killed) assert.ok(!fs.existsSync(out), `a killed extract left ${out}`);
  else assert.equal(ex.code, 0, `an extract that was not killed ends well\n${ex.stderr}`);
  outcomes.push(`extract: ${ex.killed ? `killed after ${ex.ms} ms` : 'finished first'}`);

  // The complete run on the target the killed runs left.
  const done = transplant(['inject', bundle, '--resin-data', resinData]);
  assert.equal(done.code, 0, show(done));
  process.stderr.write(`# interrupt: complete run ${duration} ms; ${outcomes.join('; ')}\n`);
  const verified = await verifyInjectedEngineRoot({
    engineRoot,
    sourceRoot: src,
    injected,
    preexisting: [fx.supervisor],
    absentRefs: fx.images.unselected.refs,
    scratchDir: work,
  });
  assert.deepEqual(verified, [], verified.join('\n'));
});
