/** Data on stdout: JSON with --json, text otherwise. Messages go to stderr. */
export class Output {
  constructor(private readonly json: boolean) {}

  data(value: unknown, text: () => string): void {
    if (this.json) process.stdout.write(JSON.stringify(value, null, 2) + '\n');
    else process.stdout.write(text() + '\n');
  }

  warn(message: string): void {
    process.stderr.write(`warning: ${message}\n`);
  }
}
