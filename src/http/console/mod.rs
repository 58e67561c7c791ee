//! The console (SPEC §9): a Swedish web application on the admin listener
//! for the contact center, care units and auditors.
//!
//! - Server-rendered HTML (`maud`, [`pages`]), no JavaScript, one
//!   stylesheet of its own; `Content-Security-Policy: default-src 'self'`.
//! - Login with OpenID Connect ([`oidc`]) or, in `serve --demo` only, a
//!   marked demo login; server-side sessions ([`session`]) with a CSRF
//!   token checked on every form.
//! - No identity number in a URL: a child is found by a number posted in a
//!   form, and the pages that follow name it by a handle valid only in
//!   that session.
//! - Every write is the admin API's own ([`admin::create_rule`],
//!   [`admin::lift_rule`], [`admin::confirm_rule`]): the same validation,
//!   audit and visibility to checks before the page says saved. Every
//!   page that shows personal data is in the access log first.
//! - Confirmations to the requester go through the store's outbox
//!   ([`crate::store::outbox`], [`crate::mail`]).

pub mod oidc;
pub mod pages;
pub mod session;
pub mod text;

mod screens;

use std::sync::Arc;

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use maud::{Markup, html};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::actor::{Caller, Role};
use crate::clock::Clock;
use crate::http::admin::{self, Admin, AdminAnswer, Reading};
use crate::mail::{Sender, SmtpConfig};
use crate::store::{Store, Subjects};
use oidc::{Oidc, OidcConfig};
use pages::Frame;
use session::{Pending, Session, Sessions};

/// How people log in.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per process
pub enum LoginOptions {
    /// `serve --demo`: pick one of these staff, no identity provider.
    Demo(Vec<Caller>),
    /// OpenID Connect against the region's identity provider.
    Oidc(OidcConfig),
}

/// `[console]`: what the console is started with.
#[derive(Debug)]
pub struct ConsoleOptions {
    /// How people log in.
    pub login: LoginOptions,
    /// Where confirmation e-mails go out, if anywhere.
    pub smtp: Option<SmtpConfig>,
}

#[allow(clippy::large_enum_variant)] // one per process
enum Login {
    Demo(Vec<Caller>),
    /// The identity provider's client, made at the first login and again
    /// when it is an hour old (the issuer's keys rotate): an identity
    /// provider that is down delays neither start-up, nor the admin API,
    /// nor the console's other pages.
    Oidc(OidcConfig, tokio::sync::Mutex<Option<(std::time::Instant, Arc<Oidc>)>>),
}

/// How long a discovery document and its JWKS are used before they are
/// read again.
const DISCOVERY_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

impl Login {
    async fn oidc(&self) -> Option<Result<Arc<Oidc>, String>> {
        let Login::Oidc(config, held) = self else { return None };
        let mut held = held.lock().await;
        if let Some((at, client)) = held.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Some(Ok(client.clone()));
        }
        Some(match Oidc::discover(config.clone()).await {
            Ok(client) => {
                let client = Arc::new(client);
                *held = Some((std::time::Instant::now(), client.clone()));
                Ok(client)
            }
            // Keep using the keys we have while the issuer cannot be read,
            // and try again in a minute rather than at every login.
            Err(e) => match held.take() {
                Some((_, client)) => {
                    warn!(error = %e, "cannot re-read the identity provider's discovery document; using the one read before");
                    let retry = std::time::Instant::now()
                        .checked_sub(DISCOVERY_TTL.saturating_sub(std::time::Duration::from_secs(60)))
                        .unwrap_or_else(std::time::Instant::now);
                    *held = Some((retry, client.clone()));
                    Ok(client)
                }
                None => Err(e.to_string()),
            },
        })
    }

    /// Reads the discovery document (and keys) again at the next login.
    async fn forget(&self) {
        if let Login::Oidc(_, held) = self {
            let mut held = held.lock().await;
            if let Some((at, _)) = held.as_mut() {
                *at = std::time::Instant::now().checked_sub(DISCOVERY_TTL).unwrap_or(*at);
            }
        }
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::Demo(u) => write!(f, "Demo({} staff)", u.len()),
            Login::Oidc(c, _) => write!(f, "Oidc({})", c.issuer),
        }
    }
}

