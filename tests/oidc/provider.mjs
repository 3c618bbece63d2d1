// A real OpenID Connect provider for the portal's tests (oidc-provider, node).
// node provider.mjs PORT REDIRECT_URI... ; accounts from ACCOUNTS_FILE, read again at every
// sign-in so that a test can change them (else ACCOUNTS; JSON: id -> claims, sub is the id).
// The development login form (devInteractions) takes any listed account id; the portal
// must use the authorization code flow with PKCE (S256).
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const [port, ...redirectUris] = process.argv.slice(2);
// CLOCK_OFFSET_SECONDS: this provider's clock runs ahead (or behind) by that much, as a
// misconfigured server's would (the portal must then refuse its tokens, clearly).
const offset = Number(process.env.CLOCK_OFFSET_SECONDS || 0) * 1000;
if (offset) {
  const realNow = Date.now;
  Date.now = () => realNow() + offset;
}
const accounts = () => JSON.parse(process.env.ACCOUNTS_FILE
  ? readFileSync(process.env.ACCOUNTS_FILE, 'utf8') : (process.env.ACCOUNTS || '{}'));

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'portal',
    client_secret: 'portal-test-secret',
    redirect_uris: redirectUris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  claims: { openid: ['sub'], profile: ['name', 'preferred_username', 'groups', 'affiliation'] },
  conformIdTokenClaims: false,
  cookies: { keys: ['portal-test-cookie-key'] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const claims = accounts()[id];
    if (claims === undefined) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`listening ${port}`));
