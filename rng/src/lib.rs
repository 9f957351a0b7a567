//! virtio-rng over vhost-user: fills guest buffers from getrandom(2).
#![deny(missing_docs)]

use std::ffi::OsString;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use clap::Parser;
use cordon_backends::queue::{process_queue, GuestMem};
use cordon_backends::{
    serve, Backend, CommonArgs, DeviceKind, Endpoint, KeyValues, OpenedDevice, ServeOptions,
};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vmm_sys_util::epoll::EventSet;

/// Queue size offered to the driver.
pub const QUEUE_SIZE: usize = 256;
/// Most bytes produced for one request (a hostile driver may post gigantic buffers).
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// The virtio-rng device state.
#[derive(Default)]
pub struct Rng {
    mem: RwLock<Option<GuestMem>>,
    event_idx: AtomicBool,
}

impl Rng {
    /// A new device.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Fills `buf` from getrandom(2).
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: getrandom writes at most `len` bytes into the valid buffer slice.
        let n = unsafe {
            libc::getrandom(
                buf[done..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - done,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

impl VhostUserBackend for Rng {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1
    }
    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }
    fn features(&self) -> u64 {
        cordon_backends::virtio::BASE_FEATURES
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }
    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }
    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *self.mem.write().map_err(|_| io::Error::other("poisoned"))? = Some(mem);
        Ok(())
    }
    fn reset_device(&self) {
        if let Ok(mut m) = self.mem.write() {
            *m = None;
        }
        self.event_idx.store(false, Ordering::Release);
    }
    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN || device_event != 0 {
            return Err(io::Error::other(format!("unexpected event {device_event}")));
        }
        let mem = self
            .mem
            .read()
            .map_err(|_| io::Error::other("poisoned"))?
            .clone()
            .ok_or_else(|| io::Error::other("kick before SET_MEM_TABLE"))?;
        let vring = vrings.first().ok_or_else(|| io::Error::other("no queue"))?;
        let mut buf = vec![0u8; MAX_BYTES_PER_REQUEST];
        let event_idx = self.event_idx.load(Ordering::Acquire);
        process_queue(vring, &mem, event_idx, |chain| {
            let m = chain.memory().clone();
            let mut w = chain
                .writer(&m)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let n = w.available_bytes().min(MAX_BYTES_PER_REQUEST);
            fill_random(&mut buf[..n])?;
            w.write_all(&buf[..n])?;
            Ok(n as u32)
        })?;
        Ok(())
    }
}

impl Backend for Rng {}

/// `rng-device` / `cordon device rng` command line.
#[derive(Parser, Debug)]
#[command(
    name = "rng-device",
    about = "vhost-user virtio-rng backend (entropy from getrandom(2)), jailed"
)]
pub struct RngArgs {
    /// Connection, sandbox and lifetime flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

struct OpenedRng;

impl OpenedDevice for OpenedRng {
    fn policy(&self) -> String {
        "rng_device_vhost_user".into()
    }
    fn serve(self: Box<Self>, endpoint: Endpoint, opts: ServeOptions) -> anyhow::Result<()> {
        serve(Arc::new(Rng::new()), endpoint, opts)?;
        Ok(())
    }
}

/// The rng device kind, for the CLI registry.
pub struct RngKind;

/// The registry entry for rng.
pub static KIND: RngKind = RngKind;

impl DeviceKind for RngKind {
    fn name(&self) -> &'static str {
        "rng"
    }
    fn syntax(&self) -> &'static str {
        "vhost=SOCKET"
    }
    fn open(&self, opts: KeyValues) -> anyhow::Result<Box<dyn OpenedDevice>> {
        opts.finish()?;
        Ok(Box::new(OpenedRng))
    }
    fn run_standalone(&self, argv: Vec<OsString>) -> anyhow::Result<()> {
        let args = RngArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
        cordon_backends::device::run_opened("rng", Box::new(OpenedRng), &args.common)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_is_not_constant() {
        let mut a = [0u8; 64];
        fill_random(&mut a).unwrap();
        assert!(a.iter().any(|&b| b != a[0]));
    }

    #[test]
    fn devices_options_reject_unknown_keys() {
        let kv = KeyValues::parse("rng", "bogus=1").unwrap();
        let err = KIND.open(kv).err().unwrap().to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}