/// The console of one instance.
#[derive(Debug)]
pub struct Console {
    sessions: Arc<Sessions>,
    login: Login,
    /// `__Host-` cookies, `Secure`: served over TLS, or logging in with
    /// OIDC (always over HTTPS, perhaps ended by a proxy in front).
    secure: bool,
    mail: Option<Arc<Sender>>,
    /// Keys the login page's form token (there is no session yet).
    form_key: [u8; 32],
}

impl Console {
    /// Starts the console: reads the identity provider's discovery
    /// document, starts the mail sender and the session sweeper.
    pub async fn start(
        options: ConsoleOptions,
        store: Store,
        clock: Clock,
        secure: bool,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Console> {
        let login = match options.login {
            LoginOptions::Demo(staff) => Login::Demo(staff),
            LoginOptions::Oidc(config) => {
                // A missing secret is a configuration error: say so now.
                std::fs::metadata(&config.client_secret_file).map_err(|e| {
                    anyhow::anyhow!(
                        "`console.oidc.client_secret_file` {}: {e}",
                        config.client_secret_file.display()
                    )
                })?;
                Login::Oidc(config, tokio::sync::Mutex::new(None))
            }
        };
        let mail = match options.smtp {
            Some(smtp) => Some(crate::mail::start(smtp, store, clock.clone(), stop)?),
            None => None,
        };
        let sessions = Arc::new(Sessions::default());
        session::sweep_every_minute(&sessions, clock);
        let mut form_key = [0u8; 32];
        getrandom::fill(&mut form_key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        // Staff log in over HTTPS, whether this listener or a proxy in
        // front of it ends TLS: outside the demo the cookies are `Secure`.
        let secure = secure || matches!(login, Login::Oidc(..));
        Ok(Console {
            sessions,
            login,
            secure,
            mail,
            form_key,
        })
    }

    /// The live sessions (for tests and metrics).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    fn demo(&self) -> bool {
        matches!(self.login, Login::Demo(_))
    }

    fn cookie_name(&self) -> &'static str {
        if self.secure { "__Host-ga-session" } else { "ga-session" }
    }

    fn login_cookie_name(&self) -> &'static str {
        if self.secure { "__Host-ga-login" } else { "ga-login" }
    }

    /// `Set-Cookie` for the session `id` (empty: remove it).
    fn session_cookie(&self, id: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        let age = if id.is_empty() { "; Max-Age=0" } else { "" };
        format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict{secure}{age}",
            self.cookie_name()
        )
    }

    /// `Set-Cookie` binding a login's `state` to this browser. `Lax`: it
    /// must come back on the identity provider's redirect.
    fn login_cookie(&self, state: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        let age = if state.is_empty() { 0 } else { 600 };
        format!(
            "{}={state}; Path=/; HttpOnly; SameSite=Lax; Max-Age={age}{secure}",
            self.login_cookie_name()
        )
    }

    /// The login page's form token.
    fn login_token(&self) -> String {
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.form_key) else {
            return String::new();
        };
        mac.update(b"guardian-access console login");
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A parsed form body.
#[derive(Debug, Default, Clone)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, trimmed ("" when absent).
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    }

    /// Every value of `name`.
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether a checkbox `name` was ticked.
    pub(crate) fn ticked(&self, name: &str) -> bool {
        !self.get(name).is_empty()
    }
}

/// A page that ends a request early (boxed: answers are large).
pub(crate) type Stop = Box<AdminAnswer>;

/// One request, once the session is known.
pub(crate) struct Ctx<'a> {
    pub admin: &'a Admin,
    pub console: &'a Console,
    pub sid: String,
    pub session: Session,
}

