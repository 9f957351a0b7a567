//! Unit tests of request handling: real guest memory (GuestMemoryMmap), virtio-queue's mock
//! split queue, and a real image file.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::defs::*;
use crate::device::BlockDevice;
use crate::options::BlockOptions;
use crate::request::Scratch;

const HDR: u64 = 0x2_0000;
const DATA: u64 = 0x3_0000;
const STATUS: u64 = 0x8_0000;
const IMG_SECTORS: u64 = 2048; // 1 MiB

struct H {
    mem: GuestMemoryMmap<()>,
    img: tempfile::NamedTempFile,
    dev: BlockDevice,
    s: Scratch,
}

fn harness(f: impl FnOnce(&mut BlockOptions)) -> H {
    let mut img = tempfile::NamedTempFile::new().unwrap();
    let pattern: Vec<u8> = (0..IMG_SECTORS * 512).map(|i| (i / 512) as u8).collect();
    img.write_all(&pattern).unwrap();
    let mut o = BlockOptions::new(img.path());
    f(&mut o);
    let dev = BlockDevice::open(&o).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    H {
        mem,
        img,
        dev,
        s: Scratch::default(),
    }
}

fn d(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn header(h: &H, kind: u32, sector: u64) {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&kind.to_le_bytes());
    b[8..16].copy_from_slice(&sector.to_le_bytes());
    h.mem.write_slice(&b, GuestAddress(HDR)).unwrap();
}

/// Chain the descriptors (NEXT links), submit, process. Returns (used len, status byte).
fn run(h: &mut H, descs: &[RawDescriptor]) -> (u32, u8) {
    let mq = MockSplitQueue::create(&h.mem, GuestAddress(0), 64);
    let n = descs.len();
    let linked: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let sd = SplitDescriptor::from(*r);
            let (flags, next) = if i + 1 < n {
                (sd.flags() | VRING_DESC_F_NEXT as u16, i as u16 + 1)
            } else {
                (sd.flags(), 0)
            };
            RawDescriptor::from(SplitDescriptor::new(sd.addr().0, sd.len(), flags, next))
        })
        .collect();
    h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    mq.add_desc_chains(&linked, 0).unwrap();
    let mut q: Queue = mq.create_queue().unwrap();
    let done = h.dev.process_queue(&mut q, &h.mem, &mut h.s).unwrap();
    assert_eq!(done, 1);
    assert_eq!(
        q.used_idx(&h.mem, std::sync::atomic::Ordering::Acquire)
            .unwrap()
            .0,
        1
    );
    let used = mq.used().ring().ref_at(0).unwrap().load();
    (
        used.len(),
        h.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
    )
}

