/**
 * The registry HTTP API v2 as docker speaks it (distribution docs/spec/api.md, auth/token.md),
 * with Node's own http/https:
 *
 * - the scheme: https with the system CAs (plus `--ca`); plain http only for hosts named by
 *   `--insecure-registry` and for loopback, as dockerd allows, and only when the host does
 *   not speak TLS (registry/registry.go: insecure registries try https first);
 * - auth from the `WWW-Authenticate` challenge of a 401: Basic with the credentials, or a
 *   Bearer token from the realm with `service` and `scope=repository:<path>:pull`, fetched
 *   with Basic credentials (GET) or an identity token (POST grant_type=refresh_token), and
 *   fetched again when a request with it gets a 401 (expired);
 * - blobs streamed and hashed as they come: a dropped connection resumes with `Range`,
 *   with retries and a backoff the user sees; the last bytes are handed on only once the
 *   whole blob matches its digest.
 */
import { createHash } from 'node:crypto';
import * as http from 'node:http';
import * as https from 'node:https';
import { rootCertificates } from 'node:tls';
import { credentialsFor, type CredentialOptions, type Credentials } from './credentials.js';

export interface ClientOptions {
  /** `--ca FILE` contents: trusted beside the system CAs. */
  ca?: Buffer[];
  /** `--insecure-registry HOST` (repeatable): plain HTTP allowed. */
  insecure?: string[];
  credentials?: CredentialOptions;
  /** Where retries are announced. */
  warn?: (message: string) => void;
  /** Attempts after a dropped connection (default 5) and the first backoff (default 1 s, doubled each time). */
  retries?: number;
  backoffMs?: number;
}

export class RegistryError extends Error {
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

interface Challenge {
  scheme: 'basic' | 'bearer';
  params: Record<string, string>;
}

/** `Bearer realm="…",service="…",scope="…"` (RFC 7235 auth-param list). */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const m = /^\s*(\w+)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const scheme = (m[1] as string).toLowerCase();
  if (scheme !== 'basic' && scheme !== 'bearer') return undefined;
  const params: Record<string, string> = {};
  const re = /([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))\s*,?\s*/g;
  let p: RegExpExecArray | null;
  while ((p = re.exec(m[2] as string)) !== null) params[(p[1] as string).toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] as string);
  return { scheme, params };
}

function isLoopback(host: string): boolean {
  const name = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return name === 'localhost' || /^127\.\d+\.\d+\.\d+$/.test(name) || name === '::1';
}

const NETWORK_ERRORS = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH', 'ERR_STREAM_PREMATURE_CLOSE']);

function isDropped(e: unknown): boolean {
  const err = e as NodeJS.ErrnoException;
  return (err.code !== undefined && NETWORK_ERRORS.has(err.code)) || err.message === 'aborted' || err.message === 'socket hang up' || err instanceof DroppedError;
}

class DroppedError extends Error {}

const SOCKET_IDLE_MS = 60_000;

export class RegistryClient {
  private base?: string;
  private challenge?: Challenge;
  private readonly tokens = new Map<string, string>();
  private credentials?: Credentials | null;
  private readonly agents = {
    http: new http.Agent({ keepAlive: true, maxSockets: 16 }),
    https: new https.Agent({ keepAlive: true, maxSockets: 16 }),
  };

  constructor(
    /** host[:port] as the reference names it. */
    readonly host: string,
    private readonly options: ClientOptions = {},
  ) {}

  private get ca(): string[] | undefined {
    return this.options.ca && this.options.ca.length > 0 ? [...rootCertificates, ...this.options.ca.map((c) => c.toString('utf8'))] : undefined;
  }

  private mayUseHttp(): boolean {
    return isLoopback(this.host) || (this.options.insecure ?? []).includes(this.host);
  }

