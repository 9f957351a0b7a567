//! `net-device`: the standalone virtio-net vhost-user backend over a TAP.

fn main() -> std::process::ExitCode {
    cordon_backends::device::standalone_main(&cordon_net::KIND)
}
