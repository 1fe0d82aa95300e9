/**
 * A live device over SSH as a source: `ssh://[user@]host[:port][/engine-root]` (defaults:
 * root, port 22222 as balenaOS's sshd listens, /var/lib/docker). Nothing is written on
 * the device, and only what the selected images need crosses the network:
 *  - at open, one shell command prints the engine's small metadata files (image configs,
 *    layerdb diff/size/cache-id/parent, repositories.json, overlay2 link/lower) and lists
 *    which layers have a tar-split and a diff/ directory;
 *  - a layer's tar-split.json.gz is fetched (`cat`) when the layer is asked for;
 *  - a layer's files come as a tar stream from the device's own GNU tar
 *    (`--format=posix --xattrs --xattrs-include='*' --numeric-owner`: ns times, every
 *    xattr namespace, exact owners), parsed as it arrives;
 *  - balenaOS itself ships busybox tar (meta-balena's busybox defconfig: no long options,
 *    no xattrs, whole-second times) and no getfattr, but GNU coreutils. There the files
 *    come from busybox tar, the ns times from coreutils `stat`, and the xattrs from the
 *    layer's tar-split (the engine's own record of the layer tar: SCHILY.xattr.* records
 *    and `.wh..wh..opq` opaque markers, pkg/archive/archive_linux.go). xattrs the engine
 *    never put in the layer tar (it writes only security.capability when it commits a
 *    layer) are not seen that way, exactly as `docker save` would not carry them.
 * The host key is checked against ~/.ssh/known_hosts (plain and hashed entries) unless
 * insecureHostKey is set. Authentication: the identity file, else the ssh-agent of
 * SSH_AUTH_SOCK, else the first of ~/.ssh/id_ed25519, id_ecdsa, id_rsa.
 */
import { createHmac } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client, type ClientChannel, type ConnectConfig, type ServerHostKeyAlgorithm } from 'ssh2';
import type { LayerEntry, LayerItem, Xattr } from '../layer/entry.js';
import { hexOf } from '../engine/digest.js';
import { checkRelativePath } from '../bundle/read.js';
import { TarParser, type TarEntry } from '../tar/parse.js';
import { parsePaxTime } from '../tar/header.js';
import { FILE, SEGMENT, cleanTarPath, readTarSplit } from '../engine/tar-split.js';
import { EngineRootSource } from './engine-root.js';
import { MemoryStoreReader } from './memory-reader.js';
import { normalizeTarName } from './rootfs-tarball.js';
import { layerEntryFromTar } from '../layer/tar-entry.js';
import type { ImageSource, SourceImage, SourceLayer } from './source.js';

export interface SshDeviceOptions {
  identity?: string;
  insecureHostKey?: boolean;
  /** Defaults to ~/.ssh/known_hosts. */
  knownHosts?: string;
}

export interface DeviceAddress {
  user: string;
  host: string;
  port: number;
  engineRoot: string;
}

export const DEFAULT_PORT = 22222;
const MAX_METADATA = 512 << 20;

/** Parses ssh://[user@]host[:port][/engine-root]. */
export function parseDeviceUrl(text: string): DeviceAddress {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`${text} is not a valid ssh:// address (ssh://[user@]host[:port][/engine-root])`);
  }
  if (url.protocol !== 'ssh:' || url.hostname === '') throw new Error(`${text} is not a valid ssh:// address (ssh://[user@]host[:port][/engine-root])`);
  if (url.password) throw new Error(`${text}: passwords in the address are not supported; use a key (--identity or ssh-agent)`);
  const engineRoot = decodeURIComponent(url.pathname).replace(/\/+$/, '');
  return {
    user: url.username ? decodeURIComponent(url.username) : 'root',
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port ? Number(url.port) : DEFAULT_PORT,
    engineRoot: engineRoot === '' ? '/var/lib/docker' : engineRoot,
  };
}

