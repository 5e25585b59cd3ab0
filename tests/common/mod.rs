//! Helpers shared by the binary's integration tests.

// Each test binary compiles all of `common` and uses a part of it.
#![allow(dead_code)]

pub mod cluster;
pub mod http;
pub mod process;
pub mod writes;
