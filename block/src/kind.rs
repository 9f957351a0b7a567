//! How the block device plugs into the shared serving: the `block-device` / `cordon device
//! block` command line, the `cordon devices --block ...` key=value options, and jailed serving.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{ArgAction, Parser};
use cordon_backends::{
    serve, Backend, CommonArgs, DeviceKind, Endpoint, KeyValues, OpenedDevice, ServeOptions,
};

use crate::backend::BlockBackend;
use crate::device::BlockDevice;
use crate::options::{
    parse_block_size, parse_id, parse_io_threads, parse_num_queues, parse_poll_us,
    parse_queue_size, BlockOptions, DEFAULT_IO_THREADS, DEFAULT_POLL_US, DEFAULT_QUEUE_SIZE,
};

/// Seccomp policy base name of the jailed block device.
pub const POLICY: &str = "block_device_vhost_user";

/// `block-device` / `cordon device block` command line (crosvm-compatible `--file`).
#[derive(Parser, Debug)]
#[command(
    name = "block-device",
    about = "vhost-user virtio-blk backend for raw disk images, jailed",
    after_help = "Example: block-device --socket-path /run/blk.sock --file disk.img:read-only --id disk0"
)]
pub struct BlockArgs {
    /// Connection, sandbox and lifetime flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Raw disk image (or block device); append `:read-only` to open it read-only.
    #[arg(long, value_name = "PATH[:read-only]")]
    pub file: String,
    /// Open the image read-only (same as the `:read-only` suffix).
    #[arg(long, alias = "ro")]
    pub read_only: bool,
    /// Discard requests punch holes in the image (true or false).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    pub sparse: bool,
    /// Open the image with O_DIRECT, bypassing the host page cache.
    #[arg(long)]
    pub direct: bool,
    /// Device id returned by VIRTIO_BLK_T_GET_ID (at most 20 characters).
    #[arg(long, value_parser = |s: &str| parse_id(s))]
    pub id: Option<String>,
    /// Number of request queues (1-32), each served by its own thread.
    #[arg(long, default_value_t = 1, value_parser = |s: &str| parse_num_queues(s))]
    pub num_queues: u16,
    /// Logical block size advertised to the guest (power of two, 512-65536).
    #[arg(long, default_value_t = 512, value_parser = |s: &str| parse_block_size(s))]
    pub block_size: u32,
    /// Maximum virtqueue size (power of two, 4-1024).
    #[arg(long, default_value_t = DEFAULT_QUEUE_SIZE, value_parser = |s: &str| parse_queue_size(s))]
    pub queue_size: u16,
    /// After a batch, busy-poll the queue this many microseconds before sleeping (0-10000;
    /// 0 never polls).
    #[arg(long, default_value_t = DEFAULT_POLL_US, value_parser = |s: &str| parse_poll_us(s))]
    pub poll_us: u32,
    /// I/O threads per queue for requests that may block (writes, flushes, discards, reads
    /// the page cache cannot serve at once), so they overlap (0-64; 0 runs them one after
    /// another on the queue thread).
    #[arg(long, default_value_t = DEFAULT_IO_THREADS, value_parser = |s: &str| parse_io_threads(s))]
    pub io_threads: u16,
}

impl BlockArgs {
    /// The device options these flags describe.
    pub fn options(&self) -> anyhow::Result<BlockOptions> {
        let mut o = BlockOptions::from_file_arg(&self.file)?;
        o.read_only |= self.read_only;
        o.sparse = self.sparse;
        o.direct = self.direct;
        o.id = self.id.clone();
        o.num_queues = self.num_queues;
        o.block_size = self.block_size;
        o.queue_size = self.queue_size;
        o.poll_us = self.poll_us;
        o.io_threads = self.io_threads;
        Ok(o)
    }
}

