//! JSON answer bodies shared by the HTTP API and the command line.
//!
//! Domain types are not `Serialize`; these borrowed views are, and they are
//! the one place that decides how an answer looks on the wire (SPEC §4).

use jiff::tz::TimeZone;
use serde::Serialize;
use serde::ser::{SerializeSeq, Serializer};

use crate::core::decide::{self, Decision};
use crate::core::identity::Pid;
use crate::core::model::{HsaId, Service};
use crate::core::snapshot::Snapshot;
use crate::core::time::{Instant, LocalTime};

/// The body of a `/v1/check` answer.
#[derive(Debug, Serialize)]
pub struct DecisionBody<'a> {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The reason's wire name.
    pub reason: &'static str,
    /// `hidden`, `disabled`, `enabled`, or null for own access.
    pub listing: Option<&'static str>,
    /// Units an extended-access grant limits the answer to.
    pub care_units: Option<Units<'a>>,
    /// The region's never-online units (journal answers).
    pub excluded_care_units: Option<Units<'a>>,
    /// Until when the portal may cache the answer.
    pub valid_until: Option<LocalTime>,
    /// The revision decided at.
    pub revision: u64,
    /// The instant decided at.
    pub at: LocalTime,
}

/// A list of HSA-IDs, serialized as strings.
#[derive(Debug, Clone, Copy)]
pub struct Units<'a>(pub &'a [HsaId]);

impl Serialize for Units<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for u in self.0 {
            seq.serialize_element(u.as_str())?;
        }
        seq.end()
    }
}

/// Instants go on the wire as their RFC 3339 text. (Here, not in `time`:
/// the core knows no wire format.)
impl Serialize for LocalTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'a> DecisionBody<'a> {
    /// The wire view of `d`, decided at `at`, with instants in Stockholm time.
    pub fn new(d: &Decision<'a>, at: Instant, tz: &TimeZone) -> DecisionBody<'a> {
        DecisionBody {
            decision: if d.allowed() { "allow" } else { "deny" },
            reason: d.reason.as_str(),
            listing: d.listing.map(|l| l.as_str()),
            care_units: d.care_units.map(Units),
            excluded_care_units: d.excluded_care_units.map(Units),
            valid_until: d.valid_until.map(|v| LocalTime::new(v, tz)),
            revision: d.revision,
            at: LocalTime::new(at, tz),
        }
    }
}

/// The body of a `/v1/children` answer: the switch list.
#[derive(Debug, Serialize)]
pub struct ChildrenBody {
    /// One entry per subject the guardian is registered for.
    pub children: Vec<ChildEntry>,
    /// The revision decided at.
    pub revision: u64,
}

/// One subject on the switch list.
#[derive(Debug, Serialize)]
pub struct ChildEntry {
    /// The subject's canonical number.
    pub subject: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The reason's wire name.
    pub reason: &'static str,
    /// `hidden`, `disabled` or `enabled`.
    pub listing: Option<&'static str>,
    /// Until when the portal may cache the entry.
    pub valid_until: Option<LocalTime>,
}

impl ChildrenBody {
    /// The switch list of `guardian` for `service` at `at`, in Stockholm time.
    pub fn new(snap: &Snapshot, guardian: Pid, service: Service, at: Instant) -> ChildrenBody {
        let children = decide::children(snap, guardian, service, at)
            .map(|(subject, d)| ChildEntry {
                subject: subject.to_string(),
                decision: if d.allowed() { "allow" } else { "deny" },
                reason: d.reason.as_str(),
                listing: d.listing.map(|l| l.as_str()),
                valid_until: d.valid_until.map(|v| LocalTime::new(v, snap.tz())),
            })
            .collect();
        ChildrenBody {
            children,
            revision: snap.revision(),
        }
    }
}
