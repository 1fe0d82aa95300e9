/**
 * transplant preload: extract and inject in one pass, streaming from the source to the
 * target with no intermediate bundle on disk.
 */
import { preload } from '../../api/preload.js';
import { interruptSignal } from '../interrupt.js';
import { ProgressLine } from '../progress.js';
import type { Output } from '../output.js';
import { showInjectResult, type InjectCommandOptions } from './inject.js';
import type { RegistryCliOptions } from '../registry-options.js';

export interface PreloadOptions extends InjectCommandOptions, RegistryCliOptions {
  from: string;
  identity?: string;
  insecureHostKey?: boolean;
}

export async function preloadCommand(opts: PreloadOptions, out: Output): Promise<void> {
  const progress = new ProgressLine();
  try {
    showInjectResult(await preload({ ...opts, signal: interruptSignal, onProgress: progress.listener, onWarning: (m) => out.warn(m) }), out);
  } finally {
    progress.end();
  }
}
