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
