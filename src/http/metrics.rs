//! Prometheus metrics for both listeners: fixed arrays of relaxed
//! atomic counters, so recording is a few uncontended increments and needs
//! no lock and no allocation.
//!
//! Labels come only from closed sets (endpoint, reason, error code, bucket);
//! no identity number can reach a label.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::core::decide::Reason;
use crate::http::error::ErrorCode;

/// The endpoints requests are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/check`.
    Check,
    /// `POST /v1/check/batch`.
    Batch,
    /// `POST /v1/children`.
    Children,
    /// `GET /v1/authz`.
    Authz,
    /// `/healthz`, `/readyz`, `/metrics`, `/v1/status`.
    Operations,
    /// Anything else.
    Other,
    /// The admin listener, every route.
    Admin,
    /// Envoy's gRPC ext_authz (`Authorization/Check`).
    Grpc,
}

impl Endpoint {
    const ALL: [Endpoint; 8] = [
        Endpoint::Check,
        Endpoint::Batch,
        Endpoint::Children,
        Endpoint::Authz,
        Endpoint::Operations,
        Endpoint::Other,
        Endpoint::Admin,
        Endpoint::Grpc,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Endpoint::Check => "check",
            Endpoint::Batch => "batch",
            Endpoint::Children => "children",
            Endpoint::Authz => "authz",
            Endpoint::Operations => "operations",
            Endpoint::Other => "other",
            Endpoint::Admin => "admin",
            Endpoint::Grpc => "grpc",
        }
    }
}

const ENDPOINTS: usize = Endpoint::ALL.len();
const REASONS: usize = Reason::ALL.len();
const CODES: usize = ErrorCode::ALL.len();

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 100_000];

/// The counters.
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; ENDPOINTS],
    decisions: [[AtomicU64; REASONS]; ENDPOINTS],
    errors: [[AtomicU64; CODES]; ENDPOINTS],
    latency: [[AtomicU64; BUCKETS_US.len() + 1]; ENDPOINTS],
    latency_sum_ns: [AtomicU64; ENDPOINTS],
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            decisions: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            errors: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_sum_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
        }
    }
}

/// Facts about the loaded snapshot and the store, read when metrics are scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotGauges {
    /// Whether checks are answered (a snapshot is loaded and the store not
    /// lost for longer than `max_staleness`).
    pub ready: bool,
    /// The store has not answered for a while (checks still answered).
    pub stale: bool,
    /// The snapshot's revision.
    pub revision: u64,
    /// Seconds since it was loaded.
    pub age_seconds: f64,
    /// Entries in its overlays (changed since the last fold).
    pub overlay: u64,
    /// The newest revision seen in the store.
    pub store_revision: u64,
    /// Seconds since the store last answered.
    pub contact_age_seconds: Option<f64>,
    /// Failed reads of the store.
    pub store_errors: u64,
    /// Background folds.
    pub folds: u64,
    /// Snapshot files written.
    pub checkpoints: u64,
    /// Full builds from the store.
    pub rebuilds: u64,
}

impl Metrics {
    /// Counts one request and how long it took to answer.
    pub fn request(&self, endpoint: Endpoint, elapsed: std::time::Duration) {
        let e = endpoint as usize;
        self.requests[e].fetch_add(1, Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        self.latency[e][bucket].fetch_add(1, Relaxed);
        self.latency_sum_ns[e].fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Counts one decision.
    pub fn decision(&self, endpoint: Endpoint, reason: Reason) {
        self.decisions[endpoint as usize][reason as usize].fetch_add(1, Relaxed);
    }

    /// Counts one error answer.
    pub fn error(&self, endpoint: Endpoint, code: ErrorCode) {
        self.errors[endpoint as usize][code.index()].fetch_add(1, Relaxed);
    }

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
    }

    /// A connection ended.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    /// A connection was turned away at the connection limit.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, snap: SnapshotGauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let _ = self.write(&mut out, snap);
        out
    }

