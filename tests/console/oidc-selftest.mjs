// Self-test for oidc.mjs: starts it, runs full authorization code + PKCE logins
// through the server-rendered login form, verifies the ID token (RS256 against
// the published JWKS) and its claims, and checks that a replayed code is
// rejected with invalid_grant. Exits non-zero on failure.
//
//   node oidc-selftest.mjs

import { spawn } from 'node:child_process';
import { createHash, createPublicKey, randomBytes, verify } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const CLIENT_ID = 'selftest-client';
const CLIENT_SECRET = 'selftest-secret';
const REDIRECT_URI = 'https://127.0.0.1:65500/console/callback';
const EXTRA_REDIRECT_URI = 'http://localhost:65501/console/callback';

const b64url = (buf) => Buffer.from(buf).toString('base64url');

function startProvider() {
  const child = spawn(process.execPath, [fileURLToPath(new URL('./oidc.mjs', import.meta.url))], {
    env: {
      ...process.env,
      OIDC_PORT: '0',
      OIDC_CLIENT_ID: CLIENT_ID,
      OIDC_CLIENT_SECRET: CLIENT_SECRET,
      OIDC_REDIRECT_URI: REDIRECT_URI,
      OIDC_EXTRA_REDIRECT_URIS: EXTRA_REDIRECT_URI,
    },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('provider did not become ready in 20s')), 20000);
    const lines = createInterface({ input: child.stdout });
    let first = true;
    lines.on('line', (line) => {
      if (first) {
        first = false;
        clearTimeout(timer);
        const m = /^ready (http:\/\/127\.0\.0\.1:\d+)$/.exec(line);
        if (m) resolve(m[1]);
        else reject(new Error(`unexpected first stdout line: ${JSON.stringify(line)}`));
      } else {
        reject(new Error(`unexpected extra stdout line: ${JSON.stringify(line)}`));
      }
    });
    exited.then(({ code, signal }) => reject(new Error(`provider exited early (code ${code}, signal ${signal})`)));
  });
  return { child, ready, exited };
}

class CookieJar {
  #cookies = new Map();

  store(res) {
    for (const sc of res.headers.getSetCookie()) {
      const [pair, ...attrs] = sc.split(';');
      const i = pair.indexOf('=');
      const name = pair.slice(0, i).trim();
      const value = pair.slice(i + 1).trim();
      const expired = attrs.some((a) => {
        const [k, v] = a.trim().split('=');
        if (k.toLowerCase() === 'max-age') return Number(v) <= 0;
        if (k.toLowerCase() === 'expires') return Date.parse(v) <= Date.now();
        return false;
      });
      if (expired || value === '') this.#cookies.delete(name);
      else this.#cookies.set(name, value);
    }
  }

  header() {
    return [...this.#cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

async function request(jar, url, init = {}) {
  const headers = new Headers(init.headers);
  const cookie = jar.header();
  if (cookie) headers.set('cookie', cookie);
  const res = await fetch(url, { ...init, headers, redirect: 'manual' });
  jar.store(res);
  return res;
}

// Follows redirects (same jar) until one points at the client's redirect URI.
async function followUntil(jar, res, base, prefix) {
  for (let hops = 0; hops < 10; hops += 1) {
    if (res.status < 300 || res.status >= 400) return { res };
    const location = new URL(res.headers.get('location'), base).href;
    if (location.startsWith(prefix)) return { location };
    res = await request(jar, location);
  }
  throw new Error('too many redirects');
}

function decodeJwt(jwt) {
  const [h, p, s] = jwt.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url')),
    payload: JSON.parse(Buffer.from(p, 'base64url')),
    signingInput: `${h}.${p}`,
    signature: Buffer.from(s, 'base64url'),
  };
}

async function login(issuer, discovery, username, { redirectUri = REDIRECT_URI, checkForm = false } = {}) {
  const jar = new CookieJar();
  const verifier = b64url(randomBytes(32));
  const challenge = b64url(createHash('sha256').update(verifier).digest());
  const state = b64url(randomBytes(12));
  const nonce = b64url(randomBytes(12));
  const auth = new URL(discovery.authorization_endpoint);
  auth.search = new URLSearchParams({
    response_type: 'code',
    client_id: CLIENT_ID,
    redirect_uri: redirectUri,
    scope: 'openid profile',
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  });

  let res = await request(jar, auth);
  assert.ok([302, 303].includes(res.status), `GET /auth: expected redirect, got ${res.status}: ${await res.text()}`);
  const interactionUrl = new URL(res.headers.get('location'), issuer);
  assert.match(interactionUrl.pathname, /^\/interaction\/[^/]+$/);

  res = await request(jar, interactionUrl);
  assert.equal(res.status, 200, 'login page status');
  let html = await res.text();
  const action = /<form method="post" action="([^"]+)"/.exec(html)?.[1];
  assert.ok(action, 'login form action present');

