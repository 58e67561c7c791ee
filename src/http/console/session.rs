//! The console's server-side sessions (SPEC §9): a random 256-bit id in a
//! cookie, 15 minutes idle and 8 hours at most, each with its own CSRF
//! token and its own opaque handles for the children looked up in it. They
//! live in a `DashMap` on the admin listener only (never on the check
//! path); expired ones are swept every minute.
//!
//! Logins on their way to the identity provider (`state`, `nonce`, PKCE
//! verifier) wait in a second map for at most ten minutes, and are taken
//! out on first use: a replayed callback finds nothing.

use std::sync::Arc;

use dashmap::DashMap;
use subtle::ConstantTimeEq;

use crate::actor::Caller;
use crate::core::identity::Pid;
use crate::core::time::Instant;

/// A session ends after this long without a request.
pub const IDLE_NS: i64 = 15 * 60 * 1_000_000_000;
/// And this long after login, whatever happens.
pub const ABSOLUTE_NS: i64 = 8 * 3600 * 1_000_000_000;
/// A login must come back from the identity provider within this.
pub const LOGIN_NS: i64 = 10 * 60 * 1_000_000_000;

/// 256 random bits as 64 hex digits.
pub fn random_id() -> String {
    let mut b = [0u8; 32];
    // The OS's generator does not fail on Linux; if it ever did, the id
    // would be refused as too short rather than predictable.
    if getrandom::fill(&mut b).is_err() {
        return String::new();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One logged-in person.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who, with their role and unit.
    pub user: Caller,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When they logged in.
    pub created: Instant,
    /// Their last request.
    pub seen: Instant,
    /// The children looked up in this session, by handle.
    pub handles: Vec<(String, Pid)>,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.as_nanos().saturating_sub(self.seen.as_nanos()) >= IDLE_NS
            || now.as_nanos().saturating_sub(self.created.as_nanos()) >= ABSOLUTE_NS
    }

    /// Whether `token` is this session's CSRF token (in constant time).
    pub fn csrf_ok(&self, token: &str) -> bool {
        !token.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(token.as_bytes()))
    }

    /// The child behind `handle`, if this session made it.
    pub fn child(&self, handle: &str) -> Option<Pid> {
        self.handles.iter().find(|(h, _)| h == handle).map(|(_, p)| *p)
    }
}

/// A login waiting for the identity provider's answer.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier.
    pub verifier: String,
    /// When it started.
    pub started: Instant,
}

/// Every session and pending login of this instance.
#[derive(Debug, Default)]
pub struct Sessions {
    live: DashMap<String, Session>,
    pending: DashMap<String, Pending>,
}

/// Most children one session keeps handles for (the oldest go first).
const MAX_HANDLES: usize = 2000;

/// Most logins waiting for the identity provider at once: anyone can start
/// one, so there is a ceiling.
pub const MAX_PENDING: usize = 10_000;

impl Sessions {
    /// A new session for `user`; its id.
    pub fn create(&self, user: Caller, now: Instant) -> String {
        let id = random_id();
        self.live.insert(
            id.clone(),
            Session {
                user,
                csrf: random_id(),
                created: now,
                seen: now,
                handles: Vec::new(),
            },
        );
        id
    }

    /// The session `id`, if it is live; a request through it counts as
    /// activity. An expired one is removed.
    pub fn touch(&self, id: &str, now: Instant) -> Option<Session> {
        if id.len() != 64 {
            return None;
        }
        let mut s = self.live.get_mut(id)?;
        if s.expired(now) {
            drop(s);
            self.live.remove(id);
            return None;
        }
        s.seen = now;
        Some(s.clone())
    }

    /// The handle for `child` in session `id` (the same one each time).
    pub fn handle_for(&self, id: &str, child: Pid) -> Option<String> {
        let mut s = self.live.get_mut(id)?;
        if let Some(i) = s.handles.iter().position(|(_, p)| *p == child) {
            // The most recently used stay longest.
            let entry = s.handles.remove(i);
            let h = entry.0.clone();
            s.handles.push(entry);
            return Some(h);
        }
        let h = random_id()[..32].to_owned();
        if s.handles.len() >= MAX_HANDLES {
            s.handles.remove(0);
        }
        s.handles.push((h.clone(), child));
        Some(h)
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        self.live.remove(id);
    }

