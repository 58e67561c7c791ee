//! Cedar (`cedar-policy` 4.x), in process: an entity store of persons and
//! restrictions/grants, the rules of SPEC §3 as Cedar policies, one
//! `Authorizer::is_authorized` per check.
//!
//! # The model
//!
//! - `Person::"<12 digits>"`: `protected: Bool`; `attains13`, `attains16`:
//!   Long, Unix seconds (absent when the birth date is unknown);
//!   `guardians: Set<Person>`; and *slots* `seal0…`, `block0…`, `ext0…`,
//!   `early0…` pointing at that child's `Rule` entities (see below).
//! - `Rule::"<id>"` (a restriction or grant), parent: its subject
//!   `Person`: `from: Long`; `until: Long` and `lifted: Long` when set;
//!   `services: Set<Action>`; `guardian: Person` when it names one;
//!   `care_units: Set<String>` when an extended-access grant is limited.
//! - Actions `Action::"journal"`, `Action::"eservices"`; the context holds
//!   `now: Long`, the instant of the question in Unix seconds.
//!
//! # What is precomputed, and why
//!
//! 1. **Age instants.** Cedar has no calendar arithmetic in a time zone
//!    (its `datetime` extension has durations, not years, months or
//!    Europe/Stockholm), so the two instants at which a person attains 13
//!    and 16 (00:00 Stockholm on the birthday, 29 February → 28 February)
//!    are entity attributes, computed at load exactly as our own snapshot
//!    precomputes them. *Comparing* them with the instant of the question
//!    (is the child under 13 now?) is done by the policies.
//! 2. **Slots.** Cedar has no quantifier (`exists`) over a set, so "some
//!    active seal covers this service" cannot be written over a
//!    `Set<Rule>`. Each child instead gets one attribute per restriction or
//!    grant of a kind (`seal0`, `seal1`, …), and the policies test each slot
//!    in turn: the number of slots per kind is the most that any one child
//!    has in this data set, and the policy text is generated with that many
//!    (the loader prints them). The validity window (`valid_from`,
//!    `valid_until`, `lifted_at`), the services a rule covers and the
//!    guardian it names are all evaluated by Cedar against `context.now`:
//!    nothing about whether a rule is active is precomputed.
//!
//! # Reasons
//!
//! Cedar has no "first matching row": a request is allowed iff some
//! `permit` holds and no `forbid` does. The four allow rows are `permit`s,
//! the eight deny rows `forbid`s, each with a `@reason` annotation. Those
//! that only restate a default deny (`not_guardian`, `unknown_age`,
//! `below_age`, `aged_out`) are there so that Cedar can name the reason, as
//! the check API must. The reason of a deny is the first, in SPEC §3's row
//! order, of the `forbid`s that hold ([`DENY_ORDER`]). They carry
//! `@names_reason_only`: [`Cedar::allowed_min`] answers allow/deny with the
//! policy set without them, to show what naming the reason costs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression,
};
use guardian_access::{Reason, RuleKind, Service};

use crate::data::{Case, Rows};

/// Deny reasons in SPEC §3's row order (the own-access rows and the
/// guardian rows both follow it).
pub const DENY_ORDER: [Reason; 8] = [
    Reason::NotGuardian,
    Reason::ProtectedSubject,
    Reason::ProtectedGuardian,
    Reason::UnknownAge,
    Reason::BelowAge,
    Reason::AgedOut,
    Reason::Sealed,
    Reason::Blocked,
];

/// The policy text, with `%SEAL%`, `%BLOCK%`, `%EXT%`, `%EARLY%` replaced by
/// one test per slot.
const TEMPLATE: &str = r#"// guardian-access rules (SPEC §3) in Cedar. Generated slot tests: see src/cedar.rs.

// ---- Allow rows ----

