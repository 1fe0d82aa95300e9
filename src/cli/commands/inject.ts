/** transplant inject: images from a bundle (or any source) into a target engine data root. */
import { formatBytes } from '../../inject/inject.js';
import { inject, type InjectOptions, type InjectResult } from '../../api/inject.js';
import type { RunOptions } from '../../api/options.js';
import { interruptSignal } from '../interrupt.js';
import { ProgressLine, progressMode } from '../progress.js';
import { count, refuseTerminal, type Output } from '../output.js';

export type { TargetOptions } from '../../api/target.js';

/** The options commander parses: the library's (src/api/inject.ts declares them), plus output. */
export interface InjectCommandOptions extends Omit<InjectOptions, keyof RunOptions> {
  image: string[];
  json?: boolean;
  /** --progress auto|tty|plain|none, --quiet */
  progress?: string;
  quiet?: boolean;
}

export function describePlan(r: InjectResult): string {
  const lines: string[] = [];
  for (const image of r.images) {
    lines.push(`image ${image.id.slice(7, 19)} ${image.references.join(', ') || '<none>'}${image.present ? ' (already present)' : ''}`);
  }
  for (const l of r.layers) {
    lines.push(
      l.action === 'reuse'
        ? `layer ${l.chainId.slice(7, 19)}: reuse (target already has it)`
        : `layer ${l.chainId.slice(7, 19)}: copy ${count(l.fileCount ?? 0, 'file')}, ${formatBytes(l.bytes ?? 0)} into overlay2/${l.cacheId.slice(0, 12)}…`,
    );
  }
  for (const key of r.referenceChanges.added) lines.push(`reference ${key}: add`);
  for (const m of r.referenceChanges.moved) lines.push(`reference ${m.key}: move from ${m.from.slice(7, 19)}`);
  lines.push(
    `total: ${count(r.copiedLayerCount, 'layer')} to copy, ${r.reusedLayerCount} to reuse, ${count(r.fileCount, 'file')}, about ${formatBytes(r.bytes)} and ${count(r.inodeCount, 'inode')}`,
  );
  return lines.join('\n');
}

/** The result line (or the plan of a dry run); the same object as JSON with --json. */
export function showInjectResult(r: InjectResult, out: Output): void {
  if (r.dryRun) {
    out.data(r, () => describePlan(r) + (r.room ? `\n${r.room}` : ''));
    return;
  }
  const extras = [
    r.appsJsonWritten ? `apps.json written${r.supervisorVersion ? ` (for supervisor v${r.supervisorVersion})` : ''}` : '',
    r.network ? `network settings in ${r.network}` : '',
    r.splash.length > 0 ? `splash logo in ${r.splash.join(' and ')}` : '',
    r.imageGrowthBytes === null ? '' : r.imageGrowthBytes > 0 ? `the image grew by ${formatBytes(r.imageGrowthBytes)}` : 'the image did not need to grow',
  ].filter(Boolean);
  out.data(r, () =>
    (r.changed
      ? `injected ${count(r.imageCount, 'image')} into ${r.target}: ${count(r.copiedLayerCount, 'layer')} copied, ${r.reusedLayerCount} reused, ${count(r.referenceChanges.added.length, 'reference')} added`
      : `${r.target} already holds every image and reference`) + (extras.length > 0 ? `; ${extras.join('; ')}` : ''),
  );
}

export async function injectCommand(bundle: string, opts: InjectCommandOptions, out: Output): Promise<void> {
  refuseTerminal({ input: bundle });
  const progress = new ProgressLine(progressMode(opts));
  let result;
  try {
    result = await inject(bundle, { ...opts, signal: interruptSignal, onProgress: progress.listener, onWarning: (m) => out.warn(m) });
  } finally {
    // The progress line ends before the result is printed.
    progress.end();
  }
  showInjectResult(result, out);
}
