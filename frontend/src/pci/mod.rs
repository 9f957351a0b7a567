//! PCI: the host bridge, configuration space access (ports 0xcf8/0xcfc) and the
//! virtio-pci transport whose device side is a vhost-user backend.
