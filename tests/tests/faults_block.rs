//! Issue 7 §5, a block backend crash while the guest writes (runner A, QEMU as the
//! frontend): the guest fsyncs a block, then streams fsynced O_DIRECT writes; the host
//! `kill -9`s the jailed block device of a `cordon devices --restart on-failure` tree as soon
//! as the first streamed chunk reaches the image. `cordon devices` restarts it on the same
//! socket and image, QEMU's vhost-user-blk reconnects (`reconnect-ms`) and hands the inflight
//! region back (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), the requests in flight are re-run:
//! the guest sees no I/O error, every chunk reads back, and on the host the fsynced block and
//! every chunk are in the image.
//!
//! Runner A rather than a nested `cordon run`: one TCG boot instead of a nested one keeps the
//! test inside the suite's time budget; `cordon run`'s side of the reconnection (GET once,
//! SET_INFLIGHT_FD on every activation) is covered host-side in
//! `cli/tests/devices_block.rs::an_inflight_request_is_rerun_after_a_restart`.

use cordon_tests::e2e::make_disk;
use cordon_tests::guest::console::tail;
use cordon_tests::guest::{Check, GuestRunner};
use cordon_tests::stack::{HostStack, StackOptions};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const FSYNCED_AT: u64 = 36 << 20;
const FSYNCED: &[u8] = b"FSYNCED-BEFORE-THE-KILL-0123456789abcdef";
const STREAM_AT: u64 = 40 << 20;
const CHUNKS: u64 = 160;
const CHUNK: u64 = 65536;

fn fill(i: u64) -> u8 {
    (i % 250 + 1) as u8
}

#[test]
fn killed_block_backend_restarts_and_the_guest_loses_no_write() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.img");
    make_disk(&disk)?;
    let opts = StackOptions {
        extra_args: vec!["--restart".into(), "on-failure".into()],
        ..Default::default()
    };
    let stack = HostStack::start(dir.path(), &disk, &opts)?;
    let mut fsynced = FSYNCED.to_vec();
    fsynced.resize(512, b'.');

    let mut guest = GuestRunner::tcg()
        .reconnect_ms(200)
        .vhost_user_blk(stack.socket("blk"))
        .timeout(Duration::from_secs(400))
        .checks(&[
            Check::new("blk-write")
                .arg("offset", FSYNCED_AT)
                .bytes("hex", &fsynced),
            Check::new("blk-stream")
                .arg("offset", STREAM_AT)
                .arg("chunks", CHUNKS)
                .arg("chunk", CHUNK)
                .arg("timeout", 240),
        ])
        .allow_failures()
        .spawn()?;

    // Kill as soon as the guest's stream reaches the image.
    let image = std::fs::File::open(&disk)?;
    let start = Instant::now();
    loop {
        let mut b = [0u8; 1];
        image.read_exact_at(&mut b, STREAM_AT)?;
        if b[0] == fill(0) {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            return Err(guest.failure("the guest's writes never reached the image"));
        }
        guest.check_alive()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let conns = stack
        .output()
        .matches("block-0: frontend connected")
        .count();
    let old = stack.kill_device("block-0")?;
    let new = stack.wait_restarted("block-0", old, conns + 1, Duration::from_secs(120))?;
    assert_ne!(new, old);
    let r = guest.finish()?;

    let failed: Vec<String> = r
        .results
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("#{} {}: {}", c.id, c.check, c.detail))
        .collect();
    assert!(
        failed.is_empty(),
        "the guest saw I/O errors around the block backend restart: {failed:#?}\nconsole tail ({}):\n{}\n--- cordon devices ({}) ---\n{}",
        r.log.display(),
        tail(&r.console),
        stack.log.display(),
        tail(&stack.output())
    );
    // What the user sees on the host: the fsynced block and every streamed chunk.
    let mut got = vec![0u8; 512];
    image.read_exact_at(&mut got, FSYNCED_AT)?;
    assert_eq!(got, fsynced, "the block fsynced before the kill");
    let mut chunk = vec![0u8; CHUNK as usize];
    for i in 0..CHUNKS {
        image.read_exact_at(&mut chunk, STREAM_AT + i * CHUNK)?;
        assert!(
            chunk.iter().all(|&b| b == fill(i)),
            "chunk {i} is not in the image after the restart"
        );
    }
    // The backend was really killed mid-stream and restarted, jailed like the first.
    let out = stack.output();
    assert!(
        out.contains("block-0: killed by signal 9") && out.contains("block-0: restarted"),
        "{}",
        tail(&out)
    );
    for (n, j) in stack.jail_facts()? {
        assert!(
            j.no_new_privs && j.seccomp == 2 && j.cap_eff == 0,
            "{n} after restart: {j:?}"
        );
    }
    Ok(())
}
