/**
 * Progress on stderr when it is a terminal (bytes and files per layer, with a rate); quiet
 * otherwise, so scripts and logs stay clean.
 */
import type { LayerEntry } from '../layer/entry.js';
import { formatBytes } from '../inject/inject.js';

export class LayerProgressLine {
  private files = 0;
  private bytes = 0;
  private started = 0;
  private label = '';
  private lastDraw = 0;

  constructor(
    private readonly verb: string,
    private readonly enabled: boolean = process.stderr.isTTY === true,
  ) {}

  layerStarted(layer: { chainId: string }, index: number, total: number): void {
    this.files = 0;
    this.bytes = 0;
    this.started = Date.now();
    this.label = `${this.verb} layer ${index + 1}/${total} ${layer.chainId.slice(7, 19)}`;
    this.draw(true);
  }

  entryWritten(entry: LayerEntry): void {
    this.files++;
    this.bytes += entry.size;
    this.draw(false);
  }

  layerDone(): void {
    this.draw(true);
    if (this.enabled) process.stderr.write('\n');
  }

  private draw(force: boolean): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (!force && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const secs = Math.max((now - this.started) / 1000, 0.001);
    process.stderr.write(`\r\x1b[K${this.label}: ${this.files} files, ${formatBytes(this.bytes)} (${formatBytes(this.bytes / secs)}/s)`);
  }
}
