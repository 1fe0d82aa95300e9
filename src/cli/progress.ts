/**
 * Progress on stderr when it is a terminal: one line redrawn in place with the bytes done of
 * the plan's total, the rate, the ETA and the current layer; quiet otherwise, so scripts and
 * logs stay clean. It draws the library's ProgressEvents.
 */
import { formatBytes } from '../inject/inject.js';
import type { ProgressEvent } from '../api/options.js';

export class ProgressLine {
  private started = 0;
  private lastDraw = 0;
  private drawn = false;
  private layer: string | null = null;

  constructor(private readonly enabled: boolean = process.stderr.isTTY === true) {}

  /** The callback to give the library, or undefined when nothing is drawn. */
  get listener(): ((e: ProgressEvent) => void) | undefined {
    return this.enabled ? (e) => this.update(e) : undefined;
  }

  update(e: ProgressEvent): void {
    const now = Date.now();
    if (this.started === 0) this.started = now;
    const newLayer = e.layer !== this.layer;
    this.layer = e.layer;
    if (!newLayer && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const secs = Math.max((now - this.started) / 1000, 0.001);
    const rate = e.bytes / secs;
    let done = formatBytes(e.bytes);
    if (e.totalBytes !== null && e.totalBytes > 0) {
      const left = Math.max(e.totalBytes - e.bytes, 0);
      const eta = rate > 0 && e.bytes > 0 ? `, ${Math.ceil(left / rate)} s left` : '';
      done = `${done} of ${formatBytes(e.totalBytes)} (${Math.min(100, Math.floor((e.bytes / e.totalBytes) * 100))}%)${eta}`;
    }
    const layer = e.layer ? ` layer ${e.layerIndex + 1}/${e.layerCount} ${e.layer.slice(7, 19)}` : '';
    process.stderr.write(`\r\x1b[K${e.phase}${layer}: ${done}, ${e.fileCount} files, ${formatBytes(rate)}/s`);
    this.drawn = true;
  }

  /** Ends the line (after the run, whether it succeeded or not). */
  end(): void {
    if (this.drawn) process.stderr.write('\n');
    this.drawn = false;
  }
}