impl Ctx<'_> {
    pub(crate) fn user(&self) -> &Caller {
        &self.session.user
    }

    pub(crate) fn frame<'f>(&'f self, title: &'f str) -> Frame<'f> {
        Frame {
            title,
            user: Some(&self.session.user),
            csrf: &self.session.csrf,
            demo: self.console.demo(),
        }
    }

    /// Puts a read of personal data in the access log before it is shown.
    pub(crate) async fn log(
        &self,
        action: &'static str,
        subjects: &[crate::core::identity::Pid],
        detail: Value,
    ) -> Result<(), Stop> {
        let reading = Reading {
            caller: &self.session.user,
            purpose: Some("konsolen".to_owned()),
        };
        let subjects = if subjects.is_empty() {
            Subjects::None
        } else {
            Subjects::Some(subjects)
        };
        reading.log(self.admin, action, subjects, detail).await.map_err(|_| {
            self.problem(
                503,
                "Åtkomstloggen kan inte skrivas just nu, så inget visas. Försök igen om en stund.",
            )
        })
    }

    /// A page with only a message, to stop at.
    pub(crate) fn problem(&self, status: u16, message: &str) -> Stop {
        Box::new(self.problem_page(status, message))
    }

    /// A page with only a message.
    pub(crate) fn problem_page(&self, status: u16, message: &str) -> AdminAnswer {
        let title = if status == 404 { "Finns inte" } else { "Det gick inte" };
        page(
            status,
            pages::layout(
                &self.frame(title),
                html! { (pages::notice("error", message)) p { a href="/console/" { "Till startsidan" } } },
            ),
            &[],
        )
    }

    /// Whether the person has one of `roles`; if not, the page saying so.
    pub(crate) fn require(&self, roles: &[Role]) -> Result<(), Stop> {
        if roles.contains(&self.session.user.role) {
            Ok(())
        } else {
            Err(self.problem(403, "Din roll ger inte tillgång till den här sidan."))
        }
    }
}

/// An HTML answer with the console's security headers.
pub(crate) fn page(status: u16, body: Markup, cookies: &[String]) -> AdminAnswer {
    let mut r = Response::new(body.into_string().into_bytes());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(r.headers_mut(), cookies);
    boxed(r)
}

/// A `303 See Other` to `to` (a path of this console).
pub(crate) fn redirect(to: &str, cookies: &[String]) -> AdminAnswer {
    let mut r = Response::new(Vec::new());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut(), cookies);
    boxed(r)
}

fn boxed(r: Response<Vec<u8>>) -> AdminAnswer {
    admin::whole(r.map(|b| http_body_util::Full::new(Bytes::from(b))))
}

fn secure_headers(h: &mut hyper::HeaderMap, cookies: &[String]) {
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    );
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
}

fn cookie<'r>(req: &'r Request<Incoming>, name: &str) -> Option<&'r str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    let q = req.uri().query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Answers one request under `/console`.
pub async fn handle(admin: &Admin, req: Request<Incoming>) -> AdminAnswer {
    let Some(console) = admin.console.as_ref() else {
        return page(
            404,
            html! { p { "Konsolen är inte påslagen på den här instansen ([console] i konfigurationen)." } },
            &[],
        );
    };
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path
        .trim_start_matches("/console")
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let method = req.method().clone();
    let info = ReqInfo {
        query: req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default(),
    };
    let sid = cookie(&req, console.cookie_name()).map(str::to_owned);
    let now = admin.now();
    // Pages that need no session.
    match (&method, parts.as_slice()) {
        (&Method::GET, ["style.css"]) => {
            let mut r = Response::new(pages::STYLE.as_bytes().to_vec());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            );
            secure_headers(r.headers_mut(), &[]);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
            return boxed(r);
        }
        (&Method::GET, ["login"]) => return start_login(admin, console).await,
        (&Method::GET, ["callback"]) => return callback(admin, console, &req).await,
        (&Method::POST, ["demo-login"]) => {
            let form = match read_form(admin, req).await {
                Ok(f) => f,
                Err(a) => return a,
            };
            return demo_login(admin, console, &form);
        }
        _ => {}
    }
    let session = sid.as_deref().and_then(|id| console.sessions.touch(id, now));
    let (Some(sid), Some(session)) = (sid, session) else {
        // No live session: the login page (saying why, if a session ran out).
        let stale = cookie(&req, console.cookie_name()).is_some();
        let note = stale.then_some(
            "Du är inte inloggad, eller så har sessionen gått ut (15 minuter utan aktivitet, högst 8 timmar). Logga in igen.",
        );
        let clear = if stale {
            vec![console.session_cookie("")]
        } else {
            Vec::new()
        };
        return login_page(console, note, None, &clear);
    };
    let ctx = Ctx {
        admin,
        console,
        sid,
        session,
    };
    let form = if method == Method::POST {
        let form = match read_form(admin, req).await {
            Ok(f) => f,
            Err(a) => return a,
        };
        if !ctx.session.csrf_ok(form.get("csrf")) {
            warn!(by = %ctx.user().name, path = %path, "a console form without this session's CSRF token was refused");
            return ctx.problem_page(
                403,
                "Formuläret hör inte till din inloggning (det kan ha gått ut). Ladda om sidan och försök igen.",
            );
        }
        Some(form)
    } else {
        None
    };
    screens::route(&ctx, &method, &parts, form.as_ref(), &info).await
}

