//! Swedish personal identity numbers: parsing, validation and the compact key.
//!
//! A [`Pid`] is a validated personnummer or samordningsnummer held as the
//! integer value of its canonical 12-digit form `YYYYMMDDNNNC`. Every accepted
//! input form (SPEC §2) parses to the same `Pid`, and `Pid`'s `Display` is the
//! canonical form that answers use.
//!
//! Error messages never repeat the input: it may be a real person's number,
//! and messages travel into error bodies and logs.

use std::fmt;
use std::num::NonZeroU64;

use jiff::civil::Date;

/// Place values of the parts of `YYYYMMDDNNNC`.
const YEAR: u64 = 100_000_000;
const MONTH: u64 = 1_000_000;
const DAY: u64 = 10_000;
/// The lowest and highest 12-digit values.
const MIN_CANONICAL: u64 = 100_000_000_000;
const MAX_CANONICAL: u64 = 999_999_999_999;

/// A validated personnummer or samordningsnummer.
///
/// Invariants: the value is the canonical 12-digit form as an integer; the
/// century is 18, 19 or 20; the serial is not `000`; the Luhn check digit over
/// the 10-digit form is right; the date part is a real date (personnummer) or a
/// real date plus 60 on the day, or contains month `00` / day `60`
/// (samordningsnummer with an unknown date).
///
/// `Debug` is redacted so that a stray `{:?}` cannot put a number into a log.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(NonZeroU64);

/// Which kind of identity number a [`Pid`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// Personnummer: the day is the day of birth (or close to it).
    Personnummer,
    /// Samordningsnummer: the day is the day of birth plus 60.
    Samordningsnummer,
}

/// Why an input is not an accepted identity number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Nothing was given.
    #[error("is empty")]
    Empty,
    /// Neither 10 nor 12 digits.
    #[error(
        "must be 12 digits `YYYYMMDDNNNC` or 10 digits `YYMMDDNNNC`, optionally with `-` or `+` before the last four"
    )]
    Length,
    /// A character other than a digit, or a separator in the wrong place.
    #[error("may contain only digits and one `-` or `+` before the last four digits")]
    Character,
    /// A reserve number (reservnummer), e.g. VGR's `19810829M071`.
    #[error("reserve numbers (reservnummer) are not supported")]
    ReserveNumber,
    /// The century is not 18, 19 or 20.
    #[error("the century must be 18, 19 or 20")]
    Century,
    /// The date part is not a date that exists.
    #[error("the date part is not a valid date")]
    Date,
    /// Serial number `000` is never issued.
    #[error("serial number `000` is never issued")]
    Serial,
    /// The Luhn check digit is wrong.
    #[error("check digit does not match")]
    CheckDigit,
}

impl IdentityError {
    /// The API error code for this error (SPEC §4).
    pub fn code(self) -> &'static str {
        match self {
            IdentityError::ReserveNumber => "unsupported_identifier",
            _ => "invalid_identifier",
        }
    }
}

impl Pid {
    /// Parses any accepted form (SPEC §2).
    ///
    /// `today` is the evaluation date in Europe/Stockholm; it only matters for
    /// the 10-digit forms, whose century it resolves: with `-` (or no
    /// separator) the person is under 100 in `today`'s calendar year, with `+`
    /// they turned 100 in or before it. In the 12-digit forms the century is
    /// explicit and the separator carries no meaning, so either is accepted.
    pub fn parse(input: &str, today: Date) -> Result<Pid, IdentityError> {
        Pid::parse_with(input, || today.year())
    }

    /// [`Pid::parse`] that asks for the evaluation year only when a 10-digit
    /// form needs it, so the usual 12-digit request does no calendar work.
    pub fn parse_with(input: &str, this_year: impl FnOnce() -> i16) -> Result<Pid, IdentityError> {
        let b = input.as_bytes();
        if b.is_empty() {
            return Err(IdentityError::Empty);
        }
        if is_reserve_number(b) {
            return Err(IdentityError::ReserveNumber);
        }
        let mut digits = [0u8; 12];
        let (n, separator) = collect_digits(b, &mut digits)?;
        let full: [u8; 12] = match n {
            12 => digits,
            10 => {
                let mut ten = [0u8; 10];
                ten.copy_from_slice(&digits[..10]);
                let yy = i16::from(ten[0] * 10 + ten[1]);
                let century = resolve_century(yy, separator == Some(b'+'), this_year());
                let mut full = [0u8; 12];
                full[0] = (century / 10) as u8;
                full[1] = (century % 10) as u8;
                full[2..].copy_from_slice(&ten);
                full
            }
            _ => return Err(IdentityError::Length),
        };
        Pid::from_digits(&full)
    }