// Own access: e-services from 13, journal from 16.
@reason("own_access")
permit (principal, action in [Action::"journal", Action::"eservices"], resource)
when {
  principal == resource && resource has attains13 &&
  (if action == Action::"journal" then context.now >= resource.attains16
   else context.now >= resource.attains13)
};

// Own journal at 13-15 with an active early-access grant.
@reason("early_access")
permit (principal, action == Action::"journal", resource)
when {
  principal == resource && resource has attains13 &&
  context.now >= resource.attains13 && context.now < resource.attains16 &&
  (%EARLY%)
};

// A registered guardian of a child under 13.
@reason("guardian")
permit (principal, action in [Action::"journal", Action::"eservices"], resource)
when {
  principal != resource && resource has guardians && resource.guardians.contains(principal) &&
  resource has attains13 && context.now < resource.attains13
};

// A registered guardian of a 13-15-year-old's journal with an active
// extended-access grant naming them (journal only, ends at 16).
@reason("extended_access")
permit (principal, action == Action::"journal", resource)
when {
  principal != resource && resource has guardians && resource.guardians.contains(principal) &&
  resource has attains13 && context.now >= resource.attains13 && context.now < resource.attains16 &&
  (%EXT%)
};

// ---- Deny rows ----

@reason("not_guardian")
@names_reason_only("true")
forbid (principal, action, resource)
when {
  principal != resource && !(resource has guardians && resource.guardians.contains(principal))
};

@reason("protected_subject")
forbid (principal, action, resource)
when { principal != resource && resource has protected && resource.protected };

// Region setting `protected_guardian`, on by default.
@reason("protected_guardian")
forbid (principal, action, resource)
when { principal != resource && principal has protected && principal.protected };

@reason("unknown_age")
@names_reason_only("true")
forbid (principal, action, resource)
when { !(resource has attains13) };

@reason("below_age")
@names_reason_only("true")
forbid (principal, action, resource)
when {
  principal == resource && resource has attains13 &&
  (if action == Action::"eservices" then context.now < resource.attains13
   else context.now < resource.attains16 &&
        !(context.now >= resource.attains13 && (%EARLY%)))
};

@reason("aged_out")
@names_reason_only("true")
forbid (principal, action, resource)
when {
  principal != resource && resource has attains13 && context.now >= resource.attains13 &&
  !(action == Action::"journal" && context.now < resource.attains16 && (%EXT%))
};

// A seal closes the service to everyone, the subject included.
@reason("sealed")
forbid (principal, action, resource)
when { %SEAL% };

// A block names one guardian, or all when it names none.
@reason("blocked")
forbid (principal, action, resource)
when { principal != resource && (%BLOCK%) };
"#;

/// How many slots of each kind the policy tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slots {
    pub seal: usize,
    pub block: usize,
    pub ext: usize,
    pub early: usize,
}

impl Slots {
    /// The most rules of each kind on any one subject.
    pub fn of(rows: &Rows) -> Slots {
        let mut per: HashMap<(u64, u8), usize> = HashMap::new();
        for r in &rows.rules {
            *per.entry((r.subject.get(), kind_index(r.kind))).or_default() += 1;
        }
        let mut s = Slots::default();
        for ((_, k), n) in per {
            let slot = match k {
                0 => &mut s.seal,
                1 => &mut s.block,
                2 => &mut s.ext,
                _ => &mut s.early,
            };
            *slot = (*slot).max(n);
        }
        s
    }
}

fn kind_index(k: RuleKind) -> u8 {
    match k {
        RuleKind::Seal => 0,
        RuleKind::Block => 1,
        RuleKind::ExtendedAccess => 2,
        RuleKind::EarlyAccess => 3,
    }
}

fn slot_prefix(k: RuleKind) -> &'static str {
    match k {
        RuleKind::Seal => "seal",
        RuleKind::Block => "block",
        RuleKind::ExtendedAccess => "ext",
        RuleKind::EarlyAccess => "early",
    }
}

