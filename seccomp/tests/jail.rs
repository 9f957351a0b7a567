//! The jail under the real kernel: filesystem, PID, network, capability and fd isolation.

use cordon_seccomp::jail::ChildExit;
use cordon_seccomp::{compile, parser::parse_str, Arch, CompileOptions, Jail};
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

fn run(jail: &Jail, f: impl FnOnce() -> i32) -> ChildExit {
    jail.fork_jailed(f)
        .expect("jail setup")
        .wait()
        .expect("wait")
}

#[test]
fn cannot_see_host_filesystem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ro = dir.path().join("ro.txt");
    std::fs::write(&ro, b"visible").expect("write");
    let rw = dir.path().join("rw");
    std::fs::create_dir(&rw).expect("mkdir");
    let (ro2, rw2) = (ro.clone(), rw.clone());
    let jail = Jail::new().bind_ro(&ro).bind_rw(&rw);
    let r = run(&jail, move || {
        if Path::new("/etc/passwd").exists()
            || Path::new("/usr").exists()
            || Path::new("/proc/1").exists()
        {
            return 2;
        }
        let top: Vec<_> = match std::fs::read_dir("/") {
            Ok(d) => d.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(_) => return 3,
        };
        let first = ro2.components().nth(1).map(|c| c.as_os_str().to_owned());
        if top.len() != 1 || Some(&top[0]) != first.as_ref() {
            return 4;
        }
        match std::fs::read(&ro2) {
            Ok(b) if b == b"visible" => {}
            _ => return 5,
        }
        match std::fs::write(&ro2, b"x") {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
            _ => return 6,
        }
        if std::fs::write(rw2.join("out"), b"from jail").is_err() {
            return 7;
        }
        if std::fs::write("/new-file", b"x").is_ok() {
            return 8;
        }
        0
    });
    assert_eq!(r, ChildExit::Exited(0));
    assert_eq!(
        std::fs::read(rw.join("out")).expect("written from jail"),
        b"from jail"
    );
}

#[test]
fn cannot_see_other_pids() {
    let host_pid = std::process::id() as libc::pid_t;
    let r = run(&Jail::new(), move || {
        // SAFETY: plain getters / kill with signal 0 (existence check).
        unsafe {
            if libc::getpid() != 1 {
                return 2;
            }
            if libc::kill(host_pid, 0) == 0 {
                return 3;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
                return 4;
            }
        }
        0
    });
    assert_eq!(r, ChildExit::Exited(0));
}

#[test]
fn cannot_reach_the_network_unless_asked() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connect = move || match std::net::TcpStream::connect(addr) {
        Ok(_) => 10,
        Err(_) => 0,
    };
    assert_eq!(
        run(&Jail::new(), connect),
        ChildExit::Exited(0),
        "connected from a new netns"
    );
    // The same connect from a jail that keeps the host network succeeds: the test can fail.
    assert_eq!(
        run(&Jail::new().net_namespace(false), connect),
        ChildExit::Exited(10)
    );
}

#[test]
fn capabilities_dropped_and_fds_closed() {
    let mut keep = tempfile::tempfile().expect("tempfile");
    keep.write_all(b"kept").expect("write");
    let drop = tempfile::tempfile().expect("tempfile");
    let (kfd, dfd) = (keep.as_raw_fd(), drop.as_raw_fd());
    let jail = Jail::new().keep_fds(&[kfd]);
    let r = run(&jail, move || {
        // SAFETY: fcntl/pread on fds, capget into a local buffer, mount with static strings.
        unsafe {
            if libc::fcntl(dfd, libc::F_GETFD) != -1 {
                return 2;
            }
            let mut buf = [0u8; 4];
            if libc::pread(kfd, buf.as_mut_ptr() as *mut libc::c_void, 4, 0) != 4 || &buf != b"kept"
            {
                return 3;
            }
            let hdr = [0x2008_0522u32, 0];
            let mut data = [0u32; 6];
            if libc::syscall(libc::SYS_capget, hdr.as_ptr(), data.as_mut_ptr()) != 0
                || data != [0; 6]
            {
                return 4;
            }
            if libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1 {
                return 5;
            }
            let t = c"tmpfs";
            if libc::mount(t.as_ptr(), c"/".as_ptr(), t.as_ptr(), 0, std::ptr::null()) == 0 {
                return 6;
            }
        }
        0
    });
    assert_eq!(r, ChildExit::Exited(0));
    let mut s = String::new();
    let _ = (&keep).read_to_string(&mut s);
}

