//! virtio-blk device logic and the `block-device` vhost-user backend.
