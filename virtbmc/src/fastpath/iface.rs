//! What kind of device an interface is, to pick the XDP mode in `auto`.

use std::path::Path;

/// The driver name the kernel reports for `iface` (ethtool GDRVINFO), e.g. "veth".
/// Works in the caller's network namespace, unlike /sys, which shows the mounter's.
pub(super) fn driver(iface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    if iface.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: plain C structs, zero is a valid value for all of them.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket only used for this ioctl and closed right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: ifr points at info, both live across the call.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr) };
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let end = info
        .driver
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// veth (by driver name), or any device the kernel lists under /sys/devices/virtual.
pub(super) fn is_virtual(iface: &str) -> bool {
    if driver(iface).is_some_and(|d| matches!(d.as_str(), "veth" | "bridge" | "tun" | "dummy")) {
        return true;
    }
    std::fs::canonicalize(Path::new("/sys/class/net").join(iface))
        .map(|p| p.starts_with("/sys/devices/virtual"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_virtual() {
        // lo has no ethtool driver info but lives under /sys/devices/virtual.
        assert!(super::is_virtual("lo"));
        assert!(!super::is_virtual("no-such-interface0"));
    }
}
