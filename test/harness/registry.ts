/**
 * Real registries for the tests: Debian's `docker-registry` (the CNCF distribution registry,
 * 2.8) on 127.0.0.1, anonymous over HTTP, with htpasswd Basic auth over TLS (a CA made here
 * with openssl), or behind token auth (registry-aux.ts token server, JWTs signed by a key
 * made here). Several registries may share one storage directory, so images pushed once by
 * a real dockerd are served by each. The token server and the misbehaving proxies run as
 * their own processes: tests block on synchronous commands while they serve.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { requireTools, runOk } from './exec.js';

const children = new Set<ChildProcess>();
let hooked = false;

function track(child: ChildProcess): void {
  children.add(child);
  child.on('exit', () => children.delete(child));
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const c of children) c.kill('SIGKILL');
  });
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => process.exit(130));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address() as net.AddressInfo;
      s.close(() => resolve(a.port));
    });
  });
}

async function waitForPort(port: number, child: ChildProcess, what: string, log: () => string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${what} exited: ${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => {
        c.destroy();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what} did not listen on ${port}: ${log()}`);
    await sleep(100);
  }
}

export interface Tls {
  caCert: string;
  cert: string;
  key: string;
}

/** A CA and a server certificate for 127.0.0.1 / localhost signed by it. */
export function makeTls(dir: string): Tls {
  requireTools('openssl');
  fs.mkdirSync(dir, { recursive: true });
  const f = (n: string): string => path.join(dir, n);
  runOk('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '2', '-subj', '/CN=transplant test CA']);
  runOk('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1']);
  fs.writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n');
  runOk('openssl', ['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('server.crt'), '-days', '2', '-extfile', f('ext.cnf')]);
  return { caCert: f('ca.crt'), cert: f('server.crt'), key: f('server.key') };
}

/** An htpasswd file (bcrypt: the registry accepts nothing else). */
export function makeHtpasswd(file: string, user: string, password: string): string {
  requireTools('htpasswd');
  fs.writeFileSync(file, runOk('htpasswd', ['-Bbn', user, password]).stdout);
  return file;
}

export interface TokenAuth {
  realm: string;
  service: string;
  issuer: string;
  /** The signing certificate, which the registry trusts. */
  rootCertBundle: string;
}

export interface Registry {
  port: number;
  /** 127.0.0.1:<port> */
  host: string;
  stop(): Promise<void>;
}

export async function startRegistry(o: { storage: string; dir: string; tls?: Tls; htpasswd?: string; token?: TokenAuth }): Promise<Registry> {
  requireTools('docker-registry');
  const port = await freePort();
  fs.mkdirSync(o.dir, { recursive: true });
  const lines = [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${o.storage}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
  ];
  if (o.tls) lines.push('  tls:', `    certificate: ${o.tls.cert}`, `    key: ${o.tls.key}`);
  if (o.htpasswd) lines.push('auth:', '  htpasswd:', '    realm: transplant-test', `    path: ${o.htpasswd}`);
  if (o.token) lines.push('auth:', '  token:', `    realm: ${o.token.realm}`, `    service: ${o.token.service}`, `    issuer: ${o.token.issuer}`, `    rootcertbundle: ${o.token.rootCertBundle}`);
  const config = path.join(o.dir, 'config.yml');
  fs.writeFileSync(config, lines.join('\n') + '\n');
  const logFile = path.join(o.dir, 'registry.log');
  const log = fs.openSync(logFile, 'a');
  const child = spawn('docker-registry', ['serve', config], { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  track(child);
  await waitForPort(port, child, 'docker-registry', () => fs.readFileSync(logFile, 'utf8').slice(-2000));
  return {
    port,
    host: `127.0.0.1:${port}`,
    stop: async () => {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

export interface Aux {
  port: number;
  stop(): Promise<void>;
}

async function startAux(config: object): Promise<Aux> {
  const script = path.join(__dirname, 'registry-aux.js');
  const child = spawn(process.execPath, [script, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'inherit'] });
  track(child);
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString('utf8');
      const m = /ready (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', (code) => reject(new Error(`registry-aux exited with ${code}`)));
  });
  return {
    port,
    stop: async () => {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

/** A token server (and the key and certificate it signs with) for a registry's `auth: token`. */
export async function startTokenServer(dir: string, o: { users: Record<string, string>; expired?: boolean }): Promise<{ aux: Aux; auth: TokenAuth }> {
  requireTools('openssl');
  fs.mkdirSync(dir, { recursive: true });
  const keyFile = path.join(dir, 'signer.key');
  const certFile = path.join(dir, 'signer.crt');
  if (!fs.existsSync(certFile)) {
    runOk('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=transplant test token signer']);
  }
  const service = 'transplant-test-registry';
  const issuer = 'transplant-test-issuer';
  const aux = await startAux({ kind: 'token', keyFile, certFile, issuer, service, users: o.users, expired: o.expired });
  return { aux, auth: { realm: `http://127.0.0.1:${aux.port}/token`, service, issuer, rootCertBundle: certFile } };
}

/** A proxy in front of a registry that tampers with manifests or one blob, or cuts one blob once. */
export function startProxy(upstream: number, mode: 'manifest' | 'blob' | 'cut', digest?: string): Promise<Aux> {
  return startAux({ kind: 'proxy', upstream, mode, digest });
}

/** The registry's manifest of a reference (anonymous HTTP), and its digest. */
export async function fetchManifest(host: string, repo: string, ref: string): Promise<{ body: Buffer; digest: string }> {
  const accept = [
    'application/vnd.oci.image.index.v1+json',
    'application/vnd.docker.distribution.manifest.list.v2+json',
    'application/vnd.docker.distribution.manifest.v2+json',
    'application/vnd.oci.image.manifest.v1+json',
  ].join(', ');
  const res = await fetch(`http://${host}/v2/${repo}/manifests/${ref}`, { headers: { Accept: accept } });
  if (!res.ok) throw new Error(`GET manifest ${repo}:${ref}: HTTP ${res.status}`);
  return { body: Buffer.from(await res.arrayBuffer()), digest: res.headers.get('docker-content-digest') ?? '' };
}

/** PUTs a manifest or index (e.g. a hand-built multi-platform OCI index) under a tag. */
export async function putManifest(host: string, repo: string, tag: string, body: Buffer, mediaType: string): Promise<void> {
  const res = await fetch(`http://${host}/v2/${repo}/manifests/${tag}`, { method: "PUT", headers: { "Content-Type": mediaType }, body: new Uint8Array(body) });
  if (res.status !== 201) throw new Error(`PUT manifest ${repo}:${tag}: HTTP ${res.status} ${await res.text()}`);
}

/**
 * Pushes a hand-made single-platform image over the registry API (anonymous HTTP): each
 * layer tar gzip-compressed, a config naming their DiffIDs, a Docker v2 schema 2 manifest.
 * Returns the image ID and the manifest digest.
 */
export async function pushImage(host: string, repo: string, tag: string, layerTars: Buffer[], cmd: string[]): Promise<{ id: string; manifestDigest: string }> {
  const { createHash } = await import('node:crypto');
  const { gzipSync } = await import('node:zlib');
  const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
  const upload = async (data: Buffer): Promise<{ digest: string; size: number }> => {
    const digest = sha(data);
    const start = await fetch(`http://${host}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    if (start.status !== 202) throw new Error(`blob upload start: HTTP ${start.status}`);
    const loc = new URL(start.headers.get('location') as string, `http://${host}`);
    loc.searchParams.set('digest', digest);
    const put = await fetch(loc, { method: 'PUT', headers: { 'Content-Type': 'application/octet-stream' }, body: new Uint8Array(data) });
    if (put.status !== 201) throw new Error(`blob upload: HTTP ${put.status} ${await put.text()}`);
    return { digest, size: data.length };
  };
  const layers = [];
  for (const t of layerTars) layers.push({ mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', ...(await upload(gzipSync(t))) });
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: cmd }, rootfs: { type: 'layers', diff_ids: layerTars.map(sha) }, history: layerTars.map(() => ({ created_by: 'transplant test' })) }),
  );
  const c = await upload(config);
  const manifest = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.docker.distribution.manifest.v2+json', config: { mediaType: 'application/vnd.docker.container.image.v1+json', ...c }, layers }),
  );
  await putManifest(host, repo, tag, manifest, 'application/vnd.docker.distribution.manifest.v2+json');
  return { id: c.digest, manifestDigest: sha(manifest) };
}
