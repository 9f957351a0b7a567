//! Issue 7 §5, faults with Cordon's own VMM (runner B: nested L1 on PVM hosts, directly on
//! KVM hosts). One `cordon devices --restart on-failure` tree (block, net on a TAP in a
//! network namespace the script creates, rng, vsock, console) serves three `cordon run` VMMs
//! in turn:
//!
//! 1. a VMM killed with `kill -9` while its guest runs: every backend notices the frontend
//!    going away and waits for the next one;
//! 2. the next VMM boots a second guest on the same tree. Halfway through its checks (a
//!    barrier on the console) the script kills the rng, net and vsock device processes with
//!    `kill -9`; `cordon devices` restarts them, the VMM reconnects, and the guest keeps
//!    reading /dev/hwrng, pings, moves a file over TCP and opens new vsock streams both ways,
//!    while the vsock stream that was open during the kill ends on the host side and, by
//!    the restarted device's transport reset, in the guest;
//!    Then the block device is killed while the guest streams fsynced writes: restarted,
//!    reconnected by the same VMM with its in-flight region, the guest sees no I/O error and
//!    loses no write;
//! 3. a VMM stopped with `cordon stop <vmm socket>`: it exits 0; then `cordon stop <devices
//!    socket>` ends every device process, `cordon devices` exits 0 and removes its sockets.

use cordon_tests::e2e::{make_disk, TCP_PAYLOAD, VSOCK_HOST_LEN, VSOCK_PAYLOAD};
use cordon_tests::guest::check::parse_results;
use cordon_tests::guest::console::tail;
use cordon_tests::guest::{Check, NestedRunner};
use cordon_tests::stack::vsock_peer_failures;

/// Devices killed at the barrier.
const KILLED: &str = "rng-0 net-0 vsock-0";

const SCRIPT: &str = r#"
R=/run/cordon; mkdir -p $R
cat > $R/inner.sh <<'INNER'
R=/run/cordon
ip link set lo up
say() { echo "CORDON-FAULT $*"; }
waitfor() { # FILE TEXT SECONDS
  i=0; while ! grep -q "$2" "$1" 2>/dev/null; do
    sleep 0.2; i=$((i+1)); if [ $i -gt $(($3*5)) ]; then say "timeout waiting for $2 in $1"; return 1; fi
  done
}
mkfifo $R/con.in; exec 3<>$R/con.in; : > $R/con.out
cordon devices -s $R/devices.ctl --restart on-failure \
  --block vhost=$R/blk.sock,path=$CORDON_DIR/disk.img \
  --serial vhost=$R/con.sock,type=file,path=$R/con.out,input=$R/con.in,hardware=virtio-console \
  --rng vhost=$R/rng.sock \
  --vsock vhost=$R/vsock.sock,cid=3,uds-path=$R/vsock \
  --net vhost=$R/net.sock,tap-name=cordon0,host-ip=10.0.2.1,netmask=255.255.255.0 \
  > $R/devices.log 2>&1 &
devices=$!
for s in blk.sock rng.sock vsock.sock net.sock con.sock devices.ctl; do
  i=0; while [ ! -S $R/$s ]; do sleep 0.1; i=$((i+1)); [ $i -gt 600 ] && { say "$s missing"; cat $R/devices.log; exit 1; }; done
