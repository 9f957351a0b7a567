//! The in-guest benchmark (issue 7): a real Linux guest booted by `cordon run` with the full
//! device set measures, with the guest agent's `bench-*` checks,
//! - 4 KiB random read/write on /dev/vda at QD1 and QD32 (O_DIRECT; IOPS, p50, p99), with
//!   the disk served by Cordon's block backend and, in a second boot of the same VMM and
//!   kernel, by qemu-storage-daemon's vhost-user-blk export of the same image;
//! - TCP throughput over Cordon's net backend (TAP in a network namespace), both ways;
//! - vsock throughput through Cordon's hybrid vsock backend, both ways;
//! - boot-to-init time of each boot (full device set).
//!
//! Everything runs in one runner-B run ([`NestedRunner`]: a nested L1 on PVM hosts, the
//! host itself on KVM hosts), built from the end-to-end pieces of [`cordon_tests::e2e`].
//! [`script`] writes the L1 script, [`Report::parse`] reads the console back,
//! [`Report::markdown`] renders `bench/results/guest.md`.

use anyhow::{bail, Result};
use cordon_tests::e2e::{cordon_run, in_netns, start_devices, GUEST_IP, HOST_IP};
use cordon_tests::guest::check::parse_results;
use cordon_tests::guest::peers::qsd_blk_args;
use cordon_tests::guest::{Check, CheckResult};

/// Host sink of guest→host TCP streams.
pub const TCP_SINK_PORT: u16 = 7100;
/// Host sink of guest→host vsock streams (`<uds>_7101`).
pub const VSOCK_SINK_PORT: u32 = 7101;
/// Guest listener of host→guest vsock streams.
pub const VSOCK_RECV_PORT: u32 = 7102;
/// Guest listener of host→guest TCP streams.
pub const TCP_RECV_PORT: u16 = 7103;

/// Which backend serves the guest's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// Cordon's block backend (in the `cordon devices` tree, jailed).
    Cordon,
    /// qemu-storage-daemon's vhost-user-blk export (not jailed).
    Qsd,
}

impl Disk {
    /// Short label used in vm names and tables.
    pub fn label(self) -> &'static str {
        match self {
            Disk::Cordon => "cordon",
            Disk::Qsd => "qsd",
        }
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Config {
    /// Milliseconds per block cell.
    pub ms: u64,
    /// Queue depths of the block cells.
    pub qds: Vec<u32>,
    /// Bytes per stream.
    pub bytes: u64,
    /// Size of the disk image (MiB); the offsets cover all of it.
    pub disk_mb: u64,
    /// Boots of each kind (Cordon disk + streams, then qsd disk), alternating.
    pub rounds: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ms: 5000,
            qds: vec![1, 32],
            bytes: 32 << 20,
            disk_mb: 128,
            rounds: 3,
        }
    }
}

/// The vm label of one boot (`cordon-1`, `qsd-1`, ...).
pub fn vm_label(disk: Disk, round: u32) -> String {
    format!("{}-{round}", disk.label())
}

/// The `L2_CMDLINE_<VAR>` suffix of one boot.
pub fn plan_var(disk: Disk, round: u32) -> String {
    format!("{}{round}", disk.label().to_uppercase())
}

/// The block checks (the same for both disks).
pub fn blk_checks(cfg: &Config) -> Vec<Check> {
    let timeout = cfg.ms / 1000 + 120;
    let mut v = Vec::new();
    for rw in ["randread", "randwrite"] {
        for qd in &cfg.qds {
            v.push(
                Check::new("bench-blk")
                    .arg("dev", "vda")
                    .arg("rw", rw)
                    .arg("bs", 4096)
                    .arg("qd", qd)
                    .arg("ms", cfg.ms)
                    .arg("span", cfg.disk_mb)
                    .arg("timeout", timeout),
            );
        }
    }
    v
}

