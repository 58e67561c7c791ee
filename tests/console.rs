//! The console (SPEC §9) against real parts: a real OpenID provider
//! (`oidc-provider` from npm, `tests/console/oidc.mjs`), a real SMTP
//! server with STARTTLS (`aiosmtpd` from PyPI, `tests/console/smtp.py`),
//! and headless Chromium driven by Playwright with axe-core
//! (`tests/console/browser.mjs`). Each is started here on loopback; under
//! `$CI` a missing one fails the test instead of skipping it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guardian_access::actor::{Caller, Role};
use guardian_access::clock::Clock;
use guardian_access::core::model::HsaId;
use guardian_access::http::console::oidc::OidcConfig;
use guardian_access::http::console::{ConsoleOptions, LoginOptions};
use guardian_access::http::tls::{Tls, TlsFiles};
use guardian_access::mail::SmtpConfig;
use guardian_access::store::{AccessQuery, Store};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use support::{Instance, OTHER_UNIT, POPULATION, UNIT};

const CHILD: &str = "201509162390";
const MOTHER: &str = "197701012382";
const FATHER: &str = "198001022386";

fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

/// `npm ci` in `tests/console` once; `false` (skip) when npm is missing
/// outside CI.
fn node_ready() -> bool {
    static DONE: Mutex<Option<bool>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ok) = *done {
        return ok;
    }
    let dir = fixtures();
    let ok = if dir.join("node_modules/oidc-provider").is_dir()
        && dir.join("node_modules/playwright-core").is_dir()
        && dir.join("node_modules/axe-core").is_dir()
    {
        true
    } else {
        match Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
        {
            Ok(s) if s.success() => true,
            other => {
                assert!(!in_ci(), "npm ci in tests/console failed under CI: {other:?}");
                eprintln!("skipping: npm ci in tests/console failed ({other:?})");
                false
            }
        }
    };
    *done = Some(ok);
    ok
}

/// Whether `what` can run; under CI it must.
fn available(program: &str, args: &[&str], what: &str) -> bool {
    let ok = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok || !in_ci(), "{what} is missing under CI");
    if !ok {
        eprintln!("skipping: {what} is missing");
    }
    ok
}

/// A child process killed when dropped; its stdin held open (the fixtures
/// exit when it closes, so a test that dies takes them with it).
struct Fixture(Child);

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits for its `ready …` line; what follows `ready `.
fn start_fixture(mut cmd: Command) -> (Fixture, String) {
    let mut fixture = Fixture(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(fixture.0.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the fixture exited before it was ready"
        );
        if let Some(rest) = line.trim().strip_prefix("ready ") {
            let rest = rest.to_owned();
            std::thread::spawn(move || for _ in out.lines() {});
            return (fixture, rest);
        }
    }
}

/// The OpenID provider, with the console's callback registered.
fn oidc_provider(redirect: &str) -> (Fixture, String) {
    let mut cmd = Command::new("node");
    cmd.arg(fixtures().join("oidc.mjs"))
        .env("OIDC_PORT", "0")
        .env("OIDC_CLIENT_ID", "guardian-console")
        .env("OIDC_CLIENT_SECRET", "test-client-secret-0123456789")
        .env("OIDC_REDIRECT_URI", redirect);
    start_fixture(cmd)
}

/// The SMTP server on `port`, writing what arrives to `out`.
fn smtp_server(port: u16, cert: &Path, key: &Path, out: &Path) -> Fixture {
    let mut cmd = Command::new("python3");
    cmd.arg(fixtures().join("smtp.py"))
        .args(["--port", &port.to_string(), "--cert"])
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out);
    start_fixture(cmd).0
}

/// A CA and a certificate for 127.0.0.1 and localhost, as PEM files:
/// (certificate, key, CA).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Console test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let paths = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("ca.pem"));
    std::fs::write(&paths.0, cert.pem()).unwrap();
    std::fs::write(&paths.1, key.serialize_pem()).unwrap();
    std::fs::write(&paths.2, ca.pem()).unwrap();
    paths
}

