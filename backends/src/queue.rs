//! The common virtqueue loop: pop every available chain, let the device handle it, return it
//! to the used ring, and notify the driver (honouring EVENT_IDX).

use std::io;

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

/// Guest memory as handed to `VhostUserBackend::update_memory`.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// One descriptor chain popped from an available ring.
pub type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap<()>>>;

/// Handles every available chain of `vring` with `handle`, which returns how many bytes it
/// wrote into the chain. A chain whose handler fails is logged and returned with length 0.
/// Returns the number of chains handled.
pub fn process_queue<F>(
    vring: &VringRwLock,
    mem: &GuestMem,
    event_idx: bool,
    handle: F,
) -> io::Result<usize>
where
    F: FnMut(Chain) -> io::Result<u32>,
{
    process_queue_while(vring, mem, event_idx, || true, handle)
}

/// Like [`process_queue`], but pops a chain only while `more()` says there is work for it
/// (e.g. a receive queue with pending input); chains stay available otherwise.
pub fn process_queue_while<P, F>(
    vring: &VringRwLock,
    mem: &GuestMem,
    event_idx: bool,
    mut more: P,
    mut handle: F,
) -> io::Result<usize>
where
    P: FnMut() -> bool,
    F: FnMut(Chain) -> io::Result<u32>,
{
    let qerr = |e: virtio_queue::Error| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut count = 0usize;
    loop {
        if event_idx {
            vring.disable_notification().map_err(qerr)?;
        }
        while more() {
            let next = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.memory());
            let Some(chain) = next else { break };
            let head = chain.head_index();
            let len = match handle(chain) {
                Ok(len) => len,
                Err(e) => {
                    log::warn!("dropping malformed request (descriptor {head}): {e}");
                    0
                }
            };
            vring.add_used(head, len).map_err(qerr)?;
            count += 1;
        }
        if !event_idx {
            break;
        }
        // Re-arm notifications; loop again if the driver added buffers meanwhile.
        if !vring.enable_notification().map_err(qerr)? || !more() {
            break;
        }
    }
    if count > 0 && (!event_idx || vring.needs_notification().map_err(qerr)?) {
        vring.signal_used_queue()?;
    }
    Ok(count)
}
