/**
 * The command line: argument parsing, output and exit codes only (0 ok, 1 failure with one
 * `error: …` line — with --json, a JSON object with a stable `code` on stderr — 2 bad usage;
 * verify: 1 a store that does not hold, 2 a check that could not run). The work is done by
 * the library (src/api/), which the CLI gives an AbortSignal that SIGINT/SIGTERM abort.
 */
import { Command, CommanderError, Option } from 'commander';
import { VERSION } from '../version.js';
import { TransplantError, toTransplantError } from '../errors.js';
import { exitCodeOf, installInterruptHandlers, interruptedBy } from './interrupt.js';

export { interruptedBy };
import { StoreInvalid } from './commands/verify.js';
import { Output } from './output.js';
import { extractCommand, type ExtractOptions } from './commands/extract.js';
import { injectCommand, type InjectCommandOptions } from './commands/inject.js';
import { preloadCommand, type PreloadOptions } from './commands/preload.js';
import { lsCommand } from './commands/ls.js';
import { verifyCommand } from './commands/verify.js';
import { registryOptions, type RegistryCliOptions } from './registry-options.js';
import { withBalenaNames, type BalenaFlagNames } from '../preload/balena-flags.js';

const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** Options of every command that reads a live device (--from ssh://…, ls ssh://…). */
function sshOptions(command: Command): Command {
  return command
    .option('--identity <key-file>', 'with ssh://…: the private key to log in with (default: the ssh-agent, then ~/.ssh/id_*)')
    .option('--insecure-host-key', 'with ssh://…: do not check the host key against ~/.ssh/known_hosts');
}

/** Options every command that writes into a target shares. */
function targetOptions(command: Command): Command {
  command
    .option('--resin-data <dir>', 'target: a mounted balenaOS data partition (its engine root is docker/)')
    .option('--engine-root <dir>', 'target: an engine data root (e.g. /var/lib/docker) whose engine is stopped')
    .option('--disk <image>', 'target: a balenaOS disk image, written without mounting and grown when too small')
    .option('--output <image>', 'with --disk: write the result here and leave the input image untouched')
    .option('--apps <file>', 'write this target state as apps.json at the root of resin-data (a v3 apps.json, the API device state or the dashboard copy), after checking every service image will resolve')
    .option('-p, --pin-device', 'with --apps: set pinDevice in apps.json (the supervisor pins the device to the preloaded release); balena\'s name --pin-device-to-release is accepted')
    .option('--no-pin-device', 'with --apps: set pinDevice to false in apps.json (also --no-pin-device-to-release)')
    .option('--pin-device-to-release', 'the same as --pin-device (balena preload\'s name)')
    .option('--no-pin-device-to-release', 'the same as --no-pin-device')
    .option('-s, --splash-image <png>', 'a PNG boot logo written to resin-boot/splash/balena-logo.png (resin-logo.png where the image has only that name; also flash-boot of a flasher image), inside the image or into --resin-boot <dir>')
    .option('--additional-space <bytes>', 'with --disk: keep this much free in resin-data beyond what the images need, growing the image for it (bytes, or with a unit: 512M, 2G, 1GiB)')
    .option('--dont-check-arch', 'inject images whose architecture the device (device-type.json of the image or of --resin-boot) cannot run, with a warning')
    .option('--static-ip <address/prefix[,gateway]>', 'a static address for the device (a NetworkManager keyfile in resin-boot/system-connections/); one per IP family', collect, [])
    .option('--interface <name>', 'with --static-ip: the interface (default eth0)')
    .option('--dns <address>', 'with --static-ip: a DNS server; repeatable', collect, [])
    .option('--network-file <keyfile>', 'a NetworkManager keyfile to put into resin-boot/system-connections/ (checked first)')
    .option('--resin-boot <dir>', 'a mounted resin-boot partition for the network settings (with --disk, the image\'s own is written)')
    .option('--verify', 'after writing, rebuild every injected layer from what was written and check it against its DiffID; undo the run on a mismatch')
    .option('--force', 'write even though an engine seems to be running on the target (also skips the architecture check, as --dont-check-arch)')
    .option('--no-wait', 'when another run holds the target (it is locked for the whole run), fail at once with "in use by pid N" instead of waiting for it')
    .option('--dry-run', 'print the plan (layers to copy and to reuse, bytes, files) and write nothing');
  return outputOptions(command);
}

/** How a command that writes reports: --json, --progress, --quiet. */
function outputOptions(command: Command): Command {
  return command
    .option('--json', 'print the result as JSON (schemas/<command>.schema.json); errors as JSON on stderr')
    .option('--progress <mode>', 'progress on stderr: auto (the default: tty on a terminal, else plain, none with --json), tty, plain (lines for logs) or none; TRANSPLANT_PROGRESS sets the default')
    .option('-q, --quiet', 'print no progress, warnings or result line (errors still; --json output still)');
}

/** Examples under each command's --help (kept within 80 columns: test/interface.test.ts). */
const EXAMPLES = {
  extract: `
Examples:
  # two images of a mounted resin-data into a bundle
  transplant extract --from /mnt/resin-data --image myapp:v2 \\
    --image 3f1c2a9b8e7d --output apps.bundle
  # every service image a dashboard state names, from a data-root tarball
  transplant extract --from device-docker.tar.gz --apps state.json \\
    -o apps.bundle
  # from a live device over SSH, or a registry
  transplant extract --from ssh://root@10.0.0.5 --image myapp:v2 -o apps.bundle
  transplant extract --from docker://registry.example.com/org/app:1.2 \\
    -o app.bundle
`,
  inject: `
Examples:
  transplant inject apps.bundle --resin-data /mnt/resin-data --apps apps.json
  transplant inject apps.bundle --engine-root /var/lib/docker --dry-run
  transplant inject apps.bundle --disk balena.img --output out.img --verify
  transplant inject - --disk balena.img < apps.bundle
`,
  preload: `
Examples:
  # a device's images, from a tarball of its /var/lib/docker, into a disk image
  transplant preload --from device-docker.tar.gz --apps state.json \\
    --disk balena.img --static-ip 10.0.0.1/24
  # straight from a registry, for the disk image's device type
  transplant preload --from docker://registry.example.com/org/app:1.2 \\
    --disk balena.img
  # from an engine root into a mounted resin-data
  transplant preload --from /var/lib/docker --image myapp:v2 \\
    --resin-data /mnt/resin-data
`,
  ls: `
Examples:
  transplant ls /var/lib/docker
  transplant ls apps.bundle
  transplant ls balena.img --json
  transplant ls docker://registry.example.com/org/app:1.2
`,
  verify: `
Exit status: 0 all holds, 1 the store does not hold (each problem listed),
2 the check could not run (the target is missing or unreadable).

Examples:
  transplant verify balena-preloaded.img
  transplant verify /mnt/resin-data --image myapp:v2
  transplant verify apps.bundle --json
`,
};

interface OutputFlags {
  json?: boolean;
  quiet?: boolean;
}

function build(run: (work: (out: Output) => Promise<void>, flags: OutputFlags) => Promise<void>): Command {
  const program = new Command('transplant')
    .description('Move container images between engine data roots, bundles and balenaOS disk images at the file level.')
    .version(VERSION)
    .option('--debug', 'print stack traces on errors')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  program.configureOutput({ writeErr: (s) => process.stderr.write(s) });
  // 80 columns unless the terminal says otherwise, and descriptions wrapped even beside the
  // long option names (commander gives up wrapping below a 40-column description).
  program.configureHelp({ helpWidth: process.stdout.isTTY ? Math.max(60, process.stdout.columns ?? 80) : 80, minWidthToWrap: 20 });

  const extract = program
    .command('extract')
    .description('Copy images from an engine data root (or a bundle) into a bundle file.')
    .requiredOption(
      '--from <source>',
      "an engine data root (or a directory holding one as docker/ or var/lib/docker/), a tarball of one (.tar, .tar.gz, .tar.zst; '-' for standard input), a bundle, a device: ssh://[user@]host[:port][/engine-root], or a registry: docker://HOST[:PORT]/REPO[:TAG|@DIGEST], docker://HOST[:PORT] with --image, or 'registry' (each --image / apps.json image from its own registry)",
    )
    .option('--image <ref-or-id>', 'an image to take: name[:tag], name@sha256:<digest>, an image ID or a unique ID prefix (12+ hex); repeatable', collect, [])
    .option('--apps <file>', 'also take every service image of the first release of every app in this apps.json / device state')
    .option('-o, --output <bundle>', "the bundle file to write ('-' for standard output)")
    .option('--dry-run', 'print what would go into the bundle and write nothing');
  extract.addHelpText('after', EXAMPLES.extract);
  registryOptions(sshOptions(outputOptions(extract))).action(async (opts: ExtractOptions) => {
    await run((out) => extractCommand(opts, out), opts);
  });

  const inject = program
    .command('inject')
    .description('Write the images of a bundle into a target: a mounted resin-data, an engine data root, or a balenaOS disk image.')
    .argument('<bundle>', "the bundle file ('-' for standard input), or any source extract takes: an engine data root, a data-root tarball, a docker save / OCI archive, a registry image (docker://HOST/REPO:TAG, docker://HOST with --image) or 'registry'")
    .option('--image <ref-or-id>', 'inject only these images of the bundle (with docker://HOST or registry: the images to pull); repeatable', collect, []);
  inject.addHelpText('after', EXAMPLES.inject);
  registryOptions(targetOptions(inject)).action(async (bundle: string, opts: InjectCommandOptions & BalenaFlagNames & RegistryCliOptions) => {
    await run((out) => injectCommand(bundle, withBalenaNames(opts), out), opts);
  });

  const preload = program
    .command('preload')
    .description('Extract and inject in one pass, from a source straight into a target, with no bundle in between.')
    .argument('[image]', 'the balenaOS disk image to write (as balena preload takes it), the same as --disk <image>')
    .addOption(new Option('-f, --fleet <fleet>', 'balena preload\'s; refused with what to give instead').hideHelp())
    .addOption(new Option('-c, --commit <release>', 'balena preload\'s; refused with what to give instead').hideHelp())
    .requiredOption('--from <source>', "any source extract takes: an engine data root, a data-root tarball, ssh://…, an image archive (docker save, OCI), a bundle, a registry image (docker://HOST/REPO:TAG) or 'registry'")
    .option('--image <ref-or-id>', 'an image to take (as for extract); repeatable', collect, []);
  preload.addHelpText('after', EXAMPLES.preload);
  registryOptions(targetOptions(sshOptions(preload))).action(async (image: string | undefined, opts: PreloadOptions & BalenaFlagNames) => {
    await run((out) => preloadCommand(withBalenaNames(opts, image), out), opts);
  });

  const ls = program
    .command('ls')
    .description('List the images of an engine data root, a bundle, a tarball, a device, an archive or a balenaOS disk image (and, on a resin-data target, its apps.json).')
    .argument('<target>', 'a directory, a bundle, a data-root tarball, ssh://…, a docker save archive, a disk image, or a registry image: docker://HOST[:PORT]/REPO[:TAG|@DIGEST]')
    .option('--image <ref>', 'with docker://HOST: an image on that registry to list; repeatable', collect, [])
    .option('--json', 'print the listing as JSON');
  ls.addHelpText('after', EXAMPLES.ls);
  registryOptions(sshOptions(ls)).action(async (target: string, opts: { json?: boolean; identity?: string; insecureHostKey?: boolean; image: string[] } & RegistryCliOptions) => {
    await run((out) => lsCommand(target, opts, out), opts);
  });

  const verify = program
    .command('verify')
    .description('Check an engine data root, resin-data, balenaOS disk image or bundle as the engine would use it: configs, layer metadata, links, and every layer rebuilt and hashed against its DiffID.')
    .argument('<target>', 'an engine data root or resin-data directory, a disk image, or a bundle')
    .option('--image <ref-or-id>', 'check only these images and their layers; repeatable', collect, []);
  outputOptions(verify)
    .addHelpText('after', EXAMPLES.verify)
    .action(async (target: string, opts: { image: string[]; json?: boolean; progress?: string; quiet?: boolean }) => {
      await run((out) => verifyCommand(target, opts, out), opts);
    });

  return program;
}

/**
 * The exit status of a failure: 2 for usage; for verify also 2 when the check could not run
 * (the target is missing or unreadable), 1 when what it names does not hold (a store with
 * problems, or something that is no store at all); 1 for every other failure.
 */
function exitStatus(err: TransplantError, command: string | undefined): number {
  if (err.code === 'USAGE') return 2;
  if (command === 'verify' && !(err instanceof StoreInvalid) && (err.code === 'NOT_FOUND' || err.code === 'PERMISSION_DENIED')) return 2;
  return 1;
}

export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug');
  const json = argv.includes('--json');
  installInterruptHandlers();
  let failure: unknown;
  let command: string | undefined;
  const run = async (work: (out: Output) => Promise<void>, flags: OutputFlags): Promise<void> => {
    try {
      await work(new Output(flags.json === true, flags.quiet === true));
    } catch (e) {
      failure = e;
    }
  };
  const program = build(run);
  program.hook('preAction', (_root, action) => {
    command = action.name();
  });
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
      return 2;
    }
    failure = e;
  }
  if (failure === undefined) return 0;
  const err = toTransplantError(failure);
  const signal = interruptedBy();
  let status = exitStatus(err, command);
  let message = err.message;
  if (signal !== undefined) {
    status = exitCodeOf(signal);
    // The run failed on its way out after a signal (not at a checkpoint): still the signal's status.
    if (err.code !== 'ABORTED') message = `interrupted by ${signal}; what this run had written was undone (${err.message.split('\n')[0]})`;
  }
  if (json) {
    process.stderr.write(JSON.stringify({ error: { code: signal !== undefined ? 'ABORTED' : err.code, message, exitCode: status } }) + '\n');
  } else if (debug && signal === undefined) {
    const cause = err.cause instanceof Error ? err.cause : err;
    process.stderr.write(`${cause.stack ?? message}\n`);
  } else {
    const [first, ...rest] = message.split('\n');
    process.stderr.write(`error: ${first}\n${rest.length > 0 ? rest.join('\n') + '\n' : ''}`);
    if (err.code === 'USAGE') process.stderr.write('(run with --help for usage)\n');
  }
  return status;
}

/**
 * The last resort for an error that escapes every promise chain: one `error:` line and exit 1,
 * as for any other failure. Handlers installed before ours (a dependency's) are removed, so
 * nothing turns such an error into a dump of minified source and another exit code.
 */
export function installLastResort(debug: boolean): void {
  const fatal = (e: unknown): void => {
    const err = e instanceof Error ? e : new Error(String(e));
    process.stderr.write(debug ? `${err.stack ?? err.message}\n` : `error: ${err.message.split('\n')[0]}\n`);
    process.exit(1);
  };
  process.removeAllListeners('uncaughtException');
  process.removeAllListeners('unhandledRejection');
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
}

if (require.main === module) {
  installLastResort(process.argv.includes('--debug'));
  void main(process.argv).then((code) => process.exit(code));
}