/** POSIX shell single quoting. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

// ---- known_hosts (OpenSSH sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT", hostfile.c) --------------

function wildcardMatch(pattern: string, name: string): boolean {
  const re = new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`, 'i');
  return re.test(name);
}

/** Whether a known_hosts host field (comma-separated patterns, `!` negations, or a hashed `|1|salt|hash`) names the host. */
export function hostFieldMatches(field: string, names: readonly string[]): boolean {
  if (field.startsWith('|1|')) {
    const [, , salt, hash] = field.split('|');
    if (!salt || !hash) return false;
    return names.some((n) => createHmac('sha1', Buffer.from(salt, 'base64')).update(n).digest('base64') === hash);
  }
  let matched = false;
  for (const p of field.split(',')) {
    const negated = p.startsWith('!');
    const pat = negated ? p.slice(1) : p;
    if (names.some((n) => wildcardMatch(pat, n))) {
      if (negated) return false;
      matched = true;
    }
  }
  return matched;
}

type HostKeyVerdict = { ok: true } | { ok: false; reason: string };

interface KnownHost {
  marker?: string;
  type: string;
  blob: Buffer;
}

/** known_hosts names a host on a port other than 22 as "[host]:port" (hostfile.c put_host_port). */
function knownNames(host: string, port: number): string[] {
  return port === 22 ? [host] : [`[${host}]:${port}`];
}

/** The known_hosts entries that name this host. */
export function knownHostEntries(knownHosts: string, host: string, port: number): KnownHost[] {
  const names = knownNames(host, port);
  const out: KnownHost[] = [];
  for (const raw of knownHosts.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const fields = line.split(/\s+/);
    let marker: string | undefined;
    if (fields[0]?.startsWith('@')) marker = fields.shift();
    const [hosts, type, b64] = fields;
    if (!hosts || !type || !b64 || !hostFieldMatches(hosts, names)) continue;
    out.push({ marker, type, blob: Buffer.from(b64, 'base64') });
  }
  return out;
}

