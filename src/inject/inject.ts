/** Injection of images from any source into an engine data root behind a TreeWriter. */
import type { ImageSource, SourceImage } from '../sources/source.js';
import type { TreeWriter } from '../targets/tree-writer.js';
import { contentOrderOf, layersOf } from '../bundle/write.js';
import { Undo, applyPlan, type InjectProgress, type UndoSteps } from './apply.js';
import { checkLayerDepths } from '../engine/limits.js';
import { checkChains, planChangesNothing, planInjection, type InjectPlan } from './plan.js';
import { TargetStore } from './target-store.js';
import { verifyEngineRoot } from '../verify/verify.js';

export interface InjectOptions {
  dryRun?: boolean;
  progress?: InjectProgress;
  warn?: (message: string) => void;
  /** Called with the plan before anything is written (disk targets grow here). */
  beforeWrite?: (plan: InjectPlan) => Promise<void>;
  /**
   * Called with what the target holds, before the plan is made: may refuse (throw), and
   * returns the references to add beyond the images' own (apps.json names).
   */
  withTarget?: (store: TargetStore) => Promise<{ key: string; imageId: string }[]>;
  /**
   * Writes what goes beside the engine root once the images are complete (apps.json,
   * keyfiles), registering how to undo each write: a failure undoes the whole run.
   */
  finish?: (writer: TreeWriter, undo: UndoSteps) => Promise<void>;
  /** Called just before the first write into the target. */
  startWriting?: () => void;
  /**
   * Re-reads what was written and rebuilds every injected layer from its tar-split and files,
   * checking it against its DiffID (what `docker save` does); on a mismatch the run is undone.
   */
  verify?: boolean;
}

export interface InjectResult {
  plan: InjectPlan;
  changed: boolean;
}

export async function planFor(
  source: ImageSource,
  images: readonly SourceImage[],
  writer: TreeWriter,
  prefix: string,
  withTarget?: InjectOptions['withTarget'],
  /** Counts are wanted only as estimates; size and tar-split may come after the items (no disk to grow, no dry run). */
  streamed = false,
): Promise<{ plan: InjectPlan; store: TargetStore }> {
  checkLayerDepths(images, source.description);
  const store = await TargetStore.read(writer, prefix);
  const layers = [];
  // Layers the target has (same ChainID) are looked at without counts: a registry source
  // answers those from its manifest and never fetches them.
  const all = layersOf(images);
  const copies = all.filter((c) => !store.layers.has(c));
  source.prefetch?.(contentOrderOf(source, copies), { streamed });
  for (const chainId of all) layers.push(await source.layer(chainId, store.layers.has(chainId) ? {} : { counts: true, streamed }));
  checkChains(images, layers, source.description);
  const extraReferences = (await withTarget?.(store)) ?? [];
  try {
    return { plan: planInjection(images, layers, store, extraReferences, source), store };
  } catch (e) {
    // An invalid reference or a digest reference the target gives to another image: name the input.
    throw new Error(`${source.description}: ${(e as Error).message}`);
  }
}

export async function injectImages(
  source: ImageSource,
  images: readonly SourceImage[],
  writer: TreeWriter,
  prefix: string,
  options: InjectOptions = {},
): Promise<InjectResult> {
  const { plan, store } = await planFor(source, images, writer, prefix, options.withTarget, !options.dryRun && !options.beforeWrite);
  for (const m of plan.references.moved) options.warn?.(`tag ${m.key} moved from ${m.from.slice(7, 19)} to ${m.to.slice(7, 19)} (as docker tag would)`);
  if (options.dryRun) return { plan, changed: false };
  if (planChangesNothing(plan)) {
    if (options.finish) {
      options.startWriting?.();
      const undo = new Undo(writer);
      try {
        await options.finish(writer, undo);
      } catch (error) {
        await undo.run();
        throw error;
      }
    }
    return { plan, changed: false };
  }
  if (options.beforeWrite) await options.beforeWrite(plan);
  else {
    const free = await writer.freeSpace();
    if (free && (free.bytes < plan.bytes || free.inodes < plan.inodes)) {
      throw new Error(
        `not enough room in ${writer.description}: the images need about ${formatBytes(plan.bytes)} and ${plan.inodes} inodes, ` +
          `it has ${formatBytes(free.bytes)} and ${free.inodes} free`,
      );
    }
  }
  const check = options.verify
    ? async (): Promise<void> => {
        const report = await verifyEngineRoot(writer, prefix, { images: images.map((i) => i.id) });
        if (!report.ok) throw new Error(`verification of what was written failed: ${report.problems[0]}${report.problems.length > 1 ? ` (and ${report.problems.length - 1} more problems)` : ''}`);
      }
    : undefined;
  options.progress?.planned?.(plan.layers.reduce((n, l) => n + (l.action === 'copy' ? (l.source.bytes ?? l.source.size) : 0), 0));
  options.startWriting?.();
  const finish = options.finish;
  await applyPlan(plan, source, store, options.progress, check, finish ? (undo) => finish(writer, undo) : undefined);
  return { plan, changed: true };
}

export function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n;
  let u = 0;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}
