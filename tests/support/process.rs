//! The binary as a process (integration tests only: examples have no
//! `CARGO_BIN_EXE_*`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use super::try_get;

/// The binary as a process, on port 0, its addresses read from the
/// `listening check=… admin=…` line.
pub struct Process {
    pub child: std::process::Child,
    pub check: SocketAddr,
    pub admin: SocketAddr,
}

impl Process {
    /// `guardian-access serve` with `args` after the listener flags.
    pub fn serve(args: &[&std::ffi::OsStr]) -> Process {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_guardian-access"))
            .args(["serve", "--check-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let (check, admin) = loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "serve exited before listening"
            );
            if let Some(rest) = line.split("listening check=").nth(1) {
                let (c, a) = rest.trim().split_once(" admin=").unwrap();
                break (c.parse().unwrap(), a.parse().unwrap());
            }
        };
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in stderr.lines() {});
        Process { child, check, admin }
    }

    /// Waits until checks are answered.
    pub async fn ready(&self) {
        for _ in 0..2000 {
            let probe = tokio::time::timeout(Duration::from_secs(1), try_get(self.check, "/readyz")).await;
            if let Ok(Ok(r)) = probe
                && r.status == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the process did not become ready");
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
