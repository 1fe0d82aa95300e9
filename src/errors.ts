/**
 * Errors with a stable `code`, what the library throws and what `--json` prints on stderr.
 * The codes are part of the interface (README "Library", schemas/error.schema.json): a code
 * once given is never renamed; new ones may be added.
 */

export const ERROR_CODES = [
  /** Bad arguments: a missing or conflicting option (the CLI exits 2). */
  'USAGE',
  /** The run was cancelled by its AbortSignal (Ctrl-C / SIGTERM in the CLI). */
  'ABORTED',
  /** A file or directory named by the caller does not exist. */
  'NOT_FOUND',
  /** A file or directory cannot be read or written by this user. */
  'PERMISSION_DENIED',
  /** The target (or the place of a work copy) has no room left. */
  'NO_SPACE',
  /** An --image selector names no image of the source, or is ambiguous or malformed. */
  'IMAGE_NOT_FOUND',
  /** The target is in use: another run holds its lock (with wait: false), or an engine runs on it. */
  'TARGET_BUSY',
  /** A store checked by `verify` (or `inject --verify`) does not hold what it should. */
  'VERIFY_FAILED',
  /** A file's content does not match what its layer records (tar-split, DiffID). */
  'CONTENT_MISMATCH',
  /** A registry refused a request or sent something that does not match its digest. */
  'REGISTRY',
  /** Anything else: the input is unusable, or the run failed; the message says why. */
  'FAILED',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** Every error the library throws: a message meant for people and a code meant for programs. */
export class TransplantError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }

  override get name(): string {
    return 'TransplantError';
  }

  /** What `--json` prints on stderr for it. */
  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

/** A usage mistake (a missing or conflicting option). */
export class UsageError extends TransplantError {
  constructor(message: string) {
    super('USAGE', message);
  }
}

/** Cancelled by an AbortSignal. `reason` is the signal's reason (the CLI passes the signal's name). */
export class AbortedError extends TransplantError {
  constructor(
    readonly reason: unknown,
    message: string,
  ) {
    super('ABORTED', message);
  }
}

const ERRNO_CODES: Record<string, ErrorCode> = {
  ENOENT: 'NOT_FOUND',
  ENOTDIR: 'NOT_FOUND',
  EACCES: 'PERMISSION_DENIED',
  EPERM: 'PERMISSION_DENIED',
  EROFS: 'PERMISSION_DENIED',
  ENOSPC: 'NO_SPACE',
  EDQUOT: 'NO_SPACE',
};

/** The code of errors the modules below throw, by their class or system error code. */
function codeOf(err: Error): ErrorCode {
  const errno = (err as NodeJS.ErrnoException).code;
  if (typeof errno === 'string' && ERRNO_CODES[errno]) return ERRNO_CODES[errno];
  switch (err.constructor.name) {
    case 'SelectionError':
      return 'IMAGE_NOT_FOUND';
    case 'ContentMismatchError':
      return 'CONTENT_MISMATCH';
    case 'RegistryError':
      return 'REGISTRY';
  }
  // Messages of the target lock and the live-engine check (targets/target-lock.ts, commands).
  if (/ is in use by |an engine \(pid \d+\) is running on /.test(err.message)) return 'TARGET_BUSY';
  if (/: permission denied/.test(err.message)) return 'PERMISSION_DENIED';
  if (/: no such (file or )?directory/.test(err.message)) return 'NOT_FOUND';
  if (/^no space left|not enough room/.test(err.message)) return 'NO_SPACE';
  if (/^verification of /.test(err.message)) return 'VERIFY_FAILED';
  return 'FAILED';
}

/**
 * Any error as a TransplantError (the library's boundary): the message kept, the original
 * as `cause`. A raw system error (ENOENT, EACCES, …) gets a sentence instead of its errno
 * text, naming `subject` (what the caller named) when the error's own path is one of the
 * descriptors the beneath-opening walks through (/proc/self/fd/N/…).
 */
export function toTransplantError(e: unknown, subject?: string): TransplantError {
  if (e instanceof TransplantError) return e;
  const err = e instanceof Error ? e : new Error(String(e));
  const code = codeOf(err);
  const errno = err as NodeJS.ErrnoException;
  let message = err.message;
  if (typeof errno.code === 'string' && typeof errno.syscall === 'string') {
    // Node's own text ("EACCES: permission denied, open '/x'"): said as a sentence.
    const where = errno.path === undefined || errno.path.startsWith('/proc/self/fd/') ? (subject ?? errno.path ?? '') : errno.path;
    if (code === 'PERMISSION_DENIED') message = `${where}: permission denied: run as root (or as a user who can ${errno.syscall === 'open' || errno.syscall === 'scandir' ? 'read' : 'write'} it)`;
    else if (code === 'NOT_FOUND') message = `${where}: no such file or directory`;
    else if (code === 'NO_SPACE') message = `${where}: no space left on its file system`;
  }
  const out = new TransplantError(code, message, { cause: err });
  if (err.stack) out.stack = `${out.name} [${code}]: ${message}\n${err.stack.split('\n').slice(1).join('\n')}`;
  return out;
}
