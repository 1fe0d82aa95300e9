import { UsageError } from '../errors.js';

/** Data on stdout: JSON with --json, text otherwise (none with --quiet). Messages go to stderr. */
export class Output {
  constructor(
    readonly json: boolean,
    readonly quiet = false,
  ) {}

  data(value: unknown, text: () => string): void {
    if (this.json) process.stdout.write(JSON.stringify(value, null, 2) + '\n');
    else if (!this.quiet) process.stdout.write(text() + '\n');
  }

  warn(message: string): void {
    if (!this.quiet) process.stderr.write(`warning: ${message}\n`);
  }
}

/** "1 image", "2 layers": a count with its noun, singular or plural. */
export function count(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
}

/**
 * Binary data is never written to, nor read from, a terminal (as `docker save` and
 * `docker load` refuse): `-` as an output needs stdout redirected, as an input stdin.
 */
export function refuseTerminal(io: { input?: string; output?: string }): void {
  if (io.output === '-' && process.stdout.isTTY) throw new UsageError('refusing to write a bundle to a terminal: redirect standard output (> file) or give --output <file>');
  if (io.input === '-' && process.stdin.isTTY) throw new UsageError('refusing to read from a terminal: redirect standard input (< file) or name the file instead of -');
}
