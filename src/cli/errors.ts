/** Errors the CLI maps to exit codes: usage mistakes (code USAGE) exit 2, everything else 1. */
export { UsageError } from '../errors.js';
