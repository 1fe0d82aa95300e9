/**
 * Registry credentials found the way docker and skopeo find them:
 * `--registry-auth USER:PASSWORD`, then an auth file (`--registry-auth-file`, else
 * `REGISTRY_AUTH_FILE`), then the docker client config (`$DOCKER_CONFIG/config.json`, else
 * `~/.docker/config.json`): `credHelpers[host]`, `credsStore`, then `auths[host]` with `auth`
 * (base64 user:password), `username`/`password` or `identitytoken`
 * (docker/cli cli/config/configfile/file.go, credentials/native_store.go).
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DOCKER_HUB } from './reference.js';

export interface Credentials {
  username?: string;
  password?: string;
  /** An OAuth2 refresh token (docker login to a registry that hands one out). */
  identityToken?: string;
}

export interface CredentialOptions {
  /** `--registry-auth USER:PASSWORD`. */
  auth?: string;
  /** `--registry-auth-file FILE`. */
  authFile?: string;
  env?: NodeJS.ProcessEnv;
}

interface AuthEntry {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
}

interface ConfigFile {
  auths?: Record<string, AuthEntry>;
  credsStore?: string;
  credHelpers?: Record<string, string>;
}

/** The auths key docker uses for Docker Hub. */
const HUB_KEY = 'https://index.docker.io/v1/';

/** `https://host/v1/` → `host` (docker/cli configfile ConvertToHostname). */
function hostnameOf(key: string): string {
  const stripped = key.replace(/^https?:\/\//, '');
  return stripped.split('/')[0] as string;
}

function sameRegistry(key: string, host: string): boolean {
  const k = hostnameOf(key);
  if (host === DOCKER_HUB) return k === 'index.docker.io' || k === 'docker.io' || k === DOCKER_HUB;
  return k === host;
}

async function readConfig(file: string, what: string): Promise<ConfigFile | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`${what} ${file}: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text) as ConfigFile;
  } catch {
    throw new Error(`${what} ${file} is not valid JSON`);
  }
}

function fromEntry(entry: AuthEntry, where: string): Credentials {
  if (entry.identitytoken) return { identityToken: entry.identitytoken, username: entry.username };
  if (entry.auth) {
    const plain = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = plain.indexOf(':');
    if (colon < 0) throw new Error(`${where}: the auth field is not base64 of user:password`);
    return { username: plain.slice(0, colon), password: plain.slice(colon + 1) };
  }
  if (entry.username !== undefined) return { username: entry.username, password: entry.password ?? '' };
  return {};
}

/** `docker-credential-<helper> get` with the server URL on stdin (docker-credential-helpers protocol). */
async function fromHelper(helper: string, host: string): Promise<Credentials | undefined> {
  if (!/^[A-Za-z0-9_.-]+$/.test(helper)) throw new Error(`credential helper name ${JSON.stringify(helper)} is not valid`);
  const server = host === DOCKER_HUB ? HUB_KEY : host;
  const cmd = `docker-credential-${helper}`;
  const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve, reject) => {
    const child = spawn(cmd, ['get'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (err += d.toString('utf8')));
    child.on('error', (e) => reject(new Error(`credential helper ${cmd} cannot be run (${(e as NodeJS.ErrnoException).code ?? e.message}); is it installed?`)));
    child.on('close', (c) => resolve({ code: c ?? 1, stdout: out, stderr: err }));
    child.stdin.end(server);
  });
  if (code !== 0) {
    // "credentials not found in native keychain": anonymous, as docker does.
    if (/not found/i.test(stdout + stderr)) return undefined;
    throw new Error(`credential helper ${cmd} failed for ${server}: ${(stderr || stdout).trim().split('\n')[0]}`);
  }
  let json: { Username?: string; Secret?: string };
  try {
    json = JSON.parse(stdout) as typeof json;
  } catch {
    throw new Error(`credential helper ${cmd} printed something that is not JSON`);
  }
  if (json.Username === '<token>') return { identityToken: json.Secret };
  return { username: json.Username, password: json.Secret };
}

/** Finds the credentials for one registry host; undefined means anonymous. */
export async function credentialsFor(host: string, options: CredentialOptions): Promise<Credentials | undefined> {
  if (options.auth !== undefined) {
    const colon = options.auth.indexOf(':');
    if (colon < 0) throw new Error('--registry-auth takes USER:PASSWORD');
    return { username: options.auth.slice(0, colon), password: options.auth.slice(colon + 1) };
  }
  const env = options.env ?? process.env;
  const authFile = options.authFile ?? env.REGISTRY_AUTH_FILE;
  const configs: { file: string; what: string }[] = [];
  if (authFile) configs.push({ file: authFile, what: options.authFile ? '--registry-auth-file' : 'REGISTRY_AUTH_FILE' });
  const dockerConfig = env.DOCKER_CONFIG ? path.join(env.DOCKER_CONFIG, 'config.json') : path.join(env.HOME ?? os.homedir(), '.docker', 'config.json');
  configs.push({ file: dockerConfig, what: 'docker config' });
  for (const { file, what } of configs) {
    const config = await readConfig(file, what);
    if (!config) {
      if (what === '--registry-auth-file') throw new Error(`--registry-auth-file ${file}: no such file`);
      continue;
    }
    const helper = Object.entries(config.credHelpers ?? {}).find(([k]) => sameRegistry(k, host))?.[1];
    if (helper) return fromHelper(helper, host);
    const entry = Object.entries(config.auths ?? {}).find(([k]) => sameRegistry(k, host))?.[1];
    if (config.credsStore) {
      const found = await fromHelper(config.credsStore, host);
      if (found) return found;
    }
    if (entry) {
      const c = fromEntry(entry, `${what} ${file}`);
      if (c.username !== undefined || c.identityToken !== undefined) return c;
    }
  }
  return undefined;
}
