//! Domain types: services, care units, restrictions and grants, region settings.
//!
//! These types are not `Deserialize`: the wire formats (fixtures, the HTTP
//! API, the config file) convert into them explicitly and validate on the way.

use std::fmt;
use std::sync::Arc;

use crate::core::identity::Pid;
use crate::core::time::{Instant, LeapDay};

/// What the portal asks about (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// 1177 Journalen.
    Journal,
    /// 1177 e-tjänster, where a guardian acts as *ombud*.
    Eservices,
}

impl Service {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Journal => "journal",
            Service::Eservices => "eservices",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Service> {
        match s {
            "journal" => Some(Service::Journal),
            "eservices" => Some(Service::Eservices),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Service::Journal => 1,
            Service::Eservices => 2,
        }
    }
}

/// A set of services a restriction or grant covers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Services(u8);

impl Services {
    /// No service.
    pub const NONE: Services = Services(0);
    /// Journal only.
    pub const JOURNAL: Services = Services(1);
    /// Journal and e-services.
    pub const BOTH: Services = Services(3);

    /// Adds a service.
    pub fn with(self, service: Service) -> Services {
        Services(self.0 | service.bit())
    }

    /// Whether the set covers `service`.
    pub fn covers(self, service: Service) -> bool {
        self.0 & service.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set as stored: bit 0 journal, bit 1 e-services.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// A set as stored; `None` if it has bits no service uses.
    pub fn from_bits(bits: u8) -> Option<Services> {
        (bits & !Services::BOTH.0 == 0).then_some(Services(bits))
    }

    /// The services in wire order.
    pub fn iter(self) -> impl Iterator<Item = Service> {
        [Service::Journal, Service::Eservices]
            .into_iter()
            .filter(move |s| self.covers(*s))
    }
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(Service::as_str)).finish()
    }
}

/// Restriction and grant kinds (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// Blockering: one named guardian, or all guardians.
    Block,
    /// Försegling: everyone, the subject included.
    Seal,
    /// Förlängd åtkomst: one named guardian keeps seeing a 13–15-year-old's journal.
    ExtendedAccess,
    /// The subject reads their own journal from 13.
    EarlyAccess,
}

impl RuleKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Block => "block",
            RuleKind::Seal => "seal",
            RuleKind::ExtendedAccess => "extended_access",
            RuleKind::EarlyAccess => "early_access",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<RuleKind> {
        match s {
            "block" => Some(RuleKind::Block),
            "seal" => Some(RuleKind::Seal),
            "extended_access" => Some(RuleKind::ExtendedAccess),
            "early_access" => Some(RuleKind::EarlyAccess),
            _ => None,
        }
    }

    /// The services a rule of this kind covers when none are given.
    pub fn default_services(self) -> Services {
        match self {
            RuleKind::Block => Services::BOTH,
            RuleKind::Seal | RuleKind::ExtendedAccess | RuleKind::EarlyAccess => Services::JOURNAL,
        }
    }

    /// Restrictions take access away; grants give it.
    pub fn is_grant(self) -> bool {
        matches!(self, RuleKind::ExtendedAccess | RuleKind::EarlyAccess)
    }
}

/// A care unit's HSA-ID: `SE` + 10-digit organisation number + `-` + 1–17
/// of `[A-Za-z0-9]`, at most 31 characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HsaId(Box<str>);

/// Why a string is not an HSA-ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be an HSA-ID: `SE`, a 10-digit organisation number, `-`, then 1-17 letters or digits")]
pub struct HsaIdError;

impl HsaId {
    /// Validates an HSA-ID.
    pub fn parse(s: &str) -> Result<HsaId, HsaIdError> {
        let b = s.as_bytes();
        // 2 + 10 + 1 + at most 17 is 30, within the 31 characters HSA allows.
        let ok = (14..=30).contains(&b.len())
            && b.starts_with(b"SE")
            && b[2..12].iter().all(u8::is_ascii_digit)
            && b[12] == b'-'
            && b[13..].iter().all(u8::is_ascii_alphanumeric);
        if ok { Ok(HsaId(s.into())) } else { Err(HsaIdError) }
    }

