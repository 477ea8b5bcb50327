//! Criterion benchmarks live in `benches/benches/`; run with `cargo bench -p ziti-benches`.