    /// Remembers a login on its way, under its `state`; `false` when too
    /// many are waiting (expired ones are swept first).
    pub fn start_login(&self, state: String, pending: Pending) -> bool {
        if self.pending.len() >= MAX_PENDING {
            let now = pending.started;
            self.pending
                .retain(|_, p| now.as_nanos().saturating_sub(p.started.as_nanos()) < LOGIN_NS);
            if self.pending.len() >= MAX_PENDING {
                return false;
            }
        }
        self.pending.insert(state, pending);
        true
    }

    /// Takes the login under `state` out (once), if it has not expired.
    pub fn take_login(&self, state: &str, now: Instant) -> Option<Pending> {
        let (_, p) = self.pending.remove(state)?;
        (now.as_nanos().saturating_sub(p.started.as_nanos()) < LOGIN_NS).then_some(p)
    }

    /// Removes expired sessions and logins; how many sessions went.
    pub fn sweep(&self, now: Instant) -> usize {
        let before = self.live.len();
        self.live.retain(|_, s| !s.expired(now));
        self.pending
            .retain(|_, p| now.as_nanos().saturating_sub(p.started.as_nanos()) < LOGIN_NS);
        before - self.live.len()
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// Sweeps `sessions` every minute until the last other holder lets go.
pub fn sweep_every_minute(sessions: &Arc<Sessions>, clock: crate::clock::Clock) {
    let weak = Arc::downgrade(sessions);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            let Some(s) = weak.upgrade() else { return };
            s.sweep(clock.now());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::Role;

    fn at(min: i64) -> Instant {
        Instant::from_nanos(1_800_000_000_000_000_000 + min * 60_000_000_000)
    }

    fn user() -> Caller {
        Caller {
            name: "Kim".into(),
            role: Role::Registrar,
            unit: None,
            hsa_id: None,
        }
    }

    #[test]
    fn a_session_ends_after_15_idle_minutes_or_8_hours() {
        let s = Sessions::default();
        let id = s.create(user(), at(0));
        assert_eq!(id.len(), 64);
        assert!(s.touch(&id, at(14)).is_some());
        assert!(s.touch(&id, at(28)).is_some(), "activity moves the idle limit");
        assert!(s.touch(&id, at(44)).is_none(), "16 idle minutes");
        assert!(s.touch(&id, at(0)).is_none(), "and it is gone");

        let id = s.create(user(), at(0));
        for m in (10..480).step_by(10) {
            assert!(s.touch(&id, at(m)).is_some());
        }
        assert!(s.touch(&id, at(480)).is_none(), "8 hours at most");
    }

    #[test]
    fn handles_are_per_session_and_stable() {
        let s = Sessions::default();
        let (a, b) = (s.create(user(), at(0)), s.create(user(), at(0)));
        let kid = crate::testing::pid("201509162390");
        let h = s.handle_for(&a, kid).unwrap();
        assert_eq!(s.handle_for(&a, kid).unwrap(), h);
        assert_eq!(s.touch(&a, at(1)).unwrap().child(&h), Some(kid));
        assert_eq!(s.touch(&b, at(1)).unwrap().child(&h), None);
        assert!(!h.contains("201509162390") && !h.contains("1509162390"));
    }

    #[test]
    fn a_login_is_taken_once_and_expires() {
        let s = Sessions::default();
        let p = Pending {
            nonce: "n".into(),
            verifier: "v".into(),
            started: at(0),
        };
        assert!(s.start_login("st".into(), p.clone()));
        assert!(s.take_login("st", at(1)).is_some());
        assert!(s.take_login("st", at(1)).is_none(), "replayed");
        assert!(s.start_login("st2".into(), p));
        assert!(s.take_login("st2", at(11)).is_none(), "too late");
        let id = s.create(user(), at(0));
        assert_eq!(s.sweep(at(20)), 1);
        assert!(s.touch(&id, at(20)).is_none());
    }

    #[test]
    fn csrf_is_compared_whole() {
        let s = Sessions::default();
        let id = s.create(user(), at(0));
        let sess = s.touch(&id, at(0)).unwrap();
        assert!(sess.csrf_ok(&sess.csrf.clone()));
        assert!(!sess.csrf_ok(""));
        assert!(!sess.csrf_ok(&sess.csrf[..63]));
    }
}
