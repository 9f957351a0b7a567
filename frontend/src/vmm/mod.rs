//! The VM: KVM objects, guest memory, buses, legacy devices, vCPU threads and the event
//! loop that ends the VM cleanly.

pub mod bus;
pub mod control;
pub mod exit;
pub mod loader;
pub mod memory;
pub mod terminal;
pub mod vcpu;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::{acpi, cpuid, mptable, regs, IOAPIC_ADDR};
use crate::devices::acpi_pm::{AcpiPm, PM_LEN, PM_PORT};
use crate::devices::i8042::{I8042, I8042_LEN, I8042_PORT};
use crate::devices::rtc::{Rtc, RTC_LEN, RTC_PORT};
use crate::devices::serial::{SerialConsole, COM1_IRQ, COM1_PORT};
use crate::devices::EventTrigger;
use crate::pci;
use crate::pci::irq::GsiRouter;
use crate::pci::root::{
    PciConfigPorts, PciMmioWindow, PciRoot, CONFIG_PORT as PCI_CONFIG_PORT,
    CONFIG_PORT_LEN as PCI_CONFIG_PORT_LEN,
};
use crate::pci::vhost::{DeviceKind, VhostUserBackend};
use crate::pci::virtio::VirtioPci;
use bus::{lock, Bus};
use exit::{ExitReason, ExitSignal};
use memory::GuestMem;

/// Address of the TSS pages KVM needs on Intel hosts (3 pages just below the BIOS area).
const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// Address of KVM's identity-map page (Intel real-mode emulation).
const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Where the guest's serial console output goes.
pub enum ConsoleOutput {
    /// The VMM's stdout.
    Stdout,
    /// An in-memory buffer (tests).
    Buffer(Arc<Mutex<Vec<u8>>>),
    /// Discarded.
    Sink,
}

/// Settings for a VM.
pub struct VmConfig {
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Serial console output.
    pub console: ConsoleOutput,
    /// Forward the VMM's stdin to the serial console (raw mode if it is a terminal).
    pub console_input: bool,
}

/// Errors while building a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// Kernel loading.
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    /// vCPU register setup.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// MP table.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// Bus setup.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// Host resources (eventfds, epoll, threads).
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// A vhost-user backend.
    #[error(transparent)]
    Backend(#[from] pci::vhost::BackendError),
    /// Control socket.
    #[error("{0}")]
    Control(String),
    /// PCI setup.
    #[error("PCI: {0}")]
    Pci(String),
    /// Test code does not fit.
    #[error("guest code does not fit at {0:#x}")]
    Code(u64),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm(what, e)
}

type Console = SerialConsole<Box<dyn Write + Send>>;

/// A built VM, ready to load a payload and run.
pub struct Vm {
    _kvm: Kvm,
    fd: Arc<VmFd>,
    pci: Arc<PciRoot>,
    router: Arc<GsiRouter>,
    devices: Vec<Arc<Mutex<VirtioPci>>>,
    control: Option<control::ControlServer>,
    jail: Option<(cordon_seccomp::BpfProgram, bool)>,
    mem: GuestMem,
    mem_size: u64,
    vcpus: Vec<VcpuFd>,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<Console>>,
    serial_irq: EventFd,
    reset_evt: EventFd,
    _post: EventFd,
    exit: Arc<ExitSignal>,
    console_input: bool,
    entry: Option<u64>,
    created: Instant,
}

impl Vm {
    /// Creates the VM: memory, irqchip, PIT, legacy devices and configured vCPUs.
    pub fn new(cfg: VmConfig) -> Result<Self, VmError> {
        let created = Instant::now();
        if cfg.cpus == 0 || cfg.cpus > mptable::MAX_CPUS {
            return Err(mptable::MpTableError::TooManyCpus(cfg.cpus).into());
        }
        let mem = memory::create_guest_memory(cfg.mem_mib)?;
        let mem_size = cfg.mem_mib << 20;
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| VmError::Io("guest memory address", std::io::Error::other(e)))?;
            let r = kvm_bindings::kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the Vm keeps for
            // as long as the VM fd exists.
            unsafe { fd.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        fd.set_tss_address(KVM_TSS_ADDR)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        if let Err(e) = fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR) {
            log::debug!("KVM_SET_IDENTITY_MAP_ADDR: {e} (not needed on this host)");
        }
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

