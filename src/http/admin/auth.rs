//! Admin tokens (SPEC §5): a JSON file of named bearer tokens with roles,
//! read once at start-up.
//!
//! Only SHA-256 digests of the tokens are kept. A presented token is hashed
//! and compared with every known digest in constant time, without stopping
//! at a match, so the time taken says nothing about which token, if any,
//! was close.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::actor::{Caller, Role};
use crate::core::model::HsaId;

/// Shorter tokens are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 24;

/// The tokens file as written: bearer tokens for systems, and the people
/// client certificates identify, by HSA-ID.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    #[serde(default)]
    identities: Vec<IdentityEntry>,
}

/// A person a client certificate identifies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityEntry {
    hsa_id: String,
    name: String,
    role: String,
    #[serde(default)]
    unit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    name: String,
    role: String,
    #[serde(default)]
    unit: Option<String>,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A tokens file that cannot be used; the message names the entry and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokensError {
    /// Not JSON of the documented shape.
    #[error("the tokens file is not of the documented shape: {0}")]
    Shape(String),
    /// One entry is wrong.
    #[error("`tokens[{0}].{1}`: {2}")]
    Entry(usize, &'static str, &'static str),
    /// One identity is wrong.
    #[error("`identities[{0}].{1}`: {2}")]
    Identity(usize, &'static str, &'static str),
}

/// The known tokens.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Caller)>,
    identities: Vec<Caller>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("count", &self.entries.len()).finish()
    }
}

