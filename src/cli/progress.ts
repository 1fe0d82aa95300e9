/**
 * Progress on stderr, drawn from the library's ProgressEvents, in the modes docker buildx
 * names: `tty` one line redrawn in place (bytes done of the plan's total, percentage, time
 * left, files, rate, the current layer); `plain` a line per layer and every few seconds,
 * for logs (CI); `none`. `auto` (the default) is `tty` when stderr is a terminal, else
 * `plain`, as buildx does, but `none` with --json (stderr then carries only a JSON error).
 * TRANSPLANT_PROGRESS sets the mode where --progress is not given (as BUILDKIT_PROGRESS
 * does for buildx).
 */
import { formatBytes } from '../inject/inject.js';
import type { ProgressEvent } from '../api/options.js';
import { UsageError } from '../errors.js';

export type ProgressMode = 'tty' | 'plain' | 'none';

export const PROGRESS_MODES = ['auto', 'tty', 'plain', 'none'] as const;

/** The mode of `--progress` (else TRANSPLANT_PROGRESS), `--quiet` and `--json`. */
export function progressMode(opts: { progress?: string; quiet?: boolean; json?: boolean }, env: NodeJS.ProcessEnv = process.env): ProgressMode {
  const fromEnv = opts.progress === undefined && env.TRANSPLANT_PROGRESS !== undefined && env.TRANSPLANT_PROGRESS !== '';
  const given = opts.progress ?? (fromEnv ? (env.TRANSPLANT_PROGRESS as string) : 'auto');
  if (!(PROGRESS_MODES as readonly string[]).includes(given)) {
    throw new UsageError(`${fromEnv ? 'TRANSPLANT_PROGRESS=' : '--progress '}${given}: give one of ${PROGRESS_MODES.join(', ')}`);
  }
  if (opts.quiet) {
    if (opts.progress !== undefined && opts.progress !== 'auto' && opts.progress !== 'none') throw new UsageError(`--quiet and --progress ${opts.progress} contradict each other`);
    return 'none';
  }
  if (given === 'auto') return process.stderr.isTTY === true ? 'tty' : opts.json ? 'none' : 'plain';
  return given as ProgressMode;
}

const PHASE_NAMES: Record<ProgressEvent['phase'], string> = {
  copy: 'copying the disk image',
  grow: 'growing resin-data',
  extract: 'extract',
  inject: 'inject',
  verify: 'verify',
};

const PLAIN_EVERY_MS = 5000;

export class ProgressLine {
  private started = 0;
  private lastDraw = 0;
  private drawn = false;
  private layer: string | null = null;
  private last: ProgressEvent | undefined;
  private lastShown: ProgressEvent | undefined;

  constructor(private readonly mode: ProgressMode = process.stderr.isTTY === true ? 'tty' : 'none') {}

  /** The callback to give the library, or undefined when nothing is drawn. */
  get listener(): ((e: ProgressEvent) => void) | undefined {
    return this.mode === 'none' ? undefined : (e) => this.update(e);
  }

  private describe(e: ProgressEvent, now: number): string {
    const secs = Math.max((now - this.started) / 1000, 0.001);
    const rate = e.bytes / secs;
    let done = formatBytes(e.bytes);
    if (e.totalBytes !== null && e.totalBytes > 0) {
      const left = Math.max(e.totalBytes - e.bytes, 0);
      const eta = rate > 0 && e.bytes > 0 && left > 0 ? `, ${Math.ceil(left / rate)} s left` : '';
      done = `${done} of ${formatBytes(e.totalBytes)} (${Math.min(100, Math.floor((e.bytes / e.totalBytes) * 100))}%)${eta}`;
    }
    const layer = e.layer ? ` layer ${e.layerIndex + 1}/${e.layerCount} ${e.layer.slice(7, 19)}` : '';
    const files = e.phase === 'extract' || e.phase === 'inject' ? `, ${e.fileCount} ${e.fileCount === 1 ? 'file' : 'files'}` : '';
    return `${PHASE_NAMES[e.phase]}${layer}: ${done}${files}, ${formatBytes(Math.round(rate))}/s`;
  }

  update(e: ProgressEvent): void {
    const now = Date.now();
    if (this.started === 0) this.started = now;
    const newPhase = e.phase !== this.last?.phase;
    // A phase ends with its last state (plain: a line, so logs show it complete).
    if (newPhase && this.last && this.mode === 'plain' && this.lastShown !== this.last) process.stderr.write(`${this.describe(this.last, now)}\n`);
    // Rates and time left are per phase (a work copy runs at disk speed, layers at their own).
    if (newPhase) this.started = now;
    const newLayer = newPhase || e.layer !== this.layer;
    this.last = e;
    this.layer = e.layer;
    if (this.mode === 'plain') {
      if (!newLayer && now - this.lastDraw < PLAIN_EVERY_MS) return;
      this.lastDraw = now;
      this.lastShown = e;
      process.stderr.write(`${this.describe(e, now)}\n`);
      return;
    }
    if (!newLayer && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    process.stderr.write(`\r\x1b[K${this.describe(e, now)}`);
    this.drawn = true;
  }

  /** Ends the output (after the run, whether it succeeded or not). */
  end(): void {
    if (this.mode === 'plain' && this.last && this.lastShown !== this.last) {
      process.stderr.write(`${this.describe(this.last, Date.now())}\n`);
      this.lastShown = this.last;
    }
    if (this.drawn) {
      // The last state (the whole plan once it completed), then the line is left as it is.
      if (this.last) process.stderr.write(`\r\x1b[K${this.describe(this.last, Date.now())}`);
      process.stderr.write('\n');
    }
    this.drawn = false;
  }
}