const RSA_ALGORITHMS: ServerHostKeyAlgorithm[] = ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'];
const HOST_KEY_ALGORITHMS: ServerHostKeyAlgorithm[] = ['ssh-ed25519', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521', ...RSA_ALGORITHMS];

/**
 * Host key algorithms with the types known_hosts holds for the host first, as OpenSSH's
 * client orders them (sshconnect2.c order_hostkeyalgs), so that a host known by its ECDSA
 * or RSA key is not asked for its Ed25519 key.
 */
export function hostKeyAlgorithms(entries: readonly KnownHost[]): ServerHostKeyAlgorithm[] {
  const known = new Set<ServerHostKeyAlgorithm>();
  for (const e of entries) {
    if (e.marker !== undefined) continue;
    if (e.type === 'ssh-rsa') RSA_ALGORITHMS.forEach((a) => known.add(a));
    else if ((HOST_KEY_ALGORITHMS as string[]).includes(e.type)) known.add(e.type as ServerHostKeyAlgorithm);
  }
  return [...known, ...HOST_KEY_ALGORITHMS.filter((a) => !known.has(a))];
}

/** Checks a server's host key blob against known_hosts content. */
export function checkHostKey(knownHosts: string, host: string, port: number, key: Buffer, file: string): HostKeyVerdict {
  const name = knownNames(host, port)[0] as string;
  const keyType = key.length > 4 ? key.subarray(4, 4 + key.readUInt32BE(0)).toString('latin1') : '';
  let sameType = false;
  let any = false;
  for (const e of knownHostEntries(knownHosts, host, port)) {
    if (e.marker === '@revoked') {
      if (e.blob.equals(key)) return { ok: false, reason: `the host key of ${name} is marked @revoked in ${file}` };
      continue;
    }
    if (e.marker !== undefined) continue; // @cert-authority: certificates are not used here
    any = true;
    if (e.blob.equals(key)) return { ok: true };
    if (e.type === keyType) sameType = true;
  }
  if (sameType) {
    return {
      ok: false,
      reason: `the host key of ${name} does NOT match the one in ${file} (the device was reinstalled, or someone is intercepting the connection); if you expect the change, remove the old entry with ssh-keygen -R '${name}'`,
    };
  }
  return {
    ok: false,
    reason: `the host key of ${name} is not in ${file}${any ? ` (only keys of other types are)` : ''}: connect once with ssh -p ${port} <user>@${host} and accept it, or pass --insecure-host-key`,
  };
}

// ---- the source ------------------------------------------------------------------------------

interface ExecResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

function lastLine(text: string): string {
  return text.split('\n').map((l) => l.trim()).filter((l) => l !== '').pop() ?? '';
}

export class SshDeviceSource implements ImageSource {
  private engine!: EngineRootSource;
  /** Which way layer files are read: GNU tar, or busybox tar + coreutils stat + tar-split. */
  private tarKind: 'gnu' | 'busybox' = 'gnu';
  private readonly fetched = new Map<string, Buffer | undefined>();
  private readonly counts = new Map<string, { entries: number; bytes: number }>();
  private closed = false;
  /** Why the connection ended, once it has. */
  connectionError?: Error;

  private constructor(
    readonly description: string,
    private readonly address: DeviceAddress,
    private readonly client: Client,
  ) {}

  static async open(url: string, options: SshDeviceOptions = {}): Promise<SshDeviceSource> {
    const address = parseDeviceUrl(url);
    const where = `${address.user}@${address.host}:${address.port}`;
    const config: ConnectConfig = {
      host: address.host,
      port: address.port,
      username: address.user,
      readyTimeout: 30_000,
      keepaliveInterval: 15_000,
    };
    if (options.identity) {
      try {
        config.privateKey = await fs.readFile(options.identity);
      } catch (e) {
        throw new Error(`--identity ${options.identity}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
      }
    } else if (process.env.SSH_AUTH_SOCK) {
      config.agent = process.env.SSH_AUTH_SOCK;
    } else {
      for (const name of ['id_ed25519', 'id_ecdsa', 'id_rsa']) {
        const key = await fs.readFile(path.join(os.homedir(), '.ssh', name)).catch(() => undefined);
        if (key) {
          config.privateKey = key;
          break;
        }
      }
      if (!config.privateKey) throw new Error(`no key to log in to ${where} with: pass --identity <private key file>, or start an ssh-agent holding the key`);
    }
    let hostKeyProblem: string | undefined;
    if (!options.insecureHostKey) {
      const file = options.knownHosts ?? path.join(os.homedir(), '.ssh', 'known_hosts');
      const known = await fs.readFile(file, 'utf8').catch(() => '');
      config.algorithms = { serverHostKey: hostKeyAlgorithms(knownHostEntries(known, address.host, address.port)) };
      config.hostVerifier = (key: Buffer): boolean => {
        const verdict = checkHostKey(known, address.host, address.port, key, file);
        if (!verdict.ok) hostKeyProblem = verdict.reason;
        return verdict.ok;
      };
    }
    const client = new Client();
    try {
      await new Promise<void>((resolve, reject) => {
        client.once('ready', () => resolve());
        client.once('error', reject);
        try {
          client.connect(config);
        } catch (e) {
          reject(e as Error);
        }
      });
    } catch (e) {
      client.end();
      const err = e as NodeJS.ErrnoException & { level?: string };
      if (hostKeyProblem) throw new Error(`${where}: ${hostKeyProblem}`);
      if (/encrypted/i.test(err.message) && /passphrase/i.test(err.message)) {
        throw new Error(`--identity ${options.identity ?? ''}: the key is passphrase-protected; add it to ssh-agent (ssh-add) and leave --identity out`);
      }
      if (/parse privateKey|Unsupported key format/i.test(err.message)) throw new Error(`--identity ${options.identity ?? ''}: not a private key ssh can use (${err.message})`);
      if (err.level === 'client-authentication') throw new Error(`${where} refused the login (${err.message}): is the key authorised on the device?`);
      if (err.code === 'ECONNREFUSED') throw new Error(`cannot connect to ${address.host} port ${address.port} (connection refused): balenaOS's sshd listens on 22222`);
      if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') throw new Error(`cannot resolve the host name ${address.host}`);
      throw new Error(`cannot connect to ${where}: ${err.message}`);
    }
    const description = `ssh://${where}${address.engineRoot}`;
    const source = new SshDeviceSource(description, address, client);
    // A connection lost later ends the running command's stream early; that read fails with
    // this as its reason (and an 'error' with no listener would crash the process).
    client.on('error', (e: Error) => {
      source.connectionError ??= e;
    });
    client.on('close', () => {
      source.connectionError ??= new Error('the connection was closed');
    });
    try {
      await source.readMetadata();
    } catch (e) {
      await source.close();
      throw e;
    }
    return source;
  }

  private channel(command: string): Promise<ClientChannel> {
    if (this.connectionError) return Promise.reject(new Error(`${this.description}: connection lost (${this.connectionError.message})`));
    return new Promise((resolve, reject) => {
      this.client.exec(command, (err, channel) => {
        if (err) reject(new Error(`${this.description}: cannot run a command on the device (${err.message})`));
        else resolve(channel);
      });
    });
  }

  /** Runs a command whose output is small; collects it. */
  private async exec(command: string, limit: number): Promise<ExecResult> {
    const ch = await this.channel(command);
    const out: Buffer[] = [];
    let size = 0;
    let stderr = '';
    let code: number | null = null;
    ch.on('exit', (c: number | null) => {
      code = c;
    });
    const closed = new Promise((resolve) => ch.once('close', resolve));
    ch.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 8192) stderr += d.toString('utf8');
    });
    ch.end();
    for await (const c of ch as AsyncIterable<Buffer>) {
      size += c.length;
      if (size > limit) {
        ch.destroy();
        throw new Error(`${this.description}: the device sent more than ${limit} bytes for one request`);
      }
      out.push(c);
    }
    await closed;
    return { code, stdout: Buffer.concat(out), stderr };
  }

  private at(p: string): string {
    return `${this.address.engineRoot}/${p}`;
  }

  /** One command prints every small metadata file, framed as `F <size> <path>\n<bytes>`. */
  private async readMetadata(): Promise<void> {
    const script = [
      `cd ${shq(this.address.engineRoot)} 2>/dev/null || { echo "no such directory" >&2; exit 3; }`,
      '[ -d image/overlay2 ] || { echo "it holds no image/overlay2/" >&2; exit 4; }',
      'emit() { [ -f "$1" ] || return 0; printf \'F %s %s\\n\' "$(wc -c < "$1")" "$1"; cat "$1"; }',
      'emit image/overlay2/repositories.json',
      'for f in image/overlay2/imagedb/content/sha256/* image/overlay2/imagedb/metadata/sha256/*/lastUpdated ' +
        'image/overlay2/layerdb/sha256/*/diff image/overlay2/layerdb/sha256/*/size image/overlay2/layerdb/sha256/*/cache-id ' +
        'image/overlay2/layerdb/sha256/*/parent overlay2/*/link overlay2/*/lower; do emit "$f"; done',
      'for f in image/overlay2/layerdb/sha256/*/tar-split.json.gz; do [ -f "$f" ] && printf \'T 0 %s\\n\' "$f"; done',
      'for d in overlay2/*/diff; do [ -d "$d" ] && printf \'D 0 %s\\n\' "$d"; done',
      'printf \'V 0 %s\\n\' "$(tar --version 2>&1 | head -n 1)"',
      'printf \'S 0 %s\\n\' "$(stat --version 2>&1 | head -n 1)"',
      'exit 0',
    ].join('\n');
    const r = await this.exec(script, MAX_METADATA);
    if (r.code === 3) throw new Error(`${this.description}: ${this.address.engineRoot} does not exist on the device`);
    if (r.code === 4) throw new Error(`${this.description}: ${this.address.engineRoot} is not an engine data root (${lastLine(r.stderr)}); balenaOS keeps it in /var/lib/docker`);
    if (r.code !== 0) throw new Error(`${this.description}: reading the image store failed (${lastLine(r.stderr) || `exit status ${String(r.code)}`})`);

    const reader = new MemoryStoreReader(this.description);
    let version = '';
    let statVersion = '';
    const buf = r.stdout;
    let pos = 0;
    while (pos < buf.length) {
      const nl = buf.indexOf(0x0a, pos);
      if (nl < 0) throw new Error(`${this.description}: malformed metadata listing from the device`);
      const m = /^([FTDVS]) +(\d+) (.*)$/.exec(buf.toString('utf8', pos, nl));
      if (!m) throw new Error(`${this.description}: malformed metadata listing from the device (did the image store change while it was read? try again)`);
      pos = nl + 1;
      const [, tag, sizeText, p] = m as unknown as [string, string, string, string];
      if (tag === 'F') {
        const size = Number(sizeText);
        if (pos + size > buf.length) throw new Error(`${this.description}: the metadata listing from the device is cut short (did the image store change while it was read? try again)`);
        reader.addFile(p, Buffer.from(buf.subarray(pos, pos + size)));
        pos += size;
      } else if (tag === 'T') {
        reader.addFile(p, () => this.fetchFile(p));
      } else if (tag === 'D') {
        reader.addDir(p);
      } else if (tag === 'S') {
        statVersion = p;
      } else {
        version = p;
      }
    }
    if (/GNU tar/.test(version)) this.tarKind = 'gnu';
    else if (/GNU coreutils/.test(statVersion)) this.tarKind = 'busybox';
    else {
      throw new Error(
        `${this.description}: the device has neither GNU tar nor GNU coreutils' stat (its tar says ${JSON.stringify(version.slice(0, 60))}), so nanosecond times and xattrs cannot be read; ` +
          `make a data-root tarball with GNU tar instead (e.g. from a container that has it) and use --from <tarball>`,
      );
    }
    this.engine = await EngineRootSource.over(reader, this.description);
  }

  /** A file fetched once (tar-splits: the bundle writer and the busybox path both read them). */
  private async fetchFile(p: string): Promise<Buffer | undefined> {
    if (this.fetched.has(p)) return this.fetched.get(p);
    const r = await this.exec(`cat ${shq(this.at(p))}`, 1 << 30);
    const data = r.code === 0 ? r.stdout : undefined;
    this.fetched.set(p, data);
    return data;
  }

  images(): Promise<SourceImage[]> {
    return this.engine.images();
  }

  async layer(chainId: string, options: { counts?: boolean } = {}): Promise<SourceLayer> {
    const layer = await this.engine.layer(chainId);
    if (!options.counts) return layer;
    let counts = this.counts.get(chainId);
    if (counts === undefined) {
      // Counted on the device: every entry GNU tar stores (it leaves sockets out), and the
      // content bytes with each hard-linked inode once (busybox and GNU find/stat/awk alike).
      const dir = shq(this.at(`overlay2/${layer.cacheId as string}/diff`));
      const command =
        `n=$(find ${dir} ! -type s -print0 | tr -cd '\\000' | wc -c) && ` +
        `b=$(find ${dir} -type f -exec stat -c '%i %h %s' {} + | awk '$2 == 1 || !seen[$1]++ { s += $3 } END { printf "%d", s }') && ` +
        `echo "$n $b"`;
      const r = await this.exec(command, 4096);
      const m = /^\s*(\d+) (\d+)\s*$/.exec(r.stdout.toString('utf8'));
      if (r.code !== 0 || !m) throw new Error(`${this.description}: cannot count the files of layer ${chainId} (${lastLine(r.stderr) || 'find failed'})`);
      counts = { entries: Number(m[1]), bytes: Number(m[2]) };
      this.counts.set(chainId, counts);
    }
    return { ...layer, ...counts };
  }

  async *layerItems(chainId: string): AsyncIterable<LayerItem> {
    const layer = await this.engine.layer(chainId);
    const cacheId = layer.cacheId as string;
    const prefix = `${cacheId}/diff`;
    const fail = (why: string): Error =>
      new Error(`${this.description}: reading layer ${hexOf(chainId).slice(0, 12)} from the device failed (${this.connectionError && !this.closed ? `connection lost: ${this.connectionError.message}` : why})`);
    if (this.tarKind === 'gnu') {
      const command = `tar -C ${shq(this.at('overlay2'))} -cf - --format=posix --xattrs --xattrs-include='*' --numeric-owner -- ${shq(prefix)}`;
      yield* this.tarItems(chainId, command, prefix, fail, (entry) => entry);
      return;
    }
    // busybox tar: times from coreutils stat, xattrs from the tar-split.
    if (!layer.tarSplit) throw fail(`the device's tar is busybox's, which keeps no xattrs, and the layer has no tar-split to take them from`);
    const xattrs = await xattrsFromTarSplit(layer.tarSplit, `${this.description}: tar-split of layer ${chainId}`);
    const times = await this.statTimes(cacheId, fail);
    yield* this.tarItems(chainId, `tar -cf - -C ${shq(this.at('overlay2'))} ${shq(prefix)}`, prefix, fail, (entry) => {
      const t = times.get(entry.path);
      if (!t) throw fail(`${entry.path} was not there when the layer's times were read: the layer changed`);
      entry.mtime = t.mtime;
      entry.atime = t.atime;
      entry.xattrs = xattrs.get(entry.path) ?? [];
      return entry;
    });
  }

  /** mtime and atime in ns of every entry of a diff/ tree, by coreutils stat on the device. */
  private async statTimes(cacheId: string, fail: (why: string) => Error): Promise<Map<string, { mtime: bigint; atime: bigint }>> {
    const dir = shq(this.at(`overlay2/${cacheId}/diff`));
    const r = await this.exec(`cd ${dir} && find . ! -type s -exec stat --printf '%n\\0%.9Y\\0%.9X\\0' {} +`, MAX_METADATA);
    if (r.code !== 0) throw fail(`stat failed: ${lastLine(r.stderr) || `exit status ${String(r.code)}`}`);
    const parts = r.stdout.toString('utf8').split('\0');
    const out = new Map<string, { mtime: bigint; atime: bigint }>();
    for (let i = 0; i + 3 <= parts.length; i += 3) {
      const [name, m, a] = parts.slice(i, i + 3) as [string, string, string];
      if (!/^-?\d+\.\d{9}$/.test(m) || !/^-?\d+\.\d{9}$/.test(a)) throw fail(`the device's stat does not print nanosecond times (it printed ${JSON.stringify(m)})`);
      out.set(name === '.' ? '.' : name.replace(/^\.\//, ''), { mtime: parsePaxTime(m), atime: parsePaxTime(a) });
    }
    return out;
  }

  private async *tarItems(
    chainId: string,
    command: string,
    prefix: string,
    fail: (why: string) => Error,
    adjust: (entry: LayerEntry, e: TarEntry) => LayerEntry,
  ): AsyncGenerator<LayerItem> {
    const ch = await this.channel(command);
    let stderr = '';
    let code: number | null = null;
    const exited = new Promise<void>((resolve) => {
      ch.once('exit', (c: number | null) => {
        code = c;
      });
      ch.once('close', () => resolve());
    });
    ch.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 8192) stderr += d.toString('utf8');
    });
    ch.end();
    const parser = new TarParser(ch as AsyncIterable<Buffer>);
    let done = false;
    let count = 0;
    try {
      for (;;) {
        let e;
        try {
          e = await parser.next();
        } catch (err) {
          await exited;
          throw fail(lastLine(stderr) || (err as Error).message);
        }
        if (!e) break;
        const name = normalizeTarName(e.header.name);
        if (name !== prefix && !name.startsWith(`${prefix}/`)) throw fail(`unexpected entry ${name} in the device's tar stream`);
        const rel = name === prefix ? '.' : checkRelativePath(name.slice(prefix.length + 1), this.description);
        if (count === 0 && rel !== '.') throw fail('the tar stream does not start with the layer directory');
        const entry = adjust(layerEntryFromTar(e.header, rel), e);
        if (entry.kind === 'hardlink') {
          const target = normalizeTarName(e.header.linkname);
          if (!target.startsWith(`${prefix}/`)) throw fail(`hard link ${rel} points outside the layer`);
          entry.linkTarget = checkRelativePath(target.slice(prefix.length + 1), this.description);
        }
        count++;
        yield { entry, content: entry.kind === 'file' ? this.guarded(e.content, fail, () => stderr) : undefined };
      }
      await exited;
      done = true;
      if (code !== 0) throw fail(lastLine(stderr) || `tar exited with status ${String(code)}`);
      const expected = this.counts.get(chainId)?.entries;
      if (expected !== undefined && expected !== count) {
        throw fail(`${count} entries came, ${expected} were counted: the layer changed, or the device's tar left files out (${lastLine(stderr) || 'no message'})`);
      }
    } finally {
      if (!done) ch.destroy();
    }
  }

  private async *guarded(content: AsyncIterable<Buffer>, fail: (why: string) => Error, stderr: () => string): AsyncGenerator<Buffer> {
    try {
      for await (const c of content) yield c;
    } catch (e) {
      throw fail(lastLine(stderr()) || (e as Error).message);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.client.end();
  }
}

