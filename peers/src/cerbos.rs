//! Cerbos, over HTTP: the binary from the npm package
//! `@cerbos/cerbos-linux-x64`, a disk policy store in a temporary
//! directory, started here on loopback ports, asked with
//! `POST /api/check/resources`.
//!
//! Cerbos holds no data: every request carries the principal's attributes
//! (protected flag, the instant asked about) and the resource's (the
//! subject's protected flag, age instants, guardians and all their
//! restrictions and grants), which the caller must look up in a store of
//! its own. The request bodies here are prepared before timing, so the
//! figures are Cerbos's alone; the caller's lookups come on top.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guardian_access::{Pid, Reason, Service};

use crate::data::{Case, Rows, parse_reason};

const ROLES: &str = include_str!("../policies/cerbos/guardian_roles.yaml");
const SUBJECT: &str = include_str!("../policies/cerbos/subject.yaml");
const PACKAGE: &str = "@cerbos/cerbos-linux-x64";

/// The guardian-access rules.
pub const POLICIES: [(&str, &str); 2] = [("guardian_roles.yaml", ROLES), ("subject.yaml", SUBJECT)];

/// A floor for comparison: one rule, allow everything, no condition. What
/// Cerbos costs per request whatever the policy.
pub const FLOOR: [(&str, &str); 1] = [(
    "subject.yaml",
    "apiVersion: api.cerbos.dev/v1\nresourcePolicy:\n  resource: subject\n  version: default\n  rules:\n    \
     - actions: [\"*\"]\n      effect: EFFECT_ALLOW\n      roles: [\"*\"]\n",
)];

/// Finds the Cerbos binary under `dir`, installing the npm package there
/// first if it is not.
pub fn binary(dir: &Path) -> PathBuf {
    let bin = dir.join("node_modules/@cerbos/cerbos-linux-x64/cerbos-linux-x64");
    if !bin.exists() {
        eprintln!("installing {PACKAGE} into {} (npm) ...", dir.display());
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(dir)
            .arg(PACKAGE)
            .status()
            .unwrap_or_else(|e| panic!("cannot run npm to install {PACKAGE}: {e}"));
        assert!(status.success(), "npm install {PACKAGE} failed");
    }
    assert!(bin.exists(), "no Cerbos binary at {} after npm install", bin.display());
    bin
}

