/** Errors the CLI maps to exit codes: usage mistakes exit 2, everything else 1. */
export class UsageError extends Error {}
