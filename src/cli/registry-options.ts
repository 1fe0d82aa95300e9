/** The command-line options of registry sources (the logic is in src/sources/open-registry.ts). */
import type { Command } from 'commander';
import type { RegistryOptions } from '../sources/open-registry.js';

export type RegistryCliOptions = RegistryOptions;

const collect = (value: string, previous: string[]): string[] => [...previous, value];

export function registryOptions(command: Command): Command {
  return command
    .option('--platform <os/arch[/variant]>', 'with a registry: the platform to take from a multi-platform image (default: the target disk image\'s device type, else this machine\'s)')
    .option('--jobs <n>', 'with a registry: layers fetched at once (default 3)')
    .option('--registry-auth <user:password>', 'with a registry: credentials (default: REGISTRY_AUTH_FILE, then ~/.docker/config.json or $DOCKER_CONFIG, with its credential helpers)')
    .option('--registry-auth-file <file>', 'with a registry: a docker config.json / containers auth.json to take credentials from')
    .option('--ca <file>', 'with a registry: a CA certificate (PEM) to trust beside the system ones; repeatable', collect, [])
    .option('--insecure-registry <host[:port]>', 'with a registry: allow plain HTTP to this host (loopback registries always are); repeatable', collect, []);
}