    fn write(&self, out: &mut String, snap: SnapshotGauges) -> std::fmt::Result {
        family(
            out,
            "guardian_access_requests_total",
            "counter",
            "Requests answered, by endpoint.",
        )?;
        for e in Endpoint::ALL {
            let n = self.requests[e as usize].load(Relaxed);
            writeln!(out, "guardian_access_requests_total{{endpoint=\"{}\"}} {n}", e.as_str())?;
        }
        family(
            out,
            "guardian_access_decisions_total",
            "counter",
            "Decisions, by endpoint, decision and reason.",
        )?;
        for e in Endpoint::ALL {
            for r in Reason::ALL {
                let n = self.decisions[e as usize][r as usize].load(Relaxed);
                if n > 0 || e == Endpoint::Check {
                    let decision = if r.allows() { "allow" } else { "deny" };
                    writeln!(
                        out,
                        "guardian_access_decisions_total{{endpoint=\"{}\",decision=\"{decision}\",reason=\"{}\"}} {n}",
                        e.as_str(),
                        r.as_str()
                    )?;
                }
            }
        }
        family(
            out,
            "guardian_access_errors_total",
            "counter",
            "Error answers, by endpoint and code.",
        )?;
        for e in Endpoint::ALL {
            for code in ErrorCode::ALL {
                let n = self.errors[e as usize][code.index()].load(Relaxed);
                if n > 0 {
                    writeln!(
                        out,
                        "guardian_access_errors_total{{endpoint=\"{}\",code=\"{}\"}} {n}",
                        e.as_str(),
                        code.as_str()
                    )?;
                }
            }
        }
        family(
            out,
            "guardian_access_request_duration_seconds",
            "histogram",
            "Time from a request's head to its answer, by endpoint.",
        )?;
        for e in Endpoint::ALL {
            let name = e.as_str();
            let mut cumulative = 0;
            for (i, le) in BUCKETS_US.iter().enumerate() {
                cumulative += self.latency[e as usize][i].load(Relaxed);
                let le = *le as f64 / 1e6;
                writeln!(
                    out,
                    "guardian_access_request_duration_seconds_bucket{{endpoint=\"{name}\",le=\"{le}\"}} {cumulative}"
                )?;
            }
            cumulative += self.latency[e as usize][BUCKETS_US.len()].load(Relaxed);
            writeln!(
                out,
                "guardian_access_request_duration_seconds_bucket{{endpoint=\"{name}\",le=\"+Inf\"}} {cumulative}"
            )?;
            let sum = self.latency_sum_ns[e as usize].load(Relaxed) as f64 / 1e9;
            writeln!(
                out,
                "guardian_access_request_duration_seconds_sum{{endpoint=\"{name}\"}} {sum}"
            )?;
            writeln!(
                out,
                "guardian_access_request_duration_seconds_count{{endpoint=\"{name}\"}} {cumulative}"
            )?;
        }
        family(
            out,
            "guardian_access_ready",
            "gauge",
            "1 when a snapshot is loaded and checks are answered.",
        )?;
        writeln!(out, "guardian_access_ready {}", u8::from(snap.ready))?;
        family(
            out,
            "guardian_access_snapshot_revision",
            "gauge",
            "Revision of the snapshot checks are answered from.",
        )?;
        writeln!(out, "guardian_access_snapshot_revision {}", snap.revision)?;
        family(
            out,
            "guardian_access_snapshot_age_seconds",
            "gauge",
            "Seconds since that snapshot was loaded.",
        )?;
        writeln!(out, "guardian_access_snapshot_age_seconds {:.3}", snap.age_seconds)?;
        let gauges: [(&str, &str, &str, f64); 9] = [
            (
                "guardian_access_stale",
                "gauge",
                "1 when the store has not answered for a while (checks are still answered until max_staleness).",
                f64::from(u8::from(snap.stale)),
            ),
            (
                "guardian_access_overlay_entries",
                "gauge",
                "Entries changed since the last fold (persons and subjects with changed rules).",
                snap.overlay as f64,
            ),
            (
                "guardian_access_store_revision",
                "gauge",
                "Newest revision seen in the store.",
                snap.store_revision as f64,
            ),
            (
                "guardian_access_replication_lag_revisions",
                "gauge",
                "Store revisions not yet in the snapshot.",
                snap.store_revision.saturating_sub(snap.revision) as f64,
            ),
            (
                "guardian_access_store_contact_age_seconds",
                "gauge",
                "Seconds since the store last answered (-1 before it ever did).",
                snap.contact_age_seconds.unwrap_or(-1.0),
            ),
            (
                "guardian_access_store_errors_total",
                "counter",
                "Failed reads of the store.",
                snap.store_errors as f64,
            ),
            (
                "guardian_access_folds_total",
                "counter",
                "Background folds of the overlay into new bases.",
                snap.folds as f64,
            ),
            (
                "guardian_access_checkpoints_total",
                "counter",
                "Snapshot files written.",
                snap.checkpoints as f64,
            ),
            (
                "guardian_access_rebuilds_total",
                "counter",
                "Full builds of the snapshot from the store.",
                snap.rebuilds as f64,
            ),
        ];
        for (name, kind, help, value) in gauges {
            family(out, name, kind, help)?;
            writeln!(out, "{name} {value}")?;
        }
        family(
            out,
            "guardian_access_connections_open",
            "gauge",
            "Open client connections.",
        )?;
        writeln!(
            out,
            "guardian_access_connections_open {}",
            self.connections_open.load(Relaxed)
        )?;
        family(
            out,
            "guardian_access_connections_refused_total",
            "counter",
            "Connections closed at once at the connection limit.",
        )?;
        writeln!(
            out,
            "guardian_access_connections_refused_total {}",
            self.connections_refused.load(Relaxed)
        )?;
        Ok(())
    }
}

