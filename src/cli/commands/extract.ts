/** transplant extract: images from a source into a bundle file. */
import { formatBytes } from '../../inject/inject.js';
import { extract, type ExtractOptions as LibraryExtractOptions } from '../../api/extract.js';
import type { RunOptions } from '../../api/options.js';
import { interruptSignal } from '../interrupt.js';
import { ProgressLine, progressMode } from '../progress.js';
import { count, refuseTerminal, type Output } from '../output.js';

/** The options commander parses: the library's (src/api/extract.ts declares them), plus output. */
export interface ExtractOptions extends Omit<LibraryExtractOptions, keyof RunOptions | 'stream'> {
  image: string[];
  json?: boolean;
  /** --progress auto|tty|plain|none, --quiet */
  progress?: string;
  quiet?: boolean;
}

export async function extractCommand(opts: ExtractOptions, out: Output): Promise<void> {
  refuseTerminal({ input: opts.from, output: opts.dryRun ? undefined : opts.output });
  const progress = new ProgressLine(progressMode(opts));
  const toStdout = opts.output === '-';
  let result;
  try {
    result = await extract({
      ...opts,
      output: toStdout ? undefined : opts.output,
      stream: toStdout && !opts.dryRun ? process.stdout : undefined,
      signal: interruptSignal,
      onProgress: progress.listener,
      onWarning: (m) => out.warn(m),
    });
  } finally {
    progress.end();
  }
  // The bundle itself went to standard output.
  if (toStdout && !opts.dryRun) return;
  const r = result;
  if (r.dryRun) {
    out.data(r, () =>
      [
        ...r.images.map((i) => `image ${i.id.slice(7, 19)} ${i.references.join(', ') || '<none>'} (${count(i.layerCount, 'layer')})`),
        ...r.layers.map((l) => `layer ${l.chainId.slice(7, 19)}: ${count(l.fileCount, 'file')}, ${formatBytes(l.bytes)}`),
        `total: ${count(r.layerCount, 'layer')}, ${count(r.fileCount, 'file')}, ${formatBytes(r.bytes)}`,
      ].join('\n'),
    );
    return;
  }
  out.data(r, () => `wrote ${r.output}: ${count(r.imageCount, 'image')}, ${count(r.layerCount, 'layer')}, ${formatBytes(r.bundleSize ?? 0)}`);
}
