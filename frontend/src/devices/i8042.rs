//! A minimal i8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command).
//!
//! It answers the controller commands Linux's probe uses (read/write the control byte,
//! self tests) so the probe finishes at once instead of timing out, reports no keyboard
//! or mouse traffic, and turns the CPU-reset command (0xfe on port 0x64, used by
//! `reboot=k`) into a reset event that ends the VM cleanly.

use vm_superio::Trigger;

use super::EventTrigger;
use crate::vmm::bus::BusDevice;

/// First port of the controller.
pub const I8042_PORT: u64 = 0x60;
/// Ports covered (0x60-0x64).
pub const I8042_LEN: u64 = 5;

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_RESET_CPU: u8 = 0xfe;

/// The controller; `reset` fires when the guest asks for a CPU reset.
pub struct I8042 {
    reset: EventTrigger,
    ctr: u8,
    output: Option<u8>,
    expect_ctr: bool,
}

impl I8042 {
    /// A controller whose reset line is `reset`.
    pub fn new(reset: EventTrigger) -> Self {
        Self {
            reset,
            // Keyboard interrupt on, system flag, translation: what firmware leaves.
            ctr: 0x45,
            output: None,
            expect_ctr: false,
        }
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            CMD_READ_CTR => self.output = Some(self.ctr),
            CMD_WRITE_CTR => self.expect_ctr = true,
            CMD_SELF_TEST => self.output = Some(0x55),
            CMD_KBD_TEST => self.output = Some(0x00),
            // No mouse port: the aux test reports a clock-line failure.
            CMD_AUX_TEST => self.output = Some(0x01),
            CMD_RESET_CPU => {
                if let Err(e) = self.reset.trigger() {
                    log::warn!("i8042 reset signal failed: {e}");
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match (offset, data.len()) {
            (0, 1) => self.output.take().unwrap_or(0),
            (4, 1) => STATUS_SYS | if self.output.is_some() { STATUS_OBF } else { 0 },
            _ => 0xff,
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (4, [cmd]) => self.command(*cmd),
            (0, [v]) if self.expect_ctr => {
                self.ctr = *v;
                self.expect_ctr = false;
            }
            // Bytes for the keyboard itself: there is no keyboard, nothing answers.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn dev() -> (I8042, EventFd) {
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(EventTrigger(e.try_clone().unwrap())), e)
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn control_byte_round_trips() {
        let (mut d, _) = dev();
        assert_eq!(rd(&mut d, 4) & STATUS_OBF, 0);
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[0x47]);
        d.write(4, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut d, 4) & STATUS_OBF, STATUS_OBF);
        assert_eq!(rd(&mut d, 0), 0x47);
        assert_eq!(rd(&mut d, 4) & STATUS_OBF, 0);
    }

    #[test]
    fn reset_command_fires_the_event() {
        let (mut d, e) = dev();
        assert!(e.read().is_err(), "no event before the command");
        d.write(4, &[CMD_RESET_CPU]);
        assert_eq!(e.read().unwrap(), 1);
    }
}
