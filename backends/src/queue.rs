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

/// Most chains handled per call, so one queue cannot starve the others forever.
pub const MAX_CHAINS_PER_CALL: usize = 4096;

/// Handles every available chain of `vring` with `handle`, which returns how many bytes it
/// wrote into the chain. A chain whose handler fails is logged and returned with length 0.
/// Returns the number of chains handled.
pub fn process_queue<F>(
    vring: &VringRwLock,
    mem: &GuestMem,
    event_idx: bool,
    mut handle: F,
) -> io::Result<usize>
where
    F: FnMut(Chain) -> io::Result<u32>,
{
    let qerr = |e: virtio_queue::Error| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut count = 0usize;
    loop {
        if event_idx {
            vring.disable_notification().map_err(qerr)?;
        }
        while count < MAX_CHAINS_PER_CALL {
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
        if count >= MAX_CHAINS_PER_CALL
            || !event_idx
            || !vring.enable_notification().map_err(qerr)?
        {
            break;
        }
    }
    if count > 0 && (!event_idx || vring.needs_notification().map_err(qerr)?) {
        vring.signal_used_queue()?;
    }
    Ok(count)
}