/// A role and, for `unit`, its unit; the field and what is wrong otherwise.
fn role_and_unit(role: &str, unit: Option<&str>) -> Result<(Role, Option<HsaId>), (&'static str, &'static str)> {
    let role = Role::parse(role).ok_or(("role", "must be `registrar`, `unit`, `population`, `auditor` or `peer`"))?;
    let unit = match (role, unit) {
        (Role::Unit, Some(u)) => Some(HsaId::parse(u).map_err(|_| ("unit", "must be an HSA-ID"))?),
        (Role::Unit, None) => return Err(("unit", "is required for the `unit` role")),
        (_, Some(_)) => return Err(("unit", "is only for the `unit` role")),
        (_, None) => None,
    };
    Ok((role, unit))
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Parses and validates a tokens file.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        // serde's messages can quote values; keep only where it went wrong.
        let file: TokensFile = serde_json::from_str(text).map_err(|e| {
            TokensError::Shape(format!(
                "expected {{\"tokens\": [{{\"token\", \"name\", \"role\", \"unit\"?}}]}} (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut tokens = Tokens::default();
        for (i, e) in file.tokens.into_iter().enumerate() {
            let bad = |field, what| TokensError::Entry(i, field, what);
            if e.token.len() < MIN_TOKEN_LEN {
                return Err(bad("token", "must be at least 24 characters"));
            }
            if !e.token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("token", "must be printable ASCII without spaces"));
            }
            if e.name.trim().is_empty() || e.name.len() > 200 {
                return Err(bad("name", "must be 1 to 200 characters"));
            }
            let (role, unit) = role_and_unit(&e.role, e.unit.as_deref()).map_err(|(f, w)| bad(f, w))?;
            let d = digest(e.token.as_bytes());
            if tokens.entries.iter().any(|(known, _)| *known == d) {
                return Err(bad("token", "is the same as an earlier entry's"));
            }
            tokens.entries.push((
                d,
                Caller {
                    name: e.name,
                    role,
                    unit,
                    hsa_id: None,
                },
            ));
        }
        for (i, e) in file.identities.into_iter().enumerate() {
            let bad = |field, what| TokensError::Identity(i, field, what);
            let hsa_id = HsaId::parse(&e.hsa_id).map_err(|_| bad("hsa_id", "must be an HSA-ID"))?;
            if e.name.trim().is_empty() || e.name.len() > 200 {
                return Err(bad("name", "must be 1 to 200 characters"));
            }
            let (role, unit) = role_and_unit(&e.role, e.unit.as_deref()).map_err(|(f, w)| bad(f, w))?;
            if matches!(role, Role::Population | Role::Peer) {
                return Err(bad(
                    "role",
                    "people are `registrar`, `unit` or `auditor`; systems use tokens",
                ));
            }
            if tokens.identities.iter().any(|c| c.hsa_id.as_ref() == Some(&hsa_id)) {
                return Err(bad("hsa_id", "is the same as an earlier entry's"));
            }
            tokens.identities.push(Caller {
                name: e.name,
                role,
                unit,
                hsa_id: Some(hsa_id),
            });
        }
        Ok(tokens)
    }

    /// The person a verified client certificate with `hsa_id` belongs to.
    pub fn identity(&self, hsa_id: &HsaId) -> Option<&Caller> {
        self.identities.iter().find(|c| c.hsa_id.as_ref() == Some(hsa_id))
    }

    /// Tokens from a list, for `--demo` and tests.
    pub fn from_list(list: Vec<(String, Caller)>) -> Tokens {
        Tokens {
            entries: list.into_iter().map(|(t, c)| (digest(t.as_bytes()), c)).collect(),
            identities: Vec::new(),
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (every admin request is then refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.identities.is_empty()
    }

    /// These tokens, and the people client certificates identify (for tests
    /// and `--demo`).
    pub fn with_identities(mut self, people: Vec<Caller>) -> Tokens {
        self.identities
            .extend(people.into_iter().filter(|c| c.hsa_id.is_some()));
        self
    }

    /// The holder of `token`, if it is known.
    pub fn find(&self, token: &[u8]) -> Option<&Caller> {
        let presented = digest(token);
        // 0 = none; i + 1 = entry i. Every entry is compared, no early exit.
        let mut found = 0u64;
        for (i, (known, _)) in self.entries.iter().enumerate() {
            let hit = known.ct_eq(&presented);
            found = u64::conditional_select(&found, &(i as u64 + 1), hit);
        }
        found
            .checked_sub(1)
            .and_then(|i| self.entries.get(i as usize))
            .map(|(_, c)| c)
    }

    /// The holder of the bearer token in an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Option<&Caller> {
        let value = header?;
        let (scheme, token) = value.split_at(value.iter().position(|b| *b == b' ')?);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return None;
        }
        let token = token.trim_ascii();
        if token.is_empty() {
            return None;
        }
        self.find(token)
    }
}

/// A fresh random token (for `--demo`).
pub fn random_token() -> String {
    let mut b = [0u8; 24];
    // Without randomness there is no safe token: an empty one matches nothing.
    if getrandom::fill(&mut b).is_err() {
        return String::new();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"tokens": [
        {"token": "registrar-token-0123456789abcdef", "name": "Kontaktcenter RJL", "role": "registrar"},
        {"token": "unit-token-0123456789abcdef012345", "name": "BUP Jönköping", "role": "unit", "unit": "SE2321000131-E000000000001"},
        {"token": "population-token-0123456789abcdef", "name": "Navet feed", "role": "population"},
        {"token": "auditor-token-0123456789abcdef0123", "name": "Spärr och logg", "role": "auditor"}
    ]}"#;

    #[test]
    fn tokens_are_found_by_bearer_header_only_when_exact() {
        let t = Tokens::parse(FILE).unwrap();
        assert_eq!(t.len(), 4);
        let c = t
            .authenticate(Some(b"Bearer unit-token-0123456789abcdef012345"))
            .unwrap();
        assert_eq!((c.name.as_str(), c.role), ("BUP Jönköping", Role::Unit));
        assert_eq!(c.unit.as_ref().map(HsaId::as_str), Some("SE2321000131-E000000000001"));
        assert_eq!(
            t.authenticate(Some(b"bearer registrar-token-0123456789abcdef"))
                .map(|c| c.role),
            Some(Role::Registrar)
        );
        for bad in [
            &b"Bearer registrar-token-0123456789abcdeF"[..],
            b"Bearer registrar-token-0123456789abcde",
            b"Basic registrar-token-0123456789abcdef",
            b"registrar-token-0123456789abcdef",
            b"Bearer ",
            b"",
        ] {
            assert!(t.authenticate(Some(bad)).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(t.authenticate(None).is_none());
    }

    #[test]
    fn bad_files_name_the_entry_and_field() {
        let cases = [
            (
                r#"{"tokens": [{"token": "short", "name": "x", "role": "auditor"}]}"#,
                "`tokens[0].token`",
            ),
            (
                r#"{"tokens": [{"token": "registrar-token-0123456789abcdef", "name": "x", "role": "admin"}]}"#,
                "`tokens[0].role`",
            ),
            (
                r#"{"tokens": [{"token": "registrar-token-0123456789abcdef", "name": "x", "role": "unit"}]}"#,
                "`tokens[0].unit`",
            ),
            (
                r#"{"tokens": [{"token": "registrar-token-0123456789abcdef", "name": "x", "role": "auditor", "unit": "SE2321000131-E1"}]}"#,
                "`tokens[0].unit`",
            ),
            (
                r#"{"tokens": [{"token": "registrar-token-0123456789abcdef", "name": "a", "role": "auditor"},
                               {"token": "registrar-token-0123456789abcdef", "name": "b", "role": "auditor"}]}"#,
                "`tokens[1].token`",
            ),
        ];
        for (text, want) in cases {
            let e = Tokens::parse(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
            assert!(!e.contains("0123456789abcdef"), "a token leaked into an error: {e}");
        }
        let e = Tokens::parse(r#"{"tokens": [{"token": 5}]}"#).unwrap_err().to_string();
        assert!(e.contains("documented shape"), "{e}");
        let e = Tokens::parse(r#"{"tokens": [{"token": "registrar-token-0123456789abcdef", "name": "x", "role": "auditor", "extra": 1}]}"#).unwrap_err().to_string();
        assert!(!e.contains("0123456789abcdef"), "{e}");
    }

    #[test]
    fn random_tokens_are_long_and_different() {
        let (a, b) = (random_token(), random_token());
        assert!(a.len() >= MIN_TOKEN_LEN);
        assert_ne!(a, b);
    }
}
