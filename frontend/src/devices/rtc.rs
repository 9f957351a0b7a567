//! A read-only MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71 (data): the
//! host's UTC time in BCD, never "update in progress". Without it Linux's rtc_cmos probe
//! spins for seconds before giving up.

use crate::vmm::bus::BusDevice;

/// Index port.
pub const RTC_PORT: u64 = 0x70;
/// Ports covered (index and data).
pub const RTC_LEN: u64 = 2;

/// Broken-down UTC time (fields as in `struct tm`).
struct Tm {
    tm_sec: i32,
    tm_min: i32,
    tm_hour: i32,
    tm_mday: i32,
    tm_mon: i32,
    tm_year: i32,
    tm_wday: i32,
}

/// Seconds since the epoch to UTC date and time (days-to-civil algorithm).
fn civil(secs: i64) -> Tm {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Tm {
        tm_sec: (rem % 60) as i32,
        tm_min: (rem / 60 % 60) as i32,
        tm_hour: (rem / 3600) as i32,
        tm_mday: day as i32,
        tm_mon: month as i32 - 1,
        tm_year: year as i32 - 1900,
        // 1970-01-01 was a Thursday.
        tm_wday: (days + 4).rem_euclid(7) as i32,
    }
}

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
        // The host clock, converted here: libc's gmtime_r would open /etc/localtime, which
        // the VMM's seccomp policy forbids.
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let tm = civil(secs);
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
    fn civil_dates() {
        let t = civil(0);
        assert_eq!((t.tm_year, t.tm_mon, t.tm_mday, t.tm_wday), (70, 0, 1, 4));
        // 2024-02-29 12:34:56 UTC, a Thursday.
        let t = civil(1_709_210_096);
        assert_eq!((t.tm_year + 1900, t.tm_mon + 1, t.tm_mday), (2024, 2, 29));
        assert_eq!((t.tm_hour, t.tm_min, t.tm_sec, t.tm_wday), (12, 34, 56, 4));
    }

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