/// The parts of the request the screens read besides the form.
pub(crate) struct ReqInfo {
    /// The query string's pairs.
    pub query: Vec<(String, String)>,
}

impl ReqInfo {
    /// A query parameter.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

async fn read_form(admin: &Admin, req: Request<Incoming>) -> Result<Form, AdminAnswer> {
    let declared = req.body().size_hint().upper();
    match crate::http::read_body_within(req.into_body(), declared, admin.body_read_timeout).await {
        Ok(body) => Ok(Form::parse(&body)),
        Err(_) => Err(page(
            400,
            html! { p { "Formuläret kunde inte läsas. Ladda om sidan och försök igen." } },
            &[],
        )),
    }
}

/// The login page: OIDC's button, or the demo's three staff.
fn login_page(console: &Console, note: Option<&str>, error: Option<&str>, cookies: &[String]) -> AdminAnswer {
    let frame = Frame {
        title: "Logga in",
        user: None,
        csrf: "",
        demo: console.demo(),
    };
    let body = html! {
        @if let Some(n) = note { (pages::notice("info", n)) }
        @if let Some(e) = error { (pages::notice("error", e)) }
        @match &console.login {
            Login::Oidc(..) => {
                p { "Logga in med ditt SITHS-kort via regionens identitetsleverantör." }
                p { a.button href="/console/login" { "Logga in med SITHS" } }
            }
            Login::Demo(staff) => {
                p { "Det här är demoläget: välj en av demopersonalen. Den här inloggningen finns bara med " code { "serve --demo" } "." }
                form method="post" action="/console/demo-login" {
                    input type="hidden" name="csrf" value=(console.login_token());
                    fieldset {
                        legend { "Demopersonal" }
                        @for (i, who) in staff.iter().enumerate() {
                            div {
                                input type="radio" name="who" id=(format!("who-{i}")) value=(i) checked[i == 0];
                                label for=(format!("who-{i}")) { (who.name) " – " (pages::role_name(who.role)) @if let Some(u) = &who.unit { " (" (u.as_str()) ")" } }
                            }
                        }
                    }
                    button type="submit" { "Logga in (demo)" }
                }
            }
        }
    };
    page(
        if error.is_some() { 400 } else { 200 },
        pages::layout(&frame, body),
        cookies,
    )
}

fn demo_login(admin: &Admin, console: &Console, form: &Form) -> AdminAnswer {
    let Login::Demo(staff) = &console.login else {
        return login_page(console, None, Some("Demo-inloggningen finns bara i demoläget."), &[]);
    };
    let token = console.login_token();
    if token.is_empty() || !bool::from(token.as_bytes().ct_eq(form.get("csrf").as_bytes())) {
        return login_page(console, None, Some("Formuläret har gått ut. Försök igen."), &[]);
    }
    let Some(who) = form.get("who").parse::<usize>().ok().and_then(|i| staff.get(i)) else {
        return login_page(console, None, Some("Välj en av demopersonalen."), &[]);
    };
    let id = console.sessions.create(who.clone(), admin.now());
    info!(by = %who.name, role = who.role.as_str(), "demo login to the console");
    redirect("/console/", &[console.session_cookie(&id)])
}

async fn start_login(admin: &Admin, console: &Console) -> AdminAnswer {
    let oidc = match console.login.oidc().await {
        None => return login_page(console, None, None, &[]),
        Some(Ok(o)) => o,
        Some(Err(e)) => {
            warn!(error = %e, "the identity provider cannot be reached");
            return login_page(
                console,
                None,
                Some("Identitetsleverantören svarar inte just nu. Försök igen om en stund."),
                &[],
            );
        }
    };
    let started = oidc.start();
    let waiting = console.sessions.start_login(
        started.state.clone(),
        Pending {
            nonce: started.nonce,
            verifier: started.verifier,
            started: admin.now(),
        },
    );
    if !waiting {
        warn!("too many logins are waiting for the identity provider; this one is refused");
        return login_page(
            console,
            None,
            Some("För många inloggningar pågår just nu. Försök igen om en stund."),
            &[],
        );
    }
    let mut r = Response::new(Vec::new());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(&started.url) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut(), &[console.login_cookie(&started.state)]);
    boxed(r)
}

