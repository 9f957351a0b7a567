//! Fuzz descriptor-chain handling: Cordon's chain checker and queue loop
//! (`cordon_backends::queue::process_queue`) over a hostile descriptor table, avail ring and
//! indirect tables, with handlers that read (like serial tx) and write (like rng) every buffer.
//!
//! Input layout: byte 0 = log2 of the queue size (masked to 1..=8), byte 1 = EVENT_IDX on/off,
//! bytes 2..4 = avail index; the rest is copied over guest memory from address 0, where the
//! descriptor table (0x0), avail ring (0x1000) and used ring (0x2000) live.
#![no_main]

use std::io::{Read, Write};

use cordon_backends::queue::{process_queue, GuestMem};
use libfuzzer_sys::fuzz_target;
use vhost_user_backend::{VringRwLock, VringT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

const MEM_SIZE: usize = 0x1_0000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let qsize = 1u16 << (1 + (data[0] % 8));
    let event_idx = data[1] & 1 == 1;
    let avail_idx = u16::from_le_bytes([data[2], data[3]]);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    let body = &data[4..];
    let n = body.len().min(MEM_SIZE);
    let _ = mem.write_slice(&body[..n], GuestAddress(0));
    let _ = mem.write_obj(avail_idx, GuestAddress(0x1002));
    let gm: GuestMem = GuestMemoryAtomic::new(mem);
    let Ok(vring) = VringRwLock::new(gm.clone(), 256) else {
        return;
    };
    vring.set_queue_size(qsize);
    if vring.set_queue_info(0x0, 0x1000, 0x2000).is_err() {
        return;
    }
    vring.set_queue_event_idx(event_idx);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let mut toggle = false;
    let _ = process_queue(&vring, &gm, event_idx, |chain| {
        toggle = !toggle;
        let m = chain.memory().clone();
        if toggle {
            let mut r = chain
                .reader(&m)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut sink = vec![0u8; r.available_bytes().min(1 << 16)];
            r.read_exact(&mut sink)?;
            Ok(0)
        } else {
            let mut w = chain
                .writer(&m)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let k = w.available_bytes().min(1 << 16);
            w.write_all(&vec![0xa5u8; k])?;
            Ok(k as u32)
        }
    });
});
