//! The decision core: pure, immutable, fast. Identity numbers, instants and
//! Stockholm ages, the domain model, the population table, snapshots and
//! `decide`.
//!
//! Nothing here does I/O, takes a lock, reads the clock or knows a wire
//! format: no tokio, hyper, serde or SQL (a unit test in this module holds
//! the imports to that). Everything expensive is done when a snapshot is
//! built, so that a check is a few probes and integer comparisons.

pub mod decide;
pub mod explain;
pub(crate) mod filter;
pub mod identity;
pub mod model;
pub mod people;
pub mod snapshot;
pub mod time;

#[cfg(test)]
mod purity {
    //! The core's purity, checked: its files import nothing that does I/O or
    //! speaks a wire format. (A separate crate would make the compiler check
    //! it; one crate keeps `pub(crate)` and one build, and this test is
    //! enough for a rule this simple.)

    #[test]
    fn the_core_imports_no_io_and_no_wire_format() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
        let forbidden = [
            "tokio",
            "hyper",
            "serde",
            "rusqlite",
            "tokio_postgres",
            "postgres",
            "std::fs",
            "std::net",
            "Timestamp::now",
            "SystemTime",
            "crate::http",
            "crate::store",
            "crate::node",
            "crate::clock",
        ];
        let mut files = vec![dir.clone()];
        let mut checked = 0;
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // Test modules may use what they like.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let code: Vec<&str> = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
            let code = code.join("\n");
            for word in forbidden {
                assert!(
                    !code.contains(word),
                    "{} uses `{word}`: the core must stay pure",
                    p.display()
                );
            }
            checked += 1;
        }
        assert!(checked >= 7, "only {checked} core files found");
    }
}
