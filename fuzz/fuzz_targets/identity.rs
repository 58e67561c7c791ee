//! Identity numbers: any text is a number or an error, never a panic; a
//! number reads back as itself from its canonical form.
#![no_main]

mod common;

use guardian_access::Pid;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let today = common::world().today;
    if let Ok(p) = Pid::parse(text, today) {
        let again = Pid::parse(&p.to_string(), today).expect("the canonical form parses");
        assert_eq!(again, p);
        assert_eq!(Pid::from_u64(p.get()).expect("the stored form reads back"), p);
    }
});