fn oidc_config(issuer: &str, redirect: &str, dir: &Path) -> OidcConfig {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, "test-client-secret-0123456789\n").unwrap();
    OidcConfig {
        issuer: issuer.to_owned(),
        client_id: "guardian-console".into(),
        client_secret_file: secret,
        redirect_uri: redirect.to_owned(),
        hsa_id_claim: "employeeHsaId".into(),
        unit_claim: "healthCareUnitHsaId".into(),
        name_claim: "name".into(),
        role_claim: "guardianRole".into(),
        roles: vec![
            ("kontaktcenter".into(), Role::Registrar),
            ("verksamhetschef".into(), Role::Unit),
            ("logggranskare".into(), Role::Auditor),
        ],
        scopes: vec!["profile".into()],
    }
}

/// A free port on loopback (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The family every test uses: a child of 11 (at the tests' pinned now)
/// and two guardians, Skatteverket's test numbers.
async fn family(base: &str, ca: Option<&Path>) {
    let ndjson = format!(
        "{{\"id\": \"{CHILD}\", \"protected\": false, \"guardians\": [\"{MOTHER}\", \"{FATHER}\"]}}\n\
         {{\"id\": \"{MOTHER}\", \"protected\": false, \"guardians\": []}}\n\
         {{\"id\": \"{FATHER}\", \"protected\": false, \"guardians\": []}}\n"
    );
    let r = client(ca)
        .post(format!("{base}/v1/population"))
        .bearer_auth(POPULATION)
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn client(tls_ca: Option<&Path>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = tls_ca {
        let pem = std::fs::read(ca).unwrap();
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no location on {}", r.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// The CSRF token of the first form on `html`.
fn csrf(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no csrf token in {html}"))
        .to_owned()
}

/// Walks a login at the provider as `user`, up to (not into) the
/// console's callback; the callback URL.
async fn to_callback(c: &reqwest::Client, console: &str, user: &str) -> String {
    let r = c.get(format!("{console}/console/login")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let mut url = location(&r);
    assert!(
        url.contains("code_challenge=") && url.contains("nonce=") && url.contains("state="),
        "{url}"
    );
    assert!(url.contains("code_challenge_method=S256"));
    for _ in 0..10 {
        if url.starts_with(console) {
            return url;
        }
        let r = c.get(&url).send().await.unwrap();
        if r.status() == 200 {
            // The provider's login form.
            let base = reqwest::Url::parse(&url).unwrap();
            let html = r.text().await.unwrap();
            let action = html
                .split("action=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap()
                .to_owned();
            let r = c
                .post(base.join(&action).unwrap())
                .form(&[("login", user), ("password", "test")])
                .send()
                .await
                .unwrap();
            assert!(r.status().is_redirection(), "login form: {}", r.status());
            url = base.join(&location(&r)).unwrap().to_string();
        } else {
            assert!(r.status().is_redirection(), "{url}: {}", r.status());
            let base = reqwest::Url::parse(&url).unwrap();
            url = base.join(&location(&r)).unwrap().to_string();
        }
    }
    panic!("never came back to the console: {url}");
}

fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut u = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name { value.to_owned() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

fn param(url: &str, name: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

/// An instance with the console behind HTTPS and the real OpenID
/// provider; its URL and the CA file.
struct OidcSetup {
    instance: Instance,
    console: String,
    ca: PathBuf,
    clock: Clock,
    _provider: Fixture,
    dir: tempfile::TempDir,
    smtp_port: u16,
}

async fn oidc_setup(smtp: bool) -> Option<OidcSetup> {
    if !available("node", &["--version"], "Node.js") || !node_ready() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = certificates(dir.path());
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let console = format!("https://127.0.0.1:{}", admin.local_addr().unwrap().port());
    let redirect = format!("{console}/console/callback");
    let (provider, issuer) = oidc_provider(&redirect);
    let tls = Arc::new(
        Tls::load(TlsFiles {
            cert,
            key,
            client_ca: None,
        })
        .unwrap(),
    );
    let smtp_port = free_port();
    let smtp = smtp.then(|| {
        let mut s = SmtpConfig::new("127.0.0.1", "kontaktcenter@region.example");
        s.port = smtp_port;
        s.ca_file = Some(ca.clone());
        s.retry_min = Duration::from_secs(1);
        s.retry_max = Duration::from_secs(2);
        s
    });
    let options = ConsoleOptions {
        login: LoginOptions::Oidc(oidc_config(&issuer, &redirect, dir.path())),
        smtp,
    };
    let clock = support::clock();
    let store = Store::open_sqlite(&dir.path().join("data")).await.unwrap();
    let instance = Instance::start_console(store, admin, Some(tls), options, clock.clone()).await;
    // The admin API answers once the store is open.
    for _ in 0..500 {
        let r = client(Some(&ca)).get(format!("{console}/console/")).send().await;
        if r.is_ok_and(|r| r.status() != 503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    family(&console, Some(&ca)).await;
    Some(OidcSetup {
        instance,
        console,
        ca,
        clock,
        _provider: provider,
        dir,
        smtp_port,
    })
}

#[tokio::test]
async fn login_with_the_real_provider_state_code_expiry_and_logout() {
    let Some(s) = oidc_setup(false).await else { return };
    let c = client(Some(&s.ca));
    let console = &s.console;

    // A registrar logs in: PKCE, state and nonce; the ID token's claims
    // make the session.
    let first = to_callback(&c, console, "registrar").await;
    let r = c.get(&first).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("__Host-ga-session="))
        .expect("a session cookie");
    for part in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let home = c.get(format!("{console}/console/")).send().await.unwrap();
    let html = home.text().await.unwrap();
    assert!(
        html.contains("Kim Kontaktcenter") && html.contains("kontaktcenter"),
        "{html}"
    );
    assert!(html.contains("Logga ut"));

    // The same callback again: its state was used.
    let again = c.get(&first).send().await.unwrap();
    assert_eq!(again.status(), 400);
    assert!(
        again
            .text()
            .await
            .unwrap()
            .contains("Inloggningen kunde inte slutföras")
    );

    // A replayed code under a fresh state: the provider refuses it.
    let second = to_callback(&c, console, "registrar").await;
    let replay = with_param(&second, "code", &param(&first, "code"));
    let r = c.get(&replay).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("godtogs inte"));

    // A tampered state: it is not the one this browser was sent off with.
    let third = to_callback(&c, console, "registrar").await;
    let state = param(&third, "state");
    let tampered = with_param(&third, "state", &format!("{}x", &state[..state.len() - 1]));
    let r = c.get(&tampered).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("hör inte till den här webbläsaren"));
    // And the untampered one, from another browser (no login cookie).
    let other = client(Some(&s.ca));
    let r = other.get(&third).send().await.unwrap();
    assert_eq!(r.status(), 400);

    // Someone whose role claim maps to no console role is not let in.
    let nobody = client(Some(&s.ca));
    let cb = to_callback(&nobody, console, "nobody").await;
    let r = nobody.get(&cb).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = nobody.get(format!("{console}/console/")).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("Logga in med SITHS"));

    // A unit head gets the unit from the claim.
    let unit = client(Some(&s.ca));
    let cb = to_callback(&unit, console, "unithead").await;
    assert_eq!(unit.get(&cb).send().await.unwrap().status(), 200);
    let r = unit.get(format!("{console}/console/unit")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(UNIT));

    // Logout ends the unit head's session, on the server.
    let home = unit
        .get(format!("{console}/console/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let revision_before = s.instance.service.state.revision();
    let r = unit
        .post(format!("{console}/console/logout"))
        .form(&[("csrf", csrf(&home))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Du är utloggad"));
    let r = unit.get(format!("{console}/console/unit")).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("Logga in med SITHS"));
    assert_eq!(
        s.instance.service.state.revision(),
        revision_before,
        "nothing was written"
    );

    // Fifteen idle minutes end the registrar's session.
    s.clock.advance(Duration::from_secs(16 * 60));
    let r = c.get(format!("{console}/console/")).send().await.unwrap();
    let html = r.text().await.unwrap();
    assert!(
        html.contains("gått ut") && html.contains("Logga in med SITHS"),
        "{html}"
    );

    s.instance.service.stop().await;
}

/// Logs in through the demo login as staff number `who`.
async fn demo_login(c: &reqwest::Client, base: &str, who: usize) -> String {
    let page = c
        .get(format!("{base}/console/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = c
        .post(format!("{base}/console/demo-login"))
        .form(&[("csrf", csrf(&page)), ("who", who.to_string())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let home = c
        .get(format!("{base}/console/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    csrf(&home)
}

fn demo_staff() -> Vec<Caller> {
    let hsa = |s: &str| Some(HsaId::parse(s).unwrap());
    vec![
        Caller {
            name: "Kim Kontaktcenter".into(),
            role: Role::Registrar,
            unit: None,
            hsa_id: hsa("SE2321000131-P000000000011"),
        },
        Caller {
            name: "Vera Verksamhetschef".into(),
            role: Role::Unit,
            unit: hsa(UNIT),
            hsa_id: hsa("SE2321000131-P000000000012"),
        },
        Caller {
            name: "Olle Annanenhet".into(),
            role: Role::Unit,
            unit: hsa(OTHER_UNIT),
            hsa_id: hsa("SE2321000131-P000000000013"),
        },
        Caller {
            name: "Alva Granskare".into(),
            role: Role::Auditor,
            unit: None,
            hsa_id: hsa("SE2321000131-P000000000014"),
        },
    ]
}

#[tokio::test]
async fn forms_need_their_token_numbers_stay_out_of_urls_and_units_stay_in_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("data")).await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = ConsoleOptions {
        login: LoginOptions::Demo(demo_staff()),
        smtp: None,
    };
    let i = Instance::start_console(store, admin, None, options, support::clock()).await;
    let base = format!("http://{}", i.admin);
    family(&base, None).await;
    let page = |c: &reqwest::Client, path: String| {
        let c = c.clone();
        async move {
            let r = c.get(path).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    // Without a session: the login page, nothing else.
    let anon = client(None);
    let (status, html) = page(&anon, format!("{base}/console/worklist")).await;
    assert_eq!(status, 200);
    assert!(html.contains("Demopersonal"));

    let kim = client(None);
    let token = demo_login(&kim, &base, 0).await;
    // Find the child: by POST; the page that follows has a handle, not the number.
    let r = kim
        .post(format!("{base}/console/find"))
        .form(&[("csrf", token.as_str()), ("pnr", "20150916-2390")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let child = location(&r);
    assert!(child.starts_with("/console/child/"), "{child}");
    assert!(
        !child.contains("1509162390") && !child.contains("150916-2390"),
        "{child}"
    );
    let (status, html) = page(&kim, format!("{base}{child}")).await;
    assert_eq!(status, 200);
    assert!(html.contains(MOTHER) && html.contains(FATHER));

    // A bad number: the error in Swedish next to the field, the input kept.
    let r = kim
        .post(format!("{base}/console/find"))
        .form(&[("csrf", token.as_str()), ("pnr", "20150916-2391")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(html.contains("kontrollsiffra") && html.contains("value=\"20150916-2391\""));

    // A form without the session's token writes nothing.
    let before = i.revision();
    let urgent = |csrf: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("urgent", "1".into()),
            ("guardian", MOTHER.into()),
            ("services", "journal".into()),
            ("services", "eservices".into()),
            ("requested_by.name", "Sjuksköterska BUP".into()),
            ("requested_by.phone", "010-000 00 00".into()),
            ("issuing_unit", OTHER_UNIT.into()),
            ("decided_by.name", "Verksamhetschef Barnahus".into()),
            ("basis", "Polisanmälan".into()),
            ("reference", "BH 2026-1".into()),
            ("step", "save".into()),
        ]
    };
    let r = kim
        .post(format!("{base}{child}/new/block"))
        .form(&urgent("not-the-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(i.revision(), before);

    // Missing fields: all of them marked at once, in Swedish, input kept.
    let r = kim
        .post(format!("{base}{child}/new/block"))
        .form(&[
            ("csrf", token.as_str()),
            ("guardian", MOTHER),
            ("services", "journal"),
            ("reference", "BH 2026-9"),
            ("step", "save"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert_eq!(html.matches("Måste fyllas i.").count(), 3, "{html}");
    assert!(html.contains("value=\"BH 2026-9\""));
    assert_eq!(i.revision(), before);

    // The registrar registers an urgent block for the other unit.
    let r = kim
        .post(format!("{base}{child}/new/block"))
        .form(&urgent(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let saved = location(&r);
    let id: u64 = saved
        .split("/rule/")
        .nth(1)
        .and_then(|s| s.split('?').next())
        .unwrap()
        .parse()
        .unwrap();
    let answer = i
        .check(support::pid_of(MOTHER), support::pid_of(CHILD), "journal", support::NOW)
        .await;
    assert_eq!(answer["reason"], "blocked");

    // A handle is only good in its own session.
    let vera = client(None);
    let vera_token = demo_login(&vera, &base, 1).await;
    let (status, _) = page(&vera, format!("{base}{child}")).await;
    assert_eq!(status, 404);
    // Vera's unit cannot see or lift the other unit's block.
    let r = vera
        .post(format!("{base}/console/find"))
        .form(&[("csrf", vera_token.as_str()), ("pnr", CHILD)])
        .send()
        .await
        .unwrap();
    let vera_child = location(&r);
    let (_, html) = page(&vera, format!("{base}{vera_child}")).await;
    assert!(!html.contains(&format!("Beslut {id}")), "another unit's rule is listed");
    assert!(
        !html.contains("(blockering)") && html.contains("andra enheters beslut visas inte"),
        "another unit's block shows through the answers: {html}"
    );
    let (status, _) = page(&vera, format!("{base}{vera_child}/rule/{id}")).await;
    assert_eq!(status, 404);
    let r = vera
        .post(format!("{base}{vera_child}/rule/{id}/lift"))
        .form(&[
            ("csrf", vera_token.as_str()),
            ("decided_by.name", "Vera"),
            ("basis", "x"),
            ("threat_assessment_done", "ja"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (_, html) = page(&vera, format!("{base}/console/worklist")).await;
    assert!(!html.contains(&format!("Beslut {id}")));
    let r = vera
        .post(format!("{base}/console/worklist/{id}/confirm"))
        .form(&[("csrf", vera_token.as_str()), (&*format!("form_reference-{id}"), "F-1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let answer = i
        .check(support::pid_of(MOTHER), support::pid_of(CHILD), "journal", support::NOW)
        .await;
    assert_eq!(answer["reason"], "blocked", "still blocked");

    // Olle's unit (the issuing one) sees it, lifts it only after the
    // threat assessment, and the check answers from the lift.
    let olle = client(None);
    let olle_token = demo_login(&olle, &base, 2).await;
    let (_, html) = page(&olle, format!("{base}/console/unit")).await;
    let rule_link = html
        .split("href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|h| h.ends_with(&format!("/rule/{id}")))
        .unwrap()
        .to_owned();
    let (_, html) = page(&olle, format!("{base}{rule_link}")).await;
    assert!(html.contains("Administrativ anteckning") && html.contains("Polisanmälan"));
    let lift = |threat: bool| {
        let mut f = vec![
            ("csrf", olle_token.clone()),
            ("decided_by.name", "Verksamhetschef Barnahus".to_owned()),
            ("basis", "Hotbild kontrollerad med socialförvaltningen".to_owned()),
        ];
        if threat {
            f.push(("threat_assessment_done", "ja".to_owned()));
        }
        f
    };
    let r = olle
        .post(format!("{base}{rule_link}/lift"))
        .form(&lift(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("hotbilden"));
    let r = olle
        .post(format!("{base}{rule_link}/lift"))
        .form(&lift(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let answer = i
        .check(support::pid_of(MOTHER), support::pid_of(CHILD), "journal", support::NOW)
        .await;
    assert_eq!(answer["reason"], "guardian");

    // Every view of the child is in the access log, with who looked.
    let entries = i
        .service
        .node()
        .unwrap()
        .store()
        .access_log(AccessQuery {
            subject: Some(support::pid_of(CHILD)),
            from: guardian_access::core::time::Instant::from_nanos(i64::MIN),
            to: guardian_access::core::time::Instant::MAX,
            after: 0,
            limit: 1000,
        })
        .await
        .unwrap();
    let seen = |who: &str, action: &str| entries.iter().any(|e| e.actor == who && e.action == action);
    assert!(seen("Kim Kontaktcenter", "console_child_view"));
    assert!(
        seen("Kim Kontaktcenter", "console_rule_form"),
        "a refused form was shown, and logged"
    );
    assert!(seen("Vera Verksamhetschef", "console_child_view"));
    assert!(seen("Olle Annanenhet", "console_unit_list"));
    assert!(seen("Olle Annanenhet", "console_rule_view"));
    assert!(
        entries
            .iter()
            .filter(|e| e.action.starts_with("console_"))
            .all(|e| e.hsa_id.is_some()),
        "people are logged with their HSA-ID"
    );
    // The mother's own log extract has the unit's list, which named her.
    let mothers = i
        .service
        .node()
        .unwrap()
        .store()
        .access_log(AccessQuery {
            subject: Some(support::pid_of(MOTHER)),
            from: guardian_access::core::time::Instant::from_nanos(i64::MIN),
            to: guardian_access::core::time::Instant::MAX,
            after: 0,
            limit: 1000,
        })
        .await
        .unwrap();
    assert!(
        mothers
            .iter()
            .any(|e| e.actor == "Olle Annanenhet" && e.action == "console_unit_list")
    );

    // The auditor sees both in the patient's log extract.
    let alva = client(None);
    let alva_token = demo_login(&alva, &base, 3).await;
    let r = alva
        .post(format!("{base}/console/access-log"))
        .form(&[("csrf", alva_token.as_str()), ("pnr", CHILD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("Loggutdrag") && html.contains("Olle Annanenhet") && html.contains("Kim Kontaktcenter"));
    // A registrar may not read the access log.
    let (status, _) = page(&kim, format!("{base}/console/access-log")).await;
    assert_eq!(status, 403);
    // And the security headers are on every page.
    let r = kim.get(format!("{base}/console/")).send().await.unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"));
    i.service.stop().await;
}

#[tokio::test]
async fn the_browser_flows_with_the_real_provider_accessibility_and_mail() {
    if !available("python3", &["-c", "import aiosmtpd"], "aiosmtpd (pip install aiosmtpd)") {
        return;
    }
    if !available("/usr/bin/chromium", &["--version"], "Debian's chromium") {
        return;
    }
    let Some(s) = oidc_setup(true).await else { return };
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Command::new("node");
    browser
        .arg(fixtures().join("browser.mjs"))
        .env("CONSOLE_URL", &s.console)
        .env("CHECK_URL", format!("http://{}", s.instance.check))
        .env("CHILD", CHILD)
        .env("MOTHER", MOTHER)
        .env("SCREENSHOTS", &shots)
        .env("USER_DATA_DIR", profile.path())
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || browser.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the browser flows failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all flows passed"), "{stdout}");

    // The registration's confirmation waited while the SMTP server was
    // down (nothing listened on its port); once it is up, it arrives.
    let store = s.instance.service.node().unwrap().store().clone();
    let pending = store.mails_of((1..=20).collect()).await.unwrap();
    assert!(!pending.is_empty(), "the confirmations were queued");
    assert!(
        pending.iter().any(|m| m.sent_at.is_none() && m.attempts >= 1),
        "{pending:?}"
    );
    let (cert, key) = (s.dir.path().join("cert.pem"), s.dir.path().join("key.pem"));
    let received = s.dir.path().join("mail.jsonl");
    let _smtp = smtp_server(s.smtp_port, &cert, &key, &received);
    let mut mails = Vec::new();
    for _ in 0..300 {
        // The retry falls due on the instance's clock.
        s.clock.advance(Duration::from_secs(5));
        mails = std::fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        if mails.len() >= pending.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mails.len(), pending.len(), "every confirmation arrived: {mails:?}");
    let text = mails[0]["text"].as_str().unwrap();
    assert!(
        text.contains("Id: ") && text.contains("Ärendenummer: BUP 2026-117"),
        "{text}"
    );
    assert!(
        mails[0]["subject"]
            .as_str()
            .unwrap()
            .contains("Blockering av vårdnadshavare")
    );
    assert_eq!(
        mails[0]["rcpt_tos"],
        serde_json::json!(["ssk.bup@region.example", "chef.bup@region.example"]),
        "to every address the form gave"
    );
    for m in &mails {
        // No number in any form, anywhere in the message; no name in
        // what a reader sees.
        let all = format!("{}\n{}\n{}", m["subject"], m["text"], m["data"]);
        for number in [
            CHILD,
            MOTHER,
            FATHER,
            &CHILD[2..],
            &MOTHER[2..],
            "20150916-2390",
            "150916-2390",
        ] {
            assert!(!all.contains(number), "a mail holds a number: {all}");
        }
        let shown = format!("{}\n{}", m["subject"], m["text"]);
        for name in ["Kim", "Vera", "Sara", "Sjuksköterska", "Olle", "Alva"] {
            assert!(!shown.contains(name), "a mail holds a name: {shown}");
        }
    }
    // Each sending is recorded once the server has accepted it.
    let mut sent = Vec::new();
    for _ in 0..200 {
        sent = store.mails_of((1..=20).collect()).await.unwrap();
        if sent.iter().all(|m| m.sent_at.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent.iter().all(|m| m.sent_at.is_some() && m.attempts >= 1), "{sent:?}");
    s.instance.service.stop().await;
}
