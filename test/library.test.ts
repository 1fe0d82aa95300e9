/**
 * The library in-process (src/index.ts): each call has its own cancellation (two concurrent
 * calls, one aborted, never meet), an abort while writing undoes what was written, progress
 * events add up to the plan, and nothing is installed on the process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { extract, inject, verify, TransplantError, type ProgressEvent } from '../src/index.js';
import { repoRoot } from './harness/exec.js';
import { tempDir } from './harness/fixtures.js';

const T = { timeout: 300_000 };
const TARBALL = path.join(repoRoot(), 'sample', 'device-docker.tar.gz');

const listeners = (): number[] => ['SIGINT', 'SIGTERM', 'SIGHUP', 'uncaughtException', 'unhandledRejection'].map((e) => process.listenerCount(e));

test('two concurrent calls, one aborted at its first progress event: the other completes, the aborted one leaves no file and rejects with ABORTED', T, async () => {
  const work = tempDir('tp-lib-');
  const before = listeners();
  const controller = new AbortController();
  const a = path.join(work, 'a.bundle');
  const b = path.join(work, 'b.bundle');
  const events: ProgressEvent[] = [];
  const [ra, rb] = await Promise.allSettled([
    extract({ from: TARBALL, image: ['sample/hello:2.0'], output: a, signal: controller.signal, onProgress: () => controller.abort() }),
    extract({ from: TARBALL, image: ['sample/hello:2.0'], output: b, signal: new AbortController().signal, onProgress: (e) => events.push(e) }),
  ]);
  assert.equal(ra.status, 'rejected');
  const err = (ra as PromiseRejectedResult).reason as TransplantError;
  assert.ok(err instanceof TransplantError, String(err));
  assert.equal(err.code, 'ABORTED');
  assert.equal(rb.status, 'fulfilled', String((rb as PromiseRejectedResult).reason));
  const result = (rb as PromiseFulfilledResult<Awaited<ReturnType<typeof extract>>>).value;
  assert.equal(result.layerCount, 2);
  assert.deepEqual(fs.readdirSync(work), ['b.bundle'], 'the aborted call left nothing (its partial bundle removed)');
  // Progress: bytes only grow, and end at the plan's total.
  for (let i = 1; i < events.length; i++) assert.ok(events[i]!.bytes >= events[i - 1]!.bytes);
  const last = events[events.length - 1]!;
  assert.equal(last.bytes, result.bytes);
  assert.equal(last.totalBytes, result.bytes);
  assert.equal((await verify(b)).ok, true);
  assert.deepEqual(listeners(), before, 'no process handlers installed');
});

test('an abort while writing into a resin-data undoes the run; the same call without abort then completes', T, async () => {
  const work = tempDir('tp-lib-');
  const bundle = path.join(work, 'a.bundle');
  await extract({ from: TARBALL, image: ['sample/hello:2.0'], output: bundle });
  const rd = path.join(work, 'rd');
  fs.mkdirSync(rd);
  const controller = new AbortController();
  let phases = new Set<string>();
  await assert.rejects(
    inject(bundle, {
      resinData: rd,
      signal: controller.signal,
      onProgress: (e) => {
        phases.add(e.phase);
        if (e.fileCount >= 3) controller.abort();
      },
    }),
    (e: unknown) => e instanceof TransplantError && e.code === 'ABORTED' && /what this run had written was undone/.test(e.message),
  );
  assert.deepEqual([...phases], ['inject']);
  assert.deepEqual(fs.readdirSync(rd), [], 'what the aborted run wrote is gone');
  phases = new Set();
  const r = await inject(bundle, { resinData: rd, onProgress: (e) => phases.add(e.phase) });
  assert.deepEqual([r.changed, r.copiedLayerCount], [true, 2]);
  assert.equal((await verify(rd)).ok, true);
});
