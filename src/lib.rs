//! guardian-access: a policy decision point for Swedish patient portals.
//!
//! Before every journal view, 1177 Journalen asks: *may this person see this
//! child's journal, or act for the child in the e-services, right now?* The
//! answer comes from [`decide::decide`] over an immutable
//! [`snapshot::Snapshot`]. See `ARCHITECTURE.md` for the map.

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod decide;
mod filter;
pub mod fixtures;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod ndjson;
pub mod node;
pub mod peer;
pub mod people;
pub mod server;
pub mod service;
pub mod snapfile;
pub mod snapshot;
pub mod store;
pub mod synth;
#[cfg(test)]
mod testing;
pub mod time;
pub mod wire;

pub use decide::{Decision, Listing, Query, Reason, children, decide};
pub use identity::{IdentityError, Pid};
pub use model::{HsaId, Rule, RuleId, RuleKind, Service, Services, Settings};
pub use snapshot::{People, PeopleBuilder, PersonRecord, Rules, Snapshot};
pub use time::Instant;