const ZEROS = Buffer.alloc(1 << 20);

/**
 * The xattrs a layer tar carried, by layer path, read from its tar-split: the raw header
 * segments are parsed as tar with zeros standing in for file content (tar-split
 * tar/storage/entry.go: type 2 segments hold headers and padding, type 1 entries the
 * files' sizes). A `<dir>/.wh..wh..opq` entry makes `<dir>` opaque, as overlay2 records it
 * (pkg/archive/archive_linux.go overlayWhiteoutConverter.ConvertRead).
 */
export async function xattrsFromTarSplit(tarSplit: Buffer, where: string): Promise<Map<string, Xattr[]>> {
  async function* bytes(): AsyncGenerator<Buffer> {
    for await (const e of readTarSplit(tarSplit, where)) {
      if (e.type === SEGMENT) yield e.payload;
      else if (e.type === FILE) {
        for (let left = e.size; left > 0; left -= ZEROS.length) yield left >= ZEROS.length ? ZEROS : ZEROS.subarray(0, left);
      }
    }
  }
  const out = new Map<string, Xattr[]>();
  const parser = new TarParser(bytes());
  try {
    for (;;) {
      const e = await parser.next();
      if (!e) break;
      const name = cleanTarPath(e.header.name);
      const slash = name.lastIndexOf('/');
      const base = slash < 0 ? name : name.slice(slash + 1);
      if (base === '.wh..wh..opq') {
        const dir = slash < 0 ? '.' : name.slice(0, slash);
        const list = out.get(dir) ?? [];
        list.push({ name: 'trusted.overlay.opaque', value: Buffer.from('y') });
        out.set(dir, list);
      } else if (e.header.xattrs.length > 0) {
        out.set(name, [...(out.get(name) ?? []), ...e.header.xattrs]);
      }
    }
  } catch (err) {
    throw new Error(`${where}: ${(err as Error).message}`);
  } finally {
    await parser.close();
  }
  return out;
}
