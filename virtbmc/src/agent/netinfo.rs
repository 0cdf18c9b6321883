//! The network interface behind the agent's listen address: its MAC address, netmask and
//! default gateway, which every BMC reports in its LAN configuration parameters. Looked up
//! once; a listen address on no interface (0.0.0.0, IPv6) leaves them unknown (zero).

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr};

use crate::engine::site::LanInterface;

/// One interface as getifaddrs(3) lists it: its IPv4 addresses with netmasks, its MAC.
#[derive(Debug, Default)]
struct Interface {
    name: String,
    v4: Vec<(Ipv4Addr, Ipv4Addr)>,
    mac: Option<[u8; 6]>,
}

/// The interface holding `ip`, if this network namespace has one.
pub fn lan_interface(ip: IpAddr) -> Option<LanInterface> {
    let IpAddr::V4(ip) = ip else {
        return None;
    };
    if ip.is_unspecified() {
        return None;
    }
    let all = interfaces();
    let (iface, netmask) = all.iter().find_map(|i| {
        i.v4.iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, mask)| (i, *mask))
    })?;
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    Some(LanInterface {
        mac: iface.mac.unwrap_or([0; 6]),
        netmask,
        gateway: default_gateway(&routes, &iface.name),
    })
}

/// Every interface of this network namespace, merged by name.
fn interfaces() -> Vec<Interface> {
    let mut out: Vec<Interface> = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read and free once below; every
    // pointer in it is checked for null before use and read as the type its family names.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let ifa = &*p;
            p = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            let i = match out.iter().position(|i| i.name == name) {
                Some(i) => i,
                None => {
                    out.push(Interface {
                        name,
                        ..Interface::default()
                    });
                    out.len() - 1
                }
            };
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let mask = if ifa.ifa_netmask.is_null() {
                        Ipv4Addr::UNSPECIFIED
                    } else {
                        let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                        Ipv4Addr::from(u32::from_be(m.sin_addr.s_addr))
                    };
                    out[i]
                        .v4
                        .push((Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), mask));
                }
                libc::AF_PACKET => {
                    let ll = &*(ifa.ifa_addr as *const libc::sockaddr_ll);
                    if ll.sll_halen == 6 {
                        let mut mac = [0u8; 6];
                        mac.copy_from_slice(&ll.sll_addr[..6]);
                        out[i].mac = Some(mac);
                    }
                }
                _ => {}
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The default route's gateway through `iface`, from /proc/net/route (this namespace's):
/// addresses there are the network-order bytes printed as a host-order hexadecimal number.
fn default_gateway(routes: &str, iface: &str) -> Option<Ipv4Addr> {
    routes.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (name, dest, gw, mask) = (f.first()?, f.get(1)?, f.get(2)?, f.get(7)?);
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        if *name != iface || hex(dest)? != 0 || hex(mask)? != 0 || hex(gw)? == 0 {
            return None;
        }
        Some(Ipv4Addr::from(hex(gw)?.to_ne_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateway_of_the_interface_only() {
        let gw = Ipv4Addr::new(10, 254, 23, 254);
        let hex = format!("{:08X}", u32::from_ne_bytes(gw.octets()));
        let routes = format!(
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
             eth1\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth0\t0017FE0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
             eth0\t00000000\t{hex}\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        );
        assert_eq!(default_gateway(&routes, "eth0"), Some(gw));
        assert_eq!(default_gateway(&routes, "eth2"), None);
        assert_eq!(default_gateway("garbage\nno fields", "eth0"), None);
    }

    #[test]
    fn loopback_is_found_and_unspecified_is_not() {
        let lo = lan_interface("127.0.0.1".parse().unwrap()).expect("lo has 127.0.0.1");
        assert_eq!(lo.netmask, Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(lan_interface("0.0.0.0".parse().unwrap()), None);
        assert_eq!(lan_interface("::1".parse().unwrap()), None);
    }
}
