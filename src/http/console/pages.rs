//! The console's HTML, server-rendered with `maud` (templates checked when
//! the crate compiles, escaped by default). Every page works without
//! JavaScript; there is none. One stylesheet, served by the console itself.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::actor::{Caller, Role};

/// What every page's frame needs.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The page's title.
    pub title: &'a str,
    /// The logged-in person, if any.
    pub user: Option<&'a Caller>,
    /// Their session's CSRF token (for the logout form).
    pub csrf: &'a str,
    /// Whether this is the demo.
    pub demo: bool,
}

/// The page around `body`: header with navigation, main, footer.
pub fn layout(f: &Frame<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="sv" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (f.title) " – Vårdnadshavares åtkomst" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                a.skip href="#main" { "Hoppa till innehållet" }
                header {
                    p.brand { a href="/console/" { "Vårdnadshavares åtkomst" } }
                    @if f.demo { p.demo role="note" { "DEMO – inga riktiga personuppgifter, demo-inloggning utan identitetsleverantör" } }
                    @if let Some(u) = f.user {
                        nav aria-label="Huvudmeny" {
                            ul {
                                @if matches!(u.role, Role::Registrar | Role::Auditor | Role::Unit) {
                                    li { a href="/console/" { "Sök barn" } }
                                }
                                @if matches!(u.role, Role::Registrar | Role::Unit) {
                                    li { a href="/console/worklist" { "Arbetslista akuta" } }
                                }
                                @if u.role == Role::Unit {
                                    li { a href="/console/unit" { "Enhetens beslut" } }
                                }
                                @if u.role == Role::Auditor {
                                    li { a href="/console/access-log" { "Åtkomstlogg" } }
                                }
                            }
                        }
                        div.who {
                            span { (u.name) " (" (role_name(u.role)) @if let Some(unit) = &u.unit { ", " (unit.as_str()) } ")" }
                            form method="post" action="/console/logout" {
                                input type="hidden" name="csrf" value=(f.csrf);
                                button type="submit" { "Logga ut" }
                            }
                        }
                    }
                }
                main #main { h1 { (f.title) } (body) }
                footer { p { "Varje visning av personuppgifter loggas (patientdatalagen 4 kap. 3 §)." } }
            }
        }
    }
}

/// A role's name in Swedish.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Registrar => "kontaktcenter",
        Role::Unit => "vårdenhet",
        Role::Auditor => "logggranskare",
        Role::Population => "folkbokföring",
        Role::Peer => "instans",
        Role::Operator => "drift",
    }
}

/// A labelled text input with its error, keeping what was typed.
pub fn field(name: &str, label: &str, value: &str, error: Option<&str>, kind: &str, required: bool) -> Markup {
    field_in("", name, label, value, error, kind, required)
}

/// [`field`] in one of several forms on a page: `form` keeps its id apart.
pub fn field_in(
    form: &str,
    name: &str,
    label: &str,
    value: &str,
    error: Option<&str>,
    kind: &str,
    required: bool,
) -> Markup {
    let id = format!("{}{}", id_of(name), form);
    let err_id = format!("{id}-fel");
    html! {
        div.field.error[error.is_some()] {
            label for=(id) { (label) @if required { " " abbr title="obligatoriskt" { "*" } } }
            @if let Some(e) = error { p.msg id=(err_id) { (e) } }
            input id=(id) name=(name) type=(kind) value=(value) required[required] multiple[kind == "email"]
                aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| err_id.as_str())];
        }
    }
}

/// A labelled text area with its error.
pub fn area(name: &str, label: &str, value: &str, error: Option<&str>, required: bool) -> Markup {
    let id = id_of(name);
    area_with_id(&id, name, label, value, error, required)
}

fn area_with_id(id: &str, name: &str, label: &str, value: &str, error: Option<&str>, required: bool) -> Markup {
    let err_id = format!("{id}-fel");
    html! {
        div.field.error[error.is_some()] {
            label for=(id) { (label) @if required { " " abbr title="obligatoriskt" { "*" } } }
            @if let Some(e) = error { p.msg id=(err_id) { (e) } }
            textarea id=(id) name=(name) rows="3" required[required]
                aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| err_id.as_str())] { (value) }
        }
    }
}

/// A form field's id: its name with dots as dashes.
pub fn id_of(name: &str) -> String {
    format!("f-{}", name.replace('.', "-"))
}

/// A box of messages at the top of a form.
pub fn notice(kind: &str, text: &str) -> Markup {
    html! { div class=(format!("notice {kind}")) role=(if kind == "error" { "alert" } else { "status" }) { p { (text) } } }
}

/// Text that keeps its line breaks (the journal note).
pub fn pre(text: &str) -> Markup {
    html! { pre.note { (text) } }
}

/// The stylesheet.
pub const STYLE: &str = include_str!("style.css");

/// An inline nothing, for `maud` branches.
pub fn nothing() -> Markup {
    PreEscaped(String::new())
}
