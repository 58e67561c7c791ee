//! Identity numbers against published test data and properties:
//! Skatteverket's two test lists, the personnummer project's shared validity
//! cases, round trips and single-digit errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use guardian_access::core::identity::{IdKind, make_pid};
use guardian_access::{IdentityError, Pid};
use jiff::civil::{Date, date};
use proptest::prelude::*;
use serde_json::Value;

const TODAY: Date = date(2026, 11, 23);

fn repo_list(name: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/personnummer")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The separator the 10-digit form gets for someone born in `year`, in
/// calendar year `now`: `+` from the year they turn 100.
fn separator(year: i16, now: i16) -> char {
    if now - year >= 100 { '+' } else { '-' }
}

#[test]
fn every_skatteverket_personnummer() {
    let list = repo_list("skatteverket_test_personnummer.json");
    assert_eq!(list.len(), 41_129);
    for n in &list {
        let pid = Pid::parse(n, TODAY).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(pid.to_string(), *n);
        assert_eq!(pid.kind(), IdKind::Personnummer);
        let born = pid.birth_date().unwrap();
        assert_eq!(born.strftime("%Y%m%d").to_string(), n[..8]);
        // The 12-digit form with a separator, and the 10-digit form with the
        // separator the rule gives today.
        assert_eq!(Pid::parse(&format!("{}-{}", &n[..8], &n[8..]), TODAY), Ok(pid));
        let short = format!("{}{}{}", &n[2..8], separator(born.year(), TODAY.year()), &n[8..]);
        assert_eq!(Pid::parse(&short, TODAY), Ok(pid), "{short}");
    }
}

#[test]
fn every_skatteverket_samordningsnummer() {
    let list = repo_list("skatteverket_test_samordningsnummer.json");
    assert_eq!(list.len(), 2_264);
    let mut unknown = 0;
    for n in &list {
        let pid = Pid::parse(n, TODAY).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(pid.to_string(), *n);
        assert_eq!(pid.kind(), IdKind::Samordningsnummer);
        let (month, day) = (&n[4..6], &n[6..8]);
        let year: i16 = n[..4].parse().unwrap();
        let exists = month != "00" && Date::new(year, month.parse().unwrap(), day.parse::<i8>().unwrap() - 60).is_ok();
        assert_eq!(pid.birth_date().is_some(), exists, "{n}");
        if let Some(born) = pid.birth_date() {
            let day: i8 = day.parse().unwrap();
            assert_eq!(born.day(), day - 60);
        } else {
            unknown += 1;
        }
        let short = format!("{}{}{}", &n[2..8], separator(year, TODAY.year()), &n[8..]);
        assert_eq!(Pid::parse(&short, TODAY), Ok(pid), "{short}");
    }
    assert!(unknown > 0, "the list has numbers with unknown dates");
}

/// The personnummer project's shared cases. Its `+`/`-` separators were
/// computed in the year the file was made, which the file does not state: we
/// find the years in which all of them are right, check the short forms at
/// such a year, and check them again today with the separator recomputed.
#[test]
fn shared_validity_list() {
    let dir = std::env::var_os("GUARDIAN_SHARED_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/personnummer"));
    let path = dir.join("list.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        assert!(std::env::var_os("CI").is_none(), "CI must provide {}", path.display());
        eprintln!(
            "\n*** SKIPPED shared_validity_list: {} not found (set GUARDIAN_SHARED_TESTDATA) ***\n",
            path.display()
        );
        return;
    };
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 14);
    let field = |c: &Value, f: &str| c[f].as_str().unwrap().to_owned();

    // Years in which every valid case's separator is what the rule gives.
    let valid: Vec<&Value> = cases.iter().filter(|c| c["valid"] == true).collect();
    let made_in: Vec<i16> = (2000..=TODAY.year())
        .filter(|&y| {
            valid.iter().all(|c| {
                let long = field(c, "long_format");
                let born: i16 = long[..4].parse().unwrap();
                field(c, "separated_format").contains(separator(born, y))
            })
        })
        .collect();
    assert!(!made_in.is_empty(), "no year makes every separator in list.json right");
    let file_day = date(*made_in.last().unwrap(), 6, 1);

    for c in &cases {
        let long = field(c, "long_format");
        let forms = ["long_format", "short_format", "separated_format", "separated_long"];
        if c["valid"] == false {
            for f in forms {
                assert!(
                    Pid::parse(&field(c, f), TODAY).is_err(),
                    "{f} of an invalid case parsed"
                );
            }
            continue;
        }
        let pid = Pid::parse(&long, TODAY).unwrap();
        assert_eq!(pid.to_string(), long);
        let kind = if c["type"] == "con" {
            IdKind::Samordningsnummer
        } else {
            IdKind::Personnummer
        };
        assert_eq!(pid.kind(), kind);
        assert_eq!(Pid::parse(&field(c, "separated_long"), TODAY), Ok(pid));
        // As the file meant it, in the year it was made.
        assert_eq!(Pid::parse(&field(c, "separated_format"), file_day), Ok(pid));
        // Today, with the separator the rule gives now.
        let born = pid.year();
        let short = field(c, "short_format");
        let now_form = format!("{}{}{}", &short[..6], separator(born, TODAY.year()), &short[6..]);
        assert_eq!(Pid::parse(&now_form, TODAY), Ok(pid));
        // Without a separator a 10-digit number means under 100.
        let bare = Pid::parse(&short, TODAY).unwrap();
        if separator(born, TODAY.year()) == '-' {
            assert_eq!(bare, pid);
        } else {
            assert_eq!(bare.year(), born + 100);
        }
    }
}

