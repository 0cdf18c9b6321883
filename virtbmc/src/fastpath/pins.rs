//! bpffs and the pin folder: mount bpffs when missing, clear what a previous run left.

use std::{io, path::Path};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes sure `dir`'s parent is on a bpffs (mounting /sys/fs/bpf if it is not) and that `dir`
/// exists and is empty: pins of a previous run are removed.
pub(super) fn prepare(dir: &Path) -> io::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        log::info!("fastpath: mounting bpffs on /sys/fs/bpf");
        mount_bpffs(root)?;
    }
    if dir.exists() {
        let mut stale = 0;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            std::fs::remove_file(e.path())?;
            stale += 1;
        }
        if stale > 0 {
            log::warn!(
                "fastpath: removed {stale} stale pin(s) under {}",
                dir.display()
            );
        }
    } else {
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}

/// Removes the pins and the folder; the maps go away with the last reference.
pub(super) fn remove(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Err(err) = std::fs::remove_file(e.path()) {
                log::warn!("fastpath: removing pin {}: {err}", e.path().display());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

fn mount_bpffs(p: &Path) -> io::Result<()> {
    std::fs::create_dir_all(p)?;
    let target = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
    let src = c"bpf";
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a program named `name` other than ones this process holds is loaded: a sign that
/// a crashed run left it attached through netlink.
pub(super) fn stale_program_present(name: &str) -> bool {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str() == Some(name))
        .count()
        > 1
}

/// Detaches netlink-attached XDP programs (generic and driver) from `iface`.
pub(super) fn detach_netlink(iface: &str) {
    for kind in ["xdpgeneric", "xdpdrv"] {
        let r = std::process::Command::new("ip")
            .args(["link", "set", "dev", iface, kind, "off"])
            .status();
        if let Err(e) = r {
            log::warn!("fastpath: ip link set dev {iface} {kind} off: {e}");
        }
    }
}
