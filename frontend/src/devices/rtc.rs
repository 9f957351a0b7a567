//! A read-only MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71 (data): the
//! host's UTC time in BCD, never "update in progress". Without it Linux's rtc_cmos probe
//! spins for seconds before giving up.

use crate::vmm::bus::BusDevice;

/// Index port.
pub const RTC_PORT: u64 = 0x70;
/// Ports covered (index and data).
pub const RTC_LEN: u64 = 2;

fn bcd(v: i32) -> u8 {
    let v = v.rem_euclid(100) as u8;
    ((v / 10) << 4) | (v % 10)
}

/// The clock.
#[derive(Default)]
pub struct Rtc {
    index: u8,
}

impl Rtc {
    /// A clock reading the host time.
    pub fn new() -> Self {
        Self::default()
    }

    fn register(&self, index: u8) -> u8 {
        // SAFETY: time(NULL) has no preconditions.
        let now = unsafe { libc::time(std::ptr::null_mut()) };
        // SAFETY: tm is plain data; gmtime_r fills it from a valid time_t.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call.
        unsafe { libc::gmtime_r(&now, &mut tm) };
        match index {
            0x00 => bcd(tm.tm_sec),
            0x02 => bcd(tm.tm_min),
            0x04 => bcd(tm.tm_hour),
            0x06 => bcd(tm.tm_wday + 1),
            0x07 => bcd(tm.tm_mday),
            0x08 => bcd(tm.tm_mon + 1),
            0x09 => bcd(tm.tm_year),
            0x32 => bcd((tm.tm_year + 1900) / 100),
            0x0a => 0x26, // 32.768 kHz base, 1024 Hz rate, no update in progress
            0x0b => 0x02, // 24-hour mode, BCD, no interrupts
            0x0d => 0x80, // valid RAM and time
            _ => 0,
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match (offset, data.len()) {
            (1, 1) => self.register(self.index),
            _ => 0xff,
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, [v]) = (offset, data) {
            // Bit 7 is the NMI mask, not part of the index.
            self.index = v & 0x7f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_plausible_bcd_date() {
        let mut r = Rtc::new();
        let mut b = [0u8];
        r.write(0, &[0x8a]);
        r.read(1, &mut b);
        assert_eq!(b[0] & 0x80, 0, "never update-in-progress");
        r.write(0, &[0x32]);
        r.read(1, &mut b);
        assert_eq!(b[0], 0x20, "21st century");
        r.write(0, &[0x08]);
        r.read(1, &mut b);
        let month = (b[0] >> 4) * 10 + (b[0] & 0xf);
        assert!((1..=12).contains(&month));
    }
}
