//! System checks: `kernel` (boot proof, kernel release, uptime, online CPUs) and `kvm`
//! (/dev/kvm usable, for the nested L1).

use crate::report::Outcome;
use crate::spec::CheckSpec;
use crate::sysutil::read_trim;
use std::os::unix::io::AsRawFd;

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

/// `kernel`: reports the kernel release, the uptime at which the agent ran and the number
/// of CPUs the guest brought online (processor entries in /proc/cpuinfo).
pub fn kernel(_c: &CheckSpec) -> Result<Outcome, String> {
    let release = read_trim("/proc/sys/kernel/osrelease")?;
    let uptime = read_trim("/proc/uptime")?;
    let up = uptime.split_whitespace().next().unwrap_or("?").to_string();
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .map_err(|e| format!("/proc/cpuinfo: {e}"))?
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    Ok(
        Outcome::pass(format!("{release}, up {up} s, {cpus} CPU(s)"))
            .with("release", release)
            .with("uptime", up)
            .with("cpus", cpus),
    )
}

/// `kvm`: /dev/kvm opens and answers KVM_GET_API_VERSION with 12.
pub fn kvm(_c: &CheckSpec) -> Result<Outcome, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let svm = cpuinfo.split_whitespace().any(|w| w == "svm");
    let vmx = cpuinfo.split_whitespace().any(|w| w == "vmx");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("open /dev/kvm: {e}"))?;
    // SAFETY: KVM_GET_API_VERSION takes no argument.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    let out = Outcome::pass(format!("KVM API version {v}"))
        .with("api", v)
        .with("svm", svm)
        .with("vmx", vmx);
    if v != 12 {
        return Ok(Outcome {
            ok: false,
            detail: format!("KVM_GET_API_VERSION returned {v}"),
            ..out
        });
    }
    Ok(out)
}
