//! The console's Swedish: names of things, the portal's answers as a
//! guardian sees them, errors next to their fields, and the journal's
//! administrative note for each decision (seed 002: what, when, who
//! decided, on what basis, who informed the guardian).

use crate::core::decide::{Listing, Reason};
use crate::core::model::{RuleKind, Service};
use crate::http::error::{ApiError, ErrorCode};

/// A kind of rule, as staff call it.
pub fn kind(k: RuleKind) -> &'static str {
    match k {
        RuleKind::Block => "Blockering av vårdnadshavare",
        RuleKind::Seal => "Försegling",
        RuleKind::ExtendedAccess => "Utökad åtkomst för vårdnadshavare (13–15 år)",
        RuleKind::EarlyAccess => "Tidig egen åtkomst (13–15 år)",
    }
}

/// A service, as the portal names it.
pub fn service(s: Service) -> &'static str {
    match s {
        Service::Journal => "1177 Journalen",
        Service::Eservices => "1177 e-tjänster",
    }
}

/// What the person sees in the portal: the listing and its message.
pub fn portal(reason: Reason, listing: Option<Listing>, message: &str) -> String {
    match listing {
        Some(Listing::Enabled) => "Barnet visas och går att öppna".to_owned(),
        Some(Listing::Disabled) => format!(
            "Barnets namn visas men går inte att öppna: ”{}”",
            message.replace("{name}", "[barnets namn]")
        ),
        Some(Listing::Hidden) => "Barnet visas inte alls".to_owned(),
        None if reason.allows() => "Ser sin egen journal".to_owned(),
        None => "Ser inte sin egen journal".to_owned(),
    }
}

/// Why, in a few words.
pub fn reason(r: Reason) -> &'static str {
    match r {
        Reason::OwnAccess => "egen åtkomst",
        Reason::EarlyAccess => "tidig egen åtkomst",
        Reason::Guardian => "vårdnadshavare till barn under 13 år",
        Reason::ExtendedAccess => "utökad åtkomst",
        Reason::BelowAge => "barnet är för ungt för tjänsten",
        Reason::NotGuardian => "inte registrerad vårdnadshavare",
        Reason::ProtectedSubject => "barnet har skyddade personuppgifter",
        Reason::ProtectedGuardian => "vårdnadshavaren har skyddade personuppgifter",
        Reason::UnknownAge => "barnets födelsedatum är okänt",
        Reason::AgedOut => "barnet har nått åldersgränsen",
        Reason::Sealed => "försegling",
        Reason::Blocked => "blockering",
    }
}

/// An audited action, for the timeline.
pub fn action(a: &str) -> &str {
    match a {
        "create_restriction" => "Blockering eller försegling registrerad",
        "create_grant" => "Utökad eller tidig åtkomst registrerad",
        "lift" => "Hävd",
        "confirm" => "Undertecknad blankett registrerad",
        "seed" => "Inläst från demodata",
        "population" => "Folkbokföringsuppgifter ändrade",
        "subject_view" | "console_child_view" => "Visade barnets uppgifter",
        "audit_view" => "Visade händelselogg",
        "explain" => "Förklaring av ett svar",
        "access_log_view" | "console_access_log" => "Visade åtkomstloggen",
        "access_log_export" => "Exporterade åtkomstloggen",
        "snapshot_download" => "Hämtade ögonblicksbild (alla)",
        "console_worklist" => "Visade arbetslistan",
        "console_unit_list" => "Visade enhetens beslut",
        "console_rule_view" => "Visade ett beslut",
        "console_preview" => "Förhandsgranskade ett beslut",
        "console_rule_form" => "Öppnade ett registreringsformulär",
        "console_find" => "Sökte fram barnet",
        other => other,
    }
}

/// A role, as the console shows it.
pub fn role(r: &str) -> &str {
    match r {
        "registrar" => "kontaktcenter",
        "unit" => "vårdenhet",
        "auditor" => "logggranskare",
        "population" => "folkbokföring",
        "peer" => "instans",
        other => other,
    }
}

