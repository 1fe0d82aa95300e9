/**
 * Ctrl-C and termination signals (SIGINT, SIGTERM, SIGHUP) for the command line: the first
 * one aborts the run's AbortSignal (the library stops in every phase, src/run/abort.ts), and
 * the exit status is 128 + the signal number (130, 143, 129). A second signal exits at once.
 */

const SIGNALS: Record<string, number> = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 };

let received: string | undefined;
let installed = false;
const controller = new AbortController();

export function exitCodeOf(signal: string): number {
  return 128 + (SIGNALS[signal] ?? 2);
}

/** The signal every command run by the CLI is given: aborted by the first SIGINT/SIGTERM/SIGHUP. */
export const interruptSignal: AbortSignal = controller.signal;

export function installInterruptHandlers(): void {
  if (installed) return;
  installed = true;
  for (const signal of Object.keys(SIGNALS)) {
    process.on(signal, () => {
      if (received) process.exit(exitCodeOf(received));
      received = signal;
      // The reason is the signal's name: the library's messages say "interrupted by SIGINT".
      controller.abort(signal);
    });
  }
}

/** The signal received so far, if any. */
export function interruptedBy(): string | undefined {
  return received;
}
