//! Instants, Stockholm birthdays and ages.
//!
//! The decision core compares integers: every instant is an [`Instant`]
//! (nanoseconds since the Unix epoch), and the moments a person attains an
//! age are computed once, on the write path, with jiff and its bundled
//! Europe/Stockholm rules.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::core::identity::is_leap_year;

/// The zone every rule is evaluated in (SPEC §3).
pub const ZONE: &str = "Europe/Stockholm";

/// A point in time: nanoseconds since 1970-01-01T00:00:00Z.
///
/// The range is 1677–2262, which covers every birth year of a living person
/// and every date a registrar could mean; [`Instant::from_timestamp`] refuses
/// anything outside it rather than wrapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(i64);

impl Instant {
    /// The end of time: "no end".
    pub const MAX: Instant = Instant(i64::MAX);

    /// Converts a jiff timestamp, or `None` outside 1677–2262.
    pub fn from_timestamp(ts: Timestamp) -> Option<Instant> {
        i64::try_from(ts.as_nanosecond()).ok().map(Instant)
    }

    /// Back to a jiff timestamp.
    pub fn to_timestamp(self) -> Timestamp {
        // Every i64 of nanoseconds is within jiff's range.
        Timestamp::from_nanosecond(i128::from(self.0)).unwrap_or(Timestamp::MAX)
    }

    /// Nanoseconds since the epoch.
    pub fn as_nanos(self) -> i64 {
        self.0
    }

    /// From nanoseconds since the epoch.
    pub fn from_nanos(nanos: i64) -> Instant {
        Instant(nanos)
    }
}

/// How a person born on 29 February ages in a non-leap year (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeapDay {
    /// On 28 February: Lag (1930:173) om beräkning av lagstadgad tid, 1 §.
    #[default]
    Feb28,
    /// On 1 March.
    Mar1,
}

/// Errors of the time layer.
#[derive(Debug, thiserror::Error)]
pub enum TimeError {
    /// The bundled time zone database has no Europe/Stockholm.
    #[error("time zone `{ZONE}` is not available: {0}")]
    Zone(jiff::Error),
}

/// The Europe/Stockholm zone from jiff's bundled database (the system tzdata
/// on the target machines may be old).
pub fn stockholm() -> Result<TimeZone, TimeError> {
    jiff::tz::db().get(ZONE).map_err(TimeError::Zone)
}

/// The calendar date of the `age`th birthday of someone born on `birth`.
pub fn birthday(birth: Date, age: u8, leap: LeapDay) -> Option<Date> {
    let year = birth.year().checked_add(i16::from(age))?;
    if birth.month() == 2 && birth.day() == 29 && !is_leap_year(year) {
        return match leap {
            LeapDay::Feb28 => Date::new(year, 2, 28).ok(),
            LeapDay::Mar1 => Date::new(year, 3, 1).ok(),
        };
    }
    Date::new(year, birth.month(), birth.day()).ok()
}

/// 00:00 local time on `date` in `tz` as an instant. Where midnight does not
/// exist (a zone whose clocks jump at midnight) the day starts at the first
/// instant that does.
pub fn local_midnight(date: Date, tz: &TimeZone) -> Option<Instant> {
    // `compatible`: in a gap, the first instant after it; in a fold, the
    // earlier one. Borrowing `tz` (no clone) keeps this allocation-free.
    let ts = tz
        .to_ambiguous_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
        .compatible()
        .ok()?;
    Instant::from_timestamp(ts)
}

/// The instant someone born on `birth` attains `age`: 00:00 local time on
/// that birthday.
pub fn attains_age(birth: Date, age: u8, leap: LeapDay, tz: &TimeZone) -> Option<Instant> {
    local_midnight(birthday(birth, age, leap)?, tz)
}

/// The local calendar date of an instant.
pub fn local_date(at: Instant, tz: &TimeZone) -> Date {
    tz.to_datetime(at.to_timestamp()).date()
}