/// The `# HELP` and `# TYPE` lines that open a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) -> std::fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reasons_index_their_own_counters() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "Reason::ALL must list reasons in declaration order");
        }
    }

    #[test]
    fn counts_land_in_their_labels_and_buckets() {
        let m = Metrics::default();
        m.request(Endpoint::Check, Duration::from_micros(7));
        m.request(Endpoint::Check, Duration::from_millis(3));
        m.decision(Endpoint::Check, Reason::Blocked);
        m.error(Endpoint::Authz, ErrorCode::InvalidIdentifier);
        let text = m.render(SnapshotGauges {
            ready: true,
            revision: 42,
            age_seconds: 1.5,
            store_revision: 45,
            ..SnapshotGauges::default()
        });
        assert!(text.contains("guardian_access_requests_total{endpoint=\"check\"} 2"));
        assert!(
            text.contains("guardian_access_decisions_total{endpoint=\"check\",decision=\"deny\",reason=\"blocked\"} 1")
        );
        assert!(
            text.contains(
                "guardian_access_decisions_total{endpoint=\"check\",decision=\"allow\",reason=\"guardian\"} 0"
            )
        );
        assert!(text.contains("guardian_access_errors_total{endpoint=\"authz\",code=\"invalid_identifier\"} 1"));
        assert!(text.contains("guardian_access_request_duration_seconds_bucket{endpoint=\"check\",le=\"0.000005\"} 0"));
        assert!(text.contains("guardian_access_request_duration_seconds_bucket{endpoint=\"check\",le=\"0.00001\"} 1"));
        assert!(text.contains("guardian_access_request_duration_seconds_bucket{endpoint=\"check\",le=\"0.005\"} 2"));
        assert!(text.contains("guardian_access_request_duration_seconds_count{endpoint=\"check\"} 2"));
        assert!(text.contains("guardian_access_snapshot_revision 42"));
        assert!(text.contains("guardian_access_ready 1"));
        assert!(text.contains("\n# TYPE guardian_access_request_duration_seconds histogram\n"));
        assert!(text.starts_with("# HELP guardian_access_requests_total Requests answered, by endpoint.\n# TYPE guardian_access_requests_total counter\n"));
        let families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(families, text.lines().filter(|l| l.starts_with("# HELP")).count());
        assert!(text.contains("guardian_access_replication_lag_revisions 3\n"));
        assert_eq!(families, 18);
    }
}
