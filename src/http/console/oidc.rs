//! Login with OpenID Connect (SPEC §9): the authorization code flow with
//! PKCE, `state` and `nonce`, the ID token's signature checked against the
//! issuer's JWKS, by the `openidconnect` crate. The issuer's discovery
//! document is read once, at start; the JWKS with it.
//!
//! Who the person is comes from the ID token's claims as `[console.oidc]`
//! names them: the HSA-ID (Inera: `employeeHsaId`), the care unit
//! (`healthCareUnitHsaId`) and a role claim whose values map to
//! `registrar`, `unit` or `auditor`. A person whose role claim maps to
//! none of them is not let in.

use std::collections::HashMap;
use std::path::PathBuf;

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    Scope, StandardErrorResponse, StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::actor::{Caller, Role};
use crate::core::model::HsaId;

/// `[console.oidc]`.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer (Inera's IdP in production).
    pub issuer: String,
    /// This console's client id there.
    pub client_id: String,
    /// The file holding the client secret.
    pub client_secret_file: PathBuf,
    /// `https://…/console/callback`, as registered with the issuer.
    pub redirect_uri: String,
    /// The claim holding the person's HSA-ID.
    pub hsa_id_claim: String,
    /// The claim holding their care unit's HSA-ID.
    pub unit_claim: String,
    /// The claim holding their name.
    pub name_claim: String,
    /// The claim holding their role.
    pub role_claim: String,
    /// The role claim's values and the console role each gives.
    pub roles: Vec<(String, Role)>,
    /// Scopes asked for beside `openid`.
    pub scopes: Vec<String>,
}

/// The claims of an ID token beyond the standard ones, as they come.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(flatten)]
    all: HashMap<String, Value>,
}

impl AdditionalClaims for Claims {}

type Fields = IdTokenFields<
    Claims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<Fields, CoreTokenType>;
type Client = openidconnect::Client<
    Claims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The console's client at the issuer.
#[derive(Debug)]
pub struct Oidc {
    client: Client,
    http: openidconnect::reqwest::Client,
    config: OidcConfig,
}

/// A login on its way: what the callback must match.
#[derive(Debug)]
pub struct Started {
    /// Where to send the browser.
    pub url: String,
    /// The `state` sent.
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier.
    pub verifier: String,
}

impl Oidc {
    /// Reads the issuer's discovery document (and its JWKS).
    pub async fn discover(config: OidcConfig) -> anyhow::Result<Oidc> {
        let secret = std::fs::read_to_string(&config.client_secret_file).map_err(|e| {
            anyhow::anyhow!(
                "`console.oidc.client_secret_file` {}: {e}",
                config.client_secret_file.display()
            )
        })?;
        // No redirects: the issuer's endpoints are used as published.
        let http = openidconnect::reqwest::ClientBuilder::new()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        let issuer =
            IssuerUrl::new(config.issuer.clone()).map_err(|e| anyhow::anyhow!("`console.oidc.issuer`: {e}"))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| anyhow::anyhow!("`console.oidc.issuer`: discovery failed: {e}"))?;
        let redirect = RedirectUrl::new(config.redirect_uri.clone())
            .map_err(|e| anyhow::anyhow!("`console.oidc.redirect_uri`: {e}"))?;
        let client = Client::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(secret.trim().to_owned())),
        )
        .set_redirect_uri(redirect);
        Ok(Oidc { client, http, config })
    }

    /// Starts a login: the issuer's URL with a fresh `state`, `nonce` and
    /// PKCE challenge.
    pub fn start(&self) -> Started {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = self.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in &self.config.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        Started {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        }
    }

    /// Finishes a login: exchanges `code`, checks the ID token (signature
    /// against the JWKS, issuer, audience, expiry, `nonce`) and reads who
    /// it names. The error is for the log and says nothing of the person.
    pub async fn finish(&self, code: &str, nonce: &str, verifier: &str) -> Result<Caller, String> {
        let tokens = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| format!("no token endpoint: {e}"))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(|e| format!("the code was not accepted: {e}"))?;
        let id_token = tokens.id_token().ok_or("the issuer sent no ID token")?;
        let claims = id_token
            .claims(&self.client.id_token_verifier(), &Nonce::new(nonce.to_owned()))
            .map_err(|e| format!("the ID token is not valid: {e}"))?;
        let extra = &claims.additional_claims().all;
        let text = |name: &str| extra.get(name).and_then(Value::as_str).map(str::to_owned);
        let c = &self.config;
        let hsa_id = text(&c.hsa_id_claim)
            .and_then(|h| HsaId::parse(&h).ok())
            .ok_or_else(|| format!("the ID token has no valid `{}`", c.hsa_id_claim))?;
        let unit = text(&c.unit_claim).and_then(|h| HsaId::parse(&h).ok());
        let name = text(&c.name_claim)
            .or_else(|| claims.name().and_then(|n| n.get(None)).map(|n| n.to_string()))
            .unwrap_or_else(|| hsa_id.as_str().to_owned());
        let role_values: Vec<String> = match extra.get(&c.role_claim) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let role = role_of(&c.roles, &role_values).ok_or_else(|| format!("no console role in `{}`", c.role_claim))?;
        if role == Role::Unit && unit.is_none() {
            return Err(format!("a unit role without a valid `{}`", c.unit_claim));
        }
        Ok(Caller {
            name,
            role,
            unit: if role == Role::Unit { unit } else { None },
            hsa_id: Some(hsa_id),
        })
    }
}

/// The console role of a person with role claim `values`. A person whose
/// values map to two different roles gets none: which one they act in
/// must not be a guess.
pub fn role_of(mapping: &[(String, Role)], values: &[String]) -> Option<Role> {
    let mut found = mapping
        .iter()
        .filter(|(value, _)| values.iter().any(|v| v == value))
        .map(|(_, role)| *role);
    let first = found.next()?;
    found.all(|r| r == first).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_comes_from_the_mapping_or_not_at_all() {
        let m = vec![
            ("kontaktcenter".to_owned(), Role::Registrar),
            ("verksamhetschef".to_owned(), Role::Unit),
            ("logggranskare".to_owned(), Role::Auditor),
        ];
        assert_eq!(role_of(&m, &["verksamhetschef".into()]), Some(Role::Unit));
        assert_eq!(
            role_of(&m, &["logggranskare".into(), "kontaktcenter".into()]),
            None,
            "two roles: neither"
        );
        assert_eq!(
            role_of(&m, &["verksamhetschef".into(), "annat".into()]),
            Some(Role::Unit)
        );
        assert_eq!(role_of(&m, &["annat".into()]), None);
        assert_eq!(role_of(&m, &[]), None);
    }
}
