//! The 16550A UART at COM1 (0x3f8, IRQ 4), backed by `vm-superio`.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::EventTrigger;
use crate::vmm::bus::BusDevice;

/// COM1's I/O port base.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u32 = 4;

/// The serial console: guest output goes to `W`, input is queued by the event loop.
pub struct SerialConsole<W: Write + Send> {
    uart: Serial<EventTrigger, NoEvents, W>,
}

impl<W: Write + Send> SerialConsole<W> {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventTrigger, out: W) -> Self {
        Self {
            uart: Serial::new(irq, out),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                log::debug!("serial input dropped: {e:?}");
                0
            }
        }
    }

    /// Re-raises the interrupt if one is still pending (IIR bit 0 clear). KVM's irqfd
    /// delivers an edge; if the guest missed it (e.g. it was masked at the PIC), the
    /// 8250 driver would wait forever for "transmitter empty". Called periodically.
    pub fn repulse_pending_irq(&self) {
        if self.uart.state().interrupt_identification & 1 == 0 {
            if let Err(e) = vm_superio::Trigger::trigger(self.uart.interrupt_evt()) {
                log::debug!("serial irq: {e}");
            }
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl<W: Write + Send> BusDevice for SerialConsole<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.uart.write(offset as u8, data[0]) {
                log::debug!("serial write: {e:?}");
            }
        }
    }
}