/// The stream checks (Cordon boots only): TCP and vsock, guest→host then host→guest. A
/// stream that stalls fails after 120 s (plus 1 s per MiB) and is reported as a problem.
pub fn stream_checks(cfg: &Config) -> Vec<Check> {
    let t = 120 + (cfg.bytes >> 20);
    let b = cfg.bytes;
    vec![
        Check::new("bench-send")
            .arg("proto", "tcp")
            .arg("ip", GUEST_IP)
            .arg("peer", HOST_IP)
            .arg("port", TCP_SINK_PORT)
            .arg("bytes", b)
            .arg("timeout", t),
        Check::new("bench-recv")
            .arg("proto", "tcp")
            .arg("ip", GUEST_IP)
            .arg("port", TCP_RECV_PORT)
            .arg("bytes", b)
            .arg("timeout", t),
        Check::new("bench-send")
            .arg("proto", "vsock")
            .arg("cid", 2)
            .arg("port", VSOCK_SINK_PORT)
            .arg("bytes", b)
            .arg("timeout", t),
        Check::new("bench-recv")
            .arg("proto", "vsock")
            .arg("port", VSOCK_RECV_PORT)
            .arg("bytes", b)
            .arg("timeout", t),
        // Counters for the record (and for diagnosing a stalled stream).
        Check::new("net-stats"),
    ]
}

/// The checks of one boot.
pub fn plan(cfg: &Config, disk: Disk) -> Vec<Check> {
    let mut v = blk_checks(cfg);
    if disk == Disk::Cordon {
        v.extend(stream_checks(cfg));
    }
    v
}

/// L1 shell: `mark LABEL` copies the VMM's output, prints `BENCH-BOOT` when the guest's
/// init runs (L1 uptime at VMM start and at the line, and the guest's own uptime), and
/// starts the host→guest senders when the guest listens. It is the only writer of L1's
/// console while a guest runs (concurrent writers lost bytes of result lines): the peers
/// log to `$R/peers.log`, printed after each boot.
const MARK: &str = r#"CR=$(printf '\r')
mark() {
  while IFS= read -r line; do
    line=${line%$CR}
    case "$line" in
      *"CORDON-INIT ready uptime="*)
        echo "BENCH-BOOT vm=$1 vmm_start=$T0 init=$(cut -d' ' -f1 /proc/uptime) guest_uptime=${line##*uptime=}";;
      *"CORDON-LISTENING tcp port=__TCP_RECV__"*)
        cordon-guest-agent --peer send tcp __GUEST_ADDR__:__TCP_RECV__ $BYTES >> $R/peers.log 2>&1 &;;
      *"CORDON-LISTENING vsock port=__VSOCK_RECV__"*)
        cordon-guest-agent --peer send vsock $R/vsock __VSOCK_RECV__ $BYTES >> $R/peers.log 2>&1 &;;
    esac
    printf '%s\n' "$line"
  done
}
"#;

/// L1 shell of one boot: the devices (disk from Cordon or qsd), `cordon run` through
/// `mark`, then everything stopped.
fn boot(disk: Disk, round: u32) -> String {
    let vm = vm_label(disk, round);
    let var = plan_var(disk, round);
    let mut s = format!("echo \"BENCH-PHASE start vm={vm}\"\n");
    if disk == Disk::Qsd {
        let args: Vec<String> = qsd_blk_args("$CORDON_DIR/disk.img", "$R/blk.sock")
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        s.push_str(&format!(
            "rm -f $R/blk.sock; qemu-storage-daemon {} > $R/qsd.log 2>&1 &\nqsd=$!\n\
             wait_sockets blk\n",
            args.join(" ")
        ));
    }
    s.push_str(&start_devices(disk == Disk::Cordon));
    s.push_str(&format!(
        "rm -f $R/vmm.sock; T0=$(cut -d' ' -f1 /proc/uptime)\n{{ timeout 1500 {} < /dev/null; echo \"BENCH-VMM-EXIT vm={vm} rc=$?\"; }} 2>&1 | mark {vm}\n",
        cordon_run(&format!("\"$L2_CMDLINE_{var}\""))
    ));
    s.push_str(
        "echo \"L1-TAP $(grep cordon0 /proc/net/dev)\"\n\
         kill $devices; wait $devices\n\
         echo \"L1-DEVICES $(grep -c \"queue that's not ready\" $R/devices.log) 'queue not ready' errors\"\n\
         grep -v \"queue that's not ready\" $R/devices.log | sed 's/^/L1-DEVICES /'\n\
         sed 's/^/L1-PEERS /' $R/peers.log; : > $R/peers.log\n",
    );
    if disk == Disk::Qsd {
        s.push_str("kill $qsd; wait $qsd; sed 's/^/L1-QSD /' $R/qsd.log\n");
    }
    s
}

