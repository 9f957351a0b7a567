//! `Served<B>`: the thin wrapper the serving loop hands to rust-vmm's daemon.
//!
//! It delegates everything to the device, and adds what every Cordon backend needs:
//! a fresh exit eventfd per worker thread and connection (so a new daemon's workers do not see
//! the previous one's exit signal), and containment of device errors: an error returned by the
//! device for one event is logged and the worker keeps running, instead of rust-vmm's default
//! of silently ending the worker thread.

use std::fs::File;
use std::io::Result;
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
    VhostUserShMemConfig, VhostUserSharedMsg,
};
use vhost::vhost_user::Backend as BackendReq;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::inflight::Inflight;
use crate::serve::Backend;

/// Wraps a device for one frontend connection.
pub struct Served<B> {
    inner: Arc<B>,
    inflight: Option<Arc<Inflight>>,
}

impl<B> Clone for Served<B> {
    fn clone(&self) -> Self {
        Served {
            inner: self.inner.clone(),
            inflight: self.inflight.clone(),
        }
    }
}

impl<B> Served<B> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<B>) -> Self {
        Served {
            inner,
            inflight: None,
        }
    }

    /// Wraps `inner` for a connection with inflight tracking state (see [`crate::inflight`]).
    pub fn with_inflight(inner: Arc<B>, inflight: Option<Arc<Inflight>>) -> Self {
        Served { inner, inflight }
    }
}

impl<B: Backend> VhostUserBackend for Served<B> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.inner.num_queues()
    }
    fn max_queue_size(&self) -> usize {
        self.inner.max_queue_size()
    }
    fn features(&self) -> u64 {
        self.inner.features()
    }
    fn acked_features(&self, features: u64) {
        self.inner.acked_features(features)
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.inner.protocol_features()
    }
    fn reset_device(&self) {
        self.inner.reset_device()
    }
    fn set_event_idx(&self, enabled: bool) {
        self.inner.set_event_idx(enabled)
    }
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.inner.get_config(offset, size)
    }
    fn set_config(&self, offset: u32, buf: &[u8]) -> Result<()> {
        self.inner.set_config(offset, buf)
    }
    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap<()>>) -> Result<()> {
        if let Err(e) = check_regions(&mem) {
            // The daemon already published the new table to the vrings: withdraw it, so no
            // access can touch a mapping past the end of its file (SIGBUS).
            if let Ok(guard) = mem.lock() {
                guard.replace(GuestMemoryMmap::new());
            }
            log::warn!("rejected memory table: {e}");
            return Err(e);
        }
        if let Some(i) = &self.inflight {
            i.set_memory(mem.clone());
        }
        self.inner.update_memory(mem)
    }
    fn set_backend_req_fd(&self, backend: BackendReq) {
        self.inner.set_backend_req_fd(backend)
    }
    fn get_shared_object(&self, uuid: VhostUserSharedMsg) -> Result<File> {
        self.inner.get_shared_object(uuid)
    }
    fn queues_per_thread(&self) -> Vec<u64> {
        self.inner.queues_per_thread()
    }
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::CLOEXEC | EventFlag::NONBLOCK) {
            Ok(pair) => Some(pair),
            Err(e) => {
                log::error!("cannot create a worker exit eventfd: {e}");
                None
            }
        }
    }
    fn stop_vring(&self, queue_index: u32) -> Result<()> {
        self.inner.stop_vring(queue_index)
    }
    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> Result<()> {
        let inflight = self.inflight.as_ref().filter(|i| i.active()).cloned();
        if let Some(i) = &inflight {
            // Bind (and on the first event after a reconnect, recover) every started queue
            // of this worker before the device pops anything.
            let mask = self
                .inner
                .queues_per_thread()
                .get(thread_id)
                .copied()
                .unwrap_or(0);
            let globals = (0..64usize).filter(|b| mask >> b & 1 == 1);
            for (vring, index) in vrings.iter().zip(globals) {
                i.bind(index, vring);
            }
        }
        if let Err(e) = self
            .inner
            .handle_event(device_event, evset, vrings, thread_id)
        {
            log::warn!("device event {device_event} on worker {thread_id}: {e}");
        }
        Ok(())
    }
    fn set_device_state_fd(
        &self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: File,
    ) -> Result<Option<File>> {
        self.inner.set_device_state_fd(direction, phase, file)
    }
    fn check_device_state(&self) -> Result<()> {
        self.inner.check_device_state()
    }
    fn get_shmem_config(&self) -> Result<VhostUserShMemConfig> {
        self.inner.get_shmem_config()
    }
}

/// Every file-backed region must lie within its file: mapping past the end would turn a
/// guest access into SIGBUS.
fn check_regions(mem: &GuestMemoryAtomic<GuestMemoryMmap<()>>) -> Result<()> {
    use vm_memory::{GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};
    let m = mem.memory();
    for r in m.iter() {
        let Some(fo) = r.file_offset() else { continue };
        let size = fo.file().metadata()?.len();
        let end = fo.start().checked_add(r.len());
        if end.is_none_or(|e| e > size) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "region at guest {:#x}: {} bytes at file offset {} but the file has {size}",
                    r.start_addr().0,
                    r.len(),
                    fo.start()
                ),
            ));
        }
    }
    Ok(())
}
