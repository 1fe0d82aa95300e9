/**
 * transplant preload: extract and inject in one pass, streaming from the source to the
 * target with no intermediate bundle on disk.
 */
import { preload, type PreloadOptions as LibraryPreloadOptions } from '../../api/preload.js';
import type { RunOptions } from '../../api/options.js';
import { interruptSignal } from '../interrupt.js';
import { ProgressLine, progressMode } from '../progress.js';
import { refuseTerminal, type Output } from '../output.js';
import { showInjectResult } from './inject.js';

/** The options commander parses: the library's (src/api/preload.ts declares them), plus output. */
export interface PreloadOptions extends Omit<LibraryPreloadOptions, keyof RunOptions> {
  image: string[];
  json?: boolean;
  /** --progress auto|tty|plain|none, --quiet */
  progress?: string;
  quiet?: boolean;
}

export async function preloadCommand(opts: PreloadOptions, out: Output): Promise<void> {
  refuseTerminal({ input: opts.from });
  const progress = new ProgressLine(progressMode(opts));
  let result;
  try {
    result = await preload({ ...opts, signal: interruptSignal, onProgress: progress.listener, onWarning: (m) => out.warn(m) });
  } finally {
    // The progress line ends before the result is printed.
    progress.end();
  }
  showInjectResult(result, out);
}