  /** One HTTP exchange, redirects followed (blob downloads are often sent to a storage backend). */
  private send(url: string, method: string, headers: Record<string, string>, body?: string, hops = 0): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const u = new URL(url);
      const secure = u.protocol === 'https:';
      const req = (secure ? https : http).request(
        u,
        { method, headers, agent: secure ? this.agents.https : this.agents.http, ...(secure && this.ca ? { ca: this.ca } : {}) },
        (res) => {
          const status = res.statusCode ?? 0;
          if ([301, 302, 303, 307, 308].includes(status) && res.headers.location && hops < 5) {
            res.resume();
            const next = new URL(res.headers.location, u);
            // Credentials stay with the registry (docker's client drops them on another host).
            const h = { ...headers };
            if (next.host !== u.host) delete h.Authorization;
            this.send(next.toString(), status === 303 ? 'GET' : method, h, body, hops + 1).then(resolve, reject);
            return;
          }
          res.setTimeout(SOCKET_IDLE_MS, () => res.destroy(new DroppedError(`no data for ${SOCKET_IDLE_MS / 1000} s`)));
          resolve(res);
        },
      );
      req.setTimeout(SOCKET_IDLE_MS, () => req.destroy(new DroppedError(`no answer for ${SOCKET_IDLE_MS / 1000} s`)));
      req.on('error', reject);
      req.end(body);
    });
  }

  /** Decides https or http by talking to /v2/ (registry/endpoint_v2, ping), and learns the auth challenge. */
  private async connect(): Promise<string> {
    if (this.base) return this.base;
    const tryBase = async (base: string): Promise<http.IncomingMessage> => this.send(`${base}/v2/`, 'GET', { 'User-Agent': USER_AGENT });
    let res: http.IncomingMessage;
    let base = `https://${this.host}`;
    try {
      res = await tryBase(base);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? '';
      const tlsProtocol = /^ERR_SSL_|EPROTO/.test(code) || /wrong version number|packet length too long/.test((e as Error).message);
      if (!(this.mayUseHttp() && (tlsProtocol || code === 'ECONNRESET'))) throw new RegistryError(connectMessage(this.host, e, this.mayUseHttp()));
      base = `http://${this.host}`;
      try {
        res = await tryBase(base);
      } catch (e2) {
        throw new RegistryError(connectMessage(this.host, e2, true));
      }
    }
    res.resume();
    if (res.statusCode === 401) this.challenge = parseChallenge(res.headers['www-authenticate']);
    else if ((res.statusCode ?? 0) >= 500) throw new RegistryError(`registry ${this.host} answers /v2/ with HTTP ${res.statusCode}`, res.statusCode);
    this.base = base;
    return base;
  }

  private async creds(): Promise<Credentials | undefined> {
    if (this.credentials === undefined) this.credentials = (await credentialsFor(this.host, this.options.credentials ?? {})) ?? null;
    return this.credentials ?? undefined;
  }

  /** A Bearer token for one scope from the challenge's realm (distribution docs/spec/auth/token.md, oauth.md). */
  private async fetchToken(scope: string): Promise<string> {
    const params = this.challenge?.params ?? {};
    const realm = params.realm;
    if (!realm) throw new RegistryError(`registry ${this.host} asks for a token but names no realm`);
    const creds = await this.creds();
    let res: http.IncomingMessage;
    try {
      if (creds?.identityToken) {
        const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: 'transplant', scope });
        if (params.service) form.set('service', params.service);
        res = await this.send(realm, 'POST', { 'Content-Type': 'application/x-www-form-urlencoded', 'User-Agent': USER_AGENT }, form.toString());
      } else {
        const u = new URL(realm);
        if (params.service) u.searchParams.set('service', params.service);
        u.searchParams.set('scope', scope);
        const headers: Record<string, string> = { 'User-Agent': USER_AGENT };
        if (creds?.username !== undefined) headers.Authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password ?? ''}`).toString('base64')}`;
        res = await this.send(u.toString(), 'GET', headers);
      }
    } catch (e) {
      throw new RegistryError(`token server ${realm}: ${(e as Error).message}`);
    }
    const body = await readBody(res, 1 << 20);
    if (res.statusCode === 401 || res.statusCode === 403) {
      throw new RegistryError(creds ? `registry ${this.host} refused the credentials (wrong username or password?)` : `registry ${this.host} needs credentials (--registry-auth, or docker login)`, 401);
    }
    if (res.statusCode !== 200) throw new RegistryError(`token server ${realm} answered HTTP ${res.statusCode}`, res.statusCode);
    let json: { token?: string; access_token?: string };
    try {
      json = JSON.parse(body.toString('utf8')) as typeof json;
    } catch {
      throw new RegistryError(`token server ${realm} answered something that is not JSON`);
    }
    const token = json.token ?? json.access_token;
    if (!token) throw new RegistryError(`token server ${realm} gave no token`);
    return token;
  }

  private async authHeader(scope: string, renew: boolean): Promise<string | undefined> {
    if (!this.challenge) return undefined;
    if (this.challenge.scheme === 'basic') {
      const creds = await this.creds();
      if (!creds || creds.username === undefined) throw new RegistryError(`registry ${this.host} needs credentials (--registry-auth, or docker login)`, 401);
      return `Basic ${Buffer.from(`${creds.username}:${creds.password ?? ''}`).toString('base64')}`;
    }
    let token = renew ? undefined : this.tokens.get(scope);
    if (!token) {
      token = await this.fetchToken(scope);
      this.tokens.set(scope, token);
    }
    return `Bearer ${token}`;
  }

  /** GET (or HEAD) a path under /v2/, authenticated for pulling `repo`; one fresh token on a 401. */
  async get(repo: string, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<http.IncomingMessage> {
    const base = await this.connect();
    const scope = `repository:${repo}:pull`;
    for (let attempt = 0; ; attempt++) {
      const auth = await this.authHeader(scope, attempt > 0);
      const h: Record<string, string> = { 'User-Agent': USER_AGENT, ...headers };
      if (auth) h.Authorization = auth;
      const res = await this.send(`${base}/v2/${repo}/${path}`, method, h);
      if (res.statusCode !== 401) return res;
      res.resume();
      const challenge = parseChallenge(res.headers['www-authenticate']);
      // An expired token (or the first request to a registry that let /v2/ through): learn, renew, once.
      if (attempt === 0 && challenge) {
        this.challenge = challenge;
        continue;
      }
      if (auth?.startsWith('Bearer ')) {
        throw new RegistryError(`registry ${this.host} refused a fresh token from ${this.challenge?.params.realm ?? 'its token server'} for ${repo} (expired, or not valid for pulling it)`, 401);
      }
      const creds = await this.creds();
      throw new RegistryError(creds ? `registry ${this.host} refused the credentials for ${repo} (wrong username or password?)` : `registry ${this.host} needs credentials for ${repo} (--registry-auth, or docker login)`, 401);
    }
  }

  /** A small document (manifest, config), whole, at most `limit` bytes. */
  async fetchSmall(repo: string, path: string, accept: string | undefined, limit: number): Promise<{ body: Buffer; headers: http.IncomingHttpHeaders }> {
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.get(repo, path, accept ? { Accept: accept } : {});
        const body = await readBody(res, limit);
        if (res.statusCode === 404) throw new RegistryError(`not found (HTTP 404${errorCode(body)})`, 404);
        if (res.statusCode !== 200) throw new RegistryError(`HTTP ${res.statusCode}${errorCode(body)}`, res.statusCode);
        return { body, headers: res.headers };
      } catch (e) {
        if (!isDropped(e) || attempt >= this.retries) throw e;
        await this.backoff(attempt, `${this.host}/${repo}: ${path}: ${(e as Error).message}`);
      }
    }
  }

  private get retries(): number {
    return this.options.retries ?? 5;
  }

  private async backoff(attempt: number, what: string): Promise<void> {
    const ms = (this.options.backoffMs ?? 1000) * 2 ** attempt;
    this.options.warn?.(`${what}; retrying in ${(ms / 1000).toFixed(1)} s (retry ${attempt + 1} of ${this.retries})`);
    await new Promise((r) => setTimeout(r, ms));
  }

  /**
   * A blob's bytes as they arrive, hashed on the way: the final chunk is held back until the
   * whole blob matches `digest` and `size`, so a consumer never completes on unverified bytes.
   * A dropped connection resumes where it stopped (Range), a server that ignores Range is
   * read again from the start with the bytes already seen skipped.
   */
  async *blob(repo: string, digest: string, size: number, what: string): AsyncGenerator<Buffer> {
    const hash = createHash('sha256');
    let got = 0;
    let pending: Buffer | undefined;
    for (let attempt = 0; ; ) {
      let res: http.IncomingMessage | undefined;
      try {
        res = await this.get(repo, `blobs/${digest}`, got > 0 ? { Range: `bytes=${got}-` } : {});
        let skip = 0;
        if (got > 0 && res.statusCode === 206) {
          const m = /^bytes (\d+)-/.exec(String(res.headers['content-range'] ?? ''));
          if (!m || Number(m[1]) !== got) throw new RegistryError(`${what}: the registry resumed at the wrong offset (${String(res.headers['content-range'])})`);
        } else if (res.statusCode === 200) {
          skip = got;
        } else {
          const body = await readBody(res, 64 << 10);
          if (res.statusCode === 404) throw new RegistryError(`${what} is not in the registry (HTTP 404${errorCode(body)})`, 404);
          throw new RegistryError(`${what}: HTTP ${res.statusCode}${errorCode(body)}`, res.statusCode);
        }
        // The idle timer runs only while waiting for the registry: a consumer that holds the
        // stream (a read-ahead buffer that is full, a layer still being written) pauses the
        // socket, which must not count as a dead connection.
        const socket = res.socket;
        const chunks = res[Symbol.asyncIterator]();
        for (;;) {
          socket?.setTimeout(SOCKET_IDLE_MS);
          const next = await chunks.next();
          socket?.setTimeout(0);
          if (next.done) break;
          let chunk = next.value as Buffer;
          if (skip > 0) {
            const n = Math.min(skip, chunk.length);
            skip -= n;
            chunk = chunk.subarray(n);
            if (chunk.length === 0) continue;
          }
          got += chunk.length;
          if (got > size) throw new RegistryError(`${what} is larger than the ${size} bytes its manifest gives (refused)`);
          hash.update(chunk);
          if (pending) yield pending;
          pending = chunk;
        }
        if (got < size) throw new DroppedError(`connection closed after ${got} of ${size} bytes`);
        res = undefined;
        break;
      } catch (e) {
        res?.destroy();
        res = undefined;
        if (!isDropped(e) || attempt >= this.retries) {
          if (isDropped(e)) throw new RegistryError(`${what}: connection dropped after ${got} of ${size} bytes, ${this.retries} retries failed (${(e as Error).message})`);
          throw e;
        }
        await this.backoff(attempt, `${what}: connection dropped after ${got} of ${size} bytes (${(e as Error).message}); resuming`);
        attempt++;
      } finally {
        // A consumer that stops early (the generator returned at a yield) closes the response.
        res?.destroy();
      }
    }
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== digest) throw new RegistryError(`${what} does not match its digest (its bytes hash to ${actual}): refused`);
    if (pending) yield pending;
  }

  close(): void {
    this.agents.http.destroy();
    this.agents.https.destroy();
  }
}

export const USER_AGENT = 'transplant (registry client)';

function errorCode(body: Buffer): string {
  try {
    const j = JSON.parse(body.toString('utf8')) as { errors?: { code?: string; message?: string }[] };
    const e = j.errors?.[0];
    return e?.code ? `: ${e.code}${e.message ? ` ${e.message}` : ''}` : '';
  } catch {
    return '';
  }
}

async function readBody(res: http.IncomingMessage, limit: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of res) {
    n += (c as Buffer).length;
    if (n > limit) {
      res.destroy();
      throw new RegistryError(`answer larger than ${limit} bytes (refused)`);
    }
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}

function connectMessage(host: string, e: unknown, httpAllowed: boolean): string {
  const err = e as NodeJS.ErrnoException;
  const code = err.code ?? '';
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/.test(code)) return `registry ${host}: its TLS certificate is not trusted (${code}); give its CA with --ca FILE`;
  if (code === 'ECONNREFUSED') return `registry ${host}: connection refused`;
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return `registry ${host}: unknown host`;
  return `registry ${host}: ${err.message}${httpAllowed ? '' : ' (for a registry that speaks plain HTTP, give --insecure-registry HOST)'}`;
}