/// The Cerbos version string (`cerbos --version`, first line).
pub fn version(bin: &Path) -> String {
    let out = Command::new(bin).arg("--version").output().expect("cerbos --version");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("?")
        .trim()
        .to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running Cerbos PDP, stopped (killed by its own pid) when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// Spawn to first healthy answer.
    pub start: Duration,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Writes the policies and a configuration into a temporary directory
    /// and starts Cerbos on loopback with `gomaxprocs` OS threads for Go
    /// code (so it gets the same one core as our server), telemetry off.
    pub fn start(bin: &Path, gomaxprocs: usize, files: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policy directory");
        for (name, text) in files {
            std::fs::write(policies.join(name), text).expect("write policy");
        }
        let (http, grpc, debug) = (free_port(), free_port(), free_port());
        let config = format!(
            "server:\n  httpListenAddr: \"127.0.0.1:{http}\"\n  grpcListenAddr: \"127.0.0.1:{grpc}\"\n\
             storage:\n  driver: disk\n  disk:\n    directory: \"{}\"\n    watchForChanges: false\n\
             audit:\n  enabled: false\n\
             telemetry:\n  disabled: true\n",
            policies.display()
        );
        let config_path = dir.path().join("cerbos.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("cerbos.log")).expect("log file");
        let t = Instant::now();
        let child = Command::new(bin)
            .arg("server")
            .arg(format!("--config={}", config_path.display()))
            .arg(format!("--debug-listen-addr=127.0.0.1:{debug}"))
            .arg("--log-level=warn")
            .env("CERBOS_NO_TELEMETRY", "1")
            .env("GOMAXPROCS", gomaxprocs.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let addr: SocketAddr = format!("127.0.0.1:{http}").parse().expect("address");
        let mut server = Server {
            child,
            addr,
            start: Duration::ZERO,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if healthy(addr) {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(server._dir.path().join("cerbos.log")).unwrap_or_default();
                panic!("Cerbos exited ({status}) before it was ready:\n{log}");
            }
            assert!(Instant::now() < deadline, "Cerbos not healthy within 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        server.start = t.elapsed();
        server
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The Cerbos process's resident memory now (`VmRSS`) and at its peak
    /// (`VmHWM`), in bytes.
    pub fn rss(&self) -> (usize, usize) {
        let pid = self.child.id();
        (
            crate::mem::status_bytes(pid, "VmRSS"),
            crate::mem::status_bytes(pid, "VmHWM"),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /_cerbos/health` answers 200.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    use std::io::Write;
    if s.write_all(b"GET /_cerbos/health HTTP/1.1\r\nhost: cerbos\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200")
}

/// The caller's side: what it must hold to ask Cerbos (everything).
pub struct Caller<'r> {
    rows: &'r Rows,
    person: HashMap<Pid, usize>,
    rules: HashMap<Pid, Vec<usize>>,
}

impl<'r> Caller<'r> {
    pub fn new(rows: &'r Rows) -> Caller<'r> {
        let person = rows.persons.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
        let mut rules: HashMap<Pid, Vec<usize>> = HashMap::new();
        for (i, r) in rows.rules.iter().enumerate() {
            rules.entry(r.subject).or_default().push(i);
        }
        Caller { rows, person, rules }
    }

    /// The `/api/check/resources` body for a case.
    pub fn body(&self, case: &Case) -> String {
        let q = &case.query;
        let actor = self.person.get(&q.actor).map(|&i| &self.rows.persons[i]);
        let subject = self.person.get(&q.subject).map(|&i| &self.rows.persons[i]);
        let svc = match q.service {
            Service::Journal => "journal",
            Service::Eservices => "eservices",
        };
        let mut b = String::with_capacity(512);
        let _ = write!(
            b,
            r#"{{"requestId":"x","principal":{{"id":"{}","roles":["user"],"attr":{{"protected":{},"at":{}}}}},"#,
            q.actor,
            actor.is_some_and(|p| p.protected),
            case.at
        );
        let _ = write!(
            b,
            r#""resources":[{{"actions":["{svc}"],"resource":{{"kind":"subject","id":"{}","attr":{{"protected":{}"#,
            q.subject,
            subject.is_some_and(|p| p.protected)
        );
        if let Some(p) = subject {
            if let Some((a13, a16)) = p.attains {
                let _ = write!(b, r#","attains13":{a13},"attains16":{a16}"#);
            }
            b.push_str(r#","guardians":["#);
            for (i, g) in p.guardians.iter().enumerate() {
                if i > 0 {
                    b.push(',');
                }
                let _ = write!(b, r#""{g}""#);
            }
            b.push(']');
        }
        if let Some(list) = self.rules.get(&q.subject) {
            b.push_str(r#","rules":["#);
            for (n, &i) in list.iter().enumerate() {
                let r = &self.rows.rules[i];
                if n > 0 {
                    b.push(',');
                }
                let _ = write!(b, r#"{{"kind":"{}","valid_from":{}"#, r.kind.as_str(), r.valid_from);
                if let Some(u) = r.valid_until {
                    let _ = write!(b, r#","valid_until":{u}"#);
                }
                if let Some(l) = r.lifted_at {
                    let _ = write!(b, r#","lifted_at":{l}"#);
                }
                if let Some(g) = r.guardian {
                    let _ = write!(b, r#","guardian":"{g}""#);
                }
                b.push_str(r#","services":["#);
                for (j, s) in r.services.iter().enumerate() {
                    if j > 0 {
                        b.push(',');
                    }
                    let _ = write!(b, r#""{}""#, s.as_str());
                }
                b.push(']');
                if let Some(units) = &r.care_units {
                    b.push_str(r#","care_units":["#);
                    for (j, u) in units.iter().enumerate() {
                        if j > 0 {
                            b.push(',');
                        }
                        let _ = write!(b, r#""{u}""#);
                    }
                    b.push(']');
                }
                b.push('}');
            }
            b.push(']');
        }
        b.push_str("}}}]}");
        b
    }
}

/// Reads a Cerbos answer: the effect of the one action, and the reason
/// from the outputs (allow: the allow rule's; deny: the one deny rule's).
pub fn parse_answer(body: &[u8], service: Service) -> Result<(bool, Option<Reason>), String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(body)))?;
    let result = &v["results"][0];
    let effect = result["actions"][service.as_str()]
        .as_str()
        .ok_or_else(|| format!("no effect for the action in {v}"))?;
    let allowed = effect == "EFFECT_ALLOW";
    // Each output's `src` ends in `#<rule name>`; allow rules are named
    // after their reason, deny rules too (with a service suffix).
    let mut reasons = Vec::new();
    if let Some(outputs) = result["outputs"].as_array() {
        for o in outputs {
            if let Some(r) = o["val"].as_str().and_then(parse_reason) {
                reasons.push(r);
            }
        }
    }
    let reason = reasons.iter().copied().find(|r| r.allows() == allowed);
    Ok((allowed, reason))
}
