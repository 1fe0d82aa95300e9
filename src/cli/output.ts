/** Data on stdout: JSON with --json, text otherwise. Messages go to stderr. */
export class Output {
  constructor(readonly json: boolean) {}

  data(value: unknown, text: () => string): void {
    if (this.json) process.stdout.write(JSON.stringify(value, null, 2) + '\n');
    else process.stdout.write(text() + '\n');
  }

  warn(message: string): void {
    process.stderr.write(`warning: ${message}\n`);
  }
}

/** "1 image", "2 layers": a count with its noun, singular or plural. */
export function count(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
}
