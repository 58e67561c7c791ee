//! Population data as NDJSON (SPEC §5), one person a line:
//!
//! ```json
//! {"id": "201509162390", "birth_date": "2015-09-16", "protected": false, "guardians": ["197703152392"]}
//! ```
//!
//! `protected` and `guardians` are required on every line: a line that
//! forgot `protected` must not quietly make a protected child unprotected.
//! `birth_date` may be left out or `null` (the number's date is used).
//! Unknown fields are ignored, so the feed can grow. Blank lines are skipped.
//! Errors name the line and the field, never the value.

use std::borrow::Cow;

use jiff::civil::Date;
use serde::Deserialize;
use serde_json::Value;

use crate::core::identity::Pid;
use crate::core::people::PersonRecord;
use crate::http::error::{ApiError, ErrorCode};

/// Longest accepted line.
pub const MAX_LINE: usize = 64 * 1024;
/// Most guardians one person may have.
pub const MAX_GUARDIANS: usize = 10;

/// The usual line, read in one pass with borrowed strings; anything else is
/// read again field by field to say what is wrong.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    birth_date: Option<Cow<'a, str>>,
    protected: bool,
    #[serde(borrow)]
    guardians: Vec<Cow<'a, str>>,
}

/// Splits a byte stream into lines and parses each into a record.
#[derive(Debug)]
pub struct Reader {
    partial: Vec<u8>,
    line: u64,
    today: Date,
}

impl Reader {
    /// A reader resolving 10-digit numbers (and refusing future birth
    /// dates) against `today`, the import's date in Stockholm.
    pub fn new(today: Date) -> Reader {
        Reader {
            partial: Vec::new(),
            line: 0,
            today,
        }
    }

    /// Lines read so far.
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// Parses every complete line of `chunk` (with what was left over from
    /// the last chunk) into `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<PersonRecord>) -> Result<(), ApiError> {
        while let Some(nl) = chunk.iter().position(|b| *b == b'\n') {
            let (head, rest) = chunk.split_at(nl);
            chunk = &rest[1..];
            if self.partial.is_empty() {
                self.line(head, out)?;
            } else {
                self.check_length(self.partial.len() + head.len())?;
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(head);
                self.line(&whole, out)?;
            }
        }
        self.check_length(self.partial.len() + chunk.len())?;
        self.partial.extend_from_slice(chunk);
        Ok(())
    }

    /// Parses the last line, if the stream did not end with a newline.
    pub fn finish(&mut self, out: &mut Vec<PersonRecord>) -> Result<(), ApiError> {
        let last = std::mem::take(&mut self.partial);
        if !last.is_empty() {
            self.line(&last, out)?;
        }
        Ok(())
    }

    fn check_length(&self, len: usize) -> Result<(), ApiError> {
        if len > MAX_LINE {
            return Err(ApiError::invalid_body("the line is longer than 64 KiB").on_line(self.line + 1));
        }
        Ok(())
    }

    fn line(&mut self, bytes: &[u8], out: &mut Vec<PersonRecord>) -> Result<(), ApiError> {
        self.line += 1;
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if bytes.trim_ascii().is_empty() {
            return Ok(());
        }
        let record = parse_line(bytes, self.today).map_err(|e| e.on_line(self.line))?;
        out.push(record);
        Ok(())
    }
}

/// Parses one line.
pub fn parse_line(bytes: &[u8], today: Date) -> Result<PersonRecord, ApiError> {
    if bytes.trim_ascii_start().first() == Some(&b'{')
        && let Ok(l) = serde_json::from_slice::<Line>(bytes)
    {
        return record(
            &l.id,
            l.birth_date.as_deref(),
            l.protected,
            l.guardians.iter().map(|g| Some(&**g)),
            today,
        );
    }
    // Read again as a map, to name what is wrong.
    let map = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(ApiError::invalid_body("each line must be a JSON object")),
        Err(_) => return Err(ApiError::invalid_json()),
    };
    let id = match map.get("id") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ApiError::invalid_request("id", "must be a string")),
        None => return Err(ApiError::invalid_request("id", "is required")),
    };
    let birth = match map.get("birth_date") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(ApiError::invalid_request(
                "birth_date",
                "must be a date `YYYY-MM-DD` or null",
            ));
        }
    };
    let protected = match map.get("protected") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid_request("protected", "must be `true` or `false`")),
        None => return Err(ApiError::invalid_request("protected", "is required on every line")),
    };
    let guardians = match map.get("guardians") {
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(ApiError::invalid_request(
                "guardians",
                "must be a list of identity numbers",
            ));
        }
        None => {
            return Err(ApiError::invalid_request(
                "guardians",
                "is required on every line (`[]` for none)",
            ));
        }
    };
    record(id, birth, protected, guardians.iter().map(Value::as_str), today)
}

