//! Helpers shared by the unit tests of the snapshot modules.

use jiff::civil::date;

use crate::core::identity::Pid;
use crate::core::model::Settings;
use crate::core::people::{People, PeopleBuilder};
use crate::core::time;

/// Parses a test number, resolving 10-digit forms against 2026-11-23.
pub(crate) fn pid(s: &str) -> Pid {
    Pid::parse(s, date(2026, 11, 23)).unwrap()
}

/// Builds `b` with the default settings in Stockholm time.
pub(crate) fn build(b: PeopleBuilder) -> People {
    b.build(&Settings::default(), &time::stockholm().unwrap()).unwrap()
}
