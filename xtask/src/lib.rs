//! xtask as a library, so integration tests can drive its parts directly.

pub mod run_record;
pub mod store;
