// Local OpenID Connect provider for browser/integration tests.
//
// Starts a real `oidc-provider` (v8) on 127.0.0.1 with one confidential client
// (authorization code + PKCE S256), a server-rendered login page that works
// without JavaScript, automatic consent, and fixed test users whose claims are
// put into the ID token.
//
// Environment:
//   OIDC_PORT                  port to bind on 127.0.0.1 (0 or unset = any free port)
//   OIDC_CLIENT_ID             client_id            (default "console")
//   OIDC_CLIENT_SECRET         client_secret        (default "console-secret")
//   OIDC_REDIRECT_URI          registered redirect URI (default https://127.0.0.1:8443/console/callback)
//   OIDC_EXTRA_REDIRECT_URIS   optional, comma-separated further redirect URIs
//   OIDC_POST_LOGOUT_REDIRECT_URIS optional, comma-separated post_logout_redirect_uris
//   OIDC_IGNORE_STDIN=1        do not exit when stdin reaches EOF
//
// Prints exactly one line to stdout when listening:  ready http://127.0.0.1:PORT
// Everything else (oidc-provider notices/warnings, request errors) goes to stderr.
// Exits on SIGTERM/SIGINT and when stdin ends (so an abandoned child dies with
// its parent), unless OIDC_IGNORE_STDIN=1.

import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { once } from 'node:events';

// oidc-provider prints some notices with console.info (stdout). Keep stdout for
// the single ready line only.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { default: Provider, errors: oidcErrors } = await import('oidc-provider');

const HOST = '127.0.0.1';
const PORT = Number.parseInt(process.env.OIDC_PORT || '0', 10);
const CLIENT_ID = process.env.OIDC_CLIENT_ID || 'console';
const CLIENT_SECRET = process.env.OIDC_CLIENT_SECRET || 'console-secret';
const REDIRECT_URI = process.env.OIDC_REDIRECT_URI || 'https://127.0.0.1:8443/console/callback';
const splitList = (v) => (v || '').split(',').map((s) => s.trim()).filter(Boolean);
const REDIRECT_URIS = [...new Set([REDIRECT_URI, ...splitList(process.env.OIDC_EXTRA_REDIRECT_URIS)])];
const POST_LOGOUT_REDIRECT_URIS = splitList(process.env.OIDC_POST_LOGOUT_REDIRECT_URIS);

// Custom claims released with the `profile` scope (besides standard `name`).
const PROFILE_CLAIMS = ['name', 'employeeHsaId', 'healthCareUnitHsaId', 'guardianRole'];
const SCOPES = 'openid profile';

// Account id == login name. Password is ignored.
const USERS = {
  registrar: {
    name: 'Kim Kontaktcenter',
    employeeHsaId: 'SE2321000131-P000000000011',
    healthCareUnitHsaId: 'SE2321000131-E000000000099',
    guardianRole: 'kontaktcenter',
  },
  unithead: {
    name: 'Vera Verksamhetschef',
    employeeHsaId: 'SE2321000131-P000000000012',
    healthCareUnitHsaId: 'SE2321000131-E000000000001',
    guardianRole: 'verksamhetschef',
  },
  otherunit: {
    name: 'Olle Annanenhet',
    employeeHsaId: 'SE2321000131-P000000000013',
    healthCareUnitHsaId: 'SE2321000131-E000000000002',
    guardianRole: 'verksamhetschef',
  },
  auditor: {
    name: 'Alva Granskare',
    employeeHsaId: 'SE2321000131-P000000000014',
    healthCareUnitHsaId: 'SE2321000131-E000000000099',
    guardianRole: 'logggranskare',
  },
  nobody: {
    name: 'Nils Utanroll',
    employeeHsaId: 'SE2321000131-P000000000015',
    healthCareUnitHsaId: 'SE2321000131-E000000000099',
    guardianRole: 'annat',
  },
};

function signingJwk() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };
}

async function createGrant(provider, clientId, accountId) {
  const grant = new provider.Grant({ clientId, accountId });
  grant.addOIDCScope(SCOPES);
  grant.addOIDCClaims(PROFILE_CLAIMS);
  await grant.save();
  return grant;
}

