//! `rng-device`: the standalone vhost-user rng backend.

fn main() -> std::process::ExitCode {
    cordon_backends::device::standalone_main(&cordon_rng::KIND)
}
