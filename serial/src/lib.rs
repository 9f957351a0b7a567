//! virtio-console device logic and the `serial-device` vhost-user backend.
