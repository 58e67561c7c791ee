//! guardian-access: a policy decision point for Swedish patient portals.
//!
//! Before every journal view, 1177 Journalen asks: *may this person see this
//! child's journal, or act for the child in the e-services, right now?* The
//! answer comes from [`decide`] over an immutable [`Snapshot`]. See
//! `ARCHITECTURE.md` for the map; the folders are its layers, and
//! dependencies point one way: `http` → `node`, `store` → `core`.
//!
//! - [`core`]: the pure decision core (identity numbers, time, the model,
//!   the population table, snapshots, `decide`). No I/O, no wire formats.
//! - [`store`]: the durable store, one protocol in two SQL dialects.
//! - [`node`]: the publication cell and the task that fills it from the
//!   store, snapshot files and peers.
//! - [`http`]: the check and admin listeners, their errors, metrics and
//!   wire types.
//! - [`service`]: the whole service on bound listeners; [`config`]: the
//!   one merge of flags, environment and file.

pub mod actor;
pub mod clock;
pub mod config;
pub mod core;
pub mod fixtures;
pub mod http;
pub mod logging;
pub mod mail;
pub mod ndjson;
pub mod node;
pub mod service;
pub mod store;
pub mod synth;
#[cfg(test)]
mod testing;

pub use crate::core::decide::{Decision, Listing, Query, Reason, children, decide, decide_batch};
pub use crate::core::identity::{IdentityError, Pid};
pub use crate::core::model::{HsaId, Rule, RuleId, RuleKind, Service, Services, Settings};
pub use crate::core::snapshot::{People, PeopleBuilder, PersonRecord, Rules, Snapshot};
pub use crate::core::time::Instant;
pub use clock::Clock;