    /// Validates a canonical 12-digit integer, e.g. one read back from storage.
    pub fn from_u64(value: u64) -> Result<Pid, IdentityError> {
        if !(MIN_CANONICAL..=MAX_CANONICAL).contains(&value) {
            return Err(IdentityError::Length);
        }
        let mut digits = [0u8; 12];
        let mut v = value;
        for d in digits.iter_mut().rev() {
            *d = (v % 10) as u8;
            v /= 10;
        }
        Pid::from_digits(&digits)
    }

    fn from_digits(d: &[u8; 12]) -> Result<Pid, IdentityError> {
        let century = d[0] * 10 + d[1];
        if !(18..=20).contains(&century) {
            return Err(IdentityError::Century);
        }
        let year = i16::from(century) * 100 + i16::from(d[2] * 10 + d[3]);
        let month = d[4] * 10 + d[5];
        let day = d[6] * 10 + d[7];
        check_date(year, month, day)?;
        if d[8] == 0 && d[9] == 0 && d[10] == 0 {
            return Err(IdentityError::Serial);
        }
        if luhn(&d[2..11]) != d[11] {
            return Err(IdentityError::CheckDigit);
        }
        let value = d.iter().fold(0u64, |acc, &x| acc * 10 + u64::from(x));
        NonZeroU64::new(value).map(Pid).ok_or(IdentityError::Length)
    }

    /// Rebuilds a `Pid` from the value of one that was validated before
    /// (snapshot rows and edges pack them with flags). Skips validation, so it
    /// is only for values that came out of [`Pid::get`].
    pub(crate) fn from_validated(value: u64) -> Pid {
        Pid(NonZeroU64::new(value).unwrap_or(NonZeroU64::MIN))
    }

    /// The canonical 12-digit form as an integer.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The year part of the number.
    pub fn year(self) -> i16 {
        (self.get() / YEAR) as i16
    }

    fn month_day(self) -> (u8, u8) {
        let md = (self.get() / DAY) % 10_000;
        ((md / 100) as u8, (md % 100) as u8)
    }

    /// Personnummer or samordningsnummer.
    pub fn kind(self) -> IdKind {
        if self.month_day().1 >= 60 {
            IdKind::Samordningsnummer
        } else {
            IdKind::Personnummer
        }
    }

    /// The date the number states, if it states one: a samordningsnummer's day
    /// minus 60; `None` for month `00`, day `60`, or a samordningsnummer whose
    /// date does not exist (date unknown).
    ///
    /// The population register's birth date, where given, wins over this.
    pub fn birth_date(self) -> Option<Date> {
        let (month, day) = self.month_day();
        let day = if day > 60 { day - 60 } else { day };
        if month == 0 || day == 0 || day == 60 {
            return None;
        }
        Date::new(self.year(), month as i8, day as i8).ok()
    }
}

impl fmt::Display for Pid {
    /// The canonical 12-digit form `YYYYMMDDNNNC`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012}", self.get())
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pid(<redacted>)")
    }
}

/// Reads the digits of an input into `out`, checking that a separator, if
/// any, stands right before the last four digits.
fn collect_digits(b: &[u8], out: &mut [u8; 12]) -> Result<(usize, Option<u8>), IdentityError> {
    let len = b.len();
    let mut n = 0;
    let mut separator = None;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                if n == 12 {
                    return Err(IdentityError::Length);
                }
                out[n] = c - b'0';
                n += 1;
            }
            b'-' | b'+' if separator.is_none() && i + 5 == len => separator = Some(c),
            _ => return Err(IdentityError::Character),
        }
    }
    Ok((n, separator))
}

