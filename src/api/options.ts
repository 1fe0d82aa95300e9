/** What every library call takes, and the progress events it reports. */
import type { RegistryOptions } from '../sources/open-registry.js';
import type { ProgressEvent } from '../run/progress.js';
import { runAbortable } from '../run/abort.js';
import { toTransplantError } from '../errors.js';

export type { ProgressEvent, ProgressPhase } from '../run/progress.js';

export interface RunOptions {
  /** Cancels the run: before anything is written it stops at once; after, what it wrote is undone. */
  signal?: AbortSignal;
  /** Called as layers are written (synchronously: keep it cheap). */
  onProgress?: (event: ProgressEvent) => void;
  /** Things worth saying that do not stop the run (a moved tag, a wait for a lock). */
  onWarning?: (message: string) => void;
}

/** How to read a source: a device over SSH, a registry. */
export interface SourceOptions extends RegistryOptions {
  /** ssh://…: the private key file to log in with (default: the ssh-agent, then ~/.ssh/id_*). */
  identity?: string;
  /** ssh://…: do not check the host key against ~/.ssh/known_hosts. */
  insecureHostKey?: boolean;
}

/**
 * One library call: `work` run under the options' signal (src/run/abort.ts), any failure
 * turned into a TransplantError with a stable code (naming `subject`, the path the call was given).
 */
export async function libraryCall<T>(options: RunOptions, work: () => Promise<T>, subject?: string): Promise<T> {
  try {
    return await runAbortable(options.signal, work, options.onProgress);
  } catch (e) {
    throw toTransplantError(e, subject);
  }
}
