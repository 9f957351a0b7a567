//! Shipped policies under the real kernel: allowed syscalls run, others kill with SIGSYS,
//! argument rules hold.

mod common;
use common::{run_filtered, sys};
use cordon_seccomp::jail::ChildExit;
use cordon_seccomp::{embedded, embedded_names};

const SIGSYS: i32 = libc::SIGSYS;

fn prog(name: &str) -> cordon_seccomp::BpfProgram {
    embedded(name).unwrap_or_else(|| panic!("policy {name} is not embedded"))
}

/// Allowed basics every device policy keeps: eventfd write/read, getpid, close, exit.
fn basics() -> i32 {
    let efd = sys(libc::SYS_eventfd2, [0, 0, 0, 0, 0, 0]);
    if efd < 0 {
        return 2;
    }
    let one: u64 = 1;
    if sys(
        libc::SYS_write,
        [efd as u64, &one as *const u64 as u64, 8, 0, 0, 0],
    ) != 8
    {
        return 3;
    }
    let mut back: u64 = 0;
    if sys(
        libc::SYS_read,
        [efd as u64, &mut back as *mut u64 as u64, 8, 0, 0, 0],
    ) != 8
        || back != 1
    {
        return 4;
    }
    if sys(libc::SYS_getpid, [0; 6]) <= 0 {
        return 5;
    }
    if sys(libc::SYS_close, [efd as u64, 0, 0, 0, 0, 0]) != 0 {
        return 6;
    }
    0
}

fn loadable() -> Vec<&'static str> {
    let names = embedded_names();
    assert!(
        names.len() >= 12,
        "expected every device policy embedded, got {names:?}"
    );
    names
}

#[test]
fn every_policy_allows_basics_and_kills_execve() {
    for name in loadable() {
        let p = prog(name);
        assert_eq!(
            run_filtered(&p, basics),
            ChildExit::Exited(0),
            "{name}: basics"
        );
        let path = c"/bin/true";
        let argv = [path.as_ptr(), std::ptr::null()];
        let r = run_filtered(&p, || {
            sys(
                libc::SYS_execve,
                [path.as_ptr() as u64, argv.as_ptr() as u64, 0, 0, 0, 0],
            );
            1
        });
        assert_eq!(r, ChildExit::Signaled(SIGSYS), "{name}: execve must kill");
    }
}

#[test]
fn rng_denies_socket_and_allows_getrandom() {
    let p = prog("rng_device_vhost_user");
    let r = run_filtered(&p, || {
        let mut b = [0u8; 16];
        if sys(libc::SYS_getrandom, [b.as_mut_ptr() as u64, 16, 0, 0, 0, 0]) != 16 {
            return 2;
        }
        0
    });
    assert_eq!(r, ChildExit::Exited(0));
    let r = run_filtered(&p, || {
        sys(
            libc::SYS_socket,
            [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0],
        );
        1
    });
    assert_eq!(r, ChildExit::Signaled(SIGSYS));
}

