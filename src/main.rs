//! The `guardian-access` binary: parses flags and hands over to the library.

fn main() {}
