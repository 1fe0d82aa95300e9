/**
 * The whole judgement of an engine data root that images were injected into: the files
 * on disk first (with the engine stopped), then a real engine started on it. Reusable by
 * every test that writes images somewhere (host directory, disk image after copying its
 * resin-data out, …).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dockerd } from './dockerd.js';
import { runOk } from './exec.js';
import type { FixtureImage } from './fixtures.js';
import {
  chainIds,
  compareLayerFiles,
  engineLogProblems,
  layerCacheId,
  layerDiffDir,
  metadataProblems,
  overlayProblems,
} from './judge.js';

export interface VerifyOptions {
  /** The engine root under test (e.g. `<resin-data>/docker`); its engine must be stopped. */
  engineRoot: string;
  /** The source engine root the images came from (their layers are compared with it). */
  sourceRoot: string;
  /** Images that must be there, with all their references, run and print their markers. */
  injected: FixtureImage[];
  /** Images the target held before (e.g. the supervisor): must still resolve and run. */
  preexisting?: FixtureImage[];
  /**
   * An engine root holding the preexisting images' layers as they were before the inject;
   * those layers are compared with it instead of with sourceRoot. For targets made by
   * mkfs.ext4 -d, which stores whole seconds and 32-bit times (e2fsprogs 1.47
   * misc/create_inode.c), so they cannot equal the source.
   */
  preexistingRoot?: string;
  /** ChainID -> cache ID the target had before: those layers must have been reused, not copied. */
  reusedCacheIds?: Map<string, string>;
  /** References that must not resolve (images that were not selected). */
  absentRefs?: string[];
  /** Scratch space for `docker save` archives. */
  scratchDir: string;
}

/** Checks everything and returns one line per problem (empty when all is well). */
export async function verifyInjectedEngineRoot(o: VerifyOptions): Promise<string[]> {
  const problems: string[] = [];
  const all = [...o.injected, ...(o.preexisting ?? [])];

  // On disk, before any engine touches it.
  problems.push(...overlayProblems(o.engineRoot).map((p) => `on disk: ${p}`));
  problems.push(...metadataProblems(o.engineRoot).map((p) => `on disk: ${p}`));
  const preexistingChains = new Set((o.preexisting ?? []).flatMap((i) => chainIds(i.diffIds)));
  const compared = new Set<string>();
  for (const img of o.injected) {
    const chains = chainIds(img.diffIds);
    for (const [i, chain] of chains.entries()) {
      const label = `layer ${i + 1}/${chains.length} of ${img.key} (${chain.slice(0, 19)})`;
      if (compared.has(chain)) continue;
      compared.add(chain);
      const reused = o.reusedCacheIds?.get(chain);
      const now = layerCacheId(o.engineRoot, chain);
      if (now === undefined) {
        problems.push(`${label} is missing from the target layerdb`);
        continue;
      }
      if (reused !== undefined && now !== reused) {
        problems.push(`${label} was already in the target as overlay2/${reused} but now uses overlay2/${now} (not reused)`);
      }
      // A layer the target already had came from its own `docker load`, which sets no time on diff/ itself.
      const reference = o.preexistingRoot !== undefined && preexistingChains.has(chain) ? o.preexistingRoot : o.sourceRoot;
      const diffs = compareLayerFiles(layerDiffDir(reference, chain), layerDiffDir(o.engineRoot, chain), {
        ignoreRootAttributes: preexistingChains.has(chain),
      });
      for (const d of diffs.slice(0, 20)) problems.push(`${label}: ${d}`);
      if (diffs.length > 20) problems.push(`${label}: … ${diffs.length - 20} more differences`);
    }
  }

  // A real engine on it.
  const d = await Dockerd.start({ dataRoot: o.engineRoot });
  try {
    for (const img of all) {
      for (const ref of img.refs) {
        const r = d.dockerRaw(['image', 'inspect', '--format', '{{.Id}}', ref]);
        if (r.code !== 0) problems.push(`engine: ${ref} does not resolve: ${r.stderr.trim()}`);
        else if (r.stdout.trim() !== img.id) problems.push(`engine: ${ref} resolves to ${r.stdout.trim()}, expected ${img.id}`);
      }
      const run = d.dockerRaw(['run', '--rm', '--network', 'none', img.id], { timeoutMs: 60_000 });
      if (run.code !== 0) problems.push(`engine: ${img.key} (${img.id}) does not run: ${run.stderr.trim()}`);
      else if (run.stdout.trim() !== img.marker) problems.push(`engine: ${img.key} printed ${JSON.stringify(run.stdout.trim())}, expected ${img.marker}`);
      problems.push(...checkSave(d, img, o.scratchDir));
    }
    for (const ref of o.absentRefs ?? []) {
      if (d.dockerRaw(['image', 'inspect', ref]).code === 0) problems.push(`engine: ${ref} resolves but was not selected`);
    }
  } finally {
    await d.stop();
  }
  problems.push(...engineLogProblems(d.log()).map((l) => `engine log: ${l}`));
  // The engine's start-up clean-up must have found nothing to delete.
  problems.push(...overlayProblems(o.engineRoot).map((p) => `after the engine ran: ${p}`));
  for (const img of o.injected) {
    for (const chain of chainIds(img.diffIds)) {
      if (layerCacheId(o.engineRoot, chain) === undefined) problems.push(`after the engine ran: layer ${chain} is gone`);
    }
  }
  if (problems.length === 0) d.cleanup();
  else problems.push(`(engine log kept in ${d.logFile})`);
  return problems;
}

/** `docker save` succeeds and its layer tars hash to the image's DiffIDs, its config to the image ID. */
function checkSave(d: Dockerd, img: FixtureImage, scratch: string): string[] {
  const dir = fs.mkdtempSync(path.join(scratch, `save-${img.key}-`));
  const archive = path.join(dir, 'image.tar');
  try {
    const r = d.dockerRaw(['save', '-o', archive, img.id], { timeoutMs: 300_000 });
    if (r.code !== 0) return [`engine: docker save of ${img.key} failed: ${r.stderr.trim()}`];
    const out = path.join(dir, 'x');
    fs.mkdirSync(out);
    runOk('tar', ['-xf', archive, '-C', out]);
    const manifest = JSON.parse(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8')) as { Config: string; Layers: string[] }[];
    if (manifest.length !== 1) return [`docker save of ${img.key}: ${manifest.length} manifest entries`];
    const entry = manifest[0] as { Config: string; Layers: string[] };
    const sha = (p: string): string => 'sha256:' + runOk('sha256sum', [path.join(out, p)]).stdout.slice(0, 64);
    const problems: string[] = [];
    if (sha(entry.Config) !== img.id) problems.push(`docker save of ${img.key}: config hashes to ${sha(entry.Config)}`);
    const saved = entry.Layers.map(sha);
    if (JSON.stringify(saved) !== JSON.stringify(img.diffIds)) {
      problems.push(`docker save of ${img.key}: layer digests ${JSON.stringify(saved)} != source DiffIDs ${JSON.stringify(img.diffIds)}`);
    }
    return problems;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