fn record<'a>(
    id: &str,
    birth: Option<&str>,
    protected: bool,
    guardians: impl ExactSizeIterator<Item = Option<&'a str>>,
    today: Date,
) -> Result<PersonRecord, ApiError> {
    let id = Pid::parse(id, today).map_err(|e| ApiError::identity("id", e))?;
    let birth_date = match birth {
        None => None,
        Some(s) => {
            let d = (s.len() == 10)
                .then(|| s.parse::<Date>().ok())
                .flatten()
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidTime,
                        "`birth_date`: must be a date `YYYY-MM-DD`",
                        Some("birth_date"),
                    )
                })?;
            if d > today {
                return Err(ApiError::invalid_request("birth_date", "is in the future"));
            }
            Some(d)
        }
    };
    if guardians.len() > MAX_GUARDIANS {
        return Err(ApiError::invalid_request("guardians", "may list at most 10 guardians"));
    }
    let mut list: Vec<Pid> = Vec::with_capacity(guardians.len());
    for (i, g) in guardians.enumerate() {
        let field = || format!("guardians[{i}]");
        let g = g.ok_or_else(|| {
            ApiError::invalid_request("guardians", "must be a list of identity numbers").with_field(field())
        })?;
        let g = Pid::parse(g, today).map_err(|e| {
            let mut err = ApiError::identity("guardians", e).with_field(field());
            err.message = Cow::Owned(format!("`{}`: {e}", field()));
            err
        })?;
        if g == id {
            return Err(
                ApiError::invalid_request("guardians", "a person cannot be their own guardian").with_field(field()),
            );
        }
        if list.contains(&g) {
            return Err(ApiError::invalid_request("guardians", "lists the same guardian twice").with_field(field()));
        }
        list.push(g);
    }
    Ok(PersonRecord {
        id,
        birth_date,
        protected,
        guardians: list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> Date {
        jiff::civil::date(2026, 11, 23)
    }

    fn read(text: &str, chunk: usize) -> Result<Vec<PersonRecord>, ApiError> {
        let mut r = Reader::new(today());
        let mut out = Vec::new();
        for c in text.as_bytes().chunks(chunk) {
            r.feed(c, &mut out)?;
        }
        r.finish(&mut out)?;
        Ok(out)
    }

    const GOOD: &str = r#"{"id": "201509162390", "birth_date": "2015-09-16", "protected": false, "guardians": ["197701012382", "198001022386"]}
{"id": "19770101-2382", "protected": true, "guardians": [], "note": "ignored"}

{"id": "201801012392", "birth_date": null, "protected": false, "guardians": ["198001032385"]}"#;

    #[test]
    fn lines_are_read_whatever_the_chunking() {
        let want = read(GOOD, GOOD.len()).unwrap();
        assert_eq!(want.len(), 3, "the blank line is skipped");
        assert_eq!(want[0].guardians.len(), 2);
        assert_eq!(want[0].birth_date, Some(jiff::civil::date(2015, 9, 16)));
        assert!(want[1].protected);
        assert_eq!(want[1].id.to_string(), "197701012382");
        for chunk in [1, 2, 7, 64] {
            assert_eq!(read(GOOD, chunk).unwrap(), want, "chunk {chunk}");
        }
        assert_eq!(
            read(&format!("{GOOD}\r\n"), 5).unwrap(),
            want,
            "CRLF and a final newline"
        );
    }

    #[test]
    fn errors_name_the_line_and_field_and_never_the_value() {
        let cases = [
            (
                r#"{"id": "201509162391", "protected": false, "guardians": []}"#,
                "invalid_identifier",
                Some("id"),
            ),
            (
                r#"{"id": "19810829M071", "protected": false, "guardians": []}"#,
                "unsupported_identifier",
                Some("id"),
            ),
            (
                r#"{"id": "201509162390", "guardians": []}"#,
                "invalid_request",
                Some("protected"),
            ),
            (
                r#"{"id": "201509162390", "protected": "no", "guardians": []}"#,
                "invalid_request",
                Some("protected"),
            ),
            (
                r#"{"id": "201509162390", "protected": false}"#,
                "invalid_request",
                Some("guardians"),
            ),
            (
                r#"{"id": "201509162390", "protected": false, "guardians": ["197701012382", "197701012383"]}"#,
                "invalid_identifier",
                Some("guardians[1]"),
            ),
            (
                r#"{"id": "201509162390", "protected": false, "guardians": ["197701012382", "197701012382"]}"#,
                "invalid_request",
                Some("guardians[1]"),
            ),
            (
                r#"{"id": "201509162390", "protected": false, "guardians": ["201509162390"]}"#,
                "invalid_request",
                Some("guardians[0]"),
            ),
            (
                r#"{"id": "201509162390", "protected": false, "guardians": [5]}"#,
                "invalid_request",
                Some("guardians[0]"),
            ),
            (
                r#"{"id": "201509162390", "birth_date": "2015-9-16", "protected": false, "guardians": []}"#,
                "invalid_time",
                Some("birth_date"),
            ),
            (
                r#"{"id": "201509162390", "birth_date": "2031-01-01", "protected": false, "guardians": []}"#,
                "invalid_request",
                Some("birth_date"),
            ),
            (
                r#"{"id": 201509162390, "protected": false, "guardians": []}"#,
                "invalid_request",
                Some("id"),
            ),
            (r#"["201509162390"]"#, "invalid_request", None),
            (r#"{"id": "2015091"#, "invalid_json", None),
        ];
        for (bad, code, field) in cases {
            let text = format!(
                "{}\n{bad}\n{}",
                GOOD.lines().next().unwrap(),
                GOOD.lines().nth(1).unwrap()
            );
            let e = read(&text, 3).unwrap_err();
            assert_eq!(
                (e.code.as_str(), e.field.as_deref(), e.line),
                (code, field, Some(2)),
                "{bad}"
            );
            assert!(e.message.starts_with("line 2: "), "{}", e.message);
            let body = String::from_utf8(e.body()).unwrap();
            for digits in ["2015091623", "1977010123", "0829M071"] {
                assert!(!body.contains(digits), "{body}");
            }
        }
    }

    #[test]
    fn an_overlong_line_is_refused_before_it_is_buffered_whole() {
        let long = format!("{{\"id\": \"{}\"", "x".repeat(MAX_LINE));
        let e = read(&long, 4096).unwrap_err();
        assert_eq!((e.code.as_str(), e.line), ("invalid_request", Some(1)));
    }
}
