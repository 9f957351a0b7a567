//! `block-device`: the standalone vhost-user virtio-blk backend.

fn main() -> std::process::ExitCode {
    cordon_backends::device::standalone_main(&cordon_block::KIND)
}
