//! The main job, end to end: `cordon run` boots the Debian cloud kernel whose block, net,
//! rng, vsock and console devices are all served by one `cordon devices` process tree of
//! jailed backends; the guest agent uses every device and the host side checks the bytes.
//!
//! Runs through runner B ([`NestedRunner`]): inside a nested L1 on PVM hosts, directly on
//! ordinary KVM hosts. The L1 (or host) script creates a network namespace for the TAP,
//! starts `cordon devices`, the host-side peers (a TCP echo server on the TAP's host
//! address, a Unix echo server for guest-initiated vsock, a host-initiated vsock stream),
//! then `cordon run`. Used by `scripts/demo` (binary `cordon-demo`) and by the test
//! `tests/tests/e2e_full_stack.rs`.

use crate::guest::peers::ext4_image;
use crate::guest::{Check, CheckResult, GuestMode, NestedRunner, Results};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The file the guest finds on the ext4 filesystem of its disk.
pub const EXT4_FILE: (&str, &[u8]) = ("hello.txt", b"hello from the host's disk image\n");
/// Bytes the guest sends over TCP to the host's echo server.
pub const TCP_PAYLOAD: &[u8] = b"file-over-tcp: the quick brown fox jumps over the lazy dog";
/// Bytes the guest sends over vsock to the host's Unix echo server.
pub const VSOCK_PAYLOAD: &[u8] = b"guest-to-host over hybrid vsock";
/// Bytes the host sends to the guest over a host-initiated vsock stream.
pub const VSOCK_HOST_LEN: usize = 256 * 1024;
/// Console output the guest writes, and the input the host answers with.
pub const CONSOLE_OUT: &[u8] = b"GUEST-OUT";
/// See [`CONSOLE_OUT`].
pub const CONSOLE_IN: &[u8] = b"HOST-IN!";

/// Size of the disk image; the ext4 filesystem takes the first [`FS_MB`] MiB, the raw
/// read/write check works beyond it.
const DISK_MB: u64 = 64;
const FS_MB: u64 = 32;

/// The guest's address on the TAP network (CIDR).
pub const GUEST_IP: &str = "10.0.2.15/24";
/// The host end of the TAP (`cordon devices --net ...,host-ip=`).
pub const HOST_IP: &str = "10.0.2.1";

/// Shell helpers of the full-stack scripts (`$R` is the run directory):
/// `wait_sockets NAME...` waits up to 60 s for each `$R/NAME.sock`, or prints
/// `$R/devices.log` and exits 1.
pub const SH_HELPERS: &str = r#"
wait_sockets() {
  for s in "$@"; do
    i=0; while [ ! -S $R/$s.sock ]; do
      sleep 0.1; i=$((i+1))
      if [ $i -gt 600 ]; then echo "CORDON-E2E $s backend did not listen"; sed 's/^/L1-DEVICES /' $R/devices.log; exit 1; fi
    done
  done
}
"#;

/// Shell: starts one `cordon devices` tree in the background (its pid in `$devices`, its
/// log in `$R/devices.log`) serving net (TAP `cordon0`, host address [`HOST_IP`]), rng,
/// vsock (CID 3, host sockets `$R/vsock_<port>`), a virtio-console (output to
/// `$R/con.out`, input from the fifo `$R/con.in`) and, with `block`, the disk
/// `$CORDON_DIR/disk.img`; sockets `$R/{blk,net,rng,vsock,con}.sock`. Waits until they
/// listen.
pub fn start_devices(block: bool) -> String {
    start_devices_with(block, false)
}

/// [`start_devices`]; with `terminal`, a second console (`$R/tty.sock`) is served from the
/// script's own terminal (`type=stdout,stdin`: the serial backend puts it in raw mode), for
/// the guest's interactive shell, and the tree's stdin/stdout stay on that terminal.
pub fn start_devices_with(block: bool, terminal: bool) -> String {
    let blk = if block {
        "--block vhost=$R/blk.sock,path=$CORDON_DIR/disk.img,id=cordon-disk "
    } else {
        ""
    };
    let mut wait = if block {
        "blk rng vsock net con".to_string()
    } else {
        "rng vsock net con".to_string()
    };
    let (tty, redirect) = if terminal {
        wait.push_str(" tty");
        (
            " \\\n  --serial vhost=$R/tty.sock,type=stdout,stdin,hardware=virtio-console,console",
            // An asynchronous command's stdin is /dev/null unless redirected from a saved fd.
            "2> $R/devices.log <&4",
        )
    } else {
        ("", "> $R/devices.log 2>&1")
    };
    let save_stdin = if terminal { "exec 4<&0\n" } else { "" };
    format!(
        r#"for s in {wait}; do rm -f $R/$s.sock; done
[ -p $R/con.in ] || mkfifo $R/con.in; exec 3<>$R/con.in; : > $R/con.out
{save_stdin}cordon devices {blk}\
  --rng vhost=$R/rng.sock \
  --vsock vhost=$R/vsock.sock,cid=3,uds-path=$R/vsock \
  --net vhost=$R/net.sock,tap-name=cordon0,host-ip={HOST_IP},netmask=255.255.255.0 \
  --serial vhost=$R/con.sock,type=file,path=$R/con.out,input=$R/con.in,hardware=virtio-console{tty} \
  {redirect} &
devices=$!
wait_sockets {wait}
"#
    )
}