#[test]
fn mmap_with_prot_exec_is_refused() {
    let p = prog("rng_device_vhost_user");
    let map = |prot: u64| {
        sys(
            libc::SYS_mmap,
            [
                0,
                4096,
                prot,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
    };
    let ok = run_filtered(&p, || {
        if map((libc::PROT_READ | libc::PROT_WRITE) as u64) > 0 {
            0
        } else {
            2
        }
    });
    assert_eq!(ok, ChildExit::Exited(0));
    let bad = run_filtered(&p, || {
        map((libc::PROT_READ | libc::PROT_EXEC) as u64);
        1
    });
    assert_eq!(bad, ChildExit::Signaled(SIGSYS));
    // The high half of the 64-bit argument is checked too.
    let high = run_filtered(&p, || {
        map(1u64 << 34 | libc::PROT_READ as u64);
        0
    });
    assert_eq!(
        high,
        ChildExit::Exited(0),
        "bits above PROT_EXEC are outside ~PROT_EXEC's complement"
    );
}

#[test]
fn clone_needs_clone_thread() {
    let p = prog("block_device_vhost_user");
    // A real thread: glibc tries clone3 (ENOSYS by policy), then clone(CLONE_THREAD|...).
    let ok = run_filtered(&p, || match std::thread::spawn(|| 7).join() {
        Ok(7) => 0,
        _ => 2,
    });
    assert_eq!(ok, ChildExit::Exited(0));
    let fork = run_filtered(&p, || {
        sys(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]);
        0
    });
    assert_eq!(fork, ChildExit::Signaled(SIGSYS));
    let clone3 = run_filtered(&p, || {
        if sys(libc::SYS_clone3, [0, 0, 0, 0, 0, 0]) == -(libc::ENOSYS as i64) {
            0
        } else {
            2
        }
    });
    assert_eq!(clone3, ChildExit::Exited(0));
}

#[test]
fn madvise_flags() {
    let p = prog("net_device_vhost_user");
    let run = |advice: i32| {
        run_filtered(&p, move || {
            let m = sys(
                libc::SYS_mmap,
                [
                    0,
                    8192,
                    3,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                    u64::MAX,
                    0,
                ],
            );
            if m <= 0 {
                return 2;
            }
            if sys(libc::SYS_madvise, [m as u64, 4096, advice as u64, 0, 0, 0]) != 0 {
                return 3;
            }
            0
        })
    };
    assert_eq!(run(libc::MADV_DONTNEED), ChildExit::Exited(0));
    assert_eq!(run(libc::MADV_DONTDUMP), ChildExit::Exited(0));
    assert_eq!(run(libc::MADV_HUGEPAGE), ChildExit::Signaled(SIGSYS));
    assert_eq!(run(libc::MADV_WILLNEED), ChildExit::Signaled(SIGSYS));
}

#[test]
fn ioctl_argument_rules() {
    let serial = prog("serial_device_vhost_user");
    let rng = prog("rng_device_vhost_user");
    // TIOCGWINSZ on a non-tty fails with ENOTTY but is allowed; TIOCSTI is not.
    let call = |req: u64| {
        move || {
            let mut ws = [0u16; 4];
            sys(libc::SYS_ioctl, [0, req, ws.as_mut_ptr() as u64, 0, 0, 0]);
            0
        }
    };
    assert_eq!(
        run_filtered(&serial, call(libc::TIOCGWINSZ)),
        ChildExit::Exited(0)
    );
    assert_eq!(
        run_filtered(&serial, call(libc::TIOCSTI)),
        ChildExit::Signaled(SIGSYS)
    );
    assert_eq!(
        run_filtered(&rng, call(libc::TIOCGWINSZ)),
        ChildExit::Signaled(SIGSYS)
    );
}

#[test]
fn block_io_syscalls_allowed() {
    let p = prog("block_device_vhost_user");
    let f = tempfile::tempfile().expect("tempfile");
    use std::os::unix::io::AsRawFd;
    let fd = f.as_raw_fd() as u64;
    let r = run_filtered(&p, move || {
        let data = *b"cordon-block-test";
        let iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        if sys(
            libc::SYS_pwritev,
            [fd, &iov as *const libc::iovec as u64, 1, 512, 0, 0],
        ) != 17
        {
            return 2;
        }
        if sys(libc::SYS_fdatasync, [fd, 0, 0, 0, 0, 0]) != 0 {
            return 3;
        }
        let mut back = [0u8; 17];
        let iov = libc::iovec {
            iov_base: back.as_mut_ptr() as *mut libc::c_void,
            iov_len: back.len(),
        };
        if sys(
            libc::SYS_preadv,
            [fd, &iov as *const libc::iovec as u64, 1, 512, 0, 0],
        ) != 17
            || back != data
        {
            return 4;
        }
        let punch = (libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE) as u64;
        if sys(libc::SYS_fallocate, [fd, punch, 0, 4096, 0, 0]) != 0 {
            return 5;
        }
        0
    });
    assert_eq!(r, ChildExit::Exited(0));
    // fallocate that would grow the file (mode 0) is outside the argument rule.
    let r = run_filtered(&p, move || {
        sys(libc::SYS_fallocate, [fd, 0, 0, 8192, 0, 0]);
        0
    });
    assert_eq!(r, ChildExit::Signaled(SIGSYS), "fallocate mode 0 must kill");
    let r = run_filtered(&prog("rng_device_vhost_user"), move || {
        let b = [0u8; 4];
        sys(libc::SYS_pwrite64, [fd, b.as_ptr() as u64, 4, 0, 0, 0]);
        0
    });
    assert_eq!(r, ChildExit::Signaled(SIGSYS), "rng may not pwrite");
}

/// Every syscall a shipped policy allows unconditionally really passes the kernel filter:
/// each is called with all-ones (invalid) arguments, so it fails harmlessly with EBADF,
/// EFAULT or EINVAL instead of acting, and the child must not die of SIGSYS.
#[test]
fn every_unconditional_allow_passes_the_kernel() {
    use cordon_seccomp::policy::Action;
    use cordon_seccomp::{parser::parse_file, source_policy_dir, Arch};
    // Calls that would end the child, change signal state or reach other processes.
    const UNSAFE: [&str; 10] = [
        "exit",
        "exit_group",
        "rt_sigreturn",
        "kill",
        "tkill",
        "tgkill",
        "vfork",
        "fork",
        "clone",
        "pause",
    ];
    let arch = Arch::native();
    for name in loadable() {
        let path = source_policy_dir(arch).join(format!("{name}.policy"));
        let policy = parse_file(&path, arch).unwrap_or_else(|e| panic!("{e}"));
        let nrs: Vec<(String, u32)> = policy
            .rules
            .iter()
            .filter(|r| r.filter.is_unconditional() && r.filter.action == Action::Allow)
            .filter(|r| !UNSAFE.contains(&r.name.as_str()))
            .map(|r| (r.name.clone(), r.nr))
            .collect();
        assert!(nrs.len() > 30, "{name}: {} unconditional allows", nrs.len());
        let r = run_filtered(&prog(name), || {
            for (_, nr) in &nrs {
                sys(*nr as libc::c_long, [u64::MAX; 6]);
            }
            0
        });
        assert_eq!(
            r,
            ChildExit::Exited(0),
            "{name}: an allowed syscall was refused"
        );
    }
}
