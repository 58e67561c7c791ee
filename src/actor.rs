//! Who acts on the register: a [`Caller`] with a [`Role`]. The admin
//! listener authenticates them, the store writes them into the audit trail,
//! the command line names itself as one. Kept apart from both, so that
//! neither the store nor the HTTP edge owns the other's vocabulary.

use crate::core::model::HsaId;

/// A token holder's role (SPEC §5, plus `peer` for fetching snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The contact center / IT service desk: writes on behalf of any unit.
    Registrar,
    /// A care unit: writes only as itself.
    Unit,
    /// The population feed.
    Population,
    /// Reads everything, writes nothing.
    Auditor,
    /// Another instance of the fleet: may fetch snapshot files, nothing else.
    Peer,
    /// Someone at the command line on the service's host (with the data
    /// directory or the database URL): never a token's role.
    Operator,
}

impl Caller {
    /// The person at the command line, by their login name.
    pub fn operator() -> Caller {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown user".into());
        Caller {
            name: format!("command line ({user})"),
            role: Role::Operator,
            unit: None,
            hsa_id: None,
        }
    }
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Registrar => "registrar",
            Role::Unit => "unit",
            Role::Population => "population",
            Role::Auditor => "auditor",
            Role::Peer => "peer",
            Role::Operator => "operator",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "registrar" => Some(Role::Registrar),
            "unit" => Some(Role::Unit),
            "population" => Some(Role::Population),
            "auditor" => Some(Role::Auditor),
            "peer" => Some(Role::Peer),
            _ => None,
        }
    }
}

/// Who is writing: the holder of an admin token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name ("Kontaktcenter RJL"); goes into the audit trail.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// For `unit` tokens, the unit.
    pub unit: Option<HsaId>,
    /// A person identified by a client certificate (SITHS): their HSA-ID,
    /// recorded with every write and read they make.
    pub hsa_id: Option<HsaId>,
}