        let ev = |what| EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Io(what, e));
        let serial_irq = ev("serial irq eventfd")?;
        fd.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        let out: Box<dyn Write + Send> = match cfg.console {
            ConsoleOutput::Stdout => Box::new(std::io::stdout()),
            ConsoleOutput::Buffer(b) => Box::new(SharedBuf(b)),
            ConsoleOutput::Sink => Box::new(std::io::sink()),
        };
        let serial_trigger = EventTrigger(
            serial_irq
                .try_clone()
                .map_err(|e| VmError::Io("serial irq eventfd", e))?,
        );
        let serial = Arc::new(Mutex::new(SerialConsole::new(serial_trigger, out)));
        let reset_evt = ev("reset eventfd")?;
        let i8042 = Arc::new(Mutex::new(I8042::new(EventTrigger(
            reset_evt
                .try_clone()
                .map_err(|e| VmError::Io("reset eventfd", e))?,
        ))));
        let mut pio = Bus::new();
        pio.insert(serial.clone(), COM1_PORT, 8)?;
        pio.insert(i8042, I8042_PORT, I8042_LEN)?;
        if std::env::var_os("CORDON_DBG_NO_RTC").is_none() {
            pio.insert(Arc::new(Mutex::new(Rtc::new())), RTC_PORT, RTC_LEN)?;
        }
        // Port 0x80 (POST codes, Linux's I/O delay): absorbed in the kernel, no exit.
        let post = ev("port 0x80 eventfd")?;
        if std::env::var_os("CORDON_DBG_NO_POST").is_none() {
            fd.register_ioevent(&post, &IoEventAddress::Pio(0x80), NoDatamatch)
                .map_err(kvm_err("KVM_IOEVENTFD (port 0x80)"))?;
        }

        let exit = Arc::new(ExitSignal::new().map_err(|e| VmError::Io("exit eventfd", e))?);
        pio.insert(
            Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
            PM_PORT,
            PM_LEN,
        )?;

        regs::write_boot_tables(&mem)?;
        mptable::write(&mem, cfg.cpus)?;
        acpi::write(&mem, cfg.cpus)?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let caps = cpuid::HostCaps {
            tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer)
                && std::env::var_os("CORDON_DBG_NO_TSC_DEADLINE").is_none(),
        };
        log::debug!("host capabilities for CPUID: {caps:?}");
        let mut vcpus = Vec::new();
        for id in 0..cfg.cpus {
            let v = fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let mut c = supported.clone();
            cpuid::filter(&mut c, id, cfg.cpus, caps);
            v.set_cpuid2(&c).map_err(kvm_err("KVM_SET_CPUID2"))?;
            regs::setup_msrs(&v)?;
            regs::setup_sregs(&v)?;
            regs::setup_fpu(&v)?;
            regs::setup_lint(&v)?;
            vcpus.push(v);
        }
        let pci = Arc::new(PciRoot::new());
        pio.insert(
            Arc::new(Mutex::new(PciConfigPorts(pci.clone()))),
            PCI_CONFIG_PORT,
            PCI_CONFIG_PORT_LEN,
        )?;
        let mut mmio = Bus::new();
        mmio.insert(
            Arc::new(Mutex::new(PciMmioWindow(
                pci.clone(),
                memory::MMIO_HOLE_START,
            ))),
            memory::MMIO_HOLE_START,
            IOAPIC_ADDR - memory::MMIO_HOLE_START,
        )?;
        let fd = Arc::new(fd);
        Ok(Self {
            _kvm: kvm,
            router: Arc::new(GsiRouter::new(fd.clone())),
            fd,
            pci,
            devices: Vec::new(),
            control: None,
            jail: None,
            mem,
            mem_size,
            vcpus,
            pio,
            mmio,
            serial,
            serial_irq,
            reset_evt,
            _post: post,
            exit,
            console_input: cfg.console_input,
            entry: None,
            created,
        })
    }

    /// The guest memory (shared with vhost-user backends).
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// The KVM VM (for irq routing, irqfds and ioeventfds).
    pub fn vm_fd(&self) -> &VmFd {
        &self.fd
    }

    /// Adds a virtio-pci device whose device side is the vhost-user backend at `socket`.
    /// Fails (with a one-line error naming the socket) if nobody answers within
    /// `timeout`.
    pub fn add_vhost_user(
        &mut self,
        kind: DeviceKind,
        socket: &Path,
        timeout: Duration,
    ) -> Result<(), VmError> {
        let backend = VhostUserBackend::connect(kind, socket, timeout)?;
        let slot = self.pci.next_slot();
        if slot >= pci::root::MAX_DEVICES {
            return Err(VmError::Pci("too many devices (31 at most)".into()));
        }
        let bar = memory::MMIO_HOLE_START + slot as u64 * u64::from(VirtioPci::BAR_SIZE);
        let dev = VirtioPci::new(
            backend,
            self.fd.clone(),
            self.router.clone(),
            self.mem.clone(),
            bar as u32,
        )
        .map_err(|e| VmError::Pci(e.to_string()))?;
        let dev = Arc::new(Mutex::new(dev));
        self.pci.add(dev.clone());
        self.devices.push(dev);
        log::info!(
            "{} device at 00:{slot:02x}.0 <- {}",
            kind.name(),
            socket.display()
        );
        Ok(())
    }

    /// Installs `filter` (the `frontend` policy) on the whole VMM process once setup is
    /// done, just before the vCPUs start. With `log_failures`, denied syscalls are logged
    /// by the kernel instead of killing the VMM.
    pub fn jail(&mut self, filter: cordon_seccomp::BpfProgram, log_failures: bool) {
        self.jail = Some((filter, log_failures));
    }

    /// Serves the control socket at `path` while the VM runs.
    pub fn listen_control(&mut self, path: &Path) -> Result<(), VmError> {
        let c = control::ControlServer::bind(path)
            .map_err(|e| VmError::Control(format!("-s {}: {e}", path.display())))?;
        self.control = Some(c);
        Ok(())
    }

    /// The virtio devices (for status reporting).
    pub fn devices(&self) -> Vec<Arc<Mutex<VirtioPci>>> {
        self.devices.clone()
    }

    /// The MMIO bus, to add devices before running.
    pub fn mmio_bus(&mut self) -> &mut Bus {
        &mut self.mmio
    }

    /// The port-I/O bus, to add devices before running.
    pub fn pio_bus(&mut self) -> &mut Bus {
        &mut self.pio
    }

    /// The signal that ends the VM (for the control socket).
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// Loads a Linux kernel (bzImage or vmlinux ELF), initrd and command line.
    pub fn load_kernel(
        &mut self,
        kernel: &Path,
        initrd: Option<&Path>,
        params: &str,
    ) -> Result<(), VmError> {
        let l = loader::load(&self.mem, self.mem_size, kernel, initrd, params)?;
        self.entry = Some(l.entry);
        Ok(())
    }

    /// Loads raw 64-bit code at `addr` and makes it the entry point (vCPU-loop tests).
    pub fn load_code(&mut self, addr: u64, code: &[u8]) -> Result<(), VmError> {
        self.mem
            .write_slice(code, GuestAddress(addr))
            .map_err(|_| VmError::Code(addr))?;
        self.entry = Some(addr);
        Ok(())
    }

    /// Runs the VM until it ends; returns why. Restores the terminal before returning.
    pub fn run(self) -> ExitReason {
        let entry = match self.entry {
            Some(e) => e,
            None => return ExitReason::Error("no kernel loaded".into()),
        };
        match self.run_inner(entry) {
            Ok(r) => r,
            Err(e) => ExitReason::Error(e.to_string()),
        }
    }

    fn run_inner(self, entry: u64) -> Result<ExitReason, VmError> {
        install_signal_handlers();
        let pio = Arc::new(self.pio);
        let mmio = Arc::new(self.mmio);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        log::info!(
            "VM set up in {:.2} ms; starting {} vCPU(s) at {entry:#x}",
            self.created.elapsed().as_secs_f64() * 1e3,
            self.vcpus.len()
        );
        if let Some(fd) = self.vcpus.first() {
            regs::setup_regs(fd, entry)?;
        }
        // Raw terminal mode before the filter (it allows restoring, not querying).
        let _raw = if self.console_input {
            terminal::RawTerminal::enter(libc::STDIN_FILENO)
        } else {
            None
        };
        if let Some((filter, log_failures)) = &self.jail {
            cordon_seccomp::install::install_with(filter, *log_failures)
                .map_err(|e| VmError::Io("installing the frontend seccomp filter", e))?;
            log::info!(
                "VMM jailed (seccomp policy: frontend, {} instructions)",
                filter.len()
            );
        }
        for (id, fd) in self.vcpus.into_iter().enumerate() {
            let v = vcpu::Vcpu {
                fd,
                id: id as u8,
                pio: pio.clone(),
                mmio: mmio.clone(),
                stop: stop.clone(),
                exit: self.exit.clone(),
            };
            let t = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || v.run())
                .map_err(|e| VmError::Io("spawning a vCPU thread", e))?;
            threads.push(t);
        }
        let reason = match epoll::create(true) {
            Ok(ep) => {
                let r = EventLoop {
                    ep,
                    exit: &self.exit,
                    reset: &self.reset_evt,
                    serial: &self.serial,
                    devices: &self.devices,
                    control: self.control.as_ref(),
                    watched: vec![None; self.devices.len()],
                }
                .run(self.console_input);
                close(ep);
                r
            }
            Err(e) => ExitReason::Error(format!("epoll_create: {e}")),
        };
        stop.store(true, Ordering::Release);
        for t in threads {
            while !t.is_finished() {
                // Kick the vCPU out of KVM_RUN; repeat in case it was not inside yet.
                let _ = t.kill(SIGRTMIN());
                std::thread::sleep(Duration::from_micros(500));
            }
            let _ = t.join();
        }
        drop(self.serial_irq);
        Ok(reason)
    }
}