#[test]
fn error_codes_and_messages_never_echo_the_number() {
    let cases = [
        ("19810829M071", "unsupported_identifier"),
        ("810829-M071", "unsupported_identifier"),
        ("20150916 2390", "invalid_identifier"),
        ("201509162391", "invalid_identifier"),
        ("abc", "invalid_identifier"),
        ("", "invalid_identifier"),
    ];
    for (input, code) in cases {
        let err = Pid::parse(input, TODAY).unwrap_err();
        assert_eq!(err.code(), code, "{input}");
        let message = err.to_string();
        for part in input
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|p| p.len() >= 3)
        {
            assert!(!message.contains(part), "`{message}` repeats the input");
        }
    }
}

/// Valid parts for a generated number.
fn parts() -> impl Strategy<Value = (i16, u8, u8, u16)> {
    (1890i16..=2026, 1u8..=12, 1u8..=31, 1u16..=999)
        .prop_filter("a real date", |(y, m, d, _)| Date::new(*y, *m as i8, *d as i8).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_form_round_trips((y, m, d, serial) in parts(), coordination in any::<bool>()) {
        let day = if coordination { d + 60 } else { d };
        let pid = make_pid(y, m, day, serial).unwrap();
        let long = pid.to_string();
        prop_assert_eq!(Pid::parse(&long, TODAY), Ok(pid));
        prop_assert_eq!(Pid::from_u64(pid.get()), Ok(pid));
        prop_assert_eq!(Pid::parse(&format!("{}-{}", &long[..8], &long[8..]), TODAY), Ok(pid));
        let short = format!("{}{}{}", &long[2..8], separator(y, TODAY.year()), &long[8..]);
        prop_assert_eq!(Pid::parse(&short, TODAY), Ok(pid));
        prop_assert_eq!(pid.birth_date(), Date::new(y, m as i8, d as i8).ok());
    }

    #[test]
    fn every_single_digit_error_is_caught((y, m, d, serial) in parts(), position in 2usize..12, delta in 1u8..10) {
        let long = make_pid(y, m, d, serial).unwrap().to_string();
        let mut digits: Vec<u8> = long.bytes().collect();
        digits[position] = b'0' + (digits[position] - b'0' + delta) % 10;
        let wrong = String::from_utf8(digits).unwrap();
        prop_assert!(Pid::parse(&wrong, TODAY).is_err(), "{} accepted", wrong);
    }

    #[test]
    fn arbitrary_input_never_panics(s in "\\PC{0,20}") {
        let _ = Pid::parse(&s, TODAY);
    }

    #[test]
    fn digit_strings_either_parse_canonically_or_fail(s in "[0-9]{10,12}") {
        match Pid::parse(&s, TODAY) {
            Ok(pid) => prop_assert!(pid.to_string().ends_with(&s)),
            Err(e) => prop_assert!(matches!(e, IdentityError::Length | IdentityError::Century | IdentityError::Date | IdentityError::Serial | IdentityError::CheckDigit)),
        }
    }
}