/// Why an instant in the API cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InstantError {
    /// Neither RFC 3339 with an offset nor a plain date.
    #[error("must be RFC 3339 with an offset (`2026-11-23T10:00:00+01:00`) or a date (`2026-11-23`)")]
    Format,
    /// Outside the supported years.
    #[error("must be between the years 1678 and 2261")]
    Range,
}

/// Parses an API instant: RFC 3339 with an offset, or a date alone meaning
/// 00:00 Europe/Stockholm that day (SPEC §4). A local time without an offset
/// is refused: it would be ambiguous twice a year.
pub fn parse_instant(s: &str, tz: &TimeZone) -> Result<Instant, InstantError> {
    if s.len() == 10 {
        let date: Date = s.parse().map_err(|_| InstantError::Format)?;
        return local_midnight(date, tz).ok_or(InstantError::Range);
    }
    if s.contains('[') {
        // A bracketed zone annotation could disagree with the offset; keep
        // the format strict rather than guess which one was meant.
        return Err(InstantError::Format);
    }
    let ts: Timestamp = s.parse().map_err(|_| InstantError::Format)?;
    Instant::from_timestamp(ts).ok_or(InstantError::Range)
}

/// An instant written as RFC 3339 with the zone's offset at that instant
/// (e.g. `2026-11-23T10:00:00+01:00`), in a buffer on the
/// stack: answers format two of these per check without allocating.
/// Fractional seconds appear only when there are any, without trailing
/// zeros; the offset is whole minutes (Stockholm's have been since 1900).
#[derive(Clone, Copy)]
pub struct LocalTime {
    buf: [u8; 35],
    len: u8,
}

impl LocalTime {
    /// Formats `at` in `tz`.
    pub fn new(at: Instant, tz: &TimeZone) -> LocalTime {
        let ts = at.to_timestamp();
        let offset = tz.to_offset(ts);
        let dt = offset.to_datetime(ts);
        let mut out = LocalTime { buf: [0; 35], len: 0 };
        let year = dt.year();
        if year < 0 {
            out.push(b'-');
        }
        out.digits(u32::from(year.unsigned_abs()), 4);
        out.push(b'-');
        out.digits(dt.month() as u32, 2);
        out.push(b'-');
        out.digits(dt.day() as u32, 2);
        out.push(b'T');
        out.digits(dt.hour() as u32, 2);
        out.push(b':');
        out.digits(dt.minute() as u32, 2);
        out.push(b':');
        out.digits(dt.second() as u32, 2);
        let mut nanos = dt.subsec_nanosecond() as u32;
        if nanos > 0 {
            let mut width = 9;
            while nanos.is_multiple_of(10) {
                nanos /= 10;
                width -= 1;
            }
            out.push(b'.');
            out.digits(nanos, width);
        }
        let seconds = offset.seconds();
        out.push(if seconds < 0 { b'-' } else { b'+' });
        let minutes = seconds.unsigned_abs() / 60;
        out.digits(minutes / 60, 2);
        out.push(b':');
        out.digits(minutes % 60, 2);
        out
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(usize::from(self.len)) {
            *slot = b;
            self.len += 1;
        }
    }

