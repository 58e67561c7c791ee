//! A throwaway PostgreSQL cluster for tests and benches: `initdb` and
//! `pg_ctl` from the machine's PostgreSQL binaries, in a temporary
//! directory, listening on a free loopback port, run as user `postgres`
//! when we are root (PostgreSQL refuses to run as root).
//!
//! Where no binaries exist, [`Cluster::start`] prints a loud `SKIPPED` and
//! returns `None`; under `$CI` it fails instead, so CI never skips.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running cluster; stopped and removed when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
    /// Serving TLS (set before restarts).
    tls: std::sync::Mutex<bool>,
}

fn find_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Starts a fresh cluster, or `None` (loudly) where PostgreSQL is not
    /// installed outside CI.
    pub fn start() -> Option<Cluster> {
        let Some(bin) = find_bin() else {
            if std::env::var_os("CI").is_some() {
                panic!("no PostgreSQL binaries under /usr/lib/postgresql/*/bin (set PG_BIN): CI must not skip");
            }
            eprintln!("\n*** SKIPPED: no PostgreSQL binaries under /usr/lib/postgresql/*/bin (set PG_BIN) ***\n");
            return None;
        };
        let run_as = is_root().then(|| "postgres".to_owned());
        let dir = tempfile::Builder::new()
            .prefix("guardian-access-pg-")
            .tempdir()
            .unwrap();
        if run_as.is_some() {
            // The server runs as `postgres`: it must own its directory.
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let cluster = Cluster {
            dir,
            bin,
            port: free_port(),
            run_as,
            tls: std::sync::Mutex::new(false),
        };
        let out = cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        cluster.start_server();
        Some(cluster)
    }

    /// A cluster that accepts TCP only over TLS (`hostssl`; plain TCP is
    /// rejected), with a certificate for 127.0.0.1 from a CA made here; the
    /// CA's PEM file for clients' `sslrootcert`.
    pub fn start_tls() -> Option<(Cluster, std::path::PathBuf)> {
        let cluster = Cluster::start()?;
        let out = cluster.run("pg_ctl", &["-D", &cluster.data(), "-m", "fast", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let data = std::path::PathBuf::from(cluster.data());
        std::fs::write(data.join("server.crt"), cert.pem()).unwrap();
        std::fs::write(data.join("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        if cluster.run_as.is_some() {
            for f in ["server.crt", "server.key", "pg_hba.conf"] {
                let status = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(data.join(f))
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
        let ca_path = cluster.dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        *cluster.tls.lock().unwrap() = true;
        cluster.start_server();
        Some((cluster, ca_path))
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(self.dir.path()).output().unwrap()
    }

    /// Starts (or restarts after [`Cluster::stop`]) the server.
    pub fn start_server(&self) {
        let ssl = if *self.tls.lock().unwrap() {
            " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
        } else {
            ""
        };
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200{ssl}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let out = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-o", &opts, "-w", "-t", "60", "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// Stops the server the hard way (`-m immediate`: a crash, as far as
    /// clients can tell).
    pub fn stop(&self) {
        let out = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub async fn database(&self, name: &str) -> String {
        // Through the Unix socket: the TLS-only cluster refuses plain TCP.
        let admin = format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.path().display(),
            self.port
        );
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        self.url(name)
    }

    /// The directory it lives in.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `sql` on database `db` through the Unix socket, in a session
    /// that may write even where writes are off by default.
    pub async fn sql(&self, db: &str, sql: &str) -> Vec<tokio_postgres::SimpleQueryMessage> {
        let conn = format!(
            "host={} port={} user=postgres dbname={db} options='-c default_transaction_read_only=off'",
            self.dir.path().display(),
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.simple_query(sql).await.unwrap()
    }

    /// The first column of the first row `sql` returns; `None` if it
    /// returns none or fails (for polling a standby that may not have the
    /// schema yet).
    pub async fn value(&self, db: &str, sql: &str) -> Option<String> {
        let conn = format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.path().display(),
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.ok()?;
        tokio::spawn(connection);
        client.simple_query(sql).await.ok()?.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
    }

    /// A streaming standby of this cluster named `name` (its
    /// `application_name`, for `synchronous_standby_names`): a base backup
    /// with `pg_basebackup -R`, started on its own port.
    pub fn standby(&self, name: &str) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("guardian-access-pg-standby-")
            .tempdir()
            .unwrap();
        if self.run_as.is_some() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let standby = Cluster {
            dir,
            bin: self.bin.clone(),
            port: free_port(),
            run_as: self.run_as.clone(),
            tls: std::sync::Mutex::new(false),
        };
        let source = format!(
            "host={} port={} user=postgres application_name={name}",
            self.dir.path().display(),
            self.port
        );
        let out = standby.run(
            "pg_basebackup",
            &[
                "-d",
                &source,
                "-D",
                &standby.data(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        standby.start_server();
        standby
    }

    /// Appends settings to its `postgresql.auto.conf` (while stopped).
    pub fn configure(&self, lines: &str) {
        use std::io::Write;
        let path = Path::new(&self.data()).join("postgresql.auto.conf");
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(f, "{lines}").unwrap();
    }

    /// Promotes a standby to a primary and waits until it is one.
    pub fn promote(&self) {
        let out = self.run("pg_ctl", &["-D", &self.data(), "-w", "-t", "60", "promote"]);
        assert!(
            out.status.success(),
            "pg_ctl promote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server cleanly (`-m fast`).
    pub fn stop_fast(&self) {
        let out = self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}