/// The whole L1 script: the disk image, the host sinks, then each boot in a network
/// namespace.
pub fn script(cfg: &Config) -> String {
    let guest_addr = GUEST_IP.split('/').next().unwrap_or(GUEST_IP);
    let mut inner = MARK
        .replace("__TCP_RECV__", &TCP_RECV_PORT.to_string())
        .replace("__VSOCK_RECV__", &VSOCK_RECV_PORT.to_string())
        .replace("__GUEST_ADDR__", guest_addr);
    inner.push_str(&format!(
        "dd if=/dev/zero of=$CORDON_DIR/disk.img bs=1M count={} 2>/dev/null\n\
         cordon-guest-agent --peer sink tcp 0.0.0.0:{TCP_SINK_PORT} >> $R/peers.log 2>&1 &\n\
         cordon-guest-agent --peer sink unix $R/vsock_{VSOCK_SINK_PORT} >> $R/peers.log 2>&1 &\n",
        cfg.disk_mb
    ));
    for round in 1..=cfg.rounds {
        inner.push_str(&boot(Disk::Cordon, round));
        inner.push_str(&boot(Disk::Qsd, round));
    }
    inner.push_str("echo \"BENCH-PHASE done\"\n");
    in_netns(&inner, &format!("BYTES={}", cfg.bytes))
}

/// First line of the results file (also where `--from-log` finds the conditions' end).
pub const TITLE: &str =
    "# In-guest benchmark: block (Cordon vs qemu-storage-daemon), net, vsock, boot\n\n";
/// Heading after the conditions paragraph.
pub const BLOCK_HEADING: &str = "\n## Block: 4 KiB random I/O on /dev/vda, O_DIRECT\n\n";

/// The conditions paragraph of an earlier results file (for re-rendering a saved log).
pub fn conditions_of(md: &str) -> Option<&str> {
    let body = md.strip_prefix(TITLE)?;
    body.find(BLOCK_HEADING).map(|end| &body[..end])
}

/// One block cell of one boot.
#[derive(Debug, Clone, PartialEq)]
pub struct BlkCell {
    /// `randread` or `randwrite`.
    pub rw: String,
    /// Queue depth.
    pub qd: u32,
    /// Requests per second.
    pub iops: f64,
    /// Median latency (µs).
    pub p50_us: f64,
    /// 99th percentile latency (µs).
    pub p99_us: f64,
}

/// One stream measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// `tcp` or `vsock`.
    pub proto: String,
    /// `guest→host` or `host→guest`.
    pub dir: &'static str,
    /// MiB/s measured by the guest.
    pub mib_s: f64,
    /// Bytes moved.
    pub bytes: u64,
}

/// One boot's boot-to-init figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Boot {
    /// The boot's vm label.
    pub vm: String,
    /// Seconds of L1 (or host) time from `cordon run`'s start to the guest's init.
    pub vmm_to_init: f64,
    /// The guest's own uptime when its init ran.
    pub guest_uptime: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Block cells per boot (vm label → cells).
    pub blk: Vec<(String, Vec<BlkCell>)>,
    /// Streams of the Cordon boots.
    pub streams: Vec<(String, Vec<Stream>)>,
    /// Boot times.
    pub boots: Vec<Boot>,
    /// Failed or missing checks, stalls.
    pub problems: Vec<String>,
    /// The raw `BENCH-` lines and bench results, for the results file.
    pub raw: Vec<String>,
}

