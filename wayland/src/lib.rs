//! virtio-wl device logic and the `wayland-device` vhost-user backend.
