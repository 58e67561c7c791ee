//! The `guardian-access` command line, run as a real process against the
//! demo region.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guardian-access"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

/// `check --scenario fixtures/demo.json --actor ACTOR --subject SUBJECT`
/// and any further flags.
fn check(actor: &str, subject: &str, more: &[&str]) -> Output {
    let mut args = vec!["check", "--scenario", DEMO, "--actor", actor, "--subject", subject];
    args.extend_from_slice(more);
    run(&args)
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

const AT: &str = "2026-11-23T10:00:00+01:00";

/// A served process, killed if the test fails before it stops it.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
const DEMO: &str = "fixtures/demo.json";

#[test]
fn check_answers_from_the_demo_region() {
    let body = json(&check("197701012382", "20150916-2390", &["--at", AT]));
    assert_eq!(body["decision"], "allow");
    assert_eq!(body["reason"], "guardian");
    assert_eq!(body["valid_until"], "2028-09-16T00:00:00+02:00");
    assert_eq!(body["at"], AT);
}

#[test]
fn check_denies_a_blocked_guardian_in_eservices() {
    let body = json(&check(
        "198001032385",
        "201801012392",
        &["--service", "eservices", "--at", AT],
    ));
    assert_eq!(body["decision"], "deny");
    assert_eq!(body["reason"], "blocked");
    assert_eq!(body["listing"], "hidden");
}

#[test]
fn ten_digit_numbers_resolve_against_the_evaluation_date() {
    // `150916-2390` is the most recent 1x15 not in the future: 2015, the
    // demo's 11-year-old. `150916+2390` is a hundred years earlier: 1915,
    // someone the population data does not know.
    let body = json(&check("770101-2382", "150916-2390", &["--at", AT]));
    assert_eq!(body["reason"], "guardian");
    let body = json(&check("770101-2382", "1509162390", &["--at", AT]));
    assert_eq!(body["reason"], "guardian", "no separator reads as `-`");
    let body = json(&check("770101-2382", "150916+2390", &["--at", AT]));
    assert_eq!(body["reason"], "not_guardian");
    // Before 2015 the same `-` form meant 1915.
    let body = json(&check("770101-2382", "150916-2390", &["--at", "2014-06-01"]));
    assert_eq!(body["reason"], "not_guardian");
}

#[test]
fn a_bad_identity_names_the_field_and_not_the_number() {
    let out = check("197701012382", "201509162391", &["--at", AT]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`subject`"), "{err}");
    assert!(err.contains("invalid_identifier"), "{err}");
    assert!(!err.contains("201509162391") && !err.contains("2015091623"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_reserve_number_is_unsupported() {
    let out = check("19810829M071", "201509162390", &["--at", AT]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`actor`: unsupported_identifier"), "{err}");
}

#[test]
fn bad_service_and_time_name_their_field() {
    let out = check("197701012382", "201509162390", &["--service", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`service`"));

    let out = check("197701012382", "201509162390", &["--at", "2026-11-23T10:00:00"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`at`"));
}

#[test]
fn a_missing_scenario_is_a_clear_error() {
    let out = run(&[
        "check",
        "--scenario",
        "no/such.json",
        "--actor",
        "197701012382",
        "--subject",
        "201509162390",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read `no/such.json`"));
}

#[test]
fn children_lists_the_switch_list_with_each_answer() {
    let list = json(&run(&[
        "children",
        "--scenario",
        DEMO,
        "--guardian",
        "198501012390",
        "--at",
        AT,
    ]));
    assert_eq!(list["revision"], 1);
    let list = list["children"].as_array().unwrap();
    let mut got: Vec<(String, String)> = list
        .iter()
        .map(|e| {
            (
                e["subject"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("201105152381".to_owned(), "aged_out".to_owned()),
            ("201303292385".to_owned(), "extended_access".to_owned()),
        ]
    );
}

#[test]
fn children_of_someone_with_none_is_an_empty_list() {
    let list = json(&run(&[
        "children",
        "--scenario",
        DEMO,
        "--guardian",
        "201509162390",
        "--at",
        AT,
    ]));
    assert_eq!(list, serde_json::json!({"children": [], "revision": 1}));
}

/// `serve --demo` as a real process: binds, logs where, answers, and stops
/// cleanly on SIGTERM.
#[test]
#[cfg(unix)]
fn serve_answers_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;

    // A stale socket from an earlier run is replaced.
    let sockets = tempfile::tempdir().unwrap();
    let grpc = sockets.path().join("grpc.sock");
    drop(std::os::unix::net::UnixListener::bind(&grpc).unwrap());
    let grpc_flag = format!("unix:{}", grpc.display());
    let mut guard = Guard(
        Command::new(env!("CARGO_BIN_EXE_guardian-access"))
            .args([
                "serve",
                "--demo",
                "--check-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                &grpc_flag,
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut guard.0;
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited before listening"
        );
        if let Some(rest) = line.split("listening check=").nth(1) {
            let (check, admin) = rest.trim().split_once(" admin=").unwrap();
            let (admin, grpc_shown) = admin.split_once(" grpc=").unwrap();
            assert!(admin.starts_with("127.0.0.1:"), "{line}");
            assert_eq!(grpc_shown, grpc_flag, "{line}");
            break check.to_owned();
        }
    };
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("/v1/status") {
        assert!(stdout.read_line(&mut printed).unwrap() > 0);
    }
    assert!(
        printed.contains(&format!("curl -s http://{addr}/v1/check")),
        "{printed}"
    );

    // Wait for readiness, then ask once.
    let ask = |req: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let mut ready = false;
    for _ in 0..100 {
        if ask("GET /readyz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").starts_with("HTTP/1.1 200") {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(ready);
    // Envoy's gRPC socket: there, answering, for owner and group only.
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&grpc).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    std::os::unix::net::UnixStream::connect(&grpc).unwrap();
    let body = r#"{"actor": "198001032385", "subject": "201801012392", "service": "journal"}"#;
    let answer = ask(&format!(
        "POST /v1/check HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""reason":"blocked""#), "{answer}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}; log: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
}

#[test]
fn serve_refuses_a_bad_setting_naming_it() {
    let out = run(&["serve", "--demo", "--check-addr", "localhost-ish"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`check_addr`"));
    let out = run(&["serve", "--demo", "--log-format", "xml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`log_format`"));
    let out = run(&["serve", "--store", "mysql://somewhere"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`store`"));
    // A tokens file others can read stops the start, naming it.
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(&tokens, r#"{"tokens": []}"#).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["serve", "--demo", "--admin-tokens", tokens.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`admin_tokens`") && err.contains("chmod 600"), "{err}");
    let out = run(&["serve", "--demo", "--admin-tokens", "no/such/tokens.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read `no/such/tokens.json`"));
}

/// `import-population` into a fresh data directory, then `check` answering
/// from that store; a bad line applies nothing and names the line.
#[test]
fn import_population_then_check_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let good = dir.path().join("good.ndjson");
    std::fs::write(
        &good,
        concat!(
            r#"{"id": "201509162390", "protected": false, "guardians": ["197701012382", "198001022386"]}"#,
            "\n",
            r#"{"id": "201801012392", "protected": true, "guardians": ["197701012382"]}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = json(&run(&["import-population", good.to_str().unwrap(), "--data-dir", data]));
    assert_eq!((out["upserted"].as_u64(), out["revision"].as_u64()), (Some(2), Some(1)));

    let ask = |subject: &str| {
        json(&run(&[
            "check",
            "--data-dir",
            data,
            "--actor",
            "197701012382",
            "--subject",
            subject,
            "--at",
            AT,
        ]))
    };
    assert_eq!(ask("201509162390")["reason"], "guardian");
    assert_eq!(ask("201801012392")["reason"], "protected_subject");
    assert_eq!(ask("201509162390")["revision"], 1);

    // Each read of the store's personal data is in its access log, by the
    // operator; a scenario file's are not.
    let db = rusqlite::Connection::open(std::path::Path::new(data).join("guardian-access.db")).unwrap();
    let logged: Vec<(String, String, String)> = db
        .prepare("SELECT action, role, subjects FROM access_log ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(logged.len(), 3, "{logged:?}");
    assert_eq!(
        logged[0],
        (
            "cli_check".into(),
            "operator".into(),
            "201509162390,197701012382".into()
        )
    );
    // The access log is kept for its retention period, then pruned on request.
    let out = run(&["prune-access-log", "--data-dir", data, "--before", "2026-01-01"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`before`") && err.contains("kept 10 years"), "{err}");
    let pruned = json(&run(&[
        "prune-access-log",
        "--data-dir",
        data,
        "--before",
        "2000-01-01",
    ]));
    assert_eq!(pruned["removed"], 0);
    let actions: i64 = db
        .query_row(
            "SELECT count(*) FROM access_log WHERE action = 'prune_access_log'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(actions, 1, "the pruning is itself logged");

    // Support asks why, from the same store.
    let why = json(&run(&[
        "explain",
        "--data-dir",
        data,
        "--actor",
        "197701012382",
        "--subject",
        "20150916-2390",
        "--at",
        AT,
        "--as-of-revision",
        "1",
    ]));
    assert_eq!(why["answer"]["reason"], "guardian");
    assert_eq!(
        (why["row"]["table"].as_str(), why["row"]["number"].as_u64()),
        (Some("guardian"), Some(8))
    );
    assert_eq!(why["data"]["birth_date_source"], "number");
    assert_eq!(why["data"]["age"], 11);
    assert_eq!(why["as_of_revision"], 1);
    let out = run(&[
        "explain",
        "--data-dir",
        data,
        "--actor",
        "197701012382",
        "--subject",
        "201509162390",
        "--as-of-revision",
        "9",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revision 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        concat!(
            r#"{"id": "201406012383", "protected": false, "guardians": ["197701022381"]}"#,
            "\n",
            r#"{"id": "201509162390", "protected": false, "guardians": ["197701012383"]}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = run(&["import-population", bad.to_str().unwrap(), "--data-dir", data]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("`guardians[0]`"), "{err}");
    assert!(!err.contains("19770101238"), "{err}");
    // Nothing of it was applied: the first line's child is still unknown.
    let first = json(&run(&[
        "check",
        "--data-dir",
        data,
        "--actor",
        "197701022381",
        "--subject",
        "201406012383",
        "--at",
        AT,
    ]));
    assert_eq!(first["reason"], "not_guardian");
    assert_eq!(first["revision"], 1);

    let missing = run(&[
        "check",
        "--data-dir",
        "no/such/dir",
        "--actor",
        "197701012382",
        "--subject",
        "201509162390",
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no store"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// `serve --check-addr unix:/PATH`: the check listener on a Unix socket,
/// for owner and group only, answering checks.
#[test]
fn serve_answers_checks_on_a_unix_socket() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("check.sock");
    let _guard = Guard(
        Command::new(env!("CARGO_BIN_EXE_guardian-access"))
            .args(["serve", "--demo", "--admin-addr", "127.0.0.1:0", "--check-addr"])
            .arg(format!("unix:{}", socket.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ask = |req: &str| -> Option<String> {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).ok()?;
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let mut ready = false;
    for _ in 0..250 {
        if ask("GET /readyz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            .is_some_and(|a| a.starts_with("HTTP/1.1 200"))
        {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(ready, "no answer on the socket");
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o660);
    let body = r#"{"actor": "197701022381", "subject": "201406012383", "service": "journal", "at": "2026-11-23T10:00:00+01:00"}"#;
    let answer = ask(&format!(
        "POST /v1/check HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
    .unwrap();
    assert!(answer.contains(r#""reason":"sealed""#), "{answer}");
}
