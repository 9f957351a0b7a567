//! The virtio-console device (single port): queue 0 receives host input into the guest,
//! queue 1 transmits guest output to the host.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cordon_backends::queue::{process_queue, process_queue_while, GuestMem};
use cordon_backends::{Backend, EventRegistrar};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vmm_sys_util::epoll::EventSet;

use crate::params::{Input, Opened, Output};

/// Feature bit: cols/rows in the config space are valid.
pub const VIRTIO_CONSOLE_F_SIZE: u64 = 0;
/// Queue size offered.
pub const QUEUE_SIZE: usize = 256;
/// Receive queue index (host to guest).
pub const RX: u16 = 0;
/// Transmit queue index (guest to host).
pub const TX: u16 = 1;
/// Event id of the input descriptor.
pub const INPUT_EVENT: u16 = 3;
/// Most host input buffered while the guest posts no receive buffers.
pub const MAX_PENDING: usize = 64 * 1024;
/// Most guest output taken from one transmit chain.
pub const MAX_TX_CHAIN: usize = 1 << 20;

struct State {
    mem: Option<GuestMem>,
    output: Output,
    input: Option<Input>,
    input_eof: bool,
    input_watched: bool,
    pending: VecDeque<u8>,
    registrar: Option<Arc<dyn EventRegistrar>>,
}

/// The virtio-console backend.
pub struct Console {
    state: Mutex<State>,
    event_idx: AtomicBool,
}

impl Console {
    /// A console over already opened output and input.
    pub fn new(opened: Opened) -> Self {
        Console {
            state: Mutex::new(State {
                mem: None,
                output: opened.output,
                input: opened.input,
                input_eof: false,
                input_watched: false,
                pending: VecDeque::new(),
                registrar: None,
            }),
            event_idx: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| io::Error::other("state poisoned"))
    }
}

impl State {
    fn watch_input(&mut self, on: bool) {
        let (Some(Input::Stream(fd)), Some(reg)) = (&self.input, &self.registrar) else {
            return;
        };
        if on == self.input_watched || (on && self.input_eof) {
            return;
        }
        let r = if on {
            reg.register(fd.as_raw_fd(), EventSet::IN, INPUT_EVENT as u64)
        } else {
            reg.unregister(fd.as_raw_fd(), EventSet::IN, INPUT_EVENT as u64)
        };
        match r {
            Ok(()) => self.input_watched = on,
            Err(e) => log::warn!("serial input: cannot (un)watch: {e}"),
        }
    }

    /// Reads what input is available into `pending`, up to its limit.
    fn read_input(&mut self) {
        let room = MAX_PENDING.saturating_sub(self.pending.len());
        if room == 0 || self.input_eof {
            return;
        }
        let mut buf = vec![0u8; room.min(16 * 1024)];
        let r = match &mut self.input {
            Some(Input::File(f)) => f.read(&mut buf),
            Some(Input::Stream(fd)) => {
                // SAFETY: read into a valid buffer from an fd we own.
                let n = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }
            None => return,
        };
        match r {
            Ok(0) => {
                self.input_eof = true;
                self.watch_input(false);
            }
            Ok(n) => self.pending.extend(&buf[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("serial input: {e}; input closed");
                self.input_eof = true;
                self.watch_input(false);
            }
        }
    }
}

impl VhostUserBackend for Console {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }
    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }
    fn features(&self) -> u64 {
        cordon_backends::virtio::BASE_FEATURES | (1 << VIRTIO_CONSOLE_F_SIZE)
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_console_config { u16 cols; u16 rows; u32 max_nr_ports; u32 emerg_wr; }
        let (cols, rows) = self
            .lock()
            .ok()
            .and_then(|s| s.output.winsize())
            .unwrap_or((80, 25));
        let mut cfg = [0u8; 12];
        cfg[0..2].copy_from_slice(&cols.to_le_bytes());
        cfg[2..4].copy_from_slice(&rows.to_le_bytes());
        cfg[4..8].copy_from_slice(&1u32.to_le_bytes());
        cordon_backends::virtio::config_window(&cfg, offset, size)
    }
    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }
    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        self.lock()?.mem = Some(mem);
        Ok(())
    }
    fn reset_device(&self) {
        if let Ok(mut s) = self.lock() {
            s.mem = None;
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
        let mut st = self.lock()?;
        let st = &mut *st;
        let Some(mem) = st.mem.clone() else {
            // No guest memory yet: only buffer host input (bounded), never spin on it.
            if device_event == INPUT_EVENT {
                st.read_input();
                let want = st.pending.len() < MAX_PENDING;
                st.watch_input(want);
                return Ok(());
            }
            return Err(io::Error::other("queue event before SET_MEM_TABLE"));
        };
        let event_idx = self.event_idx.load(Ordering::Acquire);
        match device_event {
            TX => {
                let vring = vrings
                    .get(TX as usize)
                    .ok_or_else(|| io::Error::other("no tx queue"))?;
                let output = &mut st.output;
                process_queue(vring, &mem, event_idx, |chain| {
                    let m = chain.memory().clone();
                    let mut r = chain
                        .reader(&m)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                    let n = r.available_bytes().min(MAX_TX_CHAIN);
                    let mut buf = vec![0u8; n];
                    r.read_exact(&mut buf)?;
                    output.write_all(&buf);
                    Ok(0)
                })?;
                return Ok(());
            }
            RX => {}
            INPUT_EVENT => {
                if !evset.contains(EventSet::IN) {
                    // HUP/ERR without data: the peer is gone.
                    st.input_eof = true;
                    st.watch_input(false);
                }
            }
            other => return Err(io::Error::other(format!("unexpected event {other}"))),
        }
        // Input side: fill pending, deliver to the guest, adjust polling.
        if matches!(st.input, Some(Input::File(_))) {
            while st.pending.len() < MAX_PENDING && !st.input_eof {
                let before = st.pending.len();
                st.read_input();
                if st.pending.len() == before {
                    break;
                }
            }
        } else if device_event == INPUT_EVENT {
            st.read_input();
        }
        let vring = vrings
            .get(RX as usize)
            .ok_or_else(|| io::Error::other("no rx queue"))?;
        let pending = std::cell::RefCell::new(&mut st.pending);
        process_queue_while(
            vring,
            &mem,
            event_idx,
            || !pending.borrow().is_empty(),
            |chain| {
                let m = chain.memory().clone();
                let mut w = chain
                    .writer(&m)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let mut p = pending.borrow_mut();
                let n = w.available_bytes().min(p.len());
                let data: Vec<u8> = p.drain(..n).collect();
                w.write_all(&data)?;
                Ok(n as u32)
            },
        )?;
        let want = st.pending.len() < MAX_PENDING;
        st.watch_input(want);
        Ok(())
    }
}

impl Backend for Console {
    fn connected(&self, workers: Vec<Arc<dyn EventRegistrar>>) -> io::Result<()> {
        let mut st = self.lock()?;
        st.registrar = workers.into_iter().next();
        st.input_watched = false;
        st.watch_input(true);
        Ok(())
    }
    fn disconnected(&self) {
        if let Ok(mut st) = self.lock() {
            st.registrar = None;
            st.input_watched = false;
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Console>();
    let _ = std::io::sink().flush();
}
