//! The console's screens (SPEC §9): find a child, the child's page,
//! register (with a preview), a rule's page (lift, confirm, the journal
//! note), the worklist of urgent restrictions, a unit's own decisions,
//! and the access log with a patient's log extract.

use hyper::Method;
use maud::{Markup, html};
use serde_json::{Value, json};

use super::pages::{self, area, field, field_in, notice};
use super::{Ctx, Form, ReqInfo, Stop, body_of, page, redirect, text};
use crate::actor::Role;
use crate::core::explain::{Answer, Facts, answers, answers_on};
use crate::core::identity::Pid;
use crate::core::model::{RuleId, RuleKind, Service};
use crate::core::time::{self, Instant};
use crate::http::admin::{self, AdminAnswer};
use crate::http::error::ApiError;
use crate::store::{AccessQuery, Family, MailDraft, StoredRule};

/// Writers: the contact center and care units.
const WRITERS: &[Role] = &[Role::Registrar, Role::Unit];
/// Who may look a child up.
const READERS: &[Role] = &[Role::Registrar, Role::Unit, Role::Auditor];

type Page = Result<AdminAnswer, Stop>;

/// Routes a request with a live session.
pub(crate) async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    parts: &[&str],
    form: Option<&Form>,
    info: &ReqInfo,
) -> AdminAnswer {
    let result = match (method, parts, form) {
        (&Method::GET, [], _) => home(ctx, None, "").await,
        (&Method::POST, ["logout"], Some(_)) => Ok(logout(ctx)),
        (&Method::POST, ["find"], Some(f)) => find(ctx, f).await,
        (&Method::GET, ["child", h], _) => child_page(ctx, h).await,
        (&Method::GET, ["child", h, "new", kind], _) => new_rule(ctx, h, kind, None, info).await,
        (&Method::POST, ["child", h, "new", kind], Some(f)) => new_rule(ctx, h, kind, Some(f), info).await,
        (&Method::GET, ["child", h, "rule", id], _) => rule_page(ctx, h, id, Forms::default(), info).await,
        (&Method::POST, ["child", h, "rule", id, action @ ("lift" | "confirm")], Some(f)) => {
            rule_action(ctx, h, id, action, f).await
        }
        (&Method::GET, ["worklist"], _) => worklist(ctx, None).await,
        (&Method::POST, ["worklist", id, "confirm"], Some(f)) => worklist_confirm(ctx, id, f).await,
        (&Method::GET, ["unit"], _) => unit_page(ctx).await,
        (&Method::GET, ["access-log"], _) => access_log(ctx, None).await,
        (&Method::POST, ["access-log"], Some(f)) => access_log(ctx, Some(f)).await,
        _ => Err(ctx.problem(404, "Sidan finns inte.")),
    };
    result.unwrap_or_else(|a| *a)
}

fn logout(ctx: &Ctx<'_>) -> AdminAnswer {
    ctx.console.sessions.end(&ctx.sid);
    tracing::info!(by = %ctx.user().name, "console logout");
    super::login_page(
        ctx.console,
        Some("Du är utloggad."),
        None,
        &[ctx.console.session_cookie("")],
    )
}

// ---------------------------------------------------------------- home

async fn home(ctx: &Ctx<'_>, error: Option<&str>, typed: &str) -> Page {
    let user = ctx.user();
    let body = html! {
        @if READERS.contains(&user.role) {
            section {
                h2 { "Sök barn" }
                p { "Skriv barnets personnummer eller samordningsnummer. Numret skickas i formuläret och syns aldrig i adressfältet." }
                form method="post" action="/console/find" {
                    input type="hidden" name="csrf" value=(ctx.session.csrf);
                    (field("pnr", "Barnets personnummer (ÅÅÅÅMMDD-NNNN)", typed, error, "text", true))
                    button type="submit" { "Sök" }
                }
            }
        }
        section {
            h2 { "Vad vill du göra?" }
            ul {
                @if WRITERS.contains(&user.role) {
                    li { "Registrera blockering, försegling eller åtkomst: sök fram barnet först." }
                    li { a href="/console/worklist" { "Arbetslista: akuta beslut som väntar på undertecknad blankett" } }
                }
                @if user.role == Role::Unit { li { a href="/console/unit" { "Enhetens egna beslut" } } }
                @if user.role == Role::Auditor { li { a href="/console/access-log" { "Åtkomstlogg och loggutdrag för en patient" } } }
            }
        }
    };
    Ok(page(
        if error.is_some() { 422 } else { 200 },
        pages::layout(&ctx.frame("Start"), body),
        &[],
    ))
}

async fn find(ctx: &Ctx<'_>, f: &Form) -> Page {
    ctx.require(READERS)?;
    let typed = f.get("pnr");
    if typed.is_empty() {
        return home(ctx, Some("Skriv ett personnummer."), typed).await;
    }
    match Pid::parse(typed, ctx.admin.today()) {
        Ok(pid) => {
            let h = handle(ctx, pid)?;
            Ok(redirect(&format!("/console/child/{h}"), &[]))
        }
        Err(_) => {
            home(
                ctx,
                Some("Personnumret är inte giltigt: kontrollera datum och kontrollsiffra."),
                typed,
            )
            .await
        }
    }
}

fn handle(ctx: &Ctx<'_>, pid: Pid) -> Result<String, Stop> {
    ctx.console
        .sessions
        .handle_for(&ctx.sid, pid)
        .ok_or_else(|| ctx.problem(403, "Sessionen har gått ut."))
}

fn child_of(ctx: &Ctx<'_>, h: &str) -> Result<Pid, Stop> {
    ctx.session.child(h).ok_or_else(|| {
        ctx.problem(
            404,
            "Barnet finns inte i den här sessionen. Sök fram barnet igen (länkar till barn gäller bara i den session där de skapades).",
        )
    })
}

fn store_problem(ctx: &Ctx<'_>, e: crate::store::StoreError) -> Stop {
    let e = admin::store_error(e, Family::Restriction);
    ctx.problem(e.status(), &text::error(&e))
}

// ---------------------------------------------------------------- child

struct ChildData {
    pid: Pid,
    person: Option<crate::store::StoredPerson>,
    rules: Vec<StoredRule>,
}

/// The child and the rules the person may see (a unit: its own).
async fn child_data(ctx: &Ctx<'_>, pid: Pid) -> Result<ChildData, Stop> {
    let store = ctx.admin.node.store();
    let person = store.person(pid).await.map_err(|e| store_problem(ctx, e))?;
    let mut rules = store.rules_of(pid).await.map_err(|e| store_problem(ctx, e))?;
    if let Some(unit) = own_unit(ctx) {
        rules.retain(|r| r.meta.issuing_unit == *unit);
    }
    Ok(ChildData { pid, person, rules })
}

fn own_unit<'c>(ctx: &'c Ctx<'_>) -> Option<&'c crate::core::model::HsaId> {
    match ctx.user().role {
        Role::Unit => ctx.user().unit.as_ref(),
        _ => None,
    }
}

fn guardians(d: &ChildData) -> Vec<Pid> {
    d.person
        .iter()
        .flat_map(|p| p.record.guardians.iter().copied())
        .collect()
}

/// Everyone a page about the child shows: the child, the registered
/// guardians, and any other guardian a decision names.
fn shown(d: &ChildData) -> Vec<Pid> {
    let mut v = vec![d.pid];
    v.extend(guardians(d));
    for g in d.rules.iter().filter_map(|r| r.rule.guardian) {
        if !v.contains(&g) {
            v.push(g);
        }
    }
    v
}