done
say "devices up: $(cat /proc/$devices/task/$devices/children)"
VU="--vhost-user type=block,socket=$R/blk.sock --vhost-user type=net,socket=$R/net.sock --vhost-user type=rng,socket=$R/rng.sock --vhost-user type=vsock,socket=$R/vsock.sock --vhost-user type=console,socket=$R/con.sock"
# The jailed device process named NAME (a grandchild of cordon devices: the child waits
# outside the jail, the device runs inside as the leaf).
pid_of() {
  name=$1
  for k in $(cat /proc/$devices/task/$devices/children); do
    p=$k; while set -- $(cat /proc/$p/task/$p/children 2>/dev/null) && [ $# = 1 ]; do p=$1; done
    [ "$(cat /proc/$p/comm 2>/dev/null)" = "$name" ] && echo $p
  done
}
hold() { # VM-LABEL PORT: a plan that uses rng, then waits on a vsock listener
  echo "$L2_CMDLINE" | sed "s/cordon.vm=l2/cordon.vm=$1/; s/cordon.checks=[^ ]*/cordon.checks=hwrng,vsock-listen:port=$2:timeout=600/"
}

# 1. kill -9 of the VMM while its guest runs.
cordon run --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --params "$(hold l2-killed 9999)" --mem 512 \
  --no-console-input $VU < /dev/null > $R/vmm1.out 2>&1 &
vmm=$!
if waitfor $R/vmm1.out "CORDON-LISTENING vsock port=9999" 240; then
  grep CORDON-RESULT $R/vmm1.out | sed 's/^/L2-KILLED /'
  kill -9 $vmm; wait $vmm; say "vmm1 killed status=$?"
else
  sed 's/^/L2-KILLED /' $R/vmm1.out; kill -9 $vmm
fi
for d in block-0 net-0 rng-0 vsock-0 serial-0; do
  if waitfor $R/devices.log "$d: frontend disconnected\|$d: frontend dropped" 30; then
    # "waiting for a frontend" is logged just after "disconnected": give it a moment.
    i=0; while :; do
      n=$(grep -c "$d: waiting for a frontend" $R/devices.log)
      [ $n -ge 2 ] || [ $i -ge 50 ] && break
      i=$((i+1)); sleep 0.2
    done
    say "noticed $d waiting=$n"
  fi
done
say "devices alive after vmm kill: $(kill -0 $devices && echo yes || echo no) children=$(cat /proc/$devices/task/$devices/children | wc -w)"

# 2. The next VMM on the same tree; at the console barrier, kill -9 of rng, net and vsock.
nc -ll -p 7000 -e cat &
# Peer lines go to a file printed at the end: on the console, one split a guest result
# line in two (CI run of 2026-12-02).
cordon-guest-agent --peer unix-echo $R/vsock_7001 >> $R/peers.log 2>&1 &
cordon-guest-agent --peer unix-hold $R/vsock_7005 >> $R/peers.log 2>&1 &
cordon-guest-agent --peer vsock-connect $R/vsock 7002 __VSOCK_HOST_LEN__ >> $R/peers.log 2>&1 &
# kill -9 of device NAME's process, then wait until it is restarted and reconnected.
kill_and_wait() {
  d=$1; c=$(grep -c "$d: frontend connected" $R/devices.log); p=$(pid_of $d)
  kill -9 $p; say "killed $d pid=$p connected=$c"
  i=0; while :; do
    q=$(pid_of $d); n=$(grep -c "$d: frontend connected" $R/devices.log)
    if [ -n "$q" ] && [ "$q" != "$p" ] && [ $n -gt $c ]; then say "restarted $d pid=$q reconnected"; break; fi
    sleep 0.2; i=$((i+1)); if [ $i -gt 600 ]; then say "restart of $d not seen"; break; fi
  done
}
(
  waitfor $R/con.out KILL-NOW 600 || exit 1
  for d in __KILLED__; do kill_and_wait $d; done
  printf 'GO!!' >&3
) &
# The block device dies while the guest streams fsynced writes: as soon as the first
# chunk (bytes 0x01) reaches the image.
(
  i=0; while [ "$(dd if=$CORDON_DIR/disk.img bs=65536 skip=__STREAM_BLOCK__ count=1 2>/dev/null | od -An -tx1 -N1 | tr -d ' ')" != 01 ]; do
    sleep 0.05; i=$((i+1)); if [ $i -gt 12000 ]; then say "the block stream never reached the image"; exit 1; fi
  done
  kill_and_wait block-0
) &
cordon run --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --params "$L2_CMDLINE" --mem 512 \
  --no-console-input $VU < /dev/null 2>&1 | cat
say "vmm2 exited"

# 3. cordon stop of a running VM, then of the device tree.
cordon run --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --params "$(hold l2-stopped 9998)" --mem 512 \
  --no-console-input -s $R/vmm3.sock $VU < /dev/null > $R/vmm3.out 2>&1 &
vmm=$!
if waitfor $R/vmm3.out "CORDON-LISTENING vsock port=9998" 240; then
  cordon stop $R/vmm3.sock; say "stop vm rc=$?"
  wait $vmm; say "vmm3 exited status=$?"
else
  sed 's/^/L2-STOPPED /' $R/vmm3.out; kill -9 $vmm
fi
kids=$(cat /proc/$devices/task/$devices/children)
cordon stop $R/devices.ctl; say "stop devices rc=$?"
wait $devices; say "devices exited status=$?"
left=0; for k in $kids; do [ -d /proc/$k ] && left=$((left+1)); done
# vsock is the vsock device's host listener (uds-path), removed by the tree too.
n=0; for f in blk.sock rng.sock vsock.sock vsock net.sock con.sock devices.ctl vmm3.sock; do [ -e $R/$f ] && { n=$((n+1)); say "left behind: $f"; }; done
say "device processes left=$left sockets left=$n"
say "fsynced block $(dd if=$CORDON_DIR/disk.img bs=512 skip=__FSYNCED_SECTOR__ count=1 2>/dev/null | head -c __FSYNCED_LEN__)"
cat $R/peers.log
sed 's/^/L1-DEVICES /' $R/devices.log
INNER
unshare -n sh $R/inner.sh
"#;

fn net(name: &str) -> Check {
    Check::new(name)
        .arg("ip", "10.0.2.15/24")
        .arg("peer", "10.0.2.1")
}

/// The second guest's plan: every device, then a barrier on the console while the script
/// kills and restarts rng, net and vsock, then those devices again.
fn checks() -> Vec<Check> {
    vec![
        Check::hwrng(32),
        net("net-ping"),
        Check::new("vsock-connect")
            .arg("port", 7005)
            .bytes("send", b"HOLD")
            .bytes("expect", b"KEPT")
            .arg("len", 4)
            .arg("hold", 1),
        Check::blk_rw("vda", 40 << 20, 64 * 1024),
        Check::new("console")
            .bytes("out", b"KILL-NOW")
            .bytes("in", b"GO!!")
            .arg("timeout", 400),
        Check::hwrng(32),
        net("net-ping").arg("count", 5),
        net("net-tcp")
            .arg("port", 7000)
            .bytes("send", TCP_PAYLOAD)
            .bytes("expect", TCP_PAYLOAD),
        Check::new("vsock-connect")
            .arg("port", 7001)
            .bytes("send", VSOCK_PAYLOAD)
            .bytes("expect", VSOCK_PAYLOAD),
        Check::new("vsock-listen").arg("port", 7002),
        // The stream held open across the vsock crash: the restarted device's transport
        // reset must have ended it in the guest too.
        Check::new("vsock-held").arg("expect", "reset"),
        // A block crash while the guest writes (the script kills block-0 when the stream's
        // first chunk lands): no I/O error, every chunk reads back, the fsynced block stays.
        Check::blk_write("vda", FSYNCED_AT, FSYNCED),
        Check::new("blk-stream")
            .arg("offset", STREAM_AT)
            .arg("chunks", STREAM_CHUNKS)
            .arg("chunk", STREAM_CHUNK)
            .arg("timeout", 300),
    ]
}

/// Where the block fault's fsynced block and stream go (past the ext4 filesystem and the
/// earlier `blk-rw` at 40 MiB).
const FSYNCED_AT: u64 = 46 << 20;
const FSYNCED: &[u8] = b"FSYNCED-BEFORE-THE-BLOCK-KILL";
const STREAM_AT: u64 = 48 << 20;
const STREAM_CHUNKS: u64 = 128;
const STREAM_CHUNK: u64 = 65536;

// Its third boot once looked hung in CI (no new console line for minutes): it was the
// guest agent printing the 256 KiB vsock payload as one 512 KiB hex line on the nested
// serial console. Results now carry long payloads as length + fingerprint; the three
// boots take ~2.5 min here.
#[test]
fn backends_survive_a_killed_vmm_and_cordon_stop_ends_everything() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.img");
    make_disk(&disk)?;
    // Three guest boots in one L1: allow more than the default nested timeout.
    let r = NestedRunner::new()?
        .timeout(std::time::Duration::from_secs(600))
        .static_bin("cordon", "cordon")?
        .static_bin("cordon-guest-agent", "cordon-guest-agent")?
        .file("disk.img", &disk)
        .script(
            &SCRIPT
                .replace("__VSOCK_HOST_LEN__", &VSOCK_HOST_LEN.to_string())
                .replace("__STREAM_BLOCK__", &(STREAM_AT / STREAM_CHUNK).to_string())
                .replace("__FSYNCED_SECTOR__", &(FSYNCED_AT / 512).to_string())
                .replace("__FSYNCED_LEN__", &FSYNCED.len().to_string())
                .replace("__KILLED__", KILLED),
        )
        .l2_checks(&checks())
        .allow_failures()
        .run()?;
    let said: Vec<&str> = r
        .console
        .lines()
        .filter_map(|l| l.split_once("CORDON-FAULT ").map(|(_, x)| x.trim()))
        .collect();
    let saw = |s: &str| said.iter().any(|l| l.starts_with(s));
    let explain = || {
        format!(
            "script said {said:#?}\nconsole tail ({}):\n{}",
            r.log.display(),
            tail(&r.console)
        )
    };

    // 1. The killed VMM's guest was running (it had used the rng); every backend noticed.
    let killed_rng = parse_results(&r.console, "l2-killed")?
        .iter()
        .any(|c| c.check == "hwrng" && c.ok);
    assert!(killed_rng, "the first guest never ran: {}", explain());
    assert!(saw("vmm1 killed status=137"), "{}", explain());
    for d in ["block-0", "net-0", "rng-0", "vsock-0", "serial-0"] {
        assert!(saw(&format!("noticed {d} waiting=2")), "{d}: {}", explain());
    }
    assert!(
        saw("devices alive after vmm kill: yes children=5"),
        "{}",
        explain()
    );

    // 2. The second guest used every device of the same tree, before and after the backend
    // crashes; the killed devices were restarted and the VMM reconnected to them.
    for d in KILLED.split_whitespace() {
        assert!(saw(&format!("killed {d} pid=")), "{d}: {}", explain());
        assert!(saw(&format!("restarted {d} pid=")), "{d}: {}", explain());
    }
    let failed: Vec<String> = r
        .results
        .iter()
        .filter(|c| c.vm == "l2" && !c.ok)
        .map(|c| format!("{}: {}", c.check, c.detail))
        .collect();
    assert!(
        failed.is_empty(),
        "second guest: {failed:#?}\n{}",
        explain()
    );
    let l2 = |id: usize| {
        r.results
            .iter()
            .find(|c| c.vm == "l2" && c.id == id)
            .ok_or_else(|| anyhow::anyhow!("no l2 result #{id}"))
    };
    assert_ne!(l2(0)?.bytes("first")?, l2(5)?.bytes("first")?);
    assert_eq!(l2(7)?.bytes("received")?, TCP_PAYLOAD);
    assert_eq!(l2(8)?.bytes("received")?, VSOCK_PAYLOAD);
    let peers = vsock_peer_failures(&r.console);
    assert!(peers.is_empty(), "{peers:#?}\n{}", explain());
    // The stream open during the vsock crash ended on the host side.
    assert!(
        r.console.contains("CORDON-PEER unix-hold got=HOLD holding"),
        "{}",
        explain()
    );
    assert!(
        r.console.contains("CORDON-PEER unix-hold ended=eof")
            || r.console.contains("CORDON-PEER unix-hold ended=error"),
        "open stream not reset: {}",
        explain()
    );
    // ... and on the guest side (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET from the new process).
    let held = l2(10)?;
    assert_eq!(held.check, "vsock-held");
    assert_eq!(held.value("states")?, "reset", "{}", explain());
    assert_eq!(held.value("so_error")?, "104", "ECONNRESET: {}", explain());

    // ... and the block device killed during the guest's write stream came back under the
    // same VMM: no I/O error (the failed list above), every chunk read back by the guest,
    // the block fsynced before the kill in the image.
    assert!(saw("killed block-0 pid="), "{}", explain());
    assert!(saw("restarted block-0 pid="), "{}", explain());
    assert_eq!(l2(12)?.check, "blk-stream");
    let fsynced_line = format!("fsynced block {}", String::from_utf8_lossy(FSYNCED));
    assert!(saw(&fsynced_line), "{}", explain());

    // 3. cordon stop: the VM, then the devices, cleanly.
    assert!(saw("stop vm rc=0"), "{}", explain());
    assert!(saw("vmm3 exited status=0"), "{}", explain());
    assert!(saw("stop devices rc=0"), "{}", explain());
    assert!(saw("devices exited status=0"), "{}", explain());
    assert!(
        saw("device processes left=0 sockets left=0"),
        "{}",
        explain()
    );
    Ok(())
}