/// Shell: the `cordon run` command (no redirections) booting `$L2_KERNEL`/`$L2_INITRD`
/// with command line `cmdline` (e.g. `"$L2_CMDLINE"`) on the five sockets of
/// [`start_devices`] (`$R/blk.sock` may be served by a peer), control socket `$R/vmm.sock`.
pub fn cordon_run(cmdline: &str) -> String {
    format!(
        r#"cordon run --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --params {cmdline} --mem 512 \
  --no-console-input -s $R/vmm.sock \
  --vhost-user type=block,socket=$R/blk.sock --vhost-user type=net,socket=$R/net.sock \
  --vhost-user type=rng,socket=$R/rng.sock --vhost-user type=vsock,socket=$R/vsock.sock \
  --vhost-user type=console,socket=$R/con.sock"#
    )
}

/// The L1 (or host) script running `inner` in a new network namespace (for the TAP), with
/// `R=/run/cordon`, [`SH_HELPERS`] defined and `lo` up; `env` (`VAR=value ...`) is set
/// for it.
pub fn in_netns(inner: &str, env: &str) -> String {
    format!(
        "R=/run/cordon; mkdir -p $R\ncat > $R/inner.sh <<'INNER'\nR=/run/cordon\n{SH_HELPERS}\
         ip link set lo up\n{inner}\nINNER\n{env} unshare -n sh $R/inner.sh\n"
    )
}

