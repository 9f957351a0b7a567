//! The end-to-end device set served on the host, for frontends other than `cordon run`
//! (QEMU under runner A): one `cordon devices` tree (block, net, rng, vsock, optionally
//! console) and the host-side peers of the e2e checks, all inside a network namespace the
//! stack creates (`unshare -n`) so that the net backend's TAP and the TCP echo server live
//! there, not on the host's network. The vhost-user sockets are files, so a frontend outside
//! the namespace reaches them.
//!
//! The peers are the same as in the nested e2e script ([`crate::e2e`]): a TCP echo server
//! on 10.0.2.1:7000 (busybox `nc`), a Unix echo server on `<uds-path>_7001` (guest-initiated
//! vsock) and a host-initiated vsock stream (`CONNECT 7002`, [`VSOCK_HOST_LEN`] bytes
//! checked). Everything runs in one process group, which is killed when the stack is dropped.

use crate::e2e::{VSOCK_HOST_LEN, VSOCK_PAYLOAD};
use crate::guest::backend::leaf_descendant;
use crate::guest::console::{read_log, tail};
use crate::guest::{cordon_bin, JailFacts};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The script run in the new network namespace: peers, then `cordon devices "$@"`.
const SCRIPT: &str = r#"
R="$1"; CORDON="$2"; AGENT="$3"; LEN="$4"; BB="$5"; shift 5
ip link set lo up
"$BB" nc -ll -p 7000 -e cat &
"$AGENT" --peer unix-echo "$R/vsock_7001" &
"$AGENT" --peer vsock-connect "$R/vsock" 7002 "$LEN" &
"$CORDON" devices -s "$R/devices.ctl" "$@" &
devices=$!
echo "CORDON-STACK devices-pid=$devices"
wait $devices
echo "CORDON-STACK cordon devices exited $?"
"#;

/// Options of a [`HostStack`].
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Also serve a console (`--serial`, type=file into `console.out`, input from the fifo
    /// `console.in`). QEMU cannot attach it (see docs/TESTING.md), `cordon run` can.
    pub serial: bool,
    /// Extra arguments for `cordon devices` (e.g. a restart policy).
    pub extra_args: Vec<String>,
}

/// A running `cordon devices` tree with its peers in their own network namespace.
pub struct HostStack {
    child: Option<Child>,
    dir: PathBuf,
    /// The combined output of `cordon devices` and the peers.
    pub log: PathBuf,
}