/// A reserve number: a 6- or 8-digit date, an optional separator, then four
/// characters of which at least one is a letter (e.g. `19810829M071`).
fn is_reserve_number(b: &[u8]) -> bool {
    let Some(tail_start) = b.len().checked_sub(4) else {
        return false;
    };
    let (head, tail) = b.split_at(tail_start);
    let head = match head.last() {
        Some(b'-' | b'+') => &head[..head.len() - 1],
        _ => head,
    };
    (head.len() == 6 || head.len() == 8)
        && head.iter().all(u8::is_ascii_digit)
        && tail.iter().all(u8::is_ascii_alphanumeric)
        && tail.iter().any(u8::is_ascii_alphabetic)
}

/// The century of a 10-digit number: the latest year ending in `yy` that is
/// not after `year` (for `-`) or not after `year - 100` (for `+`).
fn resolve_century(yy: i16, plus: bool, year: i16) -> i16 {
    let base = if plus { year - 100 } else { year };
    let full = base - (base - yy).rem_euclid(100);
    full / 100
}

/// Checks the date part.
///
/// A personnummer's date must exist. A samordningsnummer (day + 60) may leave
/// out the month (`00`), the day (`60`) or both, and Skatteverket issues some
/// whose day does not exist in their month (its own test list has 30 February
/// and 31 April): those are valid identifiers whose birth date is unknown.
fn check_date(year: i16, month: u8, day: u8) -> Result<(), IdentityError> {
    if month > 12 {
        return Err(IdentityError::Date);
    }
    if day >= 60 {
        return if day - 60 <= 31 {
            Ok(())
        } else {
            Err(IdentityError::Date)
        };
    }
    if month == 0 || day == 0 || day > days_in_month(year, month) {
        return Err(IdentityError::Date);
    }
    Ok(())
}

