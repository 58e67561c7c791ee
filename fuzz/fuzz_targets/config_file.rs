//! The config file: any text is a configuration or an error naming the
//! setting, never a panic.
#![no_main]

use guardian_access::config::{ConfigFile, ServeFlags};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(file) = ConfigFile::parse(text) {
        let _ = file.region.to_settings();
        let _ = ServeFlags::default().resolve(&file, None);
    }
});
