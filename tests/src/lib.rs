//! Integration and end-to-end tests, and the guest test harness ([`guest`]).
#![deny(missing_docs)]

pub mod container;
pub mod e2e;
pub mod guest;
pub mod stack;