/// "Some slot of this kind holds a rule that is active now" (plus the
/// kind's own condition), as a disjunction over the slots.
fn any_active(prefix: &str, n: usize, extra: &str) -> String {
    if n == 0 {
        return "false".into();
    }
    (0..n)
        .map(|i| {
            let s = format!("resource.{prefix}{i}");
            format!(
                "(resource has {prefix}{i} && context.now >= {s}.from && \
                 (!({s} has until) || context.now < {s}.until) && \
                 (!({s} has lifted) || context.now < {s}.lifted){})",
                extra.replace("$", &s)
            )
        })
        .collect::<Vec<_>>()
        .join("\n   || ")
}

/// The full policy text for `slots`.
pub fn policy_text(slots: Slots) -> String {
    TEMPLATE
        .replace(
            "%SEAL%",
            &any_active("seal", slots.seal, " && $.services.contains(action)"),
        )
        .replace(
            "%BLOCK%",
            &any_active(
                "block",
                slots.block,
                " && $.services.contains(action) && (!($ has guardian) || $.guardian == principal)",
            ),
        )
        // Extended and early access are journal-only whatever a grant's
        // services say (the permits and forbids test the action).
        .replace("%EXT%", &any_active("ext", slots.ext, " && $.guardian == principal"))
        .replace("%EARLY%", &any_active("early", slots.early, ""))
}

fn entity(buf: &mut String, ty: &str, id: impl std::fmt::Display) {
    let _ = write!(buf, r#"{{"__entity":{{"type":"{ty}","id":"{id}"}}}}"#);
}

fn services(buf: &mut String, s: guardian_access::Services) {
    buf.push('[');
    for (i, svc) in s.iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        entity(buf, "Action", svc.as_str());
    }
    buf.push(']');
}

