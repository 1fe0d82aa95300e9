/**
 * Cancellation of one run by an AbortSignal, with no process-global state: each library call
 * runs in its own context (AsyncLocalStorage), so the checkpoints deep in the pipeline
 * (`checkAborted`, every TreeWriter call, every layer entry and content chunk) see the signal
 * of the call they belong to, and two calls with two signals never meet.
 *
 * - Outside a write phase (reading a source, ls, verify, planning, waiting for a target's
 *   lock, copying a disk image to its work copy) nothing of the target has changed yet: on
 *   abort the registered cleanups run (a work copy, a partial bundle is removed) and the
 *   call rejects at once; the work still under way stops at its next checkpoint.
 * - Inside a write phase (from the first write into a target until it is committed) the run
 *   stops at its next checkpoint and goes through its normal failure path, which undoes what
 *   it wrote, then rejects. Undo steps run `quietly` (no checkpoint).
 * The CLI turns SIGINT/SIGTERM/SIGHUP into an abort (src/cli/interrupt.ts).
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { LayerItem } from '../layer/entry.js';
import type { ImageSource } from '../sources/source.js';
import type { TreeWriter } from '../targets/tree-writer.js';
import { AbortedError } from '../errors.js';
import type { ProgressEvent, ProgressPhase } from './progress.js';

/** What an abort is called in messages: the signal's name when the CLI aborted on one. */
export function abortedBy(reason: unknown): string {
  return typeof reason === 'string' && /^SIG[A-Z]+$/.test(reason) ? `interrupted by ${reason}` : 'aborted';
}

/** One run: its signal, whether it is writing, and what to remove if it is aborted before. */
export class Run {
  writing = 0;
  quiet = 0;
  readonly cleanups = new Set<() => void>();

  constructor(
    readonly signal: AbortSignal | undefined,
    readonly onProgress?: (event: ProgressEvent) => void,
  ) {}

  get aborted(): boolean {
    return this.signal?.aborted === true;
  }

  error(message = 'what this run had written was undone'): AbortedError {
    const reason: unknown = this.signal?.reason;
    return new AbortedError(reason, `${abortedBy(reason)}; ${message}`);
  }

  runCleanups(): void {
    for (const fn of [...this.cleanups].reverse()) {
      try {
        fn();
      } catch {
        /* best effort */
      }
    }
    this.cleanups.clear();
  }
}

const current = new AsyncLocalStorage<Run>();

/**
 * Runs `work` as one run cancelled by `signal`. Aborted outside a write phase, it rejects at
 * once (after the cleanups); inside one, when the work has undone what it wrote.
 */
export async function runAbortable<T>(signal: AbortSignal | undefined, work: () => Promise<T>, onProgress?: (event: ProgressEvent) => void): Promise<T> {
  const run = new Run(signal, onProgress);
  if (run.aborted) throw run.error('nothing was changed');
  return current.run(run, () => {
    const done = work();
    if (!signal) return done;
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void => {
        if (run.writing > 0) return; // the next checkpoint throws; the work undoes itself
        run.runCleanups();
        reject(run.error('nothing was changed'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      done.then(
        (v) => {
          signal.removeEventListener('abort', onAbort);
          resolve(v);
        },
        (e: unknown) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      );
    });
  });
}

/**
 * Registers a synchronous cleanup for an abort outside a write phase (e.g. removing a work
 * copy); returns the function that unregisters it. Outside any run it does nothing.
 */
export function onAbort(cleanup: () => void): () => void {
  const run = current.getStore();
  if (!run) return () => undefined;
  run.cleanups.add(cleanup);
  return () => {
    run.cleanups.delete(cleanup);
  };
}

/**
 * Reports progress to the run's listener from code deep in the pipeline (a disk image's work
 * copy and growth, verify's layers); `layer` when the phase goes layer by layer.
 */
export function reportProgress(
  phase: ProgressPhase,
  bytes: number,
  totalBytes: number | null,
  layer?: { chainId: string; index: number; count: number },
): void {
  current.getStore()?.onProgress?.({ phase, bytes, totalBytes, layer: layer?.chainId ?? null, layerIndex: layer?.index ?? 0, layerCount: layer?.count ?? 0, fileCount: 0 });
}

/** A checkpoint: throws once the run's signal is aborted (not while undoing `quietly`). */
export function checkAborted(): void {
  const run = current.getStore();
  if (run?.aborted && run.quiet === 0) throw run.error();
}

/**
 * A write phase: from `enter()` an abort no longer rejects at once but is thrown at the next
 * checkpoint. `leave()` ends it; when an abort came that no checkpoint turned into an error
 * (during the final commit), it throws then, saying the target is complete.
 */
export class WritePhase {
  private entered = false;
  private readonly run = current.getStore();

  enter(): void {
    if (this.entered || !this.run) return;
    this.entered = true;
    this.run.writing++;
    checkAborted();
  }

  /** Ends the phase. `succeeded`: the run completed (then a late abort is reported as such). */
  leave(succeeded: boolean): void {
    if (!this.entered || !this.run) return;
    this.entered = false;
    this.run.writing--;
    if (succeeded && this.run.aborted && this.run.writing === 0) {
      throw this.run.error('after the target was complete; it holds the result of this run');
    }
  }
}

/** Runs undo work with checkpoints disabled, so that it completes after an abort. */
export async function quietly<T>(fn: () => Promise<T>): Promise<T> {
  const run = current.getStore();
  if (run) run.quiet++;
  try {
    return await fn();
  } finally {
    if (run) run.quiet--;
  }
}

async function* checkedChunks(content: AsyncIterable<Buffer>): AsyncIterable<Buffer> {
  for await (const chunk of content) {
    checkAborted();
    yield chunk;
  }
}

/** The same source, stopping at the next entry or content chunk once the run is aborted. */
export function abortableSource(source: ImageSource): ImageSource {
  return {
    get description() {
      return source.description;
    },
    get contentLimit() {
      return source.contentLimit;
    },
    images: () => source.images(),
    layer: (chainId, options) => source.layer(chainId, options),
    prefetch: source.prefetch ? (chainIds: readonly string[], options?: { streamed?: boolean }) => source.prefetch?.(chainIds, options) : undefined,
    layerAfterItems: source.layerAfterItems ? (chainId: string) => source.layerAfterItems?.(chainId) : undefined,
    contentOrder: source.contentOrder ? (chainIds: readonly string[]) => source.contentOrder?.(chainIds) ?? [...chainIds] : undefined,
    layerItems: (chainId: string): AsyncIterable<LayerItem> =>
      (async function* () {
        for await (const item of source.layerItems(chainId)) {
          checkAborted();
          yield item.content ? { ...item, content: checkedChunks(item.content) } : item;
        }
      })(),
    close: () => source.close(),
  };
}

/** The same writer, stopping before its next call once the run is aborted (not while `quietly` undoing). */
export function abortableWriter<W extends TreeWriter>(writer: W): W {
  return new Proxy(writer, {
    get(target, key, receiver) {
      const value = Reflect.get(target, key, receiver) as unknown;
      if (typeof value !== 'function' || key === 'close') return value;
      return (...args: unknown[]) => {
        checkAborted();
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}