fn image_bytes(h: &mut H, off: u64, len: usize) -> Vec<u8> {
    let f = h.img.as_file_mut();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

#[test]
fn read_sectors_into_split_buffers() {
    let mut h = harness(|_| {});
    header(&h, VIRTIO_BLK_T_IN, 5);
    let (len, st) = run(
        &mut h,
        &[
            d(HDR, 16, false),
            d(DATA, 512, true),
            d(DATA + 0x1000, 1024, true),
            d(STATUS, 1, true),
        ],
    );
    assert_eq!((len, st), (1537, VIRTIO_BLK_S_OK));
    let mut buf = vec![0u8; 1024];
    h.mem
        .read_slice(&mut buf[..512], GuestAddress(DATA))
        .unwrap();
    assert!(buf[..512].iter().all(|&b| b == 5));
    h.mem
        .read_slice(&mut buf, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert!(buf[..512].iter().all(|&b| b == 6) && buf[512..].iter().all(|&b| b == 7));
}

#[test]
fn write_then_read_back_with_status_in_data_descriptor() {
    let mut h = harness(|_| {});
    header(&h, VIRTIO_BLK_T_OUT, 100);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    h.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let (len, st) = run(
        &mut h,
        &[d(HDR, 16, false), d(DATA, 4096, false), d(STATUS, 1, true)],
    );
    assert_eq!((len, st), (1, VIRTIO_BLK_S_OK));
    assert_eq!(image_bytes(&mut h, 100 * 512, 4096), data);

    // Header and data in one readable descriptor; status shares the writable data descriptor.
    header(&h, VIRTIO_BLK_T_IN, 100);
    let (len, _) = run(&mut h, &[d(HDR, 16, false), d(STATUS - 512, 513, true)]);
    assert_eq!(len, 513);
    assert_eq!(
        h.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK
    );
    let mut back = vec![0u8; 512];
    h.mem
        .read_slice(&mut back, GuestAddress(STATUS - 512))
        .unwrap();
    assert_eq!(back, data[..512]);
}

#[test]
fn header_split_across_descriptors() {
    let mut h = harness(|_| {});
    header(&h, VIRTIO_BLK_T_IN, 9);
    let (len, st) = run(
        &mut h,
        &[
            d(HDR, 3, false),
            d(HDR + 3, 13, false),
            d(DATA, 512, true),
            d(STATUS, 1, true),
        ],
    );
    assert_eq!((len, st), (513, VIRTIO_BLK_S_OK));
    assert_eq!(h.mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 9);
}

#[test]
fn out_of_range_and_partial_sector_are_ioerr_and_change_nothing() {
    let mut h = harness(|_| {});
    let before = image_bytes(&mut h, 0, (IMG_SECTORS * 512) as usize);
    for (sector, len) in [
        (IMG_SECTORS, 512u32),
        (IMG_SECTORS - 1, 1024),
        (u64::MAX, 512),
        (0, 100),
    ] {
        header(&h, VIRTIO_BLK_T_OUT, sector);
        let (l, st) = run(
            &mut h,
            &[d(HDR, 16, false), d(DATA, len, false), d(STATUS, 1, true)],
        );
        assert_eq!(
            (l, st),
            (1, VIRTIO_BLK_S_IOERR),
            "sector {sector} len {len}"
        );
        header(&h, VIRTIO_BLK_T_IN, sector);
        let (l, st) = run(
            &mut h,
            &[d(HDR, 16, false), d(DATA, len, true), d(STATUS, 1, true)],
        );
        assert_eq!((l, st), (1, VIRTIO_BLK_S_IOERR));
    }
    // Last sector is fine.
    header(&h, VIRTIO_BLK_T_IN, IMG_SECTORS - 1);
    let (_, st) = run(
        &mut h,
        &[d(HDR, 16, false), d(DATA, 512, true), d(STATUS, 1, true)],
    );
    assert_eq!(st, VIRTIO_BLK_S_OK);
    assert_eq!(image_bytes(&mut h, 0, before.len()), before);
}

#[test]
fn malformed_chains() {
    let mut h = harness(|_| {});
    // Short header.
    header(&h, VIRTIO_BLK_T_IN, 0);
    let (l, st) = run(&mut h, &[d(HDR, 8, false), d(STATUS, 1, true)]);
    assert_eq!((l, st), (1, VIRTIO_BLK_S_IOERR));
    // Readable after writable.
    let (l, st) = run(
        &mut h,
        &[
            d(HDR, 16, false),
            d(DATA, 512, true),
            d(DATA, 16, false),
            d(STATUS, 1, true),
        ],
    );
    assert_eq!((l, st), (1, VIRTIO_BLK_S_IOERR));
    // Data outside guest memory.
    header(&h, VIRTIO_BLK_T_OUT, 0);
    let (l, st) = run(
        &mut h,
        &[
            d(HDR, 16, false),
            d(0xfff_0000, 512, false),
            d(STATUS, 1, true),
        ],
    );
    assert_eq!((l, st), (1, VIRTIO_BLK_S_IOERR));
    // Data straddling the end of guest memory.
    let (l, st) = run(
        &mut h,
        &[
            d(HDR, 16, false),
            d(0x10_0000 - 256, 512, false),
            d(STATUS, 1, true),
        ],
    );
    assert_eq!((l, st), (1, VIRTIO_BLK_S_IOERR));
    // No writable byte at all: used with length 0, status untouched.
    let (l, st) = run(&mut h, &[d(HDR, 16, false), d(DATA, 512, false)]);
    assert_eq!((l, st), (0, 0xff));
    // Status byte outside guest memory: used length 0.
    let (l, _) = run(&mut h, &[d(HDR, 16, false), d(0xfff_0000, 1, true)]);
    assert_eq!(l, 0);
    // Unknown request type.
    header(&h, 0x77, 0);
    let (l, st) = run(&mut h, &[d(HDR, 16, false), d(STATUS, 1, true)]);
    assert_eq!((l, st), (1, VIRTIO_BLK_S_UNSUPP));
    assert_eq!(image_bytes(&mut h, 0, 512), vec![0u8; 512]);
}

#[test]
fn read_only_refuses_writes() {
    let mut h = harness(|o| o.read_only = true);
    assert_ne!(h.dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(h.dev.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    let before = image_bytes(&mut h, 0, 4096);
    for kind in [
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
    ] {
        header(&h, kind, 0);
        h.mem.write_slice(&[0u8; 16], GuestAddress(DATA)).unwrap();
        h.mem
            .write_obj(4u32.to_le(), GuestAddress(DATA + 8))
            .unwrap();
        let (l, st) = run(
            &mut h,
            &[d(HDR, 16, false), d(DATA, 512, false), d(STATUS, 1, true)],
        );
        assert_eq!((l, st), (1, VIRTIO_BLK_S_IOERR), "kind {kind}");
    }
    assert_eq!(image_bytes(&mut h, 0, 4096), before);
    header(&h, VIRTIO_BLK_T_IN, 3);
    let (_, st) = run(
        &mut h,
        &[d(HDR, 16, false), d(DATA, 512, true), d(STATUS, 1, true)],
    );
    assert_eq!(st, VIRTIO_BLK_S_OK);
}

fn discard_seg(h: &H, at: u64, sector: u64, num: u32, flags: u32) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&sector.to_le_bytes());
    b[8..12].copy_from_slice(&num.to_le_bytes());
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    h.mem.write_slice(&b, GuestAddress(at)).unwrap();
}

#[test]
fn discard_punches_holes_and_reads_zero() {
    let mut h = harness(|_| {});
    // Make the image fully allocated first.
    let blocks_before = h.img.as_file().metadata().unwrap().blocks();
    header(&h, VIRTIO_BLK_T_DISCARD, 0);
    discard_seg(&h, DATA, 256, 256, 0);
    discard_seg(&h, DATA + 16, 1024, 8, 0);
    let (l, st) = run(
        &mut h,
        &[d(HDR, 16, false), d(DATA, 32, false), d(STATUS, 1, true)],
    );
    assert_eq!((l, st), (1, VIRTIO_BLK_S_OK));
    assert!(image_bytes(&mut h, 256 * 512, 256 * 512)
        .iter()
        .all(|&b| b == 0));
    assert!(image_bytes(&mut h, 1024 * 512, 8 * 512)
        .iter()
        .all(|&b| b == 0));
    assert_eq!(image_bytes(&mut h, 255 * 512, 1), vec![255]);
    assert_eq!(image_bytes(&mut h, 1032 * 512, 1), vec![(1032 % 256) as u8]);
    let blocks_after = h.img.as_file().metadata().unwrap().blocks();
    assert!(
        blocks_after < blocks_before,
        "{blocks_after} < {blocks_before}"
    );
    assert_eq!(h.img.as_file().metadata().unwrap().len(), IMG_SECTORS * 512);
}

#[test]
fn discard_is_all_or_nothing_and_checks_flags() {
    let mut h = harness(|_| {});
    header(&h, VIRTIO_BLK_T_DISCARD, 0);
    discard_seg(&h, DATA, 8, 8, 0);
    discard_seg(&h, DATA + 16, IMG_SECTORS, 8, 0); // out of range
    let (_, st) = run(
        &mut h,
        &[d(HDR, 16, false), d(DATA, 32, false), d(STATUS, 1, true)],
    );
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    assert_eq!(image_bytes(&mut h, 8 * 512, 1), vec![8]);
    discard_seg(&h, DATA, 8, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let (_, st) = run(
        &mut h,
        &[d(HDR, 16, false), d(DATA, 16, false), d(STATUS, 1, true)],
    );
    assert_eq!(st, VIRTIO_BLK_S_UNSUPP);
    let (_, st) = run(
        &mut h,
        &[d(HDR, 16, false), d(DATA, 15, false), d(STATUS, 1, true)],
    );
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    assert_eq!(image_bytes(&mut h, 8 * 512, 1), vec![8]);
    // Not sparse: discard not offered, answered UNSUPP.
    let mut h = harness(|o| o.sparse = false);
    assert_eq!(h.dev.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    header(&h, VIRTIO_BLK_T_DISCARD, 0);
    discard_seg(&h, DATA, 8, 8, 0);
    let (_, st) = run(
        &mut h,
        &[d(HDR, 16, false), d(DATA, 16, false), d(STATUS, 1, true)],
    );
    assert_eq!(st, VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn write_zeroes_with_and_without_unmap() {
    for sparse in [true, false] {
        let mut h = harness(|o| o.sparse = sparse);
        header(&h, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        discard_seg(&h, DATA, 10, 3, 0);
        discard_seg(&h, DATA + 16, 20, 2, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        let (_, st) = run(
            &mut h,
            &[d(HDR, 16, false), d(DATA, 32, false), d(STATUS, 1, true)],
        );
        assert_eq!(st, VIRTIO_BLK_S_OK);
        assert!(image_bytes(&mut h, 10 * 512, 3 * 512)
            .iter()
            .all(|&b| b == 0));
        assert!(image_bytes(&mut h, 20 * 512, 2 * 512)
            .iter()
            .all(|&b| b == 0));
        assert_eq!(image_bytes(&mut h, 13 * 512, 1), vec![13]);
        assert_eq!(image_bytes(&mut h, 22 * 512, 1), vec![22]);
    }
}

#[test]
fn get_id_and_flush() {
    let mut h = harness(|o| o.id = Some("cordon-disk-0".into()));
    header(&h, VIRTIO_BLK_T_GET_ID, 0);
    let (l, st) = run(
        &mut h,
        &[d(HDR, 16, false), d(DATA, 20, true), d(STATUS, 1, true)],
    );
    assert_eq!((l, st), (21, VIRTIO_BLK_S_OK));
    let mut id = [0u8; 20];
    h.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..13], b"cordon-disk-0");
    assert!(id[13..].iter().all(|&b| b == 0));
    header(&h, VIRTIO_BLK_T_FLUSH, 0);
    let (l, st) = run(&mut h, &[d(HDR, 16, false), d(STATUS, 1, true)]);
    assert_eq!((l, st), (1, VIRTIO_BLK_S_OK));
}

#[test]
fn config_space_layout() {
    let h = harness(|o| {
        o.num_queues = 4;
        o.sparse = true;
    });
    let c = h.dev.read_config(0, CONFIG_SPACE_SIZE as u32);
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), IMG_SECTORS);
    assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
    assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
    assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 4);
    assert_eq!(u32::from_le_bytes(c[40..44].try_into().unwrap()), 32);
    assert_eq!(c[56], 1);
    // The PCI-style offset is accepted and reads beyond the end are zero padded.
    assert_eq!(h.dev.read_config(0x100, 8), c[0..8]);
    assert_eq!(h.dev.read_config(0x100 + 34, 2), c[34..36]);
    assert_eq!(h.dev.read_config(56, 16).len(), 16);
    assert_eq!(h.dev.read_config(1000, 4), vec![0; 4]);
}

#[test]
fn batch_of_requests_then_one_pass() {
    let mut h = harness(|_| {});
    let mq = MockSplitQueue::create(&h.mem, GuestAddress(0), 64);
    let mut descs = Vec::new();
    for i in 0..8u64 {
        let hdr = HDR + i * 16;
        let mut b = [0u8; 16];
        b[8..16].copy_from_slice(&(i * 3).to_le_bytes());
        h.mem.write_slice(&b, GuestAddress(hdr)).unwrap();
        let base = descs.len() as u16;
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            hdr,
            16,
            VRING_DESC_F_NEXT as u16,
            base + 1,
        )));
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            DATA + i * 512,
            512,
            (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
            base + 2,
        )));
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            STATUS + i,
            1,
            VRING_DESC_F_WRITE as u16,
            0,
        )));
    }
    mq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = mq.create_queue().unwrap();
    assert_eq!(h.dev.process_queue(&mut q, &h.mem, &mut h.s).unwrap(), 8);
    for i in 0..8u64 {
        assert_eq!(h.mem.read_obj::<u8>(GuestAddress(STATUS + i)).unwrap(), 0);
        assert_eq!(
            h.mem.read_obj::<u8>(GuestAddress(DATA + i * 512)).unwrap(),
            (i * 3) as u8
        );
        assert_eq!(
            mq.used().ring().ref_at(i as usize).unwrap().load().len(),
            513
        );
    }
}

#[test]
fn direct_mode_roundtrip() {
    let mut h = harness(|o| o.direct = true);
    assert!(h.dev.disk().direct());
    header(&h, VIRTIO_BLK_T_OUT, 16);
    let data = [0x5au8; 4096];
    // Unaligned guest buffer: bounce path.
    h.mem.write_slice(&data, GuestAddress(DATA + 3)).unwrap();
    let (_, st) = run(
        &mut h,
        &[
            d(HDR, 16, false),
            d(DATA + 3, 4096, false),
            d(STATUS, 1, true),
        ],
    );
    assert_eq!(st, VIRTIO_BLK_S_OK);
    header(&h, VIRTIO_BLK_T_IN, 16);
    let (l, st) = run(
        &mut h,
        &[
            d(HDR, 16, false),
            d(DATA + 0x2000, 4096, true),
            d(STATUS, 1, true),
        ],
    );
    assert_eq!((l, st), (4097, VIRTIO_BLK_S_OK));
    let mut back = [0u8; 4096];
    h.mem
        .read_slice(&mut back, GuestAddress(DATA + 0x2000))
        .unwrap();
    assert_eq!(back, data);
}