    /// The HSA-ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HsaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for HsaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identifier of a restriction or grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u64);

/// A restriction (block, seal) or grant (extended or early access) on one
/// subject, as it stands: lifted ones stay, with their `lifted_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its identifier.
    pub id: RuleId,
    /// What it is.
    pub kind: RuleKind,
    /// Whose journal it is about.
    pub subject: Pid,
    /// The named guardian (block: `None` = all guardians; extended access:
    /// always named; seal and early access: `None`).
    pub guardian: Option<Pid>,
    /// The services it covers.
    pub services: Services,
    /// From when it holds.
    pub valid_from: Instant,
    /// Until when it holds, exclusive; `None` = until lifted.
    pub valid_until: Option<Instant>,
    /// When it was lifted, if it was.
    pub lifted_at: Option<Instant>,
    /// Extended access only: the care units whose information it is limited to.
    pub care_units: Option<Arc<[HsaId]>>,
}

impl Rule {
    /// The first instant at which it no longer holds (`Instant::MAX`: never).
    pub fn end(&self) -> Instant {
        let until = self.valid_until.unwrap_or(Instant::MAX);
        let lifted = self.lifted_at.unwrap_or(Instant::MAX);
        until.min(lifted)
    }

    /// Active at `t` iff `valid_from <= t`, `t < valid_until` and `t < lifted_at`.
    pub fn active_at(&self, t: Instant) -> bool {
        self.valid_from <= t && t < self.end()
    }
}

/// Region settings (SPEC §3), parsed once at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// From this age a child's journal and e-services close to guardians, and
    /// the child may use the e-services and (with early access) the journal.
    pub guardian_age_limit: u8,
    /// From this age the subject reads their own journal, and extended access ends.
    pub own_journal_age: u8,
    /// How someone born on 29 February ages in other years.
    pub leap_day: LeapDay,
    /// Whether a guardian with protected identity is denied (`protected_guardian`).
    pub protected_guardian: bool,
    /// The text the portal shows for a disabled child; `{name}` is the child's name.
    pub disabled_message: String,
    /// Units whose notes are never shown online; carried on `journal` answers.
    pub excluded_care_units: Vec<HsaId>,
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The age limits are out of order or out of range.
    #[error(
        "`age_limits`: `guardian` ({0}) must be at least 1 and below `own_journal` ({1}), which must be at most 18"
    )]
    AgeLimits(u8, u8),
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            guardian_age_limit: 13,
            own_journal_age: 16,
            leap_day: LeapDay::Feb28,
            protected_guardian: true,
            disabled_message:
                "Du har för närvarande inte tillgång till {name}s journal. Vid frågor kontakta din region".into(),
            excluded_care_units: Vec::new(),
        }
    }
}

impl Settings {
    /// Checks the settings hang together.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let (a, b) = (self.guardian_age_limit, self.own_journal_age);
        if a == 0 || a >= b || b > 18 {
            return Err(SettingsError::AgeLimits(a, b));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsa_ids() {
        assert!(HsaId::parse("SE2321000131-E000000000001").is_ok());
        assert!(HsaId::parse("SE2321000131-A").is_ok());
        assert!(HsaId::parse("SE2321000131-E0000000000000001").is_ok()); // 17 after `-`
        assert!(HsaId::parse("SE2321000131-E00000000000000001").is_err()); // 18 after `-`
        assert!(HsaId::parse("SE2321000131-").is_err());
        assert!(HsaId::parse("SE232100013-E1").is_err());
        assert!(HsaId::parse("DK2321000131-E1").is_err());
        assert!(HsaId::parse("SE2321000131-E 1").is_err());
        assert!(HsaId::parse("SE2321000131_E1").is_err());
    }

    #[test]
    fn services_and_kinds() {
        assert!(RuleKind::Block.default_services().covers(Service::Eservices));
        assert!(!RuleKind::Seal.default_services().covers(Service::Eservices));
        assert!(RuleKind::Seal.default_services().covers(Service::Journal));
        assert_eq!(format!("{:?}", Services::BOTH), r#"{"journal", "eservices"}"#);
        for k in ["block", "seal", "extended_access", "early_access"] {
            assert_eq!(RuleKind::parse(k).map(RuleKind::as_str), Some(k));
        }
        assert_eq!(Service::parse("Journal"), None);
    }

    #[test]
    fn settings_validate_age_limits() {
        assert!(Settings::default().validate().is_ok());
        let bad = Settings {
            guardian_age_limit: 16,
            own_journal_age: 13,
            ..Settings::default()
        };
        assert_eq!(bad.validate(), Err(SettingsError::AgeLimits(16, 13)));
    }
}