/// Parse the `cordon devices --block` options (`vhost=` already removed by the supervisor).
pub fn options_from_kv(mut kv: KeyValues) -> anyhow::Result<BlockOptions> {
    let path = kv.require_str("path")?;
    let mut o = BlockOptions::new(PathBuf::from(path));
    if let Some(ro) = kv.take_bool("ro")? {
        o.read_only = ro;
    }
    if let Some(sparse) = kv.take_bool("sparse")? {
        o.sparse = sparse;
    }
    if let Some(direct) = kv.take_bool("direct")? {
        o.direct = direct;
    }
    if let Some(id) = kv.take_str("id")? {
        o.id = Some(parse_id(&id)?);
    }
    if let Some(n) = kv.take_str("num-queues")? {
        o.num_queues = parse_num_queues(&n)?;
    }
    if let Some(n) = kv.take_str("block-size")? {
        o.block_size = parse_block_size(&n)?;
    }
    if let Some(n) = kv.take_str("queue-size")? {
        o.queue_size = parse_queue_size(&n)?;
    }
    if let Some(n) = kv.take_str("poll-us")? {
        o.poll_us = parse_poll_us(&n)?;
    }
    if let Some(n) = kv.take_str("io-threads")? {
        o.io_threads = parse_io_threads(&n)?;
    }
    kv.finish()?;
    Ok(o)
}

impl Backend for BlockBackend {
    fn disconnected(&self) {
        self.forget_connection();
    }
}

/// A block device whose image is open and locked, ready to be jailed and served.
pub struct OpenedBlock {
    device: Arc<BlockDevice>,
}

impl OpenedBlock {
    /// Open and lock the image (before jailing).
    pub fn open(opts: &BlockOptions) -> anyhow::Result<Self> {
        let device = BlockDevice::open(opts).context("block device")?;
        log::info!(
            "block: {} opened ({} sectors{}{}, {} queue(s))",
            opts.path.display(),
            device.capacity(),
            if opts.read_only { ", read-only" } else { "" },
            if opts.direct { ", O_DIRECT" } else { "" },
            device.num_queues()
        );
        Ok(OpenedBlock {
            device: Arc::new(device),
        })
    }
}

impl OpenedDevice for OpenedBlock {
    fn policy(&self) -> String {
        POLICY.into()
    }
    fn serve(self: Box<Self>, endpoint: Endpoint, opts: ServeOptions) -> anyhow::Result<()> {
        serve(Arc::new(BlockBackend::new(self.device)), endpoint, opts)?;
        Ok(())
    }
}

/// The block device kind, for the CLI registry.
pub struct BlockKind;

/// The registry entry for block.
pub static KIND: BlockKind = BlockKind;

impl DeviceKind for BlockKind {
    fn name(&self) -> &'static str {
        "block"
    }
    fn syntax(&self) -> &'static str {
        "vhost=SOCKET,path=IMAGE[,ro][,sparse=BOOL][,direct=BOOL][,id=ID][,num-queues=N][,block-size=N][,queue-size=N][,poll-us=N][,io-threads=N]"
    }
    fn open(&self, opts: KeyValues) -> anyhow::Result<Box<dyn OpenedDevice>> {
        let o = options_from_kv(opts)?;
        Ok(Box::new(OpenedBlock::open(&o)?))
    }
    fn run_standalone(&self, argv: Vec<OsString>) -> anyhow::Result<()> {
        let args = BlockArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
        // Bad connection flags are reported before the image is touched.
        args.common.connection.connection()?;
        let o = args.options()?;
        let opened = OpenedBlock::open(&o)?;
        cordon_backends::device::run_opened("block", Box::new(opened), &args.common)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_options() {
        let kv = KeyValues::parse("block", "path=/x.img,ro,id=d0,num-queues=2").unwrap();
        let o = options_from_kv(kv).unwrap();
        assert!(o.read_only);
        assert_eq!(o.id.as_deref(), Some("d0"));
        assert_eq!(o.num_queues, 2);
        let kv = KeyValues::parse("block", "path=/x.img,bogus").unwrap();
        let e = options_from_kv(kv).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let kv = KeyValues::parse("block", "ro").unwrap();
        let e = options_from_kv(kv).unwrap_err().to_string();
        assert!(e.contains("path"), "{e}");
    }

    #[test]
    fn standalone_flags() {
        let a = BlockArgs::try_parse_from([
            "block-device",
            "--socket-path",
            "/tmp/s",
            "--file",
            "/x.img:read-only",
            "--num-queues",
            "4",
        ])
        .unwrap();
        let o = a.options().unwrap();
        assert!(o.read_only);
        assert_eq!(o.num_queues, 4);
        assert!(
            BlockArgs::try_parse_from(["block-device", "--file", "x", "--num-queues", "0"])
                .is_err()
        );
    }
}