    fn digits(&mut self, mut value: u32, width: usize) {
        let mut tmp = [b'0'; 10];
        for slot in tmp[..width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        for &b in &tmp[..width] {
            self.push(b);
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Display for LocalTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for LocalTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalTime({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn local_time_writes_what_jiff_writes(secs in -2_208_988_800i64..9_000_000_000i64, nanos in proptest::prop_oneof![0u32..1, 0u32..1_000_000_000, proptest::strategy::Strategy::prop_map(0u32..1000, |n| n * 1_000_000)]) {
            let tz = stockholm().unwrap();
            let ts = Timestamp::new(secs, nanos as i32).unwrap();
            let want = ts.display_with_offset(tz.to_offset(ts)).to_string();
            let at = Instant::from_timestamp(ts).unwrap();
            let got = LocalTime::new(at, &tz);
            proptest::prop_assert_eq!(got.as_str(), want);
        }
    }
    use jiff::civil::date;

    fn tz() -> TimeZone {
        stockholm().unwrap()
    }

    fn at(s: &str) -> Instant {
        Instant::from_timestamp(s.parse::<Timestamp>().unwrap()).unwrap()
    }

    #[test]
    fn birthdays_are_local_midnight_in_winter() {
        let i = attains_age(date(2013, 11, 30), 13, LeapDay::Feb28, &tz()).unwrap();
        assert_eq!(i, at("2026-11-30T00:00:00+01:00"));
        assert_eq!(LocalTime::new(i, &tz()).as_str(), "2026-11-30T00:00:00+01:00");
    }

    #[test]
    fn birthdays_are_local_midnight_in_summer() {
        let i = attains_age(date(2010, 6, 15), 16, LeapDay::Feb28, &tz()).unwrap();
        assert_eq!(i, at("2026-06-14T22:00:00Z"));
        assert_eq!(LocalTime::new(i, &tz()).as_str(), "2026-06-15T00:00:00+02:00");
    }

    #[test]
    fn birthdays_on_the_days_the_clocks_change() {
        // Summer time starts 2026-03-29 at 02:00; midnight is still +01:00.
        let spring = attains_age(date(2013, 3, 29), 13, LeapDay::Feb28, &tz()).unwrap();
        assert_eq!(spring, at("2026-03-28T23:00:00Z"));
        // Summer time ends 2026-10-25 at 03:00; midnight is still +02:00.
        let autumn = attains_age(date(2010, 10, 25), 16, LeapDay::Feb28, &tz()).unwrap();
        assert_eq!(autumn, at("2026-10-24T22:00:00Z"));
    }

    #[test]
    fn leap_day_birthdays() {
        let born = date(2012, 2, 29);
        assert_eq!(birthday(born, 13, LeapDay::Feb28), Some(date(2025, 2, 28)));
        assert_eq!(birthday(born, 13, LeapDay::Mar1), Some(date(2025, 3, 1)));
        assert_eq!(birthday(born, 16, LeapDay::Feb28), Some(date(2028, 2, 29)));
        assert_eq!(birthday(date(2012, 3, 1), 13, LeapDay::Feb28), Some(date(2025, 3, 1)));
    }

    #[test]
    fn parses_api_instants() {
        let tz = tz();
        assert_eq!(parse_instant("2026-11-23", &tz), Ok(at("2026-11-23T00:00:00+01:00")));
        assert_eq!(parse_instant("2026-07-01", &tz), Ok(at("2026-06-30T22:00:00Z")));
        assert_eq!(
            parse_instant("2026-11-23T10:00:00+01:00", &tz),
            Ok(at("2026-11-23T09:00:00Z"))
        );
        assert_eq!(
            parse_instant("2026-11-23T10:00:00Z", &tz),
            Ok(at("2026-11-23T10:00:00Z"))
        );
        assert_eq!(parse_instant("2026-11-23T10:00:00", &tz), Err(InstantError::Format));
        assert_eq!(parse_instant("2026-02-30", &tz), Err(InstantError::Format));
        assert_eq!(parse_instant("yesterday", &tz), Err(InstantError::Format));
        assert_eq!(
            parse_instant("2026-11-23T10:00:00+01:00[Europe/Stockholm]", &tz),
            Err(InstantError::Format)
        );
        assert_eq!(parse_instant("2400-01-01T00:00:00Z", &tz), Err(InstantError::Range));
    }

    #[test]
    fn instants_round_trip_and_refuse_out_of_range() {
        let i = at("2026-11-23T10:00:00.123456789+01:00");
        assert_eq!(Instant::from_timestamp(i.to_timestamp()), Some(i));
        assert_eq!(Instant::from_timestamp("2300-01-01T00:00:00Z".parse().unwrap()), None);
        assert_eq!(local_date(at("2026-11-22T23:30:00Z"), &tz()), date(2026, 11, 23));
    }
}