#[test]
fn seccomp_is_installed_last() {
    let p = parse_str(
        Path::new("t.policy"),
        "exit_group: 1\nexit: 1\nwrite: 1\ngetppid: return EPERM\n",
        Arch::native(),
    )
    .expect("parses");
    let prog = compile(&p, &CompileOptions::default()).expect("compiles");
    let jail = Jail::new().policy(prog);
    let r = run(&jail.clone(), || {
        // SAFETY: raw getppid.
        let r = unsafe { libc::syscall(libc::SYS_getppid) };
        if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
            0
        } else {
            2
        }
    });
    assert_eq!(r, ChildExit::Exited(0));
    let r = run(&jail, || {
        // SAFETY: raw getuid, not in the policy.
        unsafe { libc::syscall(libc::SYS_getuid) };
        0
    });
    assert_eq!(r, ChildExit::Signaled(libc::SIGSYS));
}

#[test]
fn setup_errors_are_reported() {
    let e = Jail::new()
        .bind_ro("/definitely/not/here")
        .fork_jailed(|| 0)
        .unwrap_err();
    assert!(e.to_string().contains("/definitely/not/here"), "{e}");
}

/// Forks a plain child that runs `f` (which may call `Jail::enter` on itself).
fn in_child(f: impl FnOnce() -> i32) -> ChildExit {
    // SAFETY: the child runs `f` and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let c = f();
        // SAFETY: leave the forked child without unwinding.
        unsafe { libc::_exit(c) }
    }
    let mut st = 0;
    // SAFETY: valid out-parameter.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    if libc::WIFSIGNALED(st) {
        ChildExit::Signaled(libc::WTERMSIG(st))
    } else {
        ChildExit::Exited(libc::WEXITSTATUS(st))
    }
}

#[test]
fn enter_jails_the_current_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let r = in_child(move || {
        if Jail::new().bind_rw(&d).enter().is_err() {
            return 2;
        }
        if Path::new("/etc").exists() || !d.exists() {
            return 3;
        }
        if std::fs::write(d.join("x"), b"1").is_err() {
            return 4;
        }
        // The PID namespace applies to children: a thread-free fork is PID 1.
        // SAFETY: fork in a single-threaded process; the grandchild only calls getpid.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(if libc::getpid() == 1 { 0 } else { 1 });
            }
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
            if !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 0 {
                return 5;
            }
        }
        0
    });
    assert_eq!(r, ChildExit::Exited(0));
    assert!(
        dir.path().join("x").exists(),
        "write through the bind mount"
    );
}

#[test]
fn works_without_root_through_a_user_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("data"), b"for nobody").expect("write");
    // Let `nobody` traverse our temp dir.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = dir.path().join("data");
    let r = in_child(move || {
        // SAFETY: drop to nobody in this single-threaded child.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return 2;
            }
            // A uid change clears "dumpable" (which makes /proc/self root-owned); a user who
            // started the device normally is dumpable, as restored here.
            libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        }
        let jail = Jail::new().bind_ro(&data);
        let child = match jail.fork_jailed(move || match std::fs::read(&data) {
            Ok(b) if b == b"for nobody" && !Path::new("/etc").exists() => {
                // SAFETY: getpid has no arguments.
                if unsafe { libc::getpid() } == 1 {
                    0
                } else {
                    4
                }
            }
            _ => 5,
        }) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return 3;
            }
        };
        match child.wait() {
            Ok(ChildExit::Exited(c)) => c,
            _ => 6,
        }
    });
    assert_eq!(
        r,
        ChildExit::Exited(0),
        "unprivileged jail (needs unprivileged user namespaces)"
    );
}

