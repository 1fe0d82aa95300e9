/**
 * balena-transplant as a library: one function per command, each returning what the
 * command's `--json` prints (schemas/<command>.schema.json). Progress comes as events
 * (`onProgress`), a run is cancelled by an AbortSignal (`signal`), and every error is a
 * TransplantError with a stable `code`. Nothing here installs process handlers, writes to
 * stdout/stderr or exits the process.
 */
export { ls, type LsOptions, type LsResult, type LsImage, type AppsJsonStatus } from './api/ls.js';
export { extract, type ExtractOptions, type ExtractResult, type ExtractImage, type ExtractLayer } from './api/extract.js';
export { inject, type InjectOptions, type InjectResult, type InjectImage, type InjectLayer } from './api/inject.js';
export { preload, type PreloadOptions, type PreloadResult } from './api/preload.js';
export { verify, type VerifyOptions, type VerifyResult } from './api/verify.js';
export type { TargetOptions } from './api/target.js';
export type { RunOptions, SourceOptions, ProgressEvent, ProgressPhase } from './api/options.js';
export type { RegistryOptions } from './sources/open-registry.js';
export { TransplantError, ERROR_CODES, type ErrorCode } from './errors.js';
export { VERSION } from './version.js';