/// The subjects of a list of decisions: each child and each named guardian.
fn named(rules: &[StoredRule]) -> Vec<Pid> {
    let mut v = Vec::new();
    for p in rules
        .iter()
        .flat_map(|r| std::iter::once(r.rule.subject).chain(r.rule.guardian))
    {
        if !v.contains(&p) {
            v.push(p);
        }
    }
    v
}

/// A unit's person sees only its own unit's decisions, also in the answers:
/// the other rules are left out of what the answers are computed from.
fn keep_visible(ctx: &Ctx<'_>, d: &ChildData, rules: &mut Vec<crate::core::model::Rule>) {
    if own_unit(ctx).is_some() {
        rules.retain(|r| d.rules.iter().any(|own| own.rule.id == r.id));
    }
}

async fn child_page(ctx: &Ctx<'_>, h: &str) -> Page {
    ctx.require(READERS)?;
    let pid = child_of(ctx, h)?;
    let d = child_data(ctx, pid).await?;
    ctx.log("console_child_view", &shown(&d), json!({})).await?;
    let store = ctx.admin.node.store();
    let mut audit = store.audit_of(pid).await.map_err(|e| store_problem(ctx, e))?;
    if own_unit(ctx).is_some() {
        let own: Vec<u64> = d.rules.iter().map(|r| r.rule.id.0).collect();
        audit.retain(|a| a.rule_id.is_some_and(|id| own.contains(&id)));
    }
    let mails = store
        .mails_of(d.rules.iter().map(|r| r.rule.id.0).collect())
        .await
        .map_err(|e| store_problem(ctx, e))?;
    let now = ctx.admin.now();
    let current = match own_unit(ctx) {
        None => current_answers(ctx, pid, now),
        Some(_) => own_answers(ctx, &d, now).await?,
    };
    let tz = &ctx.admin.tz;
    let writer = WRITERS.contains(&ctx.user().role);
    let body = html! {
        (child_summary(ctx, &d))
        section {
            h2 { "Vad portalen visar nu" }
            @if own_unit(ctx).is_some() { p { "Beräknat med din enhets beslut; andra enheters beslut visas inte och kan ge ett annat svar i portalen." } }
            (answer_table(ctx, &current, None))
        }
        section {
            h2 { "Beslut" }
            @if own_unit(ctx).is_some() { p { "Du ser din enhets beslut." } }
            @if d.rules.is_empty() { p { "Inga blockeringar, förseglingar eller åtkomstbeslut." } }
            @else { (rules_table(ctx, h, &d.rules, now)) }
            @if writer {
                h3 { "Registrera" }
                ul.actions {
                    li { a href=(format!("/console/child/{h}/new/block?akut=1")) { "Akut blockering (telefon)" } }
                    li { a href=(format!("/console/child/{h}/new/block")) { "Blockering av vårdnadshavare" } }
                    li { a href=(format!("/console/child/{h}/new/seal")) { "Försegling" } }
                    li { a href=(format!("/console/child/{h}/new/extended_access")) { "Utökad åtkomst (13–15 år)" } }
                    li { a href=(format!("/console/child/{h}/new/early_access")) { "Tidig egen åtkomst (13–15 år)" } }
                }
            }
        }
        section {
            h2 { "Händelser" }
            @if audit.is_empty() { p { "Inga registrerade händelser." } }
            @else {
                table {
                    thead { tr { th scope="col" { "Tid" } th scope="col" { "Händelse" } th scope="col" { "Av" } th scope="col" { "Beslut" } } }
                    tbody {
                        @for a in &audit {
                            tr {
                                td { (when(a.at, tz)) }
                                td { (event(a)) }
                                td { (a.actor) @if let Some(h) = &a.hsa_id { " (" (h) ")" } ", " (text::role(&a.role)) }
                                td { @if let Some(id) = a.rule_id { (id) } }
                            }
                        }
                        @for m in &mails {
                            tr {
                                td { (when(m.created_at, tz)) }
                                td { "Bekräftelse via e-post: " (m.subject) ", "
                                    @match m.sent_at { Some(s) => { "skickad " (when(s, tz)) } None => { "väntar (" (m.attempts) " misslyckade försök)" } } }
                                td { "kontaktcentret" }
                                td { (m.rule_id) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(200, pages::layout(&ctx.frame("Barnets sida"), body), &[]))
}

/// An audited write, for the timeline: what was registered, by kind.
fn event(a: &crate::store::AuditEntry) -> String {
    let kind = a.detail.get("kind").and_then(Value::as_str).and_then(RuleKind::parse);
    match (a.action.as_str(), kind) {
        ("create_restriction" | "create_grant", Some(k)) => {
            let urgent = a.detail.get("urgent").and_then(Value::as_bool) == Some(true);
            format!("{} registrerad{}", text::kind(k), if urgent { " (akut)" } else { "" })
        }
        (other, _) => text::action(other).to_owned(),
    }
}

fn child_summary(ctx: &Ctx<'_>, d: &ChildData) -> Markup {
    let age = d
        .person
        .as_ref()
        .and_then(|p| p.record.birth_date)
        .or_else(|| d.pid.birth_date())
        .map(|b| age_years(b, time::local_date(ctx.admin.now(), &ctx.admin.tz)));
    html! {
        section {
            h2 { "Barnet" }
            dl {
                dt { "Personnummer" } dd { (d.pid) }
                dt { "Ålder" } dd { @match age { Some(a) => { (a) " år" } None => { "okänd" } } }
                @match &d.person {
                    Some(p) => {
                        dt { "Skyddade personuppgifter" } dd { @if p.record.protected { "ja" } @else { "nej" } }
                        dt { "Registrerade vårdnadshavare" }
                        dd { @if p.record.guardians.is_empty() { "inga" } @else { @for (i, g) in p.record.guardians.iter().enumerate() { @if i > 0 { ", " } (g) } } }
                    }
                    None => { dt { "Folkbokföring" } dd { "Finns inte i underlaget från folkbokföringen." } }
                }
            }
        }
    }
}

fn age_years(birth: jiff::civil::Date, today: jiff::civil::Date) -> i16 {
    let mut years = today.year() - birth.year();
    if (today.month(), today.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    years
}

fn current_answers(ctx: &Ctx<'_>, subject: Pid, at: Instant) -> Vec<Answer> {
    match ctx.admin.node.publication().current() {
        Some(p) => answers_on(&p.snapshot, subject, at),
        None => Vec::new(),
    }
}

/// The answers now from the stored facts and the unit's own decisions.
async fn own_answers(ctx: &Ctx<'_>, d: &ChildData, at: Instant) -> Result<Vec<Answer>, Stop> {
    let (revision, records, mut rules) = ctx
        .admin
        .node
        .store()
        .facts(d.pid, d.pid, None)
        .await
        .map_err(|e| store_problem(ctx, e))?;
    keep_visible(ctx, d, &mut rules);
    let facts = Facts {
        revision,
        settings: ctx.admin.node.settings().clone(),
        records,
        rules,
    };
    Ok(answers(&facts, d.pid, None, at).unwrap_or_default())
}

fn answer_table(ctx: &Ctx<'_>, now: &[Answer], after: Option<&[Answer]>) -> Markup {
    let message = ctx.admin.node.settings().disabled_message.clone();
    let cell = |a: &Answer| {
        html! {
            span class=(if a.reason.allows() { "allow" } else { "deny" }) { @if a.reason.allows() { "Tillgång" } @else { "Ingen tillgång" } }
            " – " (text::portal(a.reason, a.listing, &message)) " (" (text::reason(a.reason)) ")"
        }
    };
    html! {
        @if now.is_empty() { p { "Svaren kan inte visas just nu (instansen har ingen publicerad ögonblicksbild)." } }
        @else {
            table.answers {
                thead { tr {
                    th scope="col" { "Vem" } th scope="col" { "Tjänst" }
                    @if after.is_some() { th scope="col" { "Nu" } th scope="col" { "Efter beslutet" } } @else { th scope="col" { "Svar" } }
                } }
                tbody {
                    @for (i, a) in now.iter().enumerate() {
                        tr {
                            td { (who(a)) }
                            td { (text::service(a.service)) }
                            td { (cell(a)) }
                            @if let Some(after) = after { td { @if let Some(b) = after.get(i) { (cell(b)) } } }
                        }
                    }
                }
            }
        }
    }
}

fn who(a: &Answer) -> String {
    if a.listing.is_none() {
        format!("Barnet själv ({})", a.actor)
    } else {
        format!("Vårdnadshavare {}", a.actor)
    }
}

fn status(r: &StoredRule, now: Instant) -> Markup {
    if r.rule.lifted_at.is_some() {
        return html! { "Hävd" };
    }
    if r.rule.valid_until.is_some_and(|u| u <= now) {
        return html! { "Upphört" };
    }
    if r.rule.valid_from > now {
        return html! { "Gäller från startdatumet" };
    }
    if r.confirmation_pending() {
        return html! { span.status-pending { "I kraft – väntar på undertecknad blankett" } };
    }
    html! { "I kraft" }
}

fn rules_table(ctx: &Ctx<'_>, h: &str, rules: &[StoredRule], now: Instant) -> Markup {
    let tz = &ctx.admin.tz;
    html! {
        table {
            thead { tr {
                th scope="col" { "Id" } th scope="col" { "Vad" } th scope="col" { "Gäller" } th scope="col" { "Tjänster" }
                th scope="col" { "Från" } th scope="col" { "Till" } th scope="col" { "Status" } th scope="col" { "Enhet" }
            } }
            tbody {
                @for r in rules {
                    tr {
                        td { a href=(format!("/console/child/{h}/rule/{}", r.rule.id.0)) { "Beslut " (r.rule.id.0) } }
                        td { (text::kind(r.rule.kind)) @if r.meta.urgent { " (akut)" } }
                        td { (scope(r)) }
                        td { (services(r)) }
                        td { (when(r.rule.valid_from, tz)) }
                        td { @match r.rule.valid_until { Some(u) => (when(u, tz)), None => "tills vidare" } }
                        td { (status(r, now)) }
                        td { (r.meta.issuing_unit.as_str()) }
                    }
                }
            }
        }
    }
}

fn scope(r: &StoredRule) -> String {
    match (r.rule.kind, r.rule.guardian) {
        (_, Some(g)) => format!("vårdnadshavare {g}"),
        (RuleKind::Block, None) => "alla vårdnadshavare".to_owned(),
        (RuleKind::Seal, None) => "alla utom barnet".to_owned(),
        (_, None) => "barnet".to_owned(),
    }
}

fn services(r: &StoredRule) -> String {
    [Service::Journal, Service::Eservices]
        .into_iter()
        .filter(|s| r.rule.services.covers(*s))
        .map(text::service)
        .collect::<Vec<_>>()
        .join(", ")
}

fn when(at: Instant, tz: &jiff::tz::TimeZone) -> String {
    tz.to_datetime(at.to_timestamp()).strftime("%Y-%m-%d %H:%M").to_string()
}

// ---------------------------------------------------------------- register

/// A form's errors: (field name, Swedish message), and one for the top.
#[derive(Default)]
struct Errors {
    fields: Vec<(String, String)>,
    top: Option<String>,
}

impl Errors {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.top.is_none()
    }

    /// Places an API error on the form field it names.
    fn from_api(e: &ApiError, inputs: &[&str]) -> Errors {
        let msg = text::error(e);
        let field = e.field.as_deref().unwrap_or("");
        let m = e.message.as_ref();
        let name = match field {
            "decided_by" | "requested_by" if m.contains("hsa_id") => format!("{field}.hsa_id"),
            "requested_by" if m.contains("`id`") => "requested_by.id".to_owned(),
            "requested_by" if m.contains("`email`") => "requested_by.email".to_owned(),
            "requested_by" if m.contains("`phone`") => "requested_by.phone".to_owned(),
            "decided_by" | "requested_by" => format!("{field}.name"),
            other => other.to_owned(),
        };
        let name = if name == "requested_by.hsa_id" {
            "requested_by.id".to_owned()
        } else {
            name
        };
        let mut out = Errors::default();
        if inputs.contains(&name.as_str()) {
            out.fields.push((name, msg));
            out.top = Some("Rätta det som är markerat nedan. Inget har sparats.".into());
        } else {
            out.top = Some(format!("{msg} Inget har sparats."));
        }
        out
    }
}

const RULE_INPUTS: &[&str] = &[
    "guardian",
    "services",
    "valid_from",
    "valid_until",
    "issuing_unit",
    "decided_by.name",
    "decided_by.hsa_id",
    "requested_by.name",
    "requested_by.id",
    "requested_by.email",
    "requested_by.phone",
    "basis",
    "reference",
    "care_units",
];

fn kind_of(kind: &str) -> Option<RuleKind> {
    match kind {
        "block" => Some(RuleKind::Block),
        "seal" => Some(RuleKind::Seal),
        "extended_access" => Some(RuleKind::ExtendedAccess),
        "early_access" => Some(RuleKind::EarlyAccess),
        _ => None,
    }
}

/// The admin API body for a new rule from the console's form.
fn rule_body(ctx: &Ctx<'_>, pid: Pid, kind: RuleKind, urgent: bool, f: &Form) -> serde_json::Map<String, Value> {
    let unit = match own_unit(ctx) {
        Some(u) => u.as_str().to_owned(),
        None => f.get("issuing_unit").to_owned(),
    };
    let guardian = match f.get("guardian") {
        "alla" => String::new(),
        g => g.to_owned(),
    };
    let services: Vec<Value> = f.all("services").into_iter().map(Value::from).collect();
    let care_units: Vec<Value> = f
        .get("care_units")
        .split([',', ' ', '\n'])
        .filter(|s| !s.trim().is_empty())
        .map(|s| Value::from(s.trim()))
        .collect();
    let s = |name: &str| Value::from(f.get(name));
    let mut pairs: Vec<(&str, Value)> = vec![
        ("kind", Value::from(kind.as_str())),
        ("subject", Value::from(pid.to_string())),
        ("guardian", Value::from(guardian)),
        ("valid_from", s("valid_from")),
        ("valid_until", s("valid_until")),
        ("issuing_unit", Value::from(unit)),
        ("decided_by.name", s("decided_by.name")),
        ("decided_by.hsa_id", s("decided_by.hsa_id")),
        ("requested_by.name", s("requested_by.name")),
        ("requested_by.id", s("requested_by.id")),
        ("requested_by.email", s("requested_by.email")),
        ("requested_by.phone", s("requested_by.phone")),
        ("basis", s("basis")),
        ("reference", s("reference")),
    ];
    pairs.push(("services", Value::Array(services)));
    if kind == RuleKind::ExtendedAccess && !care_units.is_empty() {
        pairs.push(("care_units", Value::Array(care_units)));
    }
    if urgent {
        pairs.push(("urgent", Value::Bool(true)));
    }
    body_of(&pairs)
}

/// Checks the console makes before the API's, so that every missing
/// field is marked at once (the API stops at the first): the required
/// ones are filled in, and an e-mail address looks like one.
fn console_checks(ctx: &Ctx<'_>, kind: RuleKind, urgent: bool, f: &Form) -> Errors {
    let mut e = Errors::default();
    let mut required = vec!["decided_by.name", "basis"];
    if own_unit(ctx).is_none() {
        required.push("issuing_unit");
    }
    if kind == RuleKind::ExtendedAccess {
        required.push("guardian");
    }
    if kind == RuleKind::Block && f.get("guardian").is_empty() {
        required.push("guardian");
    }
    if urgent {
        required.extend(["requested_by.name", "requested_by.phone"]);
    }
    for name in required {
        if f.get(name).is_empty() {
            let msg = if name == "guardian" {
                "Välj vårdnadshavare."
            } else {
                "Måste fyllas i."
            };
            e.fields.push((name.to_owned(), msg.to_owned()));
        }
    }
    if f.all("services").is_empty() {
        e.fields.push(("services".into(), "Välj minst en tjänst.".into()));
    }
    if !e.fields.is_empty() {
        e.top = Some("Rätta det som är markerat nedan. Inget har sparats.".into());
    }
    if holds_a_number(f.get("reference"), ctx.admin.today()) {
        e.fields.push((
            "reference".into(),
            "Skriv inte personnummer i ärendenumret: det skickas med e-post.".into(),
        ));
        e.top = Some("Rätta det som är markerat nedan. Inget har sparats.".into());
    }
    let email = f.get("requested_by.email");
    let valid = |a: &str| a.parse::<lettre::Address>().is_ok_and(|_| a.contains('.'));
    if !addresses(email).iter().all(|a| valid(a)) {
        e.fields
            .push(("requested_by.email".into(), "Ange en giltig e-postadress.".into()));
        e.top = Some("Rätta det som är markerat nedan. Inget har sparats.".into());
    }
    e
}

async fn new_rule(ctx: &Ctx<'_>, h: &str, kind: &str, f: Option<&Form>, info: &ReqInfo) -> Page {
    ctx.require(WRITERS)?;
    let pid = child_of(ctx, h)?;
    let Some(kind) = kind_of(kind) else {
        return Err(ctx.problem(404, "Sidan finns inte."));
    };
    let urgent = match f {
        Some(f) => f.ticked("urgent"),
        None => info.param("akut").is_some(),
    } && !kind.is_grant();
    let family = Family::of(kind);
    let d = child_data(ctx, pid).await?;
    // The form shows the child and the guardians: logged before anything
    // else, whatever happens next.
    ctx.log("console_rule_form", &shown(&d), json!({"kind": kind.as_str()}))
        .await?;
    let empty = Form::default();
    let form = f.unwrap_or(&empty);
    let mut errors = Errors::default();
    let mut preview: Option<(Vec<Answer>, Vec<Answer>)> = None;
    if let Some(f) = f {
        errors = console_checks(ctx, kind, urgent, f);
        let body = rule_body(ctx, pid, kind, urgent, f);
        if errors.is_empty() {
            if f.get("step") == "save" {
                let mail = mail_draft(
                    ctx,
                    f.get("requested_by.email"),
                    &saved_text(kind, urgent),
                    f.get("reference"),
                );
                match admin::create_rule(ctx.admin, ctx.user(), family, &body, mail).await {
                    Ok(c) => {
                        if let Some(m) = &ctx.console.mail {
                            m.wake();
                        }
                        return Ok(redirect(
                            &format!("/console/child/{h}/rule/{}?sparat=1", c.revision),
                            &[],
                        ));
                    }
                    Err(e) => errors = Errors::from_api(&e, RULE_INPUTS),
                }
            } else {
                match admin::prepare_rule(ctx.admin, ctx.user(), family, &body).await {
                    Ok(new) => {
                        ctx.log("console_preview", &shown(&d), json!({"kind": kind.as_str()}))
                            .await?;
                        let (revision, records, mut rules) = ctx
                            .admin
                            .node
                            .store()
                            .facts(pid, pid, None)
                            .await
                            .map_err(|e| store_problem(ctx, e))?;
                        keep_visible(ctx, &d, &mut rules);
                        let facts = Facts {
                            revision,
                            settings: ctx.admin.node.settings().clone(),
                            records,
                            rules,
                        };
                        let at = ctx.admin.now().max(new.rule.valid_from);
                        let mut rule = new.rule.clone();
                        rule.id = RuleId(u64::MAX >> 2);
                        let before = answers(&facts, pid, None, at);
                        let after = answers(&facts, pid, Some(&rule), at);
                        if let (Ok(b), Ok(a)) = (before, after) {
                            preview = Some((b, a));
                        }
                    }
                    Err(e) => errors = Errors::from_api(&e, RULE_INPUTS),
                }
            }
        }
    }
    let title = format!("{}{}", if urgent { "Akut: " } else { "" }, text::kind(kind));
    let body = rule_form(ctx, h, &d, kind, urgent, form, &errors, preview.as_ref());
    let status = if errors.is_empty() { 200 } else { 422 };
    Ok(page(status, pages::layout(&ctx.frame(&title), body), &[]))
}

fn saved_text(kind: RuleKind, urgent: bool) -> String {
    format!(
        "{} registrerad{}",
        text::kind(kind),
        if urgent { " (akut, blankett väntas)" } else { "" }
    )
}

/// Whether `text` holds something that parses as an identity number: a
/// run of 10 or 12 digits, with or without its separator.
fn holds_a_number(text: &str, today: jiff::civil::Date) -> bool {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_digit() || c == '-' || c == '+' {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned.split_whitespace().any(|run| {
        let digits: String = run.chars().filter(char::is_ascii_digit).collect();
        let candidates = [run.to_owned(), digits.clone()];
        (10..=12).contains(&digits.len()) && candidates.iter().any(|c| Pid::parse(c, today).is_ok())
            || digits.len() > 12
                && (0..=digits.len() - 10).any(|i| {
                    [10, 12]
                        .iter()
                        .any(|n| i + n <= digits.len() && Pid::parse(&digits[i..i + n], today).is_ok())
                })
    })
}

/// The addresses in a field that may hold several (comma, semicolon or
/// space between them), as the seed forms allow.
fn addresses(field: &str) -> Vec<&str> {
    field
        .split([',', ';', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn mail_draft(ctx: &Ctx<'_>, to: &str, what: &str, reference: &str) -> Option<MailDraft> {
    ctx.console.mail.as_ref()?;
    let to: Vec<String> = addresses(to).into_iter().map(str::to_owned).collect();
    (!to.is_empty()).then(|| MailDraft {
        to,
        what: what.to_owned(),
        reference: (!reference.is_empty()).then(|| reference.to_owned()),
    })
}

#[allow(clippy::too_many_arguments)]
fn rule_form(
    ctx: &Ctx<'_>,
    h: &str,
    d: &ChildData,
    kind: RuleKind,
    urgent: bool,
    f: &Form,
    e: &Errors,
    preview: Option<&(Vec<Answer>, Vec<Answer>)>,
) -> Markup {
    let fresh = f.0.is_empty();
    let g = guardians(d);
    let chosen_guardian = f.get("guardian");
    let service_ticked = |s: &str| fresh || f.all("services").contains(&s);
    let unit_default = own_unit(ctx).map(|u| u.as_str().to_owned()).unwrap_or_default();
    let unit_value = if fresh {
        unit_default.as_str()
    } else {
        f.get("issuing_unit")
    };
    let (dec_name, dec_hsa) = if fresh && ctx.user().role == Role::Unit {
        (
            ctx.user().name.clone(),
            ctx.user()
                .hsa_id
                .as_ref()
                .map(|h| h.as_str().to_owned())
                .unwrap_or_default(),
        )
    } else {
        (
            f.get("decided_by.name").to_owned(),
            f.get("decided_by.hsa_id").to_owned(),
        )
    };
    html! {
        @if let Some(t) = &e.top { (notice("error", t)) }
        @if urgent {
            (notice("info", "Akut ärende som ringts in: beslutet gäller direkt när det sparas. Den undertecknade blanketten ska sedan skickas in; beslutet står på arbetslistan tills blanketten är registrerad."))
        }
        p { "Barn: " strong { (d.pid) } }
        form method="post" action=(format!("/console/child/{h}/new/{}", kind.as_str())) {
            input type="hidden" name="csrf" value=(ctx.session.csrf);
            @if urgent { input type="hidden" name="urgent" value="1"; }
            @if matches!(kind, RuleKind::Block | RuleKind::ExtendedAccess) {
                fieldset.field.error[e.get("guardian").is_some()] {
                    legend { "Vilken vårdnadshavare?" }
                    @if let Some(m) = e.get("guardian") { p.msg { (m) } }
                    @if kind == RuleKind::Block {
                        div { input type="radio" name="guardian" id="g-alla" value="alla" checked[chosen_guardian == "alla" || (fresh && g.len() != 1)]; label for="g-alla" { "Alla vårdnadshavare" } }
                    }
                    @for (i, p) in g.iter().enumerate() {
                        @let v = p.to_string();
                        div { input type="radio" name="guardian" id=(format!("g-{i}")) value=(v) checked[chosen_guardian == v || (fresh && g.len() == 1 && kind == RuleKind::ExtendedAccess)]; label for=(format!("g-{i}")) { "Vårdnadshavare " (v) } }
                    }
                    @if g.is_empty() { p { "Barnet har inga registrerade vårdnadshavare." } }
                }
            }
            fieldset.field.error[e.get("services").is_some()] {
                legend { "Tjänster" }
                @if let Some(m) = e.get("services") { p.msg { (m) } }
                div { input type="checkbox" name="services" id="s-journal" value="journal" checked[service_ticked("journal")]; label for="s-journal" { "1177 Journalen" } }
                @if kind.is_grant() { p { small { "Åtkomstbeslut gäller bara journalen, aldrig e-tjänsterna." } } }
                @else { div { input type="checkbox" name="services" id="s-eservices" value="eservices" checked[service_ticked("eservices")]; label for="s-eservices" { "1177 e-tjänster" } } }
                @if kind == RuleKind::Block { p { small { "Innan barnet fyllt 13 år blockeras journalen och e-tjänsterna samtidigt." } } }
            }
            fieldset {
                legend { "Beställare (vårdpersonal som begär beslutet)" }
                (field("requested_by.name", "Namn", f.get("requested_by.name"), e.get("requested_by.name"), "text", urgent))
                (field("requested_by.id", "HSA-id", f.get("requested_by.id"), e.get("requested_by.id"), "text", false))
                (field("requested_by.email", "E-post (bekräftelsen skickas hit; flera med kommatecken)", f.get("requested_by.email"), e.get("requested_by.email"), "email", false))
                (field("requested_by.phone", "Telefon", f.get("requested_by.phone"), e.get("requested_by.phone"), "tel", urgent))
            }
            fieldset {
                legend { "Beslut" }
                @if own_unit(ctx).is_some() {
                    p { "Vårdenhet: " strong { (unit_default) } }
                    input type="hidden" name="issuing_unit" value=(unit_default);
                } @else {
                    (field("issuing_unit", "Vårdenhetens HSA-id", unit_value, e.get("issuing_unit"), "text", true))
                }
                (field("decided_by.name", "Ansvarig verksamhetschef", &dec_name, e.get("decided_by.name"), "text", true))
                (field("decided_by.hsa_id", "Verksamhetschefens HSA-id", &dec_hsa, e.get("decided_by.hsa_id"), "text", false))
                (area("basis", "Grund för beslutet", f.get("basis"), e.get("basis"), true))
                (field("reference", "Ärendenummer (diarienummer)", f.get("reference"), e.get("reference"), "text", false))
                (field("valid_from", "Gäller från (tomt: nu)", f.get("valid_from"), e.get("valid_from"), "date", false))
                @if kind.is_grant() {
                    (field("valid_until", "Gäller till (tomt: till 16 år)", f.get("valid_until"), e.get("valid_until"), "date", false))
                }
                @if kind == RuleKind::ExtendedAccess {
                    (field("care_units", "Begränsat till vårdenheter (HSA-id, kommaseparerade; tomt: alla)", f.get("care_units"), e.get("care_units"), "text", false))
                }
            }
            @if let Some((before, after)) = preview {
                section #forhandsgranskning {
                    h2 { "Förhandsgranskning" }
                    p { "Så här blir svaren när beslutet har sparats. Inget är sparat ännu." }
                    (answer_table(ctx, before, Some(after)))
                }
            }
            div.actions {
                button type="submit" name="step" value="preview" class=(if preview.is_some() { "secondary" } else { "" }) { "Förhandsgranska" }
                @if preview.is_some() { button type="submit" name="step" value="save" { "Spara beslutet" } }
            }
        }
        p { a href=(format!("/console/child/{h}")) { "Tillbaka till barnets sida" } }
    }
}

// ---------------------------------------------------------------- a rule

/// The lift and confirm forms' state when re-shown.
#[derive(Default)]
struct Forms<'f> {
    lift: Option<(&'f Form, Errors)>,
    confirm: Option<(&'f Form, Errors)>,
}

const LIFT_INPUTS: &[&str] = &[
    "decided_by.name",
    "decided_by.hsa_id",
    "basis",
    "threat_assessment_done",
    "unit_request_reference",
];
const CONFIRM_INPUTS: &[&str] = &["form_reference", "decided_by.name", "unit_request_reference"];

fn rule_id(ctx: &Ctx<'_>, id: &str) -> Result<u64, Stop> {
    id.parse::<u64>().map_err(|_| ctx.problem(404, "Beslutet finns inte."))
}

/// The rule `id` of child `pid`, if the person may see it.
fn find_rule<'r>(ctx: &Ctx<'_>, d: &'r ChildData, id: u64) -> Result<&'r StoredRule, Stop> {
    d.rules.iter().find(|r| r.rule.id.0 == id).ok_or_else(|| {
        ctx.problem(
            404,
            "Beslutet finns inte hos det här barnet, eller hör till en annan vårdenhet än din.",
        )
    })
}

async fn rule_page(ctx: &Ctx<'_>, h: &str, id: &str, forms: Forms<'_>, info: &ReqInfo) -> Page {
    ctx.require(READERS)?;
    let pid = child_of(ctx, h)?;
    let id = rule_id(ctx, id)?;
    let d = child_data(ctx, pid).await?;
    let r = find_rule(ctx, &d, id)?;
    let mut subjects = vec![pid];
    subjects.extend(r.rule.guardian);
    ctx.log("console_rule_view", &subjects, json!({"rule_id": id})).await?;
    let mails = ctx
        .admin
        .node
        .store()
        .mails_of(vec![id])
        .await
        .map_err(|e| store_problem(ctx, e))?;
    let now = ctx.admin.now();
    let tz = &ctx.admin.tz;
    let writer = WRITERS.contains(&ctx.user().role);
    let registrar = ctx.user().role == Role::Registrar;
    let dec_name = r.meta.decided_by.get("name").and_then(Value::as_str).unwrap_or("");
    let note = note_for(r, tz);
    let status_code = if forms.lift.as_ref().is_some_and(|(_, e)| !e.is_empty())
        || forms.confirm.as_ref().is_some_and(|(_, e)| !e.is_empty())
    {
        422
    } else {
        200
    };
    let empty = Form::default();
    let no_errors = Errors::default();
    let (lf, le) = forms
        .lift
        .as_ref()
        .map(|(f, e)| (*f, e))
        .unwrap_or((&empty, &no_errors));
    let (cf, ce) = forms
        .confirm
        .as_ref()
        .map(|(f, e)| (*f, e))
        .unwrap_or((&empty, &no_errors));
    let body = html! {
        @if info.param("sparat").is_some() { (notice("ok", "Sparat. Beslutet gäller redan: 1177 får det nya svaret från och med nu.")) }
        @if info.param("havt").is_some() { (notice("ok", "Hävt. Beslutet gäller inte längre.")) }
        @if info.param("bekraftat").is_some() { (notice("ok", "Blanketten är registrerad.")) }
        p { "Barn: " a href=(format!("/console/child/{h}")) { (pid) } }
        section {
            h2 { (text::kind(r.rule.kind)) @if r.meta.urgent { " (akut)" } }
            dl {
                dt { "Id" } dd { (r.rule.id.0) }
                dt { "Status" } dd { (status(r, now)) }
                dt { "Gäller" } dd { (scope(r)) }
                dt { "Tjänster" } dd { (services(r)) }
                dt { "Från" } dd { (when(r.rule.valid_from, tz)) }
                dt { "Till" } dd { @match r.rule.valid_until { Some(u) => (when(u, tz)), None => "tills vidare" } }
                dt { "Vårdenhet" } dd { (r.meta.issuing_unit.as_str()) }
                dt { "Beslutat av" } dd { (dec_name) }
                dt { "Grund" } dd { (r.meta.basis) }
                dt { "Ärendenummer" } dd { (r.meta.reference.as_deref().unwrap_or("–")) }
                dt { "Registrerat" } dd { (when(r.created_at, tz)) " av " (r.created_by) }
                @if let Some(c) = r.confirmed_at { dt { "Blankett registrerad" } dd { (when(c, tz)) } }
            }
            @if !mails.is_empty() {
                h3 { "Bekräftelser via e-post" }
                ul { @for m in &mails { li { (m.subject) ": " @match m.sent_at { Some(s) => { "skickad " (when(s, tz)) } None => { "väntar på att skickas (" (m.attempts) " misslyckade försök)" } } } } }
            }
        }
        section {
            h2 { "Text till journalens administrativa anteckning" }
            p { "Kopiera till mallen Administrativ anteckning under sökordet Åtgärd och fyll i vem som informerat vårdnadshavaren." }
            (pages::pre(&note))
        }
        @if writer && r.confirmation_pending() && r.rule.lifted_at.is_none() {
            section #bekrafta {
                h2 { "Registrera undertecknad blankett" }
                @if let Some(t) = &ce.top { (notice("error", t)) }
                form method="post" action=(format!("/console/child/{h}/rule/{id}/confirm")) {
                    input type="hidden" name="csrf" value=(ctx.session.csrf);
                    (field_in("-bekrafta", "form_reference", "Blankettens referens", cf.get("form_reference"), ce.get("form_reference"), "text", true))
                    (field_in("-bekrafta", "decided_by.name", "Verksamhetschef som beslutade", if cf.0.is_empty() { dec_name } else { cf.get("decided_by.name") }, ce.get("decided_by.name"), "text", true))
                    @if registrar { (field_in("-bekrafta", "unit_request_reference", "Referens till enhetens begäran", cf.get("unit_request_reference"), ce.get("unit_request_reference"), "text", true)) }
                    button type="submit" { "Registrera blanketten" }
                }
            }
        }
        @if writer && r.rule.lifted_at.is_none() && r.rule.valid_until.is_none_or(|u| u > now) {
            section #hav {
                h2 { "Häv beslutet" }
                @if let Some(t) = &le.top { (notice("error", t)) }
                form method="post" action=(format!("/console/child/{h}/rule/{id}/lift")) {
                    input type="hidden" name="csrf" value=(ctx.session.csrf);
                    (field("decided_by.name", "Ansvarig verksamhetschef", lf.get("decided_by.name"), le.get("decided_by.name"), "text", true))
                    (field("decided_by.hsa_id", "Verksamhetschefens HSA-id", lf.get("decided_by.hsa_id"), le.get("decided_by.hsa_id"), "text", false))
                    (area("basis", "Grund för att häva", lf.get("basis"), le.get("basis"), true))
                    @if !r.rule.kind.is_grant() {
                        div.field.error[le.get("threat_assessment_done").is_some()] {
                            @if let Some(m) = le.get("threat_assessment_done") { p.msg id="f-threat-fel" { (m) } }
                            input type="checkbox" id="f-threat_assessment_done" name="threat_assessment_done" value="ja" checked[lf.ticked("threat_assessment_done")];
                            label for="f-threat_assessment_done" { "Verksamhetschefen har kontrollerat hotbilden hos socialförvaltningen" }
                        }
                    }
                    @if registrar { (field("unit_request_reference", "Referens till enhetens undertecknade begäran", lf.get("unit_request_reference"), le.get("unit_request_reference"), "text", true)) }
                    button type="submit" { "Häv beslutet" }
                }
            }
        }
    };
    Ok(page(
        status_code,
        pages::layout(&ctx.frame(&format!("Beslut {id}")), body),
        &[],
    ))
}

fn note_for(r: &StoredRule, tz: &jiff::tz::TimeZone) -> String {
    let dec = r.meta.decided_by.get("name").and_then(Value::as_str).unwrap_or("");
    let (what, at, dec, basis) = match (&r.lift, r.rule.lifted_at) {
        (Some(lift), Some(at)) => (
            format!("{} hävd", text::kind(r.rule.kind)),
            at,
            lift.pointer("/decided_by/name").and_then(Value::as_str).unwrap_or(dec),
            lift.get("basis").and_then(Value::as_str).unwrap_or(&r.meta.basis),
        ),
        _ => (
            format!("{} registrerad ({})", text::kind(r.rule.kind), scope(r)),
            r.rule.valid_from,
            dec,
            r.meta.basis.as_str(),
        ),
    };
    text::Note {
        what,
        when: when(at, tz),
        until: r.rule.valid_until.map(|u| when(u, tz)),
        decided_by: dec,
        unit: r.meta.issuing_unit.as_str(),
        basis,
        reference: r.meta.reference.as_deref(),
        id: r.rule.id.0,
    }
    .text()
}

async fn rule_action(ctx: &Ctx<'_>, h: &str, id_text: &str, action: &str, f: &Form) -> Page {
    ctx.require(WRITERS)?;
    let pid = child_of(ctx, h)?;
    let id = rule_id(ctx, id_text)?;
    let d = child_data(ctx, pid).await?;
    let r = find_rule(ctx, &d, id)?;
    let Addressed {
        requester,
        reference,
        unit,
    } = Addressed::of(r);
    let family = Family::of(r.rule.kind);
    let kind = r.rule.kind;
    if action == "lift" {
        let body = body_of(&[
            ("issuing_unit", Value::from(unit)),
            ("decided_by.name", Value::from(f.get("decided_by.name"))),
            ("decided_by.hsa_id", Value::from(f.get("decided_by.hsa_id"))),
            ("basis", Value::from(f.get("basis"))),
            (
                "threat_assessment_done",
                Value::Bool(f.ticked("threat_assessment_done")),
            ),
            ("unit_request_reference", Value::from(f.get("unit_request_reference"))),
        ]);
        let what = format!("{} hävd", text::kind(kind));
        let mail = mail_draft(ctx, &requester, &what, &reference);
        match admin::lift_rule(ctx.admin, ctx.user(), family, RuleId(id), &body, mail).await {
            Ok(_) => {
                wake(ctx);
                Ok(redirect(&format!("/console/child/{h}/rule/{id}?havt=1"), &[]))
            }
            Err(e) => {
                let forms = Forms {
                    lift: Some((f, Errors::from_api(&e, LIFT_INPUTS))),
                    confirm: None,
                };
                rule_page(ctx, h, id_text, forms, &ReqInfo { query: Vec::new() }).await
            }
        }
    } else {
        match confirm(ctx, id, &unit, &requester, &reference, kind, f).await {
            Ok(()) => Ok(redirect(&format!("/console/child/{h}/rule/{id}?bekraftat=1"), &[])),
            Err(e) => {
                let forms = Forms {
                    lift: None,
                    confirm: Some((f, Errors::from_api(&e, CONFIRM_INPUTS))),
                };
                rule_page(ctx, h, id_text, forms, &ReqInfo { query: Vec::new() }).await
            }
        }
    }
}

/// Where a decision's confirmations go, under which reference, and the
/// unit a lift or confirmation acts for.
struct Addressed {
    requester: String,
    reference: String,
    unit: String,
}

impl Addressed {
    fn of(r: &StoredRule) -> Addressed {
        Addressed {
            requester: r
                .meta
                .requested_by
                .as_ref()
                .and_then(|v| v.get("email"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            reference: r.meta.reference.clone().unwrap_or_default(),
            unit: r.meta.issuing_unit.as_str().to_owned(),
        }
    }
}

fn wake(ctx: &Ctx<'_>) {
    if let Some(m) = &ctx.console.mail {
        m.wake();
    }
}

async fn confirm(
    ctx: &Ctx<'_>,
    id: u64,
    unit: &str,
    requester: &str,
    reference: &str,
    kind: RuleKind,
    f: &Form,
) -> Result<(), ApiError> {
    let body = body_of(&[
        ("issuing_unit", Value::from(unit)),
        ("decided_by.name", Value::from(f.get("decided_by.name"))),
        ("form_reference", Value::from(f.get("form_reference"))),
        ("unit_request_reference", Value::from(f.get("unit_request_reference"))),
    ]);
    let what = format!("{}: undertecknad blankett registrerad", text::kind(kind));
    let mail = mail_draft(ctx, requester, &what, reference);
    admin::confirm_rule(ctx.admin, ctx.user(), RuleId(id), &body, mail).await?;
    wake(ctx);
    Ok(())
}

// ---------------------------------------------------------------- worklist

async fn worklist(ctx: &Ctx<'_>, failed: Option<(u64, &Form, Errors)>) -> Page {
    ctx.require(WRITERS)?;
    let mut rules = ctx
        .admin
        .node
        .store()
        .awaiting_form()
        .await
        .map_err(|e| store_problem(ctx, e))?;
    if let Some(unit) = own_unit(ctx) {
        rules.retain(|r| r.meta.issuing_unit == *unit);
    }
    ctx.log("console_worklist", &named(&rules), json!({"rules": rules.len()}))
        .await?;
    let now = ctx.admin.now();
    let tz = &ctx.admin.tz;
    let registrar = ctx.user().role == Role::Registrar;
    let mut rows = Vec::new();
    for r in &rules {
        rows.push((handle(ctx, r.rule.subject)?, r));
    }
    let body = html! {
        p { "Akuta beslut som ringts in gäller direkt. Här står de tills den undertecknade blanketten har kommit in och registrerats. Äldst först." }
        @if let Some((_, _, e)) = &failed { @if let Some(t) = &e.top { (notice("error", t)) } }
        @if rules.is_empty() { (notice("ok", "Inga akuta beslut väntar på blankett.")) }
        @else {
            table {
                thead { tr {
                    th scope="col" { "Väntat" } th scope="col" { "Beslut" } th scope="col" { "Barn" } th scope="col" { "Vårdenhet" }
                    th scope="col" { "Beställare" } th scope="col" { "Registrera blankett" }
                } }
                tbody {
                    @for (h, r) in &rows {
                        @let id = r.rule.id.0;
                        @let (f, e) = match &failed { Some((fid, f, e)) if *fid == id => (Some(*f), Some(e)), _ => (None, None) };
                        @let get = |n: &str| f.map(|f| f.get(n).to_owned()).unwrap_or_default();
                        @let err = |n: &str| e.and_then(|e| e.get(n).map(str::to_owned));
                        tr id=(format!("beslut-{id}")) {
                            td { (age(now, r.created_at)) br; small { (when(r.created_at, tz)) } }
                            td { a href=(format!("/console/child/{h}/rule/{id}")) { "Beslut " (id) } br; (text::kind(r.rule.kind)) }
                            td { a href=(format!("/console/child/{h}")) { (r.rule.subject) } }
                            td { (r.meta.issuing_unit.as_str()) }
                            td { (r.meta.requested_by.as_ref().and_then(|v| v.get("name")).and_then(Value::as_str).unwrap_or("–")) }
                            td {
                                form.inline method="post" action=(format!("/console/worklist/{id}/confirm")) {
                                    input type="hidden" name="csrf" value=(ctx.session.csrf);
                                    input type="hidden" name="decided_by.name" value=(r.meta.decided_by.get("name").and_then(Value::as_str).unwrap_or(""));
                                    (field(&format!("form_reference-{id}"), "Blankettens referens", &get(&format!("form_reference-{id}")), err("form_reference").as_deref(), "text", true))
                                    @if registrar {
                                        (field(&format!("unit_request_reference-{id}"), "Enhetens begäran (referens)", &get(&format!("unit_request_reference-{id}")), err("unit_request_reference").as_deref(), "text", true))
                                    }
                                    button type="submit" { "Bekräfta" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let status = if failed.is_some() { 422 } else { 200 };
    Ok(page(
        status,
        pages::layout(&ctx.frame("Arbetslista: akuta beslut"), body),
        &[],
    ))
}

fn age(now: Instant, since: Instant) -> String {
    let minutes = now.as_nanos().saturating_sub(since.as_nanos()).max(0) / 60_000_000_000;
    let (d, h, m) = (minutes / 1440, minutes % 1440 / 60, minutes % 60);
    match (d, h) {
        (0, 0) => format!("{m} min"),
        (0, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

async fn worklist_confirm(ctx: &Ctx<'_>, id_text: &str, f: &Form) -> Page {
    ctx.require(WRITERS)?;
    let id = rule_id(ctx, id_text)?;
    let pending = ctx
        .admin
        .node
        .store()
        .awaiting_form()
        .await
        .map_err(|e| store_problem(ctx, e))?;
    let Some(r) = pending
        .iter()
        .find(|r| r.rule.id.0 == id && own_unit(ctx).is_none_or(|u| r.meta.issuing_unit == *u))
    else {
        return Err(ctx.problem(
            404,
            "Beslutet väntar inte på blankett, eller hör till en annan vårdenhet än din.",
        ));
    };
    // The row's fields carry its id, so several rows can be on one page.
    let mut row = Form::default();
    row.0
        .push(("decided_by.name".into(), f.get("decided_by.name").to_owned()));
    row.0.push((
        "form_reference".into(),
        f.get(&format!("form_reference-{id}")).to_owned(),
    ));
    row.0.push((
        "unit_request_reference".into(),
        f.get(&format!("unit_request_reference-{id}")).to_owned(),
    ));
    let Addressed {
        requester,
        reference,
        unit,
    } = Addressed::of(r);
    match confirm(ctx, id, &unit, &requester, &reference, r.rule.kind, &row).await {
        Ok(()) => {
            let body = html! {
                (notice("ok", &format!("Blanketten för beslut {id} är registrerad.")))
                p { a href="/console/worklist" { "Tillbaka till arbetslistan" } }
            };
            Ok(page(200, pages::layout(&ctx.frame("Bekräftat"), body), &[]))
        }
        Err(e) => worklist(ctx, Some((id, f, Errors::from_api(&e, CONFIRM_INPUTS)))).await,
    }
}

// ---------------------------------------------------------------- unit

async fn unit_page(ctx: &Ctx<'_>) -> Page {
    ctx.require(&[Role::Unit])?;
    let Some(unit) = own_unit(ctx) else {
        return Err(ctx.problem(403, "Din inloggning saknar vårdenhet."));
    };
    let rules = ctx
        .admin
        .node
        .store()
        .rules_of_unit(unit.clone(), 500)
        .await
        .map_err(|e| store_problem(ctx, e))?;
    ctx.log("console_unit_list", &named(&rules), json!({"rules": rules.len()}))
        .await?;
    let now = ctx.admin.now();
    let tz = &ctx.admin.tz;
    let mut rows = Vec::new();
    for r in &rules {
        rows.push((handle(ctx, r.rule.subject)?, r));
    }
    let body = html! {
        p { "Beslut som " strong { (unit.as_str()) } " har fattat, nyast först (högst 500)." }
        @if rules.is_empty() { p { "Inga beslut." } }
        @else {
            table {
                thead { tr { th scope="col" { "Beslut" } th scope="col" { "Vad" } th scope="col" { "Barn" } th scope="col" { "Gäller" } th scope="col" { "Från" } th scope="col" { "Status" } } }
                tbody {
                    @for (h, r) in &rows {
                        tr {
                            td { a href=(format!("/console/child/{h}/rule/{}", r.rule.id.0)) { "Beslut " (r.rule.id.0) } }
                            td { (text::kind(r.rule.kind)) @if r.meta.urgent { " (akut)" } }
                            td { a href=(format!("/console/child/{h}")) { (r.rule.subject) } }
                            td { (scope(r)) }
                            td { (when(r.rule.valid_from, tz)) }
                            td { (status(r, now)) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(200, pages::layout(&ctx.frame("Enhetens beslut"), body), &[]))
}

// ---------------------------------------------------------------- access log

async fn access_log(ctx: &Ctx<'_>, f: Option<&Form>) -> Page {
    ctx.require(&[Role::Auditor])?;
    let empty = Form::default();
    let form = f.unwrap_or(&empty);
    let mut errors = Errors::default();
    let today = ctx.admin.today();
    let tz = &ctx.admin.tz;
    let subject = match form.get("pnr") {
        "" => None,
        s => match Pid::parse(s, today) {
            Ok(p) => Some(p),
            Err(_) => {
                errors.fields.push((
                    "pnr".into(),
                    "Personnumret är inte giltigt: kontrollera datum och kontrollsiffra.".into(),
                ));
                None
            }
        },
    };
    let date = |name: &str, errors: &mut Errors| -> Option<Instant> {
        let v = form.get(name);
        if v.is_empty() {
            return None;
        }
        match time::parse_instant(v, tz) {
            Ok(i) => Some(i),
            Err(_) => {
                errors
                    .fields
                    .push((name.to_owned(), "Ange ett datum som ÅÅÅÅ-MM-DD.".into()));
                None
            }
        }
    };
    let from = date("from", &mut errors);
    let to = date("to", &mut errors).map(|t| Instant::from_nanos(t.as_nanos().saturating_add(86_400_000_000_000)));
    let mut entries = Vec::new();
    let mut audit = Vec::new();
    let searched = f.is_some() && errors.is_empty();
    if searched {
        let shown: Vec<Pid> = subject.into_iter().collect();
        ctx.log(
            "console_access_log",
            &shown,
            json!({"from": form.get("from"), "to": form.get("to")}),
        )
        .await?;
        let store = ctx.admin.node.store();
        entries = store
            .access_log(AccessQuery {
                subject,
                from: from.unwrap_or(Instant::from_nanos(i64::MIN)),
                to: to.unwrap_or(Instant::MAX),
                after: 0,
                limit: 2000,
            })
            .await
            .map_err(|e| store_problem(ctx, e))?;
        if let Some(s) = subject {
            audit = store.audit_of(s).await.map_err(|e| store_problem(ctx, e))?;
        }
    }
    let title = if searched && subject.is_some() {
        "Loggutdrag för patient"
    } else {
        "Åtkomstlogg"
    };
    let body = html! {
        @if !errors.is_empty() { (notice("error", "Rätta det som är markerat nedan.")) }
        form method="post" action="/console/access-log" {
            input type="hidden" name="csrf" value=(ctx.session.csrf);
            (field("pnr", "Patientens personnummer (tomt: alla)", form.get("pnr"), errors.get("pnr"), "text", false))
            div.inline {
                (field("from", "Från och med", form.get("from"), errors.get("from"), "date", false))
                (field("to", "Till och med", form.get("to"), errors.get("to"), "date", false))
            }
            button type="submit" { "Visa" }
        }
        @if searched {
            section {
                @if let Some(s) = subject {
                    h2 { "Vem har tagit del av uppgifter om " (s) }
                    p { "Loggutdraget visar varje visning i guardian-access där patientens uppgifter ingick (patientdatalagen 8 kap. 5 §)." }
                } @else { h2 { "Visningar" } }
                @if entries.is_empty() { p { "Inga visningar i perioden." } }
                @else {
                    table {
                        thead { tr { th scope="col" { "Tid" } th scope="col" { "Vem" } th scope="col" { "Roll" } th scope="col" { "Vad" } th scope="col" { "Syfte" } th scope="col" { "Personer" } } }
                        tbody {
                            @for e in &entries {
                                tr {
                                    td { (when(e.at, tz)) }
                                    td { (e.actor) @if let Some(h) = &e.hsa_id { " (" (h) ")" } }
                                    td { (text::role(&e.role)) }
                                    td { (text::action(&e.action)) }
                                    td { (e.purpose.as_deref().unwrap_or("–")) }
                                    td { @if e.everyone { "alla" } @else { (e.subjects.len()) } }
                                }
                            }
                        }
                    }
                    @if entries.len() == 2000 { p { "Visar de första 2 000. Välj en kortare period." } }
                }
            }
            @if subject.is_some() {
                section {
                    h2 { "Ändringar som rör patienten" }
                    @if audit.is_empty() { p { "Inga." } }
                    @else {
                        table {
                            thead { tr { th scope="col" { "Tid" } th scope="col" { "Händelse" } th scope="col" { "Av" } th scope="col" { "Beslut" } } }
                            tbody { @for a in &audit { tr { td { (when(a.at, tz)) } td { (event(a)) } td { (a.actor) @if let Some(h) = &a.hsa_id { " (" (h) ")" } } td { @if let Some(id) = a.rule_id { (id) } } } } }
                        }
                    }
                }
            }
        }
    };
    let status = if errors.is_empty() { 200 } else { 422 };
    Ok(page(status, pages::layout(&ctx.frame(title), body), &[]))
}

#[cfg(test)]
mod tests {
    use super::holds_a_number;

    #[test]
    fn a_reference_with_an_identity_number_is_caught() {
        let today = jiff::civil::date(2026, 11, 23);
        for bad in ["BUP 20150916-2390", "ref 1509162390", "201509162390", "x150916-2390y"] {
            assert!(holds_a_number(bad, today), "{bad}");
        }
        for fine in ["BUP 2026-117", "2026-11-23", "Dnr 1234567", "", "BH-2026-0001"] {
            assert!(!holds_a_number(fine, today), "{fine}");
        }
    }
}