function buildProvider(issuer) {
  const client = {
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    application_type: 'web', // web: http and https redirect URIs, any host, exact match
    redirect_uris: REDIRECT_URIS,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    // The token endpoint accepts the secret in the Authorization header
    // (client_secret_basic) and in the body (client_secret_post) for a client
    // registered with either of the two.
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
    scope: SCOPES,
  };
  if (POST_LOGOUT_REDIRECT_URIS.length) client.post_logout_redirect_uris = POST_LOGOUT_REDIRECT_URIS;

  const provider = new Provider(issuer, {
    clients: [client],
    jwks: { keys: [signingJwk()] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    scopes: ['openid', 'profile'],
    claims: { openid: ['sub'], profile: PROFILE_CLAIMS },
    conformIdTokenClaims: false,
    pkce: { methods: ['S256'], required: () => true },
    responseTypes: ['code'],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    enabledJWA: { idTokenSigningAlgValues: ['RS256'] },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: { enabled: true },
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    ttl: {
      AuthorizationCode: 60,
      AccessToken: 600,
      IdToken: 600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    async findAccount(ctx, id) {
      const user = Object.hasOwn(USERS, id) ? USERS[id] : undefined;
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          return { sub: id, ...user };
        },
      };
    },
    // Automatic consent: a first-party grant for openid+profile is created
    // just in time, so the consent prompt never shows.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const existing = await ctx.oidc.provider.Grant.find(grantId);
        if (existing) return existing;
      }
      if (!ctx.oidc.session.accountId) return undefined;
      return createGrant(ctx.oidc.provider, ctx.oidc.client.clientId, ctx.oidc.session.accountId);
    },
  });
  provider.on('server_error', (ctx, err) => console.error('oidc server_error:', err));
  return provider;
}

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function loginPage(uid, { error, login } = {}) {
  const errorHtml = error
    ? `<p id="login-error" class="error" role="alert">${escapeHtml(error)}</p>`
    : '';
  return `<!DOCTYPE html>
<html lang="sv">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Logga in – test-IdP</title>
<style>
body { font-family: sans-serif; max-width: 28rem; margin: 3rem auto; padding: 0 1rem; color: #111; }
label { display: block; margin-top: 1rem; }
input { display: block; width: 100%; padding: .4rem; font-size: 1rem; box-sizing: border-box; }
button { margin-top: 1.5rem; padding: .5rem 1.5rem; font-size: 1rem; }
.error { color: #a00000; font-weight: bold; }
</style>
</head>
<body>
<main>
<h1>Logga in</h1>
${errorHtml}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
<label for="login">Användare</label>
<input id="login" name="login" value="${escapeHtml(login || '')}" required autofocus>
<label for="password">Lösenord</label>
<input id="password" type="password" name="password">
<button type="submit">Logga in</button>
</form>
</main>
</body>
</html>
`;
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.writeHead(status, {
    'content-type': type,
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function handleInteraction(provider, req, res) {
  const url = new URL(req.url, 'http://x');
  const m = /^\/interaction\/([^/]+)(\/login)?\/?$/.exec(url.pathname);
  if (!m) return send(res, 404, 'not found\n', 'text/plain; charset=utf-8');
  const [, uid, loginSuffix] = m;

  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    // Missing/expired interaction cookie or session.
    const msg = err instanceof oidcErrors.SessionNotFound
      ? 'Inloggningssessionen saknas eller har gått ut. Börja om från tjänsten.'
      : `Fel: ${err.message}`;
    return send(res, 400, `<!DOCTYPE html><html lang="sv"><head><meta charset="utf-8"><title>Fel – test-IdP</title></head><body><main><h1>Fel</h1><p role="alert">${escapeHtml(msg)}</p></main></body></html>\n`);
  }
  if (details.uid !== uid) return send(res, 400, 'interaction mismatch\n', 'text/plain; charset=utf-8');

  const { prompt, params, session } = details;

  if (prompt.name === 'consent') {
    // Should not normally happen (loadExistingGrant grants up front); grant
    // automatically anyway.
    const accountId = session?.accountId;
    const grantId = details.grantId;
    let grant = grantId ? await provider.Grant.find(grantId) : undefined;
    if (!grant) grant = new provider.Grant({ clientId: params.client_id, accountId });
    grant.addOIDCScope(SCOPES);
    grant.addOIDCClaims(PROFILE_CLAIMS);
    const savedId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId: savedId } }, { mergeWithLastSubmission: true });
  }

  if (prompt.name !== 'login') {
    return send(res, 400, `unsupported prompt ${escapeHtml(prompt.name)}\n`, 'text/plain; charset=utf-8');
  }

  if (req.method === 'GET' && !loginSuffix) {
    return send(res, 200, loginPage(uid));
  }
  if (req.method === 'POST' && loginSuffix) {
    const form = await readForm(req);
    const login = (form.get('login') || '').trim();
    if (!Object.hasOwn(USERS, login)) {
      return send(res, 200, loginPage(uid, { error: 'Okänd användare eller fel lösenord.', login }));
    }
    const grant = await createGrant(provider, params.client_id, login);
    return provider.interactionFinished(req, res, {
      login: { accountId: login },
      consent: { grantId: grant.jti },
    }, { mergeWithLastSubmission: false });
  }
  res.setHeader('allow', 'GET, POST');
  return send(res, 405, 'method not allowed\n', 'text/plain; charset=utf-8');
}

const server = createServer();
server.listen(PORT, HOST);
await once(server, 'listening');
const { port } = server.address();
const issuer = `http://${HOST}:${port}`;
const provider = buildProvider(issuer);
const providerCallback = provider.callback();

// Static clients are validated lazily by oidc-provider; validate now so a bad
// OIDC_REDIRECT_URI fails at startup instead of at the first /auth request.
try {
  if (!await provider.Client.find(CLIENT_ID)) throw new Error('client not loaded');
} catch (err) {
  console.error(`oidc.mjs: invalid client configuration: ${err.error_description || err.message}`);
  process.exit(2);
}

server.on('request', (req, res) => {
  if (req.url.startsWith('/interaction/')) {
    handleInteraction(provider, req, res).catch((err) => {
      console.error('interaction error:', err);
      if (!res.headersSent) send(res, 500, 'internal error\n', 'text/plain; charset=utf-8');
      else res.end();
    });
    return;
  }
  providerCallback(req, res);
});

process.stdout.write(`ready ${issuer}\n`);

let stopping = false;
function shutdown() {
  if (stopping) return;
  stopping = true;
  server.close();
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 200).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (process.env.OIDC_IGNORE_STDIN !== '1') {
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}