  if (checkForm) {
    assert.match(html, /<label for="login">Användare<\/label>/);
    assert.match(html, /<input id="login" name="login"/);
    assert.match(html, /<label for="password">Lösenord<\/label>/);
    assert.match(html, /<input id="password" type="password" name="password">/);
    assert.match(html, /<button type="submit">Logga in<\/button>/);
    assert.doesNotMatch(html, /<script/i, 'login page must not need JavaScript');

    // Unknown user: the form is shown again with an error.
    res = await request(jar, new URL(action, issuer), {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ login: 'mallory', password: 'test' }),
    });
    assert.equal(res.status, 200, 'unknown user re-shows form');
    html = await res.text();
    assert.match(html, /role="alert"/);
    assert.match(html, /Okänd användare/);
    assert.match(html, /<button type="submit">Logga in<\/button>/);
  }

  res = await request(jar, new URL(action, issuer), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ login: username, password: 'test' }),
  });
  const { location, res: stuck } = await followUntil(jar, res, issuer, redirectUri);
  assert.ok(location, `never redirected to the client: ${stuck?.status} ${stuck && await stuck.text()}`);
  const cb = new URL(location);
  assert.equal(cb.searchParams.get('error'), null, `authorization error: ${location}`);
  assert.equal(cb.searchParams.get('state'), state, 'state echoed');
  const code = cb.searchParams.get('code');
  assert.ok(code, 'code present');
  return { code, verifier, nonce, redirectUri };
}

async function tokenRequest(discovery, { code, verifier, redirectUri }, method = 'basic') {
  const body = new URLSearchParams({
    grant_type: 'authorization_code',
    code,
    redirect_uri: redirectUri,
    code_verifier: verifier,
  });
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (method === 'basic') {
    const enc = (s) => encodeURIComponent(s);
    headers.authorization = `Basic ${Buffer.from(`${enc(CLIENT_ID)}:${enc(CLIENT_SECRET)}`).toString('base64')}`;
  } else {
    body.set('client_id', CLIENT_ID);
    body.set('client_secret', CLIENT_SECRET);
  }
  const res = await fetch(discovery.token_endpoint, { method: 'POST', headers, body });
  return { status: res.status, json: await res.json() };
}

async function checkIdToken(issuer, discovery, idToken, nonce, expected) {
  const jwks = await (await fetch(discovery.jwks_uri)).json();
  const { header, payload, signingInput, signature } = decodeJwt(idToken);
  assert.equal(header.alg, 'RS256');
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  assert.ok(jwk, 'signing key published in jwks');
  assert.equal(jwk.d, undefined, 'jwks must not leak private parts');
  const ok = verify('sha256', Buffer.from(signingInput), createPublicKey({ key: jwk, format: 'jwk' }), signature);
  assert.ok(ok, 'ID token signature verifies');
  assert.equal(payload.iss, issuer);
  assert.equal(payload.aud, CLIENT_ID);
  assert.equal(payload.nonce, nonce);
  assert.ok(payload.exp > Date.now() / 1000);
  for (const [k, v] of Object.entries(expected)) {
    assert.equal(payload[k], v, `ID token claim ${k}`);
  }
  return payload;
}

