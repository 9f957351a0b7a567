//! `wayland-device`: the standalone virtio-wl vhost-user backend.

fn main() -> std::process::ExitCode {
    cordon_backends::device::standalone_main(&cordon_wayland::KIND)
}