fn num(r: &CheckResult, key: &str) -> Result<f64> {
    let v = r.value(key)?;
    v.parse()
        .map_err(|_| anyhow::anyhow!("{} {key}={v:?} is not a number", r.check))
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

impl Report {
    /// Reads the console of a run (the guest's output is hostile: bad values are reported
    /// as problems, never trusted blindly).
    pub fn parse(console: &str, cfg: &Config) -> Result<Report> {
        let mut rep = Report::default();
        for line in console.lines() {
            let l = line.trim_end_matches('\r');
            if let Some(pos) = l.find("BENCH-") {
                rep.raw.push(l[pos..].to_string());
            }
            if let Some(pos) = l.find("CORDON-PEER ") {
                rep.raw.push(l[pos..].to_string());
            }
            if let Some(pos) = l.find("BENCH-BOOT ") {
                let b = &l[pos..];
                let (Some(vm), Some(t0), Some(t1), Some(up)) = (
                    field(b, "vm"),
                    field(b, "vmm_start").and_then(|v| v.parse::<f64>().ok()),
                    field(b, "init").and_then(|v| v.parse::<f64>().ok()),
                    field(b, "guest_uptime").and_then(|v| v.parse::<f64>().ok()),
                ) else {
                    rep.problems.push(format!("unreadable boot line {b:?}"));
                    continue;
                };
                rep.boots.push(Boot {
                    vm: vm.to_string(),
                    vmm_to_init: t1 - t0,
                    guest_uptime: up,
                });
            }
        }
        for round in 1..=cfg.rounds {
            for disk in [Disk::Cordon, Disk::Qsd] {
                let vm = vm_label(disk, round);
                let results = parse_results(console, &vm)?;
                if results.is_empty() {
                    rep.problems
                        .push(format!("{vm}: no results (guest stalled?)"));
                }
                let mut cells = Vec::new();
                let mut streams = Vec::new();
                for r in &results {
                    rep.raw.push(format!(
                        "{vm} {} ok={} {}",
                        r.check,
                        r.ok,
                        r.data
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ));
                    if !r.ok {
                        rep.problems
                            .push(format!("{vm} {} #{}: {}", r.check, r.id, r.detail));
                        continue;
                    }
                    match r.check.as_str() {
                        "bench-blk" => cells.push(BlkCell {
                            rw: r.value("rw")?.to_string(),
                            qd: num(r, "qd")? as u32,
                            iops: num(r, "iops")?,
                            p50_us: num(r, "p50_us")?,
                            p99_us: num(r, "p99_us")?,
                        }),
                        "bench-send" | "bench-recv" => streams.push(Stream {
                            proto: r.value("proto")?.to_string(),
                            dir: if r.check == "bench-send" {
                                "guest→host"
                            } else {
                                "host→guest"
                            },
                            mib_s: num(r, "mib_s")?,
                            bytes: num(r, "bytes")? as u64,
                        }),
                        _ => {}
                    }
                }
                let want = plan(cfg, disk).len();
                if !results.is_empty() && results.len() < want {
                    rep.problems.push(format!(
                        "{vm}: {} of {want} results (guest stalled or timed out?)",
                        results.len()
                    ));
                }
                rep.blk.push((vm.clone(), cells));
                if disk == Disk::Cordon {
                    rep.streams.push((vm, streams));
                }
            }
        }
        if rep.blk.iter().all(|(_, c)| c.is_empty()) {
            bail!("no block result at all: {:?}", rep.problems);
        }
        Ok(rep)
    }

    /// One block cell of one disk over the rounds, sorted by IOPS.
    fn blk_rounds(&self, disk: Disk, rw: &str, qd: u32) -> Vec<&BlkCell> {
        let prefix = format!("{}-", disk.label());
        let mut v: Vec<&BlkCell> = self
            .blk
            .iter()
            .filter(|(vm, _)| vm.starts_with(&prefix))
            .flat_map(|(_, cells)| cells.iter().filter(|c| c.rw == rw && c.qd == qd))
            .collect();
        v.sort_by(|a, b| a.iops.total_cmp(&b.iops));
        v
    }

    /// Median over the rounds of one block cell of one disk.
    fn blk_median(&self, disk: Disk, rw: &str, qd: u32) -> Option<BlkCell> {
        let v = self.blk_rounds(disk, rw, qd);
        v.get(v.len() / 2).map(|c| (*c).clone())
    }

    /// `min–max` IOPS over the rounds (empty with fewer than two rounds).
    fn blk_range(&self, disk: Disk, rw: &str, qd: u32) -> String {
        match self.blk_rounds(disk, rw, qd).as_slice() {
            [lo, .., hi] => format!(" ({:.0}–{:.0})", lo.iops, hi.iops),
            _ => String::new(),
        }
    }

    /// The results file: conditions, tables, raw lines.
    pub fn markdown(&self, cfg: &Config, conditions: &str) -> String {
        let mut o = String::new();
        o.push_str(
            "# In-guest benchmark: block (Cordon vs qemu-storage-daemon), net, vsock, boot\n\n",
        );
        o.push_str(conditions);
        o.push_str(BLOCK_HEADING);
        o.push_str(&format!(
            "Each cell {} s; QD = threads each keeping one request in flight; same image, \
             same `cordon run`, same guest kernel; median of {} round(s), IOPS range over the \
             rounds in brackets (the latencies are those of the median round).\n\n",
            cfg.ms as f64 / 1000.0,
            cfg.rounds
        ));
        o.push_str("| workload | QD | Cordon IOPS | p50 µs | p99 µs | qsd IOPS | p50 µs | p99 µs | Cordon / qsd |\n");
        o.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for rw in ["randread", "randwrite"] {
            for &qd in &cfg.qds {
                let c = self.blk_median(Disk::Cordon, rw, qd);
                let q = self.blk_median(Disk::Qsd, rw, qd);
                let cell = |x: &Option<BlkCell>, d: Disk| match x {
                    Some(x) => format!(
                        "{:.0}{} | {:.0} | {:.0}",
                        x.iops,
                        self.blk_range(d, rw, qd),
                        x.p50_us,
                        x.p99_us
                    ),
                    None => "— | — | —".into(),
                };
                let ratio = match (&c, &q) {
                    (Some(c), Some(q)) if q.iops > 0.0 => format!("{:.2}×", c.iops / q.iops),
                    _ => "—".into(),
                };
                o.push_str(&format!(
                    "| {rw} | {qd} | {} | {} | {ratio} |\n",
                    cell(&c, Disk::Cordon),
                    cell(&q, Disk::Qsd)
                ));
            }
        }
        o.push_str("\n## Streams through Cordon's net and vsock backends\n\n");
        o.push_str(&format!(
            "{} MiB per stream, one stream at a time, measured by the guest from its connect \
             (or accept) until the receiver's byte count came back.\n\n",
            cfg.bytes >> 20
        ));
        o.push_str("| boot | stream | direction | MiB/s |\n|---|---|---|---|\n");
        for (vm, ss) in &self.streams {
            for s in ss {
                o.push_str(&format!(
                    "| {vm} | {} | {} | {:.2} |\n",
                    s.proto, s.dir, s.mib_s
                ));
            }
        }
        o.push_str("\n## Boot to init, full device set\n\n");
        o.push_str(
            "`cordon run` with block, net, rng, vsock and console (vhost-user), 512 MiB, one \
             vCPU. *VMM start → init*: L1 uptime from just before `cordon run` starts to the \
             guest init's first line on the VMM's stdout; *guest uptime*: the guest's own \
             clock at that line.\n\n",
        );
        o.push_str("| boot | disk served by | VMM start → init (s) | guest uptime at init (s) |\n|---|---|---|---|\n");
        for b in &self.boots {
            let disk = if b.vm.starts_with("qsd") {
                "qemu-storage-daemon"
            } else {
                "Cordon block"
            };
            o.push_str(&format!(
                "| {} | {disk} | {:.2} | {:.2} |\n",
                b.vm, b.vmm_to_init, b.guest_uptime
            ));
        }
        if !self.problems.is_empty() {
            o.push_str("\n## Problems in this run\n\n");
            for p in &self.problems {
                o.push_str(&format!("- {p}\n"));
            }
        }
        o.push_str("\n## Raw lines\n\n```\n");
        for r in &self.raw {
            o.push_str(r);
            o.push('\n');
        }
        o.push_str("```\n");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Config {
        Config {
            ms: 100,
            qds: vec![1, 32],
            bytes: 1 << 20,
            disk_mb: 16,
            rounds: 1,
        }
    }

    /// The generated L1 script is valid shell and wires every port and plan.
    #[test]
    fn script_is_valid_shell_with_every_piece() {
        let s = script(&small());
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&s)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for needle in [
            "$L2_CMDLINE_CORDON1",
            "$L2_CMDLINE_QSD1",
            "qemu-storage-daemon \"--blockdev\" \"driver=file,node-name=f,filename=$CORDON_DIR/disk.img",
            "--peer sink tcp 0.0.0.0:7100 >> $R/peers.log",
            "--peer sink unix $R/vsock_7101",
            "--peer send tcp 10.0.2.15:7103",
            "--peer send vsock $R/vsock 7102",
            "BYTES=1048576 unshare -n",
            "count=16",
        ] {
            assert!(s.contains(needle), "{needle} missing in:\n{s}");
        }
        let plan_tokens: Vec<String> = plan(&small(), Disk::Qsd)
            .iter()
            .map(|c| c.token().unwrap())
            .collect();
        assert_eq!(plan_tokens.len(), 4);
        assert_eq!(
            plan_tokens[1],
            "bench-blk:dev=vda:rw=randread:bs=4096:qd=32:ms=100:span=16:timeout=120"
        );
        assert_eq!(plan(&small(), Disk::Cordon).len(), 9);
    }

    /// The console of a run (as the agent prints it) gives the figures back.
    #[test]
    fn parses_a_run() {
        let line = |vm: &str, id: usize, check: &str, data: &str| {
            format!(
                "CORDON-RESULT {{\"vm\":\"{vm}\",\"id\":{id},\"check\":\"{check}\",\"ok\":true,\"detail\":\"\",\"data\":{{{data}}}}}\r\n"
            )
        };
        let blk = |rw: &str, qd: u32, iops: u32| {
            format!("\"rw\":\"{rw}\",\"qd\":\"{qd}\",\"iops\":\"{iops}.0\",\"p50_us\":\"100.5\",\"p99_us\":\"900.000\"")
        };
        let mut console =
            String::from("BENCH-BOOT vm=cordon-1 vmm_start=70.10 init=85.60 guest_uptime=3.21\r\n");
        console.push_str("BENCH-BOOT vm=qsd-1 vmm_start=170.00 init=181.00 guest_uptime=2.00\n");
        for (id, (rw, qd, iops)) in [
            ("randread", 1, 1000),
            ("randread", 32, 3000),
            ("randwrite", 1, 900),
            ("randwrite", 32, 2000),
        ]
        .into_iter()
        .enumerate()
        {
            console.push_str(&line("cordon-1", id, "bench-blk", &blk(rw, qd, iops)));
            console.push_str(&line("qsd-1", id, "bench-blk", &blk(rw, qd, iops / 2)));
        }
        console.push_str(&line(
            "cordon-1",
            4,
            "bench-send",
            "\"proto\":\"tcp\",\"mib_s\":\"12.500\",\"bytes\":\"1048576\"",
        ));
        console.push_str(
            "CORDON-RESULT {\"vm\":\"cordon-1\",\"id\":5,\"check\":\"bench-recv\",\"ok\":false,\"detail\":\"timed out after 600 s\",\"data\":{}}\n",
        );
        let cfg = small();
        let r = Report::parse(&console, &cfg).unwrap();
        assert_eq!(r.boots.len(), 2);
        assert!((r.boots[0].vmm_to_init - 15.5).abs() < 1e-9);
        assert_eq!(r.boots[1].guest_uptime, 2.0);
        let c = r.blk_median(Disk::Cordon, "randread", 32).unwrap();
        assert_eq!((c.iops, c.p50_us, c.p99_us), (3000.0, 100.5, 900.0));
        assert_eq!(r.blk_median(Disk::Qsd, "randwrite", 1).unwrap().iops, 450.0);
        assert_eq!(r.streams[0].1.len(), 1);
        assert_eq!(r.streams[0].1[0].mib_s, 12.5);
        assert!(r.problems.iter().any(|p| p.contains("timed out")));
        assert!(r.problems.iter().any(|p| p.contains("6 of 9")));
        let md = r.markdown(&cfg, "conditions\n");
        assert!(md.contains("| randread | 32 | 3000 | 100 | 900 | 1500 | 100 | 900 | 2.00× |"));
        assert_eq!(conditions_of(&md), Some("conditions\n"));
        assert_eq!(conditions_of("# other\n"), None);
        assert!(md.contains("| cordon-1 | tcp | guest→host | 12.50 |"));
        assert!(md.contains("| cordon-1 | Cordon block | 15.50 | 3.21 |"));

        // Hostile values are errors, not panics or figures.
        let bad = line(
            "cordon-1",
            0,
            "bench-blk",
            "\"rw\":\"randread\",\"qd\":\"1\",\"iops\":\"lots\",\"p50_us\":\"1\",\"p99_us\":\"1\"",
        );
        assert!(Report::parse(&bad, &cfg).is_err());
        assert!(Report::parse("BENCH-BOOT vm=x init=oops\n", &cfg).is_err());
    }
}
