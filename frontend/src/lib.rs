//! The vhost-user frontend library (used by tests, benchmarks and the VMM) and the KVM VMM.

pub mod vhost_user;
