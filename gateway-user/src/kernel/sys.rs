//! The few system interfaces aya does not wrap: bpffs mounting, forced link detach, interface
//! link types, waiting out running XDP programs.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use anyhow::{Context as _, bail};
use aya_obj::generated::bpf_cmd;
use gateway_common::enums::LinkType;

/// `statfs.f_type` of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is conventionally mounted.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid C string and `st` a properly sized out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Makes sure `dir` is on a bpffs and exists: mounts bpffs on /sys/fs/bpf if it is not mounted
/// (minimal systems and fresh namespaces often lack it), then creates `dir`.
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            bail!("{}: no existing parent directory", dir.display());
        }
    }
    if !is_bpffs(&probe).with_context(|| format!("statfs {}", probe.display()))? {
        if dir.starts_with(BPFFS_ROOT)
            && Path::new(BPFFS_ROOT).exists()
            && !is_bpffs(Path::new(BPFFS_ROOT))?
        {
            let target = CString::new(BPFFS_ROOT)?;
            let fstype = CString::new("bpf")?;
            let opts = CString::new("mode=0700")?;
            // SAFETY: all pointers are valid C strings for the duration of the call.
            let rc = unsafe {
                libc::mount(
                    fstype.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    0,
                    opts.as_ptr().cast(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
            }
            tracing::info!("mounted bpffs on {BPFFS_ROOT}");
        } else {
            bail!(
                "{} is not on a bpffs (mount -t bpf bpf {BPFFS_ROOT})",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(())
}

/// The `bpf` system call `cmd` with the attribute struct `attr` (the kernel reads only
/// `size_of::<A>()` bytes of it); the call's non-negative result.
///
/// # Safety
/// `attr` must be at least as large as the command's attribute struct, zero where unused, and
/// every pointer in it must point at a live buffer as large as the command reads or writes.
pub(super) unsafe fn bpf<A>(cmd: bpf_cmd, attr: &mut A) -> io::Result<i64> {
    // SAFETY: `attr` is a live struct of `size_of::<A>()` bytes; the caller vouches for its
    // contents and the buffers it points at.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut A,
            size_of::<A>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned BPF object.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = [0u64; 4];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: BPF_OBJ_GET reads 20 bytes: the path pointer (to `c`, alive across the call)
    // and zeroed flags.
    let fd = unsafe { bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) }?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches the link pinned at `path` from its hook even if other processes (a running daemon)
/// still hold it open, then removes the pin.
pub fn force_detach_link(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = obj_get(path).with_context(|| format!("opening pinned link {}", path.display()))?;
    let mut attr = [0u64; 4];
    attr[0] = fd.as_raw_fd() as u64;
    // SAFETY: BPF_LINK_DETACH reads 4 bytes: the link's descriptor; no pointers.
    match unsafe { bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr) } {
        Ok(_) => {}
        // Already detached (its interface went away): only the pin is left.
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
        Err(e) => return Err(e).with_context(|| format!("detaching link {}", path.display())),
    }
    std::fs::remove_file(path).with_context(|| format!("removing pin {}", path.display()))?;
    Ok(())
}

/// The interface index of `name`.
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = CString::new(name)?;
    // SAFETY: `c` is a valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("interface {name} does not exist");
    }
    Ok(idx)
}

/// ARPHRD types of links whose frames start at the IP header.
const ARPHRD_RAW_IP: &[u32] = &[
    519,   // ARPHRD_RAWIP (rmnet, some modems)
    65534, // ARPHRD_NONE (tun, qmi_wwan in raw-ip mode)
    512,   // ARPHRD_PPP
    776,   // ARPHRD_SIT
    778,   // ARPHRD_IPGRE
];
const ARPHRD_ETHER: u32 = 1;

/// The ARPHRD type of interface `name`, asked of the kernel (SIOCGIFHWADDR) in this process's
/// network namespace. (/sys/class/net shows the namespace that mounted /sys, which is not ours
/// when the daemon runs in a namespace entered with setns.)
fn arphrd(name: &str) -> anyhow::Result<u32> {
    use std::os::fd::AsRawFd as _;
    if name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name} is too long");
    }
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket for SIOCGIFHWADDR");
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name (the rest is zero).
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("interface {name}: SIOCGIFHWADDR"));
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member of the union.
    Ok(u32::from(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family }))
}

/// The link type of interface `name`, from its ARPHRD type.
pub fn detect_link(name: &str) -> anyhow::Result<LinkType> {
    let arphrd = arphrd(name)?;
    if arphrd == ARPHRD_ETHER {
        Ok(LinkType::Ethernet)
    } else if ARPHRD_RAW_IP.contains(&arphrd) {
        Ok(LinkType::RawIp)
    } else {
        bail!(
            "interface {name} has link type ARPHRD {arphrd}, which the filter does not parse; set link = \"ethernet\" or \"raw-ip\" if you know better"
        )
    }
}

/// Now on the clock of `bpf_ktime_get_boot_ns` (`CLOCK_BOOTTIME`), in nanoseconds.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits until every XDP program run that started before the call has finished.
///
/// XDP programs run inside RCU read-side critical sections (NAPI polls with bottom halves off;
/// `BPF_PROG_TEST_RUN` under `rcu_read_lock`), so an RCU grace period covers them all.
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` is the system call that waits for one
/// (`synchronize_rcu`), typically 10 to 20 ms. On kernels where it is unavailable (nohz_full),
/// sleeps for `fallback` instead.
pub fn wait_for_running_programs(fallback: std::time::Duration) {
    // SAFETY: membarrier takes no pointers; the command and flags are plain integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            libc::MEMBARRIER_CMD_GLOBAL,
            0 as libc::c_uint,
            0 as libc::c_int,
        )
    };
    if r != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "membarrier unavailable; sleeping out the grace period"
        );
        std::thread::sleep(fallback);
    }
}