/// An error, in Swedish, for the field it names. The admin API's English
/// message is for systems; this is for the person who typed the value.
pub fn error(e: &ApiError) -> String {
    let m = e.message.as_ref();
    let field = e.field.as_deref().unwrap_or("");
    match e.code {
        ErrorCode::InvalidIdentifier => {
            return "Personnumret är inte giltigt: kontrollera datum och kontrollsiffra.".into();
        }
        ErrorCode::WrongUnit => return "Bara den vårdenhet som fattade beslutet kan göra detta.".into(),
        ErrorCode::AlreadyLifted => return "Beslutet är redan hävt.".into(),
        ErrorCode::AlreadyConfirmed => {
            return "Beslutet väntar inte på någon blankett (det är redan bekräftat eller var inte akut).".into();
        }
        ErrorCode::NotReady => {
            return "Tjänsten kan inte spara just nu. Inget sparades; försök igen om en stund.".into();
        }
        _ => {}
    }
    if matches!(field, "decided_by" | "requested_by") && m.contains("hsa_id") {
        return "Ange ett HSA-id, till exempel SE2321000131-P000000000011.".into();
    }
    if matches!(field, "decided_by" | "requested_by") && m.contains("`name`") {
        return "Ange namn.".into();
    }
    if m.contains("is required") {
        return match field {
            "requested_by" => "Akuta ärenden kräver uppgifter om den som ringer in.".into(),
            "unit_request_reference" => "Ange referens till enhetens undertecknade begäran.".into(),
            _ => "Måste fyllas i.".into(),
        };
    }
    match field {
        "threat_assessment_done" => {
            "Verksamhetschefen ska ha kontrollerat hotbilden hos socialförvaltningen innan blockeringen tas bort."
                .into()
        }
        "guardian" if m.contains("not a registered guardian") => {
            "Personen är inte registrerad vårdnadshavare till barnet.".into()
        }
        "guardian" if m.contains("cannot be the subject") => "Vårdnadshavaren kan inte vara barnet självt.".into(),
        "guardian" => "Välj vårdnadshavare.".into(),
        "issuing_unit" | "care_units" | "decided_by.hsa_id" | "requested_by.id" => {
            "Ange ett HSA-id, till exempel SE2321000131-E000000000001.".into()
        }
        "valid_from" | "valid_until" if m.contains("after") => "Måste vara efter startdatumet.".into(),
        "valid_from" | "valid_until" => "Ange ett datum som ÅÅÅÅ-MM-DD.".into(),
        "services" => "Välj minst en tjänst.".into(),
        "subject" if m.contains("restrictions and grants in force") => {
            "Barnet har redan så många beslut i kraft som tillåts; häv ett som inte längre behövs först.".into()
        }
        "unit_request_reference" => "Ange referens till enhetens undertecknade begäran.".into(),
        _ if m.contains("at most") => "Texten är för lång.".into(),
        _ if m.contains("e-mail") || field.ends_with("email") => "Ange en giltig e-postadress.".into(),
        _ => "Värdet godtas inte.".into(),
    }
}

/// What the journal's administrative note (sökord Åtgärd) should say.
#[derive(Debug)]
pub struct Note<'a> {
    /// Registered or lifted, and what.
    pub what: String,
    /// When, in Stockholm time.
    pub when: String,
    /// Until when, if it ends.
    pub until: Option<String>,
    /// Who decided (head of unit).
    pub decided_by: &'a str,
    /// The care unit.
    pub unit: &'a str,
    /// On what basis.
    pub basis: &'a str,
    /// The case reference.
    pub reference: Option<&'a str>,
    /// The rule's id in guardian-access.
    pub id: u64,
}

impl Note<'_> {
    /// The ready text, to paste into the journal.
    pub fn text(&self) -> String {
        let mut t = format!("Administrativ anteckning – Åtgärd\n{} {}.\n", self.what, self.when);
        if let Some(u) = &self.until {
            t.push_str(&format!("Gäller till och med {u}.\n"));
        }
        t.push_str(&format!(
            "Beslut av: {}, {}.\nGrund: {}\n",
            self.decided_by, self.unit, self.basis
        ));
        if let Some(r) = self.reference {
            t.push_str(&format!("Ärendenummer: {r}.\n"));
        }
        t.push_str(&format!(
            "Id i guardian-access: {}.\nVårdnadshavaren informerad av: ________ (ange vem, eller att vårdnadshavaren inte informerats och varför).\n",
            self.id
        ));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_speak_swedish_and_name_no_input() {
        let e = ApiError::semantic("threat_assessment_done", "must be `true`");
        assert!(error(&e).contains("hotbilden"));
        let e = ApiError::invalid_request("basis", "is required");
        assert_eq!(error(&e), "Måste fyllas i.");
        let e = ApiError::new(ErrorCode::WrongUnit, "x", Some("issuing_unit"));
        assert!(error(&e).starts_with("Bara den vårdenhet"));
    }

    #[test]
    fn the_note_has_what_when_who_basis_and_who_informed() {
        let n = Note {
            what: "Blockering av vårdnadshavare registrerad".into(),
            when: "2026-11-23 03:05".into(),
            until: None,
            decided_by: "Vera Verksamhetschef",
            unit: "SE2321000131-E000000000001",
            basis: "Orosanmälan",
            reference: Some("BUP 2026-117"),
            id: 9,
        }
        .text();
        for part in [
            "registrerad 2026-11-23 03:05",
            "Beslut av: Vera",
            "Grund: Orosanmälan",
            "BUP 2026-117",
            "informerad av",
        ] {
            assert!(n.contains(part), "{part} in {n}");
        }
    }
}
