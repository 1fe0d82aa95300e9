/**
 * Helpers that stand beside a test registry, each run as its own process (so that tests can
 * block on synchronous commands while they serve): `node registry-aux.js '<json config>'`
 * prints `ready <port>` once it listens on 127.0.0.1.
 *
 * - `token`: a token server (distribution docs/spec/auth/token.md) that checks Basic
 *   credentials and issues RS256 JWTs with the signing certificate in `x5c`, which the
 *   registry verifies against its `rootcertbundle`; `expired` issues tokens that expired
 *   ten minutes ago.
 * - `proxy`: forwards to a registry and misbehaves once per blob or manifest: `manifest`
 *   adds a byte to every manifest body (its digest no longer matches), `blob` flips a byte
 *   in the middle of the named blob, `cut` closes the connection halfway through the named
 *   blob the first time it is sent (a Range request then resumes it).
 */
import { createSign, createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

interface TokenConfig {
  kind: 'token';
  keyFile: string;
  certFile: string;
  issuer: string;
  service: string;
  users: Record<string, string>;
  expired?: boolean;
}

interface ProxyConfig {
  kind: 'proxy';
  upstream: number;
  mode: 'manifest' | 'blob' | 'cut';
  /** The blob digest to tamper with or cut (blob, cut). */
  digest?: string;
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

function tokenServer(c: TokenConfig): http.Server {
  const key = fs.readFileSync(c.keyFile);
  const pem = fs.readFileSync(c.certFile, 'utf8');
  const der = Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  return http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const auth = req.headers.authorization;
    let subject = '';
    if (auth?.startsWith('Basic ')) {
      const plain = Buffer.from(auth.slice(6), 'base64').toString('utf8');
      const colon = plain.indexOf(':');
      const user = plain.slice(0, colon);
      if (c.users[user] === undefined || c.users[user] !== plain.slice(colon + 1)) {
        res.writeHead(401, { 'Content-Type': 'application/json' });
        res.end('{"details":"wrong credentials"}');
        return;
      }
      subject = user;
    } else if (Object.keys(c.users).length > 0) {
      res.writeHead(401, { 'Content-Type': 'application/json' });
      res.end('{"details":"credentials required"}');
      return;
    }
    const access = url.searchParams.getAll('scope').flatMap((s) => {
      const [type, name, actions] = s.split(':');
      return type && name && actions ? [{ type, name, actions: actions.split(',') }] : [];
    });
    const now = Math.floor(Date.now() / 1000) - (c.expired ? 1200 : 0);
    const header = { typ: 'JWT', alg: 'RS256', x5c: [der.toString('base64')] };
    const claims = { iss: c.issuer, sub: subject, aud: url.searchParams.get('service') ?? c.service, exp: now + 600 - (c.expired ? 1 : 0), nbf: now - 10, iat: now, jti: createHash('sha256').update(String(Math.random())).digest('hex').slice(0, 16), access };
    const signing = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const signature = createSign('RSA-SHA256').update(signing).sign(key);
    const token = `${signing}.${b64url(signature)}`;
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ token, access_token: token, expires_in: 600, issued_at: new Date(now * 1000).toISOString() }));
  });
}

function proxyServer(c: ProxyConfig): http.Server {
  const done = new Set<string>();
  return http.createServer((req, res) => {
    const up = http.request({ host: '127.0.0.1', port: c.upstream, path: req.url, method: req.method, headers: req.headers }, (ur) => {
      const path = req.url ?? '';
      const isManifest = /\/manifests\//.test(path) && req.method === 'GET' && ur.statusCode === 200;
      const blob = /\/blobs\/(sha256:[0-9a-f]{64})/.exec(path)?.[1];
      if (c.mode === 'manifest' && isManifest) {
        const parts: Buffer[] = [];
        ur.on('data', (d: Buffer) => parts.push(d));
        ur.on('end', () => {
          const body = Buffer.concat([Buffer.concat(parts), Buffer.from(' ')]);
          const headers = { ...ur.headers, 'content-length': String(body.length) };
          res.writeHead(ur.statusCode ?? 200, headers);
          res.end(body);
        });
        return;
      }
      if (blob && blob === c.digest && req.method === 'GET' && ur.statusCode === 200 && (c.mode === 'blob' || !done.has(blob))) {
        const total = Number(ur.headers['content-length'] ?? 0);
        const half = Math.floor(total / 2);
        let seen = 0;
        res.writeHead(ur.statusCode ?? 200, ur.headers);
        ur.on('data', (d: Buffer) => {
          const chunk = Buffer.from(d);
          if (c.mode === 'blob' && seen <= half && half < seen + chunk.length) chunk[half - seen] ^= 0xff;
          if (c.mode === 'cut' && seen + chunk.length > half) {
            res.write(chunk.subarray(0, half - seen));
            done.add(blob);
            ur.destroy();
            // Flush what was written, then drop the connection without ending the response.
            setTimeout(() => res.socket?.destroy(), 50);
            seen += chunk.length;
            return;
          }
          seen += chunk.length;
          res.write(chunk);
        });
        ur.on('end', () => res.end());
        return;
      }
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => {
      res.writeHead(502);
      res.end();
    });
    req.pipe(up);
  });
}

const config = JSON.parse(process.argv[2] ?? '{}') as TokenConfig | ProxyConfig;
const server = config.kind === 'token' ? tokenServer(config) : proxyServer(config);
server.listen(0, '127.0.0.1', () => {
  const a = server.address();
  process.stdout.write(`ready ${typeof a === 'object' && a ? a.port : 0}\n`);
});
process.on('SIGTERM', () => process.exit(0));
