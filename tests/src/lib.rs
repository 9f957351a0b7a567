//! Integration and end-to-end tests, and the guest test harness.
