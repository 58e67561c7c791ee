# guardian-access rules (SPEC §3) in Rego, for OPA or regorus.
#
# data (an OPA bundle's data.json):
#   data.people[pid]   = {"protected": bool, "attains13": s, "attains16": s, "guardians": [pid, ...]}
#                        attains13/16: Unix seconds at which the person attains 13 and 16
#                        (00:00 Europe/Stockholm on the birthday; absent = birth date unknown)
#   data.rules[pid]    = [{"kind": "block"|"seal"|"extended_access"|"early_access",
#                          "guardian": pid (optional), "services": ["journal", ...],
#                          "valid_from": s, "valid_until": s (optional), "lifted_at": s (optional),
#                          "care_units": [hsa-id, ...] (optional)}, ...]  -- by subject
#   data.settings      = {"protected_guardian": bool}
# input = {"actor": pid, "subject": pid, "service": "journal"|"eservices", "at": s}
#
# Each decision is the first matching row, written as `else` chains.
package guardian

import rego.v1

subject := data.people[input.subject]

rules := object.get(data.rules, input.subject, [])

# Active at the instant asked about: valid_from <= at < valid_until, and not lifted yet.
active(r) if {
	r.valid_from <= input.at
	input.at < object.get(r, "valid_until", input.at + 1)
	input.at < object.get(r, "lifted_at", input.at + 1)
}

seal_active if {
	some r in rules
	r.kind == "seal"
	input.service in r.services
	active(r)
}

# A block naming this guardian, or all guardians (no guardian named).
block_active if {
	some r in rules
	r.kind == "block"
	input.service in r.services
	object.get(r, "guardian", input.actor) == input.actor
	active(r)
}

# Early access: the subject's own journal from 13.
early_open if {
	input.service == "journal"
	input.at >= subject.attains13
	some r in rules
	r.kind == "early_access"
	active(r)
}

# Extended access: this guardian keeps the journal of a 13-15-year-old.
extended_open if {
	input.service == "journal"
	input.at < subject.attains16
	some r in rules
	r.kind == "extended_access"
	r.guardian == input.actor
	active(r)
}

registered if input.actor in subject.guardians

protected_guardian_applies := object.get(data, ["settings", "protected_guardian"], true)

# Actor is the subject: rows 1-5.
own_reason := "unknown_age" if {
	not subject.attains13
} else := "below_age" if {
	input.service == "eservices"
	input.at < subject.attains13
} else := "below_age" if {
	input.service == "journal"
	input.at < subject.attains16
	not early_open
} else := "sealed" if {
	seal_active
} else := "early_access" if {
	input.service == "journal"
	input.at < subject.attains16
} else := "own_access"

# Actor is someone else: rows 1-8.
guardian_reason := "not_guardian" if {
	not registered
} else := "protected_subject" if {
	subject.protected
} else := "protected_guardian" if {
	protected_guardian_applies
	data.people[input.actor].protected
} else := "unknown_age" if {
	not subject.attains13
} else := "aged_out" if {
	input.at >= subject.attains13
	not extended_open
} else := "sealed" if {
	seal_active
} else := "blocked" if {
	block_active
} else := "extended_access" if {
	input.at >= subject.attains13
} else := "guardian"

reason := own_reason if input.actor == input.subject

reason := guardian_reason if input.actor != input.subject

allow if reason in {"own_access", "early_access", "guardian", "extended_access"}

decision := {"allow": allow, "reason": reason} if allow

decision := {"allow": false, "reason": reason} if not allow
