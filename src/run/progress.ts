/**
 * Progress of one run, as events: the pipeline reports where it is, the run's listener
 * (the library caller's onProgress) hears it. Reported through the run's context
 * (run/abort.ts), so code deep in the pipeline (a disk image's work copy) needs no parameter.
 */
/**
 * Where a run is: `copy` makes the work copy of a disk image, `grow` grows its resin-data
 * file system, `extract` writes a bundle, `inject` writes a target, `verify` rebuilds and
 * hashes layers.
 */
export type ProgressPhase = 'copy' | 'grow' | 'extract' | 'inject' | 'verify';

/**
 * One progress report. `bytes` is the content written so far in this phase, `totalBytes` the
 * plan's total (null while unknown); `layer` the ChainID being written or verified (null
 * while copying or growing).
 */
export interface ProgressEvent {
  phase: ProgressPhase;
  bytes: number;
  totalBytes: number | null;
  layer: string | null;
  /** 0-based index of `layer` among the layers written in this phase, and how many there are. */
  layerIndex: number;
  layerCount: number;
  /** Files (layer entries) written so far in this phase. */
  fileCount: number;
}