impl HostStack {
    /// Starts the stack serving `disk` (read-write) with sockets in `dir`; returns once every
    /// socket listens.
    pub fn start(dir: &Path, disk: &Path, opts: &StackOptions) -> Result<Self> {
        let cordon = cordon_bin("cordon", "cordon")?;
        let agent = cordon_bin("cordon-guest-agent", "cordon-guest-agent")?;
        let busybox = crate::guest::tools::tool("busybox")?;
        let r = dir.display().to_string();
        let mut args = vec![
            "--block".to_string(),
            format!("vhost={r}/blk.sock,path={},id=cordon-disk", disk.display()),
            "--rng".into(),
            format!("vhost={r}/rng.sock"),
            "--vsock".into(),
            format!("vhost={r}/vsock.sock,cid=3,uds-path={r}/vsock"),
            "--net".into(),
            format!("vhost={r}/net.sock,tap-name=cordon0,host-ip=10.0.2.1,netmask=255.255.255.0"),
        ];
        if opts.serial {
            let fifo = dir.join("console.in");
            crate::guest::tools::run(Command::new("mkfifo").arg(&fifo))?;
            args.push("--serial".into());
            args.push(format!(
                "vhost={r}/con.sock,type=file,path={r}/console.out,input={},hardware=virtio-console",
                fifo.display()
            ));
        }
        args.extend(opts.extra_args.iter().cloned());
        let logs = crate::guest::console::logs_dir();
        std::fs::create_dir_all(&logs)?;
        let test = std::thread::current().name().unwrap_or("stack").to_string();
        let log = logs.join(format!(
            "{}.log",
            crate::guest::console::log_name(Some(&format!("{test}.stack")))
        ));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new("unshare");
        cmd.args(["-n", "sh", "-c", SCRIPT, "stack"])
            .arg(&r)
            .arg(&cordon)
            .arg(&agent)
            .arg(VSOCK_HOST_LEN.to_string())
            .arg(&busybox)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let child = cmd
            .spawn()
            .context("starting `unshare -n` (util-linux) for the device stack")?;
        let mut s = HostStack {
            child: Some(child),
            dir: dir.to_path_buf(),
            log,
        };
        let mut socks = vec![
            "blk.sock",
            "rng.sock",
            "vsock.sock",
            "net.sock",
            "devices.ctl",
        ];
        if opts.serial {
            socks.push("con.sock");
        }
        let start = Instant::now();
        for sock in socks {
            while !dir.join(sock).exists() {
                if let Some(st) = s.try_wait()? {
                    bail!(
                        "the device stack exited ({st}) before {sock} listened:\n{}",
                        tail(&s.output())
                    );
                }
                if start.elapsed() > Duration::from_secs(60) {
                    bail!("{sock} did not appear within 60 s:\n{}", tail(&s.output()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(s)
    }

    /// The vhost-user socket of `kind` (`blk`, `rng`, `vsock`, `net`, `con`).
    pub fn socket(&self, kind: &str) -> PathBuf {
        self.dir.join(format!("{kind}.sock"))
    }

    /// The control socket of `cordon devices`.
    pub fn control(&self) -> PathBuf {
        self.dir.join("devices.ctl")
    }

    /// The output so far.
    pub fn output(&self) -> String {
        read_log(&self.log)
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("the stack was already stopped"),
        }
    }

    /// Asks `cordon devices` for its device list: `(name, pid, rest of the line)`.
    pub fn devices(&self) -> Result<Vec<(String, u32, String)>> {
        let mut s = UnixStream::connect(self.control())
            .with_context(|| format!("connecting {}", self.control().display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"list\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let mut out = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(name) = words.next() else { continue };
            let rest: Vec<&str> = words.collect();
            let pid = rest
                .iter()
                .find_map(|w| w.strip_prefix("pid="))
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("no pid in control line {line:?}"))?;
            out.push((name.to_string(), pid, rest.join(" ")));
        }
        Ok(out)
    }

    /// The pid of device `name` (`block-0`, `net-0`, ...) as `cordon devices` reports it.
    pub fn device_pid(&self, name: &str) -> Result<u32> {
        self.devices()?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, pid, _)| pid)
            .with_context(|| format!("cordon devices lists no {name}"))
    }

    /// `kill -9` of device `name`'s process (the child `cordon devices` forked for it, whose
    /// jailed device process dies with it); returns the pid killed.
    pub fn kill_device(&self, name: &str) -> Result<u32> {
        let pid = self.device_pid(name)?;
        // SAFETY: sending SIGKILL to a process of the tree this stack started.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } != 0 {
            bail!(
                "kill -9 {pid} ({name}): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(pid)
    }

    /// Waits until `cordon devices` runs device `name` in a process other than `old`
    /// (restarted), and its log shows `connected` frontend connections in total; returns
    /// the new pid.
    pub fn wait_restarted(
        &self,
        name: &str,
        old: u32,
        connected: usize,
        within: Duration,
    ) -> Result<u32> {
        let until = Instant::now() + within;
        let needle = format!("{name}: frontend connected");
        loop {
            let now = self
                .devices()?
                .into_iter()
                .find(|(n, pid, state)| n == name && *pid != old && state.contains("running"));
            let conns = self.output().matches(&needle).count();
            if let Some((_, pid, _)) = now {
                if conns >= connected {
                    return Ok(pid);
                }
            }
            if Instant::now() > until {
                bail!(
                    "{name} was not restarted and reconnected ({conns} of {connected} frontend \
                     connections) within {} s:\n{}",
                    within.as_secs(),
                    tail(&self.output())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Confinement of every device process (the jailed leaf under each child).
    pub fn jail_facts(&self) -> Result<Vec<(String, JailFacts)>> {
        self.devices()?
            .into_iter()
            .map(|(n, pid, _)| Ok((n, JailFacts::of(leaf_descendant(pid))?)))
            .collect()
    }

    /// Problems seen by the host-side vsock peers; empty when both directions worked.
    pub fn peer_failures(&self) -> Vec<String> {
        vsock_peer_failures(&self.output())
    }
}

impl Drop for HostStack {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = c.id() as libc::pid_t;
            // SAFETY: signalling the process group this stack created (process_group(0)).
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: as above; whatever ignored SIGTERM goes now.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// Checks the `CORDON-PEER` lines of the vsock peers in `text`: the guest's stream reached
/// the host's Unix echo server with [`VSOCK_PAYLOAD`], and the host-initiated stream came
/// back verified.
pub fn vsock_peer_failures(text: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let lines = || {
        text.lines()
            .filter_map(|l| l.split_once("CORDON-PEER ").map(|(_, r)| r))
    };
    if !lines().any(|l| l.starts_with("vsock-connect ") && l.contains("ok=true")) {
        bad.push("host-initiated vsock stream: no verified echo from the guest".into());
    }
    let want = format!("bytes={}", VSOCK_PAYLOAD.len());
    if !lines().any(|l| l.starts_with("unix-echo ") && l.contains(&want)) {
        bad.push("guest-initiated vsock stream never reached the host's Unix socket".into());
    }
    bad
}

/// A console peer for QEMU's own virtconsole (`GuestRunner::qemu_console`): listens on
/// `sock`, waits for the guest's `out` bytes and answers `answer`. The thread returns what
/// it saw.
pub fn console_peer(
    sock: &Path,
    out: &'static [u8],
    answer: &'static [u8],
) -> Result<std::thread::JoinHandle<Result<Vec<u8>>>> {
    let listener = UnixListener::bind(sock)?;
    Ok(std::thread::spawn(move || -> Result<Vec<u8>> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !seen.windows(out.len()).any(|w| w == out) {
            let n = s.read(&mut buf)?;
            anyhow::ensure!(n > 0, "console closed before the guest wrote");
            seen.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer)?;
        Ok(seen)
    }))
}
