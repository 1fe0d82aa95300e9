/** The pipeline's per-layer progress calls (bundle/write.ts, inject/apply.ts) as ProgressEvents. */
import type { LayerEntry } from '../layer/entry.js';
import type { ProgressEvent, ProgressPhase } from './options.js';

export class ProgressEvents {
  private bytes = 0;
  private files = 0;
  private totalBytes: number | null = null;
  private layer: string | null = null;
  private layerIndex = 0;
  private layerCount = 0;

  constructor(
    private readonly phase: ProgressPhase,
    private readonly emit: (event: ProgressEvent) => void,
  ) {}

  planned(totalBytes: number): void {
    this.totalBytes = totalBytes;
  }

  layerStarted(layer: { chainId: string }, index: number, total: number): void {
    this.layer = layer.chainId;
    this.layerIndex = index;
    this.layerCount = total;
    this.send();
  }

  entryWritten(entry: LayerEntry): void {
    this.files++;
    this.bytes += entry.size; // 0 for every kind but a regular file
    this.send();
  }

  layerDone(): void {
    this.send();
  }

  private send(): void {
    this.emit({
      phase: this.phase,
      bytes: this.bytes,
      totalBytes: this.totalBytes,
      layer: this.layer,
      layerIndex: this.layerIndex,
      layerCount: this.layerCount,
      fileCount: this.files,
    });
  }
}
