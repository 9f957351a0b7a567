//! virtio-net device logic and the `net-device` vhost-user backend.
