/**
 * The command line: argument parsing, output and exit codes only (0 ok, 1 failure with one
 * `error: …` line, 2 bad usage). The work is done by the modules it calls.
 */
import { Command, CommanderError, Option } from 'commander';
import { VERSION } from '../version.js';
import { UsageError } from './errors.js';
import { InterruptedError, exitCodeOf, installInterruptHandlers, interruptedBy } from './interrupt.js';
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
  return command
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
    .option('--dry-run', 'print the plan (layers to copy and to reuse, bytes, files) and write nothing')
    .option('--json', 'print results as JSON');
}

function build(run: (work: (out: Output) => Promise<void>, json?: boolean) => Promise<void>): Command {
  const program = new Command('transplant')
    .description('Move container images between engine data roots, bundles and balenaOS disk images at the file level.')
    .version(VERSION)
    .option('--debug', 'print stack traces on errors')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  program.configureOutput({ writeErr: (s) => process.stderr.write(s) });

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
    .option('--dry-run', 'print what would go into the bundle and write nothing')
    .option('--json', 'print results as JSON');
  registryOptions(sshOptions(extract)).action(async (opts: ExtractOptions) => {
    await run((out) => extractCommand(opts, out), opts.json);
  });

  const inject = program
    .command('inject')
    .description('Write the images of a bundle into a target: a mounted resin-data, an engine data root, or a balenaOS disk image.')
    .argument('<bundle>', "the bundle file ('-' for standard input), or any source extract takes: an engine data root, a docker save archive, a data-root tarball, docker://HOST[:PORT][/REPO[:TAG|@DIGEST]] or 'registry'")
    .option('--image <ref-or-id>', 'inject only these images of the bundle (with docker://HOST or registry: the images to pull); repeatable', collect, []);
  registryOptions(targetOptions(inject)).action(async (bundle: string, opts: InjectCommandOptions & BalenaFlagNames & RegistryCliOptions) => {
    await run((out) => injectCommand(bundle, withBalenaNames(opts), out), opts.json);
  });

  const preload = program
    .command('preload')
    .description('Extract and inject in one pass, from a source straight into a target, with no bundle in between.')
    .argument('[image]', 'the balenaOS disk image to write (as balena preload takes it), the same as --disk <image>')
    .addOption(new Option('-f, --fleet <fleet>', 'balena preload\'s; refused with what to give instead').hideHelp())
    .addOption(new Option('-c, --commit <release>', 'balena preload\'s; refused with what to give instead').hideHelp())
    .requiredOption('--from <source>', "any source extract takes: an engine data root, a data-root tarball, ssh://…, a docker save archive, a bundle, docker://HOST[:PORT][/REPO[:TAG|@DIGEST]] or 'registry'")
    .option('--image <ref-or-id>', 'an image to take (as for extract); repeatable', collect, []);
  registryOptions(targetOptions(sshOptions(preload))).action(async (image: string | undefined, opts: PreloadOptions & BalenaFlagNames) => {
    await run((out) => preloadCommand(withBalenaNames(opts, image), out), opts.json);
  });

  const ls = program
    .command('ls')
    .description('List the images of an engine data root, a bundle, a tarball, a device, an archive or a balenaOS disk image (and, on a resin-data target, its apps.json).')
    .argument('<target>', 'a directory, a bundle, a data-root tarball, ssh://…, a docker save archive, a disk image, or a registry image: docker://HOST[:PORT]/REPO[:TAG|@DIGEST]')
    .option('--image <ref>', 'with docker://HOST: an image on that registry to list; repeatable', collect, [])
    .option('--json', 'print the listing as JSON');
  registryOptions(sshOptions(ls)).action(async (target: string, opts: { json?: boolean; identity?: string; insecureHostKey?: boolean; image: string[] } & RegistryCliOptions) => {
    await run((out) => lsCommand(target, opts, out), opts.json);
  });

  program
    .command('verify')
    .description('Check an engine data root, resin-data, balenaOS disk image or bundle as the engine would use it: configs, layer metadata, links, and every layer rebuilt and hashed against its DiffID.')
    .argument('<target>', 'an engine data root or resin-data directory, a disk image, or a bundle')
    .option('--image <ref-or-id>', 'check only these images and their layers; repeatable', collect, [])
    .option('--json', 'print the report as JSON')
    .action(async (target: string, opts: { image: string[]; json?: boolean }) => {
      await run((out) => verifyCommand(target, opts, out), opts.json);
    });

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug');
  installInterruptHandlers();
  let failure: unknown;
  const run = async (work: (out: Output) => Promise<void>, json?: boolean): Promise<void> => {
    try {
      await work(new Output(json === true));
    } catch (e) {
      failure = e;
    }
  };
  const program = build(run);
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
  if (failure instanceof InterruptedError) {
    process.stderr.write(`error: ${failure.message}\n`);
    return failure.exitCode;
  }
  const signal = interruptedBy();
  if (signal !== undefined) {
    // The run failed on its way out after a signal (not at a checkpoint): still the signal's status.
    process.stderr.write(`error: interrupted by ${signal}; what this run had written was undone (${(failure as Error)?.message?.split('\n')[0] ?? String(failure)})\n`);
    return exitCodeOf(signal);
  }
  if (failure instanceof UsageError) {
    process.stderr.write(`error: ${failure.message}\n(run with --help for usage)\n`);
    return 2;
  }
  const err = failure instanceof Error ? failure : new Error(String(failure));
  if (debug) process.stderr.write(`${err.stack ?? err.message}\n`);
  else {
    const [first, ...rest] = err.message.split('\n');
    process.stderr.write(`error: ${first}\n${rest.length > 0 ? rest.join('\n') + '\n' : ''}`);
  }
  return 1;
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
