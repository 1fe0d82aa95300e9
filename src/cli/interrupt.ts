/**
 * Ctrl-C and termination signals (SIGINT, SIGTERM, SIGHUP): the first one stops the run in
 * every phase, and the exit status is 128 + the signal number (130, 143, 129).
 *
 * - Outside a write phase (reading a source, ls, verify, planning, waiting for a target's
 *   lock, copying a disk image to its work copy) nothing of the target has changed yet:
 *   the registered cleanups run (a work copy, a partial bundle is removed) and the process
 *   exits at once.
 * - Inside a write phase (from the first write into a target until it is committed) the run
 *   stops at its next checkpoint — every TreeWriter call, every layer entry and content
 *   chunk (`interruptibleWriter`, `interruptible`) — and goes through its normal failure
 *   path, which undoes what it wrote, then exits. Undo steps run `quietly` (no checkpoint).
 * A second signal exits at once.
 */
import type { LayerItem } from '../layer/entry.js';
import type { ImageSource } from '../sources/source.js';
import type { TreeWriter } from '../targets/tree-writer.js';

const SIGNALS: Record<string, number> = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 };

let received: string | undefined;
let installed = false;
let writing = 0;
let quiet = 0;
const cleanups = new Set<() => void>();

export class InterruptedError extends Error {
  constructor(
    readonly signal: string,
    message = `interrupted by ${signal}; what this run had written was undone`,
  ) {
    super(message);
  }
  get exitCode(): number {
    return exitCodeOf(this.signal);
  }
}

export function exitCodeOf(signal: string): number {
  return 128 + (SIGNALS[signal] ?? 2);
}

function runCleanups(): void {
  for (const fn of [...cleanups].reverse()) {
    try {
      fn();
    } catch {
      /* best effort: the process is exiting */
    }
  }
  cleanups.clear();
}

export function installInterruptHandlers(): void {
  if (installed) return;
  installed = true;
  for (const signal of Object.keys(SIGNALS)) {
    process.on(signal, () => {
      if (received || writing === 0) {
        runCleanups();
        if (!received) process.stderr.write(`error: interrupted by ${signal}; nothing was changed\n`);
        process.exit(exitCodeOf(received ?? signal));
      }
      received = signal;
    });
  }
}

/** The signal received so far, if any. */
export function interruptedBy(): string | undefined {
  return received;
}

/**
 * Registers a synchronous cleanup for an exit on a signal outside a write phase (e.g.
 * removing a work copy); returns the function that unregisters it.
 */
export function onInterrupt(cleanup: () => void): () => void {
  cleanups.add(cleanup);
  return () => {
    cleanups.delete(cleanup);
  };
}

export function checkInterrupted(): void {
  if (received && quiet === 0) throw new InterruptedError(received);
}

/**
 * A write phase: from `enter()` a signal no longer exits at once but is thrown at the next
 * checkpoint. `leave()` ends it; when a signal arrived that no checkpoint turned into an
 * error (during the final commit), it throws then, saying the target is complete.
 */
export class WritePhase {
  private entered = false;

  enter(): void {
    if (this.entered) return;
    this.entered = true;
    writing++;
    checkInterrupted();
  }

  /** Ends the phase. `succeeded`: the run completed (then a late signal is reported as such). */
  leave(succeeded: boolean): void {
    if (!this.entered) return;
    this.entered = false;
    writing--;
    if (succeeded && received && writing === 0) {
      throw new InterruptedError(received, `interrupted by ${received} after the target was complete; it holds the result of this run`);
    }
  }
}

/** Runs undo work with checkpoints disabled, so that it completes after a signal. */
export async function quietly<T>(fn: () => Promise<T>): Promise<T> {
  quiet++;
  try {
    return await fn();
  } finally {
    quiet--;
  }
}

async function* checkedChunks(content: AsyncIterable<Buffer>): AsyncIterable<Buffer> {
  for await (const chunk of content) {
    checkInterrupted();
    yield chunk;
  }
}

/** The same source, stopping at the next entry or content chunk once a signal has arrived. */
export function interruptible(source: ImageSource): ImageSource {
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
          checkInterrupted();
          yield item.content ? { ...item, content: checkedChunks(item.content) } : item;
        }
      })(),
    close: () => source.close(),
  };
}

/** The same writer, stopping before its next call once a signal has arrived (not while `quietly` undoing). */
export function interruptibleWriter<W extends TreeWriter>(writer: W): W {
  return new Proxy(writer, {
    get(target, key, receiver) {
      const value = Reflect.get(target, key, receiver) as unknown;
      if (typeof value !== 'function' || key === 'close') return value;
      return (...args: unknown[]) => {
        checkInterrupted();
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}