/// eventfd written by SIGTERM/SIGINT handlers, so the loop exits cleanly.
static SIGNAL_EVT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

extern "C" fn term_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = SIGNAL_EVT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; fd is an eventfd that stays open for the
        // process lifetime and `one` is 8 valid bytes.
        unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
    }
}

fn install_signal_handlers() {
    if let Err(e) = register_signal_handler(SIGRTMIN(), kick_handler) {
        log::warn!("cannot install the vCPU kick signal handler: {e}");
    }
}

/// Makes SIGTERM and SIGINT stop a running VM cleanly (terminal restored, exit code 0).
pub fn stop_on_signals() -> std::io::Result<()> {
    let evt = EventFd::new(libc::EFD_NONBLOCK)?;
    SIGNAL_EVT_FD.store(evt.as_raw_fd(), Ordering::Relaxed);
    std::mem::forget(evt);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        if let Err(e) = register_signal_handler(sig, term_handler) {
            log::warn!("cannot handle signal {sig}: {e}");
        }
    }
    Ok(())
}

const TOKEN_EXIT: u64 = 0;
const TOKEN_RESET: u64 = 1;
const TOKEN_STDIN: u64 = 2;
const TOKEN_SIGNAL: u64 = 3;
const TOKEN_CONTROL: u64 = 4;
const TOKEN_BACKEND: u64 = 100;

