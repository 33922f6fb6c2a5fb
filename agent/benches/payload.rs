//! Payload benchmarks (filled in below).
fn main() {}
