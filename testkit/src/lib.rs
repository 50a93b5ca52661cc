//! Fixtures shared by the end-to-end tests (`tests/`) and the benchmarks (`bench/`).

pub mod idp;