async fn callback(admin: &Admin, console: &Console, req: &Request<Incoming>) -> AdminAnswer {
    let oidc = match console.login.oidc().await {
        Some(Ok(o)) => o,
        _ => return login_page(console, None, None, &[]),
    };
    let clear = console.login_cookie("");
    let refuse = |why: &str, log: &str| {
        warn!(reason = log, "a console login was refused");
        login_page(console, None, Some(why), std::slice::from_ref(&clear))
    };
    if query_param(req, "error").is_some() {
        return refuse(
            "Identitetsleverantören avbröt inloggningen.",
            "the identity provider sent an error",
        );
    }
    let (Some(code), Some(state)) = (query_param(req, "code"), query_param(req, "state")) else {
        return refuse("Inloggningen kunde inte slutföras. Försök igen.", "no code or state");
    };
    // The state must be the one this browser was sent off with, and be
    // used once.
    let bound = cookie(req, console.login_cookie_name()).unwrap_or("");
    if bound.is_empty() || !bool::from(bound.as_bytes().ct_eq(state.as_bytes())) {
        return refuse(
            "Inloggningen kunde inte slutföras (den hör inte till den här webbläsaren). Försök igen.",
            "state does not match the browser's",
        );
    }
    let Some(pending) = console.sessions.take_login(&state, admin.now()) else {
        return refuse(
            "Inloggningen kunde inte slutföras (den är redan använd eller för gammal). Försök igen.",
            "unknown, used or expired state",
        );
    };
    match oidc.finish(&code, &pending.nonce, &pending.verifier).await {
        Ok(user) => {
            info!(by = %user.name, role = user.role.as_str(), "console login");
            let id = console.sessions.create(user, admin.now());
            // A page rather than a redirect: the session cookie is
            // SameSite=Strict, and the redirect chain began at the
            // identity provider's site.
            let frame = Frame {
                title: "Inloggad",
                user: None,
                csrf: "",
                demo: false,
            };
            let mut body = pages::layout(
                &frame,
                html! { p { "Du är inloggad. " a #continue href="/console/" { "Fortsätt till konsolen" } } },
            )
            .into_string();
            body = body.replacen(
                "<head>",
                "<head><meta http-equiv=\"refresh\" content=\"0;url=/console/\">",
                1,
            );
            page(200, maud::PreEscaped(body), &[console.session_cookie(&id), clear])
        }
        Err(why) => {
            // The issuer may have rotated its keys: read them again at the
            // next login.
            console.login.forget().await;
            refuse(
                "Inloggningen godtogs inte: din roll eller enhet saknas, eller svaret från identitetsleverantören var ogiltigt.",
                &why,
            )
        }
    }
}

/// Turns a form's dotted names (`decided_by.name`) into the admin API's
/// JSON body, leaving out empty values.
pub(crate) fn body_of(pairs: &[(&str, Value)]) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in pairs {
        if v.as_str().is_some_and(str::is_empty) {
            continue;
        }
        match k.split_once('.') {
            Some((outer, inner)) => {
                let entry = m.entry(outer.to_owned()).or_insert_with(|| json!({}));
                if let Value::Object(o) = entry {
                    o.insert(inner.to_owned(), v.clone());
                }
            }
            None => {
                m.insert((*k).to_owned(), v.clone());
            }
        }
    }
    m
}