/// Empties every capability set of the calling thread, keeping uid 0 (as a container does).
fn drop_capabilities_keep_root() -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    let hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [[0u32; 3]; 2];
    // SAFETY: capset(2) version 3 with a header and two empty data structs alive for the call.
    unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) == 0 }
}

#[test]
fn works_as_root_without_capabilities_like_in_a_container() {
    // Root without CAP_SYS_ADMIN/CAP_SETFCAP cannot map uid 0 into its user namespace; the
    // jail must still create the mount points of nested bind destinations.
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("run").join("sockets");
    std::fs::create_dir_all(&shared).expect("mkdir");
    let data = dir.path().join("data");
    std::fs::write(&data, b"resource").expect("write");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir tmp");
    let written = shared.join("x");
    let r = in_child(move || {
        // The jail stages its root under $TMPDIR: keep it inside this test's directory.
        // The forked child is single-threaded, so changing the environment is sound.
        std::env::set_var("TMPDIR", &tmp);
        if !drop_capabilities_keep_root() {
            return 2;
        }
        let jail = Jail::new().bind_rw(&shared).bind_ro(&data);
        let (s, d) = (shared.clone(), data.clone());
        let child = match jail.fork_jailed(move || {
            if Path::new("/etc").exists() {
                return 4;
            }
            match std::fs::read(&d) {
                Ok(b) if b == b"resource" => {}
                _ => return 5,
            }
            if std::fs::write(s.join("x"), b"1").is_err() {
                return 6;
            }
            0
        }) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return 3;
            }
        };
        match child.wait() {
            Ok(ChildExit::Exited(c)) => c,
            _ => 7,
        }
    });
    assert_eq!(r, ChildExit::Exited(0), "jail as root without capabilities");
    assert!(written.exists(), "write through the bind mount");
}

#[test]
fn pivot_root_dir_becomes_the_root() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("marker"), b"inside").expect("write");
    std::fs::create_dir(root.path().join("sub")).expect("mkdir");
    std::fs::write(root.path().join("sub/file"), b"nested").expect("write");
    // A bind mount still works on top of the pivot root.
    let extra = tempfile::tempdir().expect("tempdir");
    let shared = extra.path().join("shared.txt");
    std::fs::write(&shared, b"bound").expect("write");
    let shared2 = shared.clone();
    let jail = Jail::new().pivot_root(root.path()).bind_ro(&shared);
    let r = run(&jail, move || {
        // The host outside DIR is gone.
        if Path::new("/etc/passwd").exists() || Path::new("/usr").exists() {
            return 2;
        }
        // DIR's content is at /.
        match std::fs::read("/marker") {
            Ok(b) if b == b"inside" => {}
            _ => return 3,
        }
        match std::fs::read("/sub/file") {
            Ok(b) if b == b"nested" => {}
            _ => return 4,
        }
        match std::fs::read(&shared2) {
            Ok(b) if b == b"bound" => {}
            _ => return 5,
        }
        // Read-only: the jailed process cannot change DIR.
        match std::fs::write("/marker", b"x") {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
            _ => return 6,
        }
        0
    });
    assert_eq!(r, ChildExit::Exited(0));
    assert_eq!(
        std::fs::read(root.path().join("marker")).expect("marker"),
        b"inside"
    );
    // A missing pivot root is a setup error naming it.
    let gone = root.path().join("missing");
    let Err(e) = Jail::new().pivot_root(&gone).fork_jailed(|| 0) else {
        panic!("missing pivot root must fail");
    };
    assert!(e.to_string().contains("pivot root"), "{e}");
}
