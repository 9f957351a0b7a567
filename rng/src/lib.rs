//! virtio-rng device logic and the `rng-device` vhost-user backend.