/// The body of the end-to-end script (inside [`in_netns`]): the devices, the host-side
/// peers, `cordon run`, then the jail facts of every device process.
const INNER: &str = r#"echo "CORDON-E2E starting cordon devices"
__START_DEVICES__
echo "CORDON-E2E backends listening: $(ls $R | tr '\n' ' ')"
# Host-side peers. Their lines go to a file printed at the end: written to the console
# while the guest prints a result, a peer's line split that result line in two (CI).
nc -ll -p 7000 -e cat &
cordon-guest-agent --peer unix-echo $R/vsock_7001 >> $R/peers.log 2>&1 &
cordon-guest-agent --peer vsock-connect $R/vsock 7002 $VSOCK_HOST_LEN >> $R/peers.log 2>&1 &
( while ! grep -q GUEST-OUT $R/con.out; do sleep 0.2; done; printf 'HOST-IN!' >&3 ) &
__CORDON_RUN__
rc=$?
echo "CORDON-E2E cordon run exited $rc"
for kid in $(cat /proc/$devices/task/$devices/children 2>/dev/null); do
  p=$kid; while set -- $(cat /proc/$p/task/$p/children 2>/dev/null) && [ $# = 1 ]; do p=$1; done
  echo "CORDON-E2E-JAIL $(cat /proc/$kid/comm)/$(cat /proc/$p/comm) $(grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/$p/status | tr '\t\n' '  ')"
done
kill $devices; wait $devices; echo "CORDON-E2E cordon devices exited $?"
echo "CORDON-E2E-CONSOLE-OUT $(od -An -tx1 $R/con.out | tr -d ' \n')"
cat $R/peers.log
sed 's/^/L1-DEVICES /' $R/devices.log
exit $rc"#;

/// The L1 (or host) script of the end-to-end run; `interactive`: a second virtio-console,
/// served by a jailed serial backend from the script's terminal, carries the guest's shell.
fn script(interactive: bool) -> String {
    let mut run = cordon_run("\"$L2_CMDLINE\"");
    if interactive {
        // The shell's console: a second virtio-console, after the checks' (hvc0), so hvc1.
        run.push_str(" \\\n  --vhost-user type=console,socket=$R/tty.sock");
    }
    let inner = INNER
        .replace("__START_DEVICES__", &start_devices_with(true, interactive))
        .replace("__CORDON_RUN__", &run);
    in_netns(&inner, &format!("VSOCK_HOST_LEN={VSOCK_HOST_LEN}"))
}

/// The guest's checks: every device.
pub fn guest_checks() -> Vec<Check> {
    vec![
        Check::kernel(),
        Check::blk_size("vda"),
        Check::ext4_read("vda", EXT4_FILE.0),
        Check::blk_rw("vda", (FS_MB + 8) << 20, 64 * 1024),
        Check::blk_flush("vda"),
        Check::hwrng(32),
        Check::new("net-ping")
            .arg("ip", GUEST_IP)
            .arg("peer", HOST_IP),
        Check::new("net-tcp")
            .arg("ip", GUEST_IP)
            .arg("peer", HOST_IP)
            .arg("port", 7000)
            .bytes("send", TCP_PAYLOAD)
            .bytes("expect", TCP_PAYLOAD),
        Check::new("vsock-connect")
            .arg("cid", 2)
            .arg("port", 7001)
            .bytes("send", VSOCK_PAYLOAD)
            .bytes("expect", VSOCK_PAYLOAD),
        Check::new("vsock-listen").arg("port", 7002),
        Check::new("console")
            .bytes("out", CONSOLE_OUT)
            .bytes("in", CONSOLE_IN),
    ]
}

/// Creates the guest's disk: an ext4 filesystem with [`EXT4_FILE`] in the first part.
pub fn make_disk(path: &Path) -> Result<()> {
    ext4_image(path, FS_MB, &[EXT4_FILE])?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(DISK_MB << 20)?;
    Ok(())
}

/// What the full-stack run found: the guest's results plus the host-side observations.
pub struct Outcome {
    /// The agents' results and the whole console.
    pub results: Results,
    /// Where the run happened.
    pub mode: GuestMode,
}

impl Outcome {
    /// The L2 results (the guest using the devices).
    pub fn guest(&self) -> impl Iterator<Item = &CheckResult> {
        self.results.results.iter().filter(|c| c.vm == "l2")
    }

    /// Lines the script printed with `prefix`.
    pub fn lines<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.results
            .console
            .lines()
            .filter_map(move |l| l.trim_end_matches('\r').split_once(prefix).map(|(_, r)| r))
    }

    /// Host-side problems: a peer that failed, a backend that was not jailed, console
    /// output that did not arrive. Empty when everything worked.
    pub fn host_side_failures(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let peer_ok = self
            .lines("CORDON-PEER vsock-connect ")
            .any(|l| l.contains("ok=true"));
        if !peer_ok {
            bad.push("host-initiated vsock stream: no verified echo from the guest".into());
        }
        let echoed = self
            .lines("CORDON-PEER unix-echo ")
            .any(|l| l.contains(&format!("bytes={}", VSOCK_PAYLOAD.len())));
        if !echoed {
            bad.push("guest-initiated vsock stream never reached the host's Unix socket".into());
        }
        let out_hex = crate::guest::hex(CONSOLE_OUT);
        if !self
            .lines("CORDON-E2E-CONSOLE-OUT ")
            .any(|l| l.contains(&out_hex))
        {
            bad.push("console output did not reach the serial backend's file".into());
        }
        let jails: Vec<&str> = self.lines("CORDON-E2E-JAIL ").collect();
        if jails.len() < 5 {
            bad.push(format!("expected 5 jailed device processes, saw {jails:?}"));
        }
        for j in jails {
            if !(j.contains("Seccomp: 2") && j.contains("NoNewPrivs: 1")) {
                bad.push(format!("device not jailed: {j}"));
            }
        }
        if !self
            .lines("CORDON-E2E cordon run exited ")
            .any(|l| l.trim() == "0")
        {
            bad.push("cordon run did not exit 0 after the guest powered off".into());
        }
        bad
    }
}

/// Boots the full stack once and returns what happened (failed checks included).
pub fn run_full_stack(name: &str) -> Result<Outcome> {
    run_full_stack_with(name, false)
}

/// Like [`run_full_stack`]; `interactive` puts the console on this process's terminal and,
/// after its checks and a readable summary, the guest gives the user a shell on a
/// virtio-console (`/dev/hvc1`) whose backend, a jailed `cordon devices` child, reads the
/// terminal; leaving the shell ends the run.
pub fn run_full_stack_with(name: &str, interactive: bool) -> Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.img");
    make_disk(&disk).context("creating the guest's disk image")?;
    let mut runner = NestedRunner::new()?
        .name(name)
        .static_bin("cordon", "cordon")?
        .static_bin("cordon-guest-agent", "cordon-guest-agent")?
        .file("disk.img", &disk)
        .script(&script(interactive))
        .l2_checks(&guest_checks())
        .allow_failures();
    if interactive {
        runner = runner.interactive("hvc1");
    }
    let mode = runner.current_mode();
    let results = runner.run()?;
    if results.results.iter().all(|c| c.vm != "l2") {
        bail!(
            "the guest reported no results; console log: {}",
            results.log.display()
        );
    }
    Ok(Outcome { results, mode })
}
