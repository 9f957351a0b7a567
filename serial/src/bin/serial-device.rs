//! `serial-device`: the standalone vhost-user console backend.

fn main() -> std::process::ExitCode {
    cordon_backends::device::standalone_main(&cordon_serial::KIND)
}
