//! The log filter: `RUST_LOG` as the operator writes it, plus the caps that
//! keep identity numbers out of every log line whatever it says.
//!
//! `tokio-postgres` logs every statement with its parameters at `debug`
//! (through the `log` crate, which the subscriber forwards); those
//! parameters are identity numbers. So its target is held at `info` even
//! when the operator asks for `trace`.

use tracing_subscriber::EnvFilter;

/// Targets held at a level no matter what `RUST_LOG` says.
pub const CAPS: &[&str] = &["tokio_postgres=info"];

/// `directives` (as in `RUST_LOG`; `info` if they do not parse) with
/// [`CAPS`] added last, so that they win.
pub fn filter(directives: &str) -> EnvFilter {
    let mut f = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"));
    for cap in CAPS {
        if let Ok(d) = cap.parse() {
            f = f.add_directive(d);
        }
    }
    f
}
