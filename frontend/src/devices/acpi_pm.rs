//! The ACPI fixed-hardware registers the FADT declares (see `arch::x86_64::acpi`): the
//! PM1a event block (status, enable), the PM1a control block and the reset register, as
//! one port range from [`PM_PORT`].
//!
//! Writing SLP_TYP = 5 (`\_S5`) with SLP_EN to PM1a control (Linux's `poweroff`) ends the
//! VM with [`ExitReason::PowerOff`]; writing the reset value to the reset register
//! (`reboot=a`, Linux's first choice without `reboot=`) ends it like an i8042 reset.
//! There are no ACPI events: status reads 0 and the SCI is never raised.

use std::sync::Arc;

use crate::arch::x86_64::acpi::{
    PM1A_CNT_PORT, PM1A_EVT_PORT, RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE,
};
use crate::vmm::bus::BusDevice;
use crate::vmm::exit::{ExitReason, ExitSignal};

/// First port of the block.
pub const PM_PORT: u64 = PM1A_EVT_PORT as u64;
/// Ports covered.
pub const PM_LEN: u64 = 0x10;

const EVT_EN: u64 = 2;
const CNT: u64 = (PM1A_CNT_PORT - PM1A_EVT_PORT) as u64;
const RESET: u64 = (RESET_PORT - PM1A_EVT_PORT) as u64;
/// PM1 control: SCI_EN (the platform is in ACPI mode; always reads 1).
const SCI_EN: u16 = 1;
/// PM1 control: SLP_EN.
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;

/// The register block; ends the VM through `exit`.
pub struct AcpiPm {
    exit: Arc<ExitSignal>,
    enable: u16,
    control: u16,
}

impl AcpiPm {
    /// A block that reports power-off and reset to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            exit,
            enable: 0,
            control: SCI_EN,
        }
    }

    fn reg(&self, offset: u64) -> Option<u16> {
        match offset {
            0 => Some(0), // PM1 status: no event ever
            EVT_EN => Some(self.enable),
            CNT => Some(self.control),
            _ => None,
        }
    }

    fn set_control(&mut self, v: u16) {
        if v & SLP_EN != 0 {
            let typ = (v >> SLP_TYP_SHIFT) & 7;
            if typ == u16::from(S5_SLEEP_TYPE) {
                log::info!("guest entered ACPI S5 (power off)");
                self.exit.request(ExitReason::PowerOff);
            } else {
                log::warn!("guest asked for ACPI sleep type {typ}, which is not offered");
            }
        }
        // SLP_EN is write-only; SCI_EN stays set.
        self.control = (v & !SLP_EN) | SCI_EN;
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are 16 bits; byte reads of either half are allowed.
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            *b = self
                .reg(o & !1)
                .map(|r| r.to_le_bytes()[(o & 1) as usize])
                .unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == RESET {
            if data.first() == Some(&RESET_VALUE) {
                log::info!("guest reset through the ACPI reset register");
                self.exit.request(ExitReason::GuestReset);
            }
            return;
        }
        // Assemble the 16-bit register(s) touched: a word write, or one byte of one.
        for (i, b) in data.iter().enumerate() {
            let o = offset + i as u64;
            let base = o & !1;
            let Some(old) = self.reg(base) else { continue };
            let mut bytes = old.to_le_bytes();
            bytes[(o & 1) as usize] = *b;
            // Apply once per register, at its last byte in this access.
            let last = i + 1 == data.len() || (o & 1) == 1;
            let v = u16::from_le_bytes(bytes);
            match base {
                EVT_EN => self.enable = v,
                CNT if last => self.set_control(v),
                CNT => self.control = (v & !SLP_EN) | SCI_EN,
                _ => {} // status: write-1-to-clear, nothing is ever set
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (AcpiPm, Arc<ExitSignal>) {
        let e = Arc::new(ExitSignal::new().unwrap());
        (AcpiPm::new(e.clone()), e)
    }

    #[test]
    fn s5_write_powers_off() {
        let (mut d, e) = dev();
        // Linux writes SLP_TYP first, then SLP_TYP | SLP_EN, as 16-bit accesses.
        let typ = u16::from(S5_SLEEP_TYPE) << SLP_TYP_SHIFT;
        d.write(CNT, &typ.to_le_bytes());
        assert_eq!(e.reason(), None);
        let mut r = [0u8; 2];
        d.read(CNT, &mut r);
        assert_eq!(u16::from_le_bytes(r), typ | SCI_EN);
        d.write(CNT, &(typ | SLP_EN).to_le_bytes());
        assert_eq!(e.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn byte_writes_and_other_sleep_types() {
        let (mut d, e) = dev();
        // Sleep type 3 (S3, not offered) is ignored.
        d.write(CNT + 1, &[((3u16 << SLP_TYP_SHIFT | SLP_EN) >> 8) as u8]);
        assert_eq!(e.reason(), None);
        // The same S5 request as two byte writes.
        let v = (u16::from(S5_SLEEP_TYPE) << SLP_TYP_SHIFT) | SLP_EN;
        d.write(CNT, &[v as u8]);
        d.write(CNT + 1, &[(v >> 8) as u8]);
        assert_eq!(e.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn reset_register_and_enable_round_trip() {
        let (mut d, e) = dev();
        d.write(EVT_EN, &0x0120u16.to_le_bytes());
        let mut r = [0u8; 2];
        d.read(EVT_EN, &mut r);
        assert_eq!(u16::from_le_bytes(r), 0x0120);
        d.read(0, &mut r);
        assert_eq!(r, [0, 0]);
        d.write(RESET, &[0]);
        assert_eq!(e.reason(), None);
        d.write(RESET, &[RESET_VALUE]);
        assert_eq!(e.reason(), Some(ExitReason::GuestReset));
    }
}
