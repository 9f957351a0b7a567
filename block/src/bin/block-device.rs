//! `block-device`: placeholder until the shared serving lands.
fn main() {}