/// Everything the VMM's main thread watches while vCPUs run.
struct EventLoop<'a> {
    ep: i32,
    exit: &'a ExitSignal,
    reset: &'a EventFd,
    serial: &'a Mutex<Console>,
    devices: &'a [Arc<Mutex<VirtioPci>>],
    control: Option<&'a control::ControlServer>,
    /// Backend socket fd registered in epoll, per device.
    watched: Vec<Option<i32>>,
}

impl EventLoop<'_> {
    fn ctl(&self, op: epoll::ControlOptions, fd: i32, token: u64) -> std::io::Result<()> {
        let ev = epoll::Events::EPOLLIN | epoll::Events::EPOLLRDHUP;
        epoll::ctl(self.ep, op, fd, epoll::Event::new(ev, token))
    }

    /// Keeps epoll in step with each device's backend connection.
    fn sync_backends(&mut self) {
        for (i, d) in self.devices.iter().enumerate() {
            let fd = lock(d).backend().fd();
            if fd != self.watched[i] {
                if let Some(old) = self.watched[i] {
                    let _ = self.ctl(epoll::ControlOptions::EPOLL_CTL_DEL, old, 0);
                }
                if let Some(new) = fd {
                    if let Err(e) = self.ctl(
                        epoll::ControlOptions::EPOLL_CTL_ADD,
                        new,
                        TOKEN_BACKEND + i as u64,
                    ) {
                        log::warn!("cannot watch backend {i}: {e}");
                    }
                }
                self.watched[i] = fd;
            }
        }
    }

    /// A backend socket became readable: it either hung up or sent something unexpected.
    fn backend_event(&mut self, i: usize) {
        let Some(d) = self.devices.get(i) else { return };
        let mut d = lock(d);
        let Some(fd) = d.backend().fd() else { return };
        let mut b = [0u8; 1];
        // SAFETY: peeks at most one byte into a valid buffer; never blocks.
        let r = unsafe {
            libc::recv(
                fd,
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let eagain =
            r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
        if r == 0 || (r < 0 && !eagain) {
            let kind = d.backend().kind.name();
            let sock = d.backend().socket.display().to_string();
            log::warn!("{kind} backend {sock} went away; the VM keeps running, reconnecting");
            let _ = self.ctl(epoll::ControlOptions::EPOLL_CTL_DEL, fd, 0);
            self.watched[i] = None;
            d.backend().disconnect();
        }
    }

    fn try_reconnects(&mut self) -> bool {
        let mut any_down = false;
        for d in self.devices {
            let mut d = lock(d);
            if d.backend().connected() {
                continue;
            }
            if d.backend().try_reconnect() {
                log::info!(
                    "{} backend {} is back; device resumed",
                    d.backend().kind.name(),
                    d.backend().socket.display()
                );
                d.resume();
            }
            any_down |= !d.backend().connected();
        }
        any_down
    }

    fn run(mut self, console_input: bool) -> ExitReason {
        let mut errors = Vec::new();
        let mut add = |fd: i32, token: u64| {
            if let Err(e) = epoll::ctl(
                self.ep,
                epoll::ControlOptions::EPOLL_CTL_ADD,
                fd,
                epoll::Event::new(epoll::Events::EPOLLIN, token),
            ) {
                errors.push(e);
            }
        };
        add(self.exit.evt.as_raw_fd(), TOKEN_EXIT);
        add(self.reset.as_raw_fd(), TOKEN_RESET);
        let sigfd = SIGNAL_EVT_FD.load(Ordering::Relaxed);
        if sigfd >= 0 {
            add(sigfd, TOKEN_SIGNAL);
        }
        if let Some(c) = self.control {
            add(c.fd(), TOKEN_CONTROL);
        }
        if let Some(e) = errors.pop() {
            return ExitReason::Error(format!("epoll_ctl: {e}"));
        }
        self.sync_backends();
        let stdin = libc::STDIN_FILENO;
        if console_input {
            if let Err(e) = epoll::ctl(
                self.ep,
                epoll::ControlOptions::EPOLL_CTL_ADD,
                stdin,
                epoll::Event::new(epoll::Events::EPOLLIN, TOKEN_STDIN),
            ) {
                log::debug!("stdin is not pollable ({e}); console input disabled");
            }
        }
        let mut pending: Vec<u8> = Vec::new();
        let mut events = vec![epoll::Event::new(epoll::Events::empty(), 0); 16];
        let mut last_tick = Instant::now();
        let mut backends_down = false;
        loop {
            if !pending.is_empty() {
                let n = lock(self.serial).enqueue_input(&pending);
                pending.drain(..n);
            }
            // Wake every 20 ms to re-raise a serial interrupt the guest may have missed and
            // to retry backends that went away.
            let timeout = if pending.is_empty() { 20 } else { 10 };
            let n = match epoll::wait(self.ep, timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return ExitReason::Error(format!("epoll_wait: {e}")),
            };
            if last_tick.elapsed() >= Duration::from_millis(20) {
                last_tick = Instant::now();
                lock(self.serial).repulse_pending_irq();
                if backends_down {
                    backends_down = self.try_reconnects();
                    self.sync_backends();
                }
            }
            for ev in &events[..n] {
                let token = ev.data;
                match token {
                    TOKEN_EXIT => {
                        if let Some(r) = self.exit.reason() {
                            return r;
                        }
                    }
                    TOKEN_RESET => {
                        let _ = self.reset.read();
                        log::info!("guest requested a CPU reset through the i8042");
                        self.exit.request(ExitReason::GuestReset);
                    }
                    TOKEN_SIGNAL => {
                        log::info!("signal received, stopping the VM");
                        self.exit.request(ExitReason::Stopped);
                    }
                    TOKEN_CONTROL => {
                        if let Some(c) = self.control {
                            if c.serve(self.devices) == Some(control::Request::Stop) {
                                self.exit.request(ExitReason::Stopped);
                            }
                        }
                    }
                    TOKEN_STDIN if pending.is_empty() => {
                        let mut buf = [0u8; 64];
                        // SAFETY: reads into a valid local buffer of the given size.
                        let r = unsafe { libc::read(stdin, buf.as_mut_ptr().cast(), buf.len()) };
                        if r <= 0 {
                            // EOF or error: stop watching stdin.
                            let _ = epoll::ctl(
                                self.ep,
                                epoll::ControlOptions::EPOLL_CTL_DEL,
                                stdin,
                                epoll::Event::new(epoll::Events::empty(), 0),
                            );
                        } else {
                            pending.extend_from_slice(&buf[..r as usize]);
                        }
                    }
                    t if t >= TOKEN_BACKEND => {
                        self.backend_event((t - TOKEN_BACKEND) as usize);
                        backends_down = true;
                    }
                    _ => {}
                }
            }
        }
    }
}

fn close(fd: i32) {
    // SAFETY: fd is the epoll descriptor this module created and no longer uses.
    unsafe { libc::close(fd) };
}

struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
