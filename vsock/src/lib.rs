//! virtio-vsock (hybrid, over Unix sockets) device logic and the `vsock-device` vhost-user backend.
