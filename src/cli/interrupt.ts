/**
 * Ctrl-C and termination signals: the run stops at the next file it was about to write and
 * goes through its normal failure path (a disk image's work copy removed, a host target's
 * new files undone), then exits 128 + the signal number. A second signal exits at once.
 */
import type { LayerItem } from '../layer/entry.js';
import type { ImageSource } from '../sources/source.js';

const SIGNALS: Record<string, number> = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 };

let received: string | undefined;
let installed = false;

export class InterruptedError extends Error {
  constructor(readonly signal: string) {
    super(`interrupted by ${signal}; what this run had written was undone`);
  }
  get exitCode(): number {
    return 128 + (SIGNALS[this.signal] ?? 2);
  }
}

export function installInterruptHandlers(): void {
  if (installed) return;
  installed = true;
  for (const signal of Object.keys(SIGNALS)) {
    process.on(signal, () => {
      if (received) process.exit(128 + (SIGNALS[signal] ?? 2));
      received = signal;
    });
  }
}

export function checkInterrupted(): void {
  if (received) throw new InterruptedError(received);
}

/** The same source, stopping at the next entry once a signal has arrived. */
export function interruptible(source: ImageSource): ImageSource {
  return {
    get description() {
      return source.description;
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
          yield item;
        }
      })(),
    close: () => source.close(),
  };
}
