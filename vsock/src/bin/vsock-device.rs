//! `vsock-device`: the standalone hybrid virtio-vsock vhost-user backend.

fn main() -> std::process::ExitCode {
    cordon_backends::device::standalone_main(&cordon_vsock::KIND)
}