/// The entity store as Cedar's entity JSON (what a region would export).
pub fn entities_json(rows: &Rows) -> String {
    // Each subject's rules, by kind, in slot order.
    let mut slots: HashMap<u64, Vec<(RuleKind, u64)>> = HashMap::new();
    for r in &rows.rules {
        slots.entry(r.subject.get()).or_default().push((r.kind, r.id));
    }
    let mut out = String::with_capacity(rows.persons.len() * 200 + rows.rules.len() * 300);
    out.push('[');
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !first {
            out.push(',');
        }
        first = false;
    };
    for p in &rows.persons {
        sep(&mut out);
        let _ = write!(
            out,
            r#"{{"uid":{{"type":"Person","id":"{}"}},"attrs":{{"protected":{}"#,
            p.pid, p.protected
        );
        if let Some((a13, a16)) = p.attains {
            let _ = write!(out, r#","attains13":{a13},"attains16":{a16}"#);
        }
        if !p.guardians.is_empty() {
            out.push_str(r#","guardians":["#);
            for (i, g) in p.guardians.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                entity(&mut out, "Person", g);
            }
            out.push(']');
        }
        if let Some(list) = slots.get(&p.pid.get()) {
            let mut counts = [0usize; 4];
            for (kind, id) in list {
                let k = kind_index(*kind) as usize;
                let _ = write!(out, r#","{}{}":"#, slot_prefix(*kind), counts[k]);
                entity(&mut out, "Rule", id);
                counts[k] += 1;
            }
        }
        out.push_str(r#"},"parents":[]}"#);
    }
    for r in &rows.rules {
        sep(&mut out);
        let _ = write!(
            out,
            r#"{{"uid":{{"type":"Rule","id":"{}"}},"attrs":{{"kind":"{}","from":{}"#,
            r.id,
            r.kind.as_str(),
            r.valid_from
        );
        if let Some(u) = r.valid_until {
            let _ = write!(out, r#","until":{u}"#);
        }
        if let Some(l) = r.lifted_at {
            let _ = write!(out, r#","lifted":{l}"#);
        }
        out.push_str(r#","services":"#);
        services(&mut out, r.services);
        if let Some(g) = r.guardian {
            out.push_str(r#","guardian":"#);
            entity(&mut out, "Person", g);
        }
        if let Some(units) = &r.care_units {
            out.push_str(r#","care_units":["#);
            for (i, u) in units.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, r#""{u}""#);
            }
            out.push(']');
        }
        let _ = write!(out, r#"}},"parents":[{{"type":"Person","id":"{}"}}]}}"#, r.subject);
    }
    out.push(']');
    out
}

/// A loaded Cedar engine.
pub struct Cedar {
    pub policies: PolicySet,
    /// The same without the forbids that only name a reason.
    pub policies_min: PolicySet,
    pub entities: Entities,
    authorizer: Authorizer,
    /// Each policy's `@reason`.
    reasons: HashMap<PolicyId, Reason>,
}

impl Cedar {
    /// Parses the policies and the entity store: the load step.
    pub fn load(policy: &str, entities_json: &str) -> Cedar {
        let policies = PolicySet::from_str(policy).unwrap_or_else(|e| panic!("Cedar policy does not parse: {e:?}"));
        let entities = Entities::from_json_str(entities_json, None)
            .unwrap_or_else(|e| panic!("Cedar entities do not parse: {e:?}"));
        let reasons = policies
            .policies()
            .map(|p| {
                let name = p.annotation("reason").expect("every Cedar policy has a @reason");
                let reason = crate::data::parse_reason(name).unwrap_or_else(|| panic!("unknown @reason {name}"));
                (p.id().clone(), reason)
            })
            .collect();
        let policies_min = PolicySet::from_policies(
            policies
                .policies()
                .filter(|p| p.annotation("names_reason_only").is_none())
                .cloned(),
        )
        .unwrap_or_else(|e| panic!("Cedar minimal policy set: {e:?}"));
        Cedar {
            policies,
            policies_min,
            entities,
            authorizer: Authorizer::new(),
            reasons,
        }
    }

    /// The request for a case: principal, action, resource and `now`.
    pub fn request(case: &Case) -> Request {
        let person = EntityTypeName::from_str("Person").expect("type name");
        let action = EntityTypeName::from_str("Action").expect("type name");
        let uid = |ty: &EntityTypeName, id: String| EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id));
        let q = &case.query;
        let svc = match q.service {
            Service::Journal => "journal",
            Service::Eservices => "eservices",
        };
        let context =
            Context::from_pairs([("now".to_owned(), RestrictedExpression::new_long(case.at))]).expect("Cedar context");
        Request::new(
            uid(&person, q.actor.to_string()),
            uid(&action, svc.to_owned()),
            uid(&person, q.subject.to_string()),
            context,
            None,
        )
        .expect("Cedar request")
    }

    /// One check: allowed?
    #[inline]
    pub fn allowed(&self, request: &Request) -> bool {
        self.authorizer
            .is_authorized(request, &self.policies, &self.entities)
            .decision()
            == Decision::Allow
    }

    /// One check against the policy set without the reason-only forbids:
    /// the same allow/deny (verified), no reason.
    #[inline]
    pub fn allowed_min(&self, request: &Request) -> bool {
        self.authorizer
            .is_authorized(request, &self.policies_min, &self.entities)
            .decision()
            == Decision::Allow
    }

    /// One check with its reason (for verification), and the number of
    /// policy evaluation errors Cedar reported.
    pub fn explain(&self, request: &Request) -> (bool, Option<Reason>, usize) {
        let response = self.authorizer.is_authorized(request, &self.policies, &self.entities);
        let allowed = response.decision() == Decision::Allow;
        let fired: Vec<Reason> = response
            .diagnostics()
            .reason()
            .filter_map(|id| self.reasons.get(id).copied())
            .collect();
        let errors = response.diagnostics().errors().count();
        let reason = if allowed {
            fired.first().copied()
        } else {
            DENY_ORDER.iter().copied().find(|r| fired.contains(r))
        };
        (allowed, reason, errors)
    }
}
