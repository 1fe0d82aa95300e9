/** Injection of images from any source into an engine data root behind a TreeWriter. */
import type { ImageSource, SourceImage } from '../sources/source.js';
import type { TreeWriter } from '../targets/tree-writer.js';
import { layersOf } from '../bundle/write.js';
import { applyPlan, type InjectProgress } from './apply.js';
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
  /** References to add beyond the images' own, decided with the target in view (apps.json names). */
  extraReferences?: (store: TargetStore) => { key: string; imageId: string }[];
  /** Writes what goes beside the engine root once the images are complete (apps.json). */
  finish?: (writer: TreeWriter) => Promise<void>;
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
  extraReferences?: InjectOptions['extraReferences'],
): Promise<{ plan: InjectPlan; store: TargetStore }> {
  checkLayerDepths(images, source.description);
  const store = await TargetStore.read(writer, prefix);
  const layers = [];
  for (const chainId of layersOf(images)) layers.push(await source.layer(chainId, { counts: true }));
  checkChains(images, layers, source.description);
  try {
    return { plan: planInjection(images, layers, store, extraReferences?.(store) ?? []), store };
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
  const { plan, store } = await planFor(source, images, writer, prefix, options.extraReferences);
  for (const m of plan.references.moved) options.warn?.(`tag ${m.key} moved from ${m.from.slice(7, 19)} to ${m.to.slice(7, 19)} (as docker tag would)`);
  if (options.dryRun) return { plan, changed: false };
  if (planChangesNothing(plan)) {
    if (options.finish) await options.finish(writer);
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
  await applyPlan(plan, source, store, options.progress, check);
  if (options.finish) await options.finish(writer);
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
