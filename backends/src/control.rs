//! The `cordon devices -s SOCKET` control socket: one command per connection, `list` (one
//! line per device: name, pid, state) or `stop` (stop every device).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Produces the `list` lines.
pub type Status = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Binds `path` and answers commands on a thread.
pub fn start(path: &Path, status: Status, stopping: Arc<AtomicBool>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut line = String::new();
                let reader = BufReader::new(match conn.try_clone() {
                    Ok(c) => c,
                    Err(_) => continue,
                });
                if reader.take(256).read_line(&mut line).is_err() {
                    continue;
                }
                let reply = match line.trim() {
                    "list" => status().join("\n") + "\n",
                    "stop" => {
                        stopping.store(true, Ordering::SeqCst);
                        // SAFETY: signalling ourselves; the signal thread stops the devices.
                        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
                        "stopping\n".to_string()
                    }
                    other => format!("error: unknown command `{other}`; accepted: list, stop\n"),
                };
                let _ = conn.write_all(reply.as_bytes());
            }
        })?;
    Ok(())
}