async function main() {
  const { child, ready, exited } = startProvider();
  try {
    const issuer = await ready;
    console.error(`provider ready at ${issuer}`);

    const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
    assert.equal(discovery.issuer, issuer);
    assert.equal(discovery.jwks_uri, `${issuer}/jwks`);
    assert.deepEqual(discovery.code_challenge_methods_supported, ['S256']);
    assert.ok(discovery.id_token_signing_alg_values_supported.includes('RS256'));
    assert.ok(discovery.token_endpoint_auth_methods_supported.includes('client_secret_basic'));
    for (const c of ['employeeHsaId', 'healthCareUnitHsaId', 'guardianRole', 'name']) {
      assert.ok(discovery.claims_supported.includes(c), `claims_supported has ${c}`);
    }

    // 1. unithead, client_secret_basic, form checks, replay.
    const a = await login(issuer, discovery, 'unithead', { checkForm: true });
    const t1 = await tokenRequest(discovery, a, 'basic');
    assert.equal(t1.status, 200, `token exchange: ${JSON.stringify(t1.json)}`);
    assert.equal(t1.json.token_type, 'Bearer');
    const claims = await checkIdToken(issuer, discovery, t1.json.id_token, a.nonce, {
      sub: 'unithead',
      name: 'Vera Verksamhetschef',
      employeeHsaId: 'SE2321000131-P000000000012',
      healthCareUnitHsaId: 'SE2321000131-E000000000001',
      guardianRole: 'verksamhetschef',
    });
    console.error('ID token claims:', JSON.stringify(claims));

    // userinfo with the access token also carries the claims.
    const ui = await (await fetch(discovery.userinfo_endpoint, {
      headers: { authorization: `Bearer ${t1.json.access_token}` },
    })).json();
    assert.equal(ui.guardianRole, 'verksamhetschef', `userinfo: ${JSON.stringify(ui)}`);

    // Replay: rejected, and (per RFC 6749 4.1.2) tokens issued from the code are revoked.
    const replay = await tokenRequest(discovery, a, 'basic');
    assert.equal(replay.status, 400, 'replayed code rejected');
    assert.equal(replay.json.error, 'invalid_grant');

    const uiAfter = await fetch(discovery.userinfo_endpoint, {
      headers: { authorization: `Bearer ${t1.json.access_token}` },
    });
    assert.equal(uiAfter.status, 401, 'access token revoked after code replay');

    // 2. registrar, client_secret_post, http://localhost extra redirect URI.
    const b = await login(issuer, discovery, 'registrar', { redirectUri: EXTRA_REDIRECT_URI });
    const t2 = await tokenRequest(discovery, b, 'post');
    assert.equal(t2.status, 200, `token exchange (post): ${JSON.stringify(t2.json)}`);
    await checkIdToken(issuer, discovery, t2.json.id_token, b.nonce, {
      sub: 'registrar', guardianRole: 'kontaktcenter', healthCareUnitHsaId: 'SE2321000131-E000000000099',
    });

    // 3. wrong code_verifier -> invalid_grant.
    const c = await login(issuer, discovery, 'auditor');
    const bad = await tokenRequest(discovery, { ...c, verifier: b64url(randomBytes(32)) }, 'basic');
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error, 'invalid_grant');

    // 4. no PKCE -> authorization error redirected to the client.
    const noPkce = new URL(discovery.authorization_endpoint);
    noPkce.search = new URLSearchParams({
      response_type: 'code', client_id: CLIENT_ID, redirect_uri: REDIRECT_URI, scope: 'openid profile', state: 's', nonce: 'n',
    });
    const npr = await fetch(noPkce, { redirect: 'manual' });
    const npl = new URL(npr.headers.get('location'));
    assert.equal(npl.searchParams.get('error'), 'invalid_request', 'PKCE is required');

    // 5. unregistered redirect URI -> error page, no redirect.
    const badRedirect = new URL(noPkce);
    badRedirect.searchParams.set('redirect_uri', 'https://127.0.0.1:1/evil');
    badRedirect.searchParams.set('code_challenge', b64url(randomBytes(32)));
    badRedirect.searchParams.set('code_challenge_method', 'S256');
    const brr = await fetch(badRedirect, { redirect: 'manual' });
    assert.equal(brr.status, 400, 'unregistered redirect_uri rejected');

    // 6. wrong client secret -> invalid_client.
    const d = await login(issuer, discovery, 'nobody');
    const wrongSecret = await fetch(discovery.token_endpoint, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from(`${CLIENT_ID}:nope`).toString('base64')}`,
      },
      body: new URLSearchParams({ grant_type: 'authorization_code', code: d.code, redirect_uri: REDIRECT_URI, code_verifier: d.verifier }),
    });
    assert.equal(wrongSecret.status, 401);
    assert.equal((await wrongSecret.json()).error, 'invalid_client');

    // 7. closing stdin stops the provider.
    child.stdin.end();
    const result = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 5000))]);
    assert.notEqual(result, 'timeout', 'provider exits when stdin closes');
    assert.equal(result.code, 0);

    console.log('oidc selftest: 7 passed, 0 failed');
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  }
}

main().catch((err) => {
  console.error('oidc selftest FAILED:', err);
  process.exitCode = 1;
});
