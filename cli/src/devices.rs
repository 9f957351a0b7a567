//! `cordon devices`: many jailed device backends at once, crosvm's `devices` syntax.

use std::ffi::OsString;

use clap::{Arg, ArgAction, Args, Command};
use cordon_backends::supervisor::{parse_jail, run_devices, DeviceRequest, DevicesOptions};
use cordon_backends::DeviceKind;

/// Every device kind the CLI knows. Device crates add their `KIND` here (one per line).
pub static KINDS: &[&dyn DeviceKind] = &[
    &cordon_rng::KIND,
    &cordon_serial::KIND,
    &cordon_block::KIND,
    &cordon_net::KIND,
    &cordon_vsock::KIND,
    &cordon_wayland::KIND,
];
