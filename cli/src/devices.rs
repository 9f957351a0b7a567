//! `cordon devices`: many jailed device backends at once, crosvm's `devices` syntax.

use cordon_backends::DeviceKind;

/// Every device kind the CLI knows. Device crates add their `KIND` here.
pub static KINDS: &[&dyn DeviceKind] = &[
    &cordon_rng::KIND,
    &cordon_net::KIND,
    &cordon_vsock::KIND,
    &cordon_wayland::KIND,
];
