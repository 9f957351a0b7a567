//! Shared vhost-user serving for every Cordon device, the `devices` supervisor and jail entry.
