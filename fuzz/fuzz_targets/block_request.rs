//! Fuzz the virtio-blk request path: hostile descriptor tables, avail rings, headers,
//! discard segments and guest addresses, processed by the real device against a real image.
//!
//! Input layout: byte 0 selects the device (bit 0: read-only image) and the path (bit 1: the
//! split path of the queue thread and I/O threads: `prepare` with deferral, then `run_deferred`
//! with the request's scratch area moved, as the I/O thread pool does); bytes 1..3 are the avail
//! index; the rest is copied over guest memory starting at address 0, where the descriptor
//! table (16 entries), avail ring and used ring live, followed by buffers.
#![no_main]

use std::sync::OnceLock;

use cordon_block::device::Step;
use cordon_block::request::Scratch;
use cordon_block::{BlockDevice, BlockOptions};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x1_0000;
const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;

struct Devices {
    _rw_img: tempfile::NamedTempFile,
    _ro_img: tempfile::NamedTempFile,
    rw: BlockDevice,
    ro: BlockDevice,
}

fn devices() -> &'static Devices {
    static D: OnceLock<Devices> = OnceLock::new();
    D.get_or_init(|| {
        let rw_img = tempfile::NamedTempFile::new().expect("tempfile");
        rw_img.as_file().set_len(64 * 1024).expect("set_len");
        let ro_img = tempfile::NamedTempFile::new().expect("tempfile");
        ro_img.as_file().set_len(64 * 1024).expect("set_len");
        let mut o = BlockOptions::new(rw_img.path());
        o.id = Some("fuzz".into());
        let rw = BlockDevice::open(&o).expect("open rw");
        let mut o = BlockOptions::new(ro_img.path());
        o.read_only = true;
        let ro = BlockDevice::open(&o).expect("open ro");
        Devices {
            _rw_img: rw_img,
            _ro_img: ro_img,
            rw,
            ro,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let d = devices();
    let dev = if data[0] & 1 == 1 { &d.ro } else { &d.rw };
    let avail_idx = u16::from_le_bytes([data[1], data[2]]);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("mem");
    let body = &data[3..];
    let n = body.len().min(MEM_SIZE);
    mem.write_slice(&body[..n], GuestAddress(0)).expect("fill");
    // Keep avail idx within what a driver could publish relative to 0 so chains get popped.
    mem.write_obj(avail_idx % (QSIZE + 1), GuestAddress(AVAIL + 2)).expect("idx");
    mem.write_obj(0u16, GuestAddress(USED + 2)).expect("used idx");
    let mut q = Queue::new(QSIZE).expect("queue");
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    let mut s = Scratch::default();
    if data[0] & 2 == 0 {
        let _ = dev.process_queue(&mut q, &mem, &mut s);
        return;
    }
    while let Some(chain) = q.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        let used = match dev.prepare(&mem, chain, &mut s, |_| true) {
            Step::Done(used) => used,
            Step::Deferred(req) => {
                let mut job = Scratch::with_bounce_limit(64 << 10);
                std::mem::swap(&mut s, &mut job);
                dev.run_deferred(&mem, &req, &mut job)
            }
        };
        let _ = q.add_used(&mem, head, used);
    }
});