fn days_in_month(year: i16, month: u8) -> u8 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Gregorian leap year.
pub fn is_leap_year(year: i16) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The Luhn check digit over the first nine digits of the 10-digit form.
fn luhn(nine: &[u8]) -> u8 {
    let sum: u32 = nine
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let p = u32::from(d) * if i % 2 == 0 { 2 } else { 1 };
            p / 10 + p % 10
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// Builds a valid `Pid` from its parts, computing the check digit. Used by the
/// synthetic generator and tests to make numbers at run time. Returns `None`
/// if the parts do not form a valid number.
pub fn make_pid(year: i16, month: u8, day: u8, serial: u16) -> Option<Pid> {
    if !(1800..=2099).contains(&year) || serial == 0 || serial > 999 {
        return None;
    }
    Pid::from_u64(with_check_digit(year, month, day, serial)).ok()
}

/// The 12-digit value of these parts with the right check digit, whether or
/// not they form a valid number (`year` in 1800..=2099, `serial` below 1000).
fn with_check_digit(year: i16, month: u8, day: u8, serial: u16) -> u64 {
    let yy = (year % 100) as u8;
    let nine = [
        yy / 10,
        yy % 10,
        month / 10,
        month % 10,
        day / 10,
        day % 10,
        (serial / 100) as u8,
        (serial / 10 % 10) as u8,
        (serial % 10) as u8,
    ];
    u64::from(year.unsigned_abs()) * YEAR
        + u64::from(month) * MONTH
        + u64::from(day) * DAY
        + u64::from(serial) * 10
        + u64::from(luhn(&nine))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    const TODAY: Date = date(2026, 11, 23);

    fn p(s: &str) -> Result<String, IdentityError> {
        Pid::parse(s, TODAY).map(|p| p.to_string())
    }

    #[test]
    fn accepts_every_form_of_one_number() {
        for form in [
            "201509162390",
            "20150916-2390",
            "20150916+2390",
            "1509162390",
            "150916-2390",
        ] {
            assert_eq!(p(form).as_deref(), Ok("201509162390"), "{form}");
        }
    }

    #[test]
    fn plus_means_a_hundred_or_more() {
        // Skatteverket test number 189001019802, written with `+`.
        assert_eq!(p("900101+9802").as_deref(), Ok("189001019802"));
        // The same digits with `-` are someone born in 1990.
        assert_eq!(p("900101-9802").as_deref(), Ok("199001019802"));
    }

    #[test]
    fn century_resolution_edges() {
        assert_eq!(resolve_century(26, false, 2026), 20);
        assert_eq!(resolve_century(27, false, 2026), 19);
        assert_eq!(resolve_century(26, true, 2026), 19);
        assert_eq!(resolve_century(27, true, 2026), 18);
        assert_eq!(resolve_century(0, false, 2000), 20);
        assert_eq!(resolve_century(99, false, 2000), 19);
    }

    #[test]
    fn rejects_with_the_reason() {
        assert_eq!(p(""), Err(IdentityError::Empty));
        assert_eq!(p("2015091623901"), Err(IdentityError::Length));
        assert_eq!(p("20150916239"), Err(IdentityError::Length));
        assert_eq!(p("2015 0916 2390"), Err(IdentityError::Character));
        assert_eq!(p("201509-162390"), Err(IdentityError::Character));
        assert_eq!(p("20150916--2390"), Err(IdentityError::Character));
        assert_eq!(p("19810829M071"), Err(IdentityError::ReserveNumber));
        assert_eq!(p("810829-M071"), Err(IdentityError::ReserveNumber));
        assert_eq!(p("201509162391"), Err(IdentityError::CheckDigit));
        assert_eq!(p("201509160006"), Err(IdentityError::Serial));
        assert_eq!(p("171509162390"), Err(IdentityError::Century));
        assert_eq!(IdentityError::ReserveNumber.code(), "unsupported_identifier");
        assert_eq!(IdentityError::CheckDigit.code(), "invalid_identifier");
    }

    #[test]
    fn impossible_dates_are_rejected() {
        // 30 February and 29 February in a non-leap year, with a right check
        // digit, generated here rather than written down.
        for (y, m, d) in [
            (2015, 2, 30),
            (2015, 2, 29),
            (2100 - 100, 2, 30),
            (2014, 4, 31),
            (2014, 13, 1),
        ] {
            let value = raw(y, m, d, 239);
            assert_eq!(Pid::from_u64(value), Err(IdentityError::Date), "{y}-{m}-{d}");
        }
        // 29 February in leap years, including 2000 (divisible by 400).
        assert!(Pid::from_u64(raw(2000, 2, 29, 239)).is_ok());
        assert!(Pid::from_u64(raw(2016, 2, 29, 239)).is_ok());
        assert_eq!(Pid::from_u64(raw(1900, 2, 29, 239)), Err(IdentityError::Date));
    }

    /// A 12-digit value with the right check digit but no date validation.
    fn raw(y: i16, m: u8, d: u8, serial: u16) -> u64 {
        with_check_digit(y, m, d, serial)
    }

    #[test]
    fn samordningsnummer_dates() {
        // Skatteverket test samordningsnummer.
        let known = Pid::parse("191404722397", TODAY).unwrap();
        assert_eq!(known.kind(), IdKind::Samordningsnummer);
        assert_eq!(known.birth_date(), Some(date(1914, 4, 12)));
        let no_month = Pid::parse("191500722390", TODAY).unwrap();
        assert_eq!(no_month.birth_date(), None);
        let no_day = Pid::parse("191711602399", TODAY).unwrap();
        assert_eq!(no_day.birth_date(), None);
        // Day 60 + 30 in February: a valid identifier without a birth date.
        let feb30 = Pid::from_u64(raw(2015, 2, 90, 239)).unwrap();
        assert_eq!(feb30.birth_date(), None);
        assert_eq!(Pid::from_u64(raw(2015, 2, 92, 239)), Err(IdentityError::Date));
        // Month 00 and day 00 is not a samordningsnummer.
        assert_eq!(Pid::from_u64(raw(2015, 0, 0, 239)), Err(IdentityError::Date));
        // A personnummer may not leave out its month.
        assert_eq!(Pid::from_u64(raw(2015, 0, 16, 239)), Err(IdentityError::Date));
    }

    #[test]
    fn make_pid_round_trips() {
        let pid = make_pid(2015, 9, 16, 239).unwrap();
        assert_eq!(pid.to_string(), "201509162390");
        assert_eq!(pid.birth_date(), Some(date(2015, 9, 16)));
        assert!(make_pid(2015, 2, 30, 239).is_none());
        assert!(make_pid(2015, 2, 3, 0).is_none());
    }

    #[test]
    fn debug_is_redacted() {
        let pid = Pid::parse("201509162390", TODAY).unwrap();
        assert_eq!(format!("{pid:?}"), "Pid(<redacted>)");
    }
}
