//! LAN configuration parameters (IPMI 2.0 §23, table 23-4), read-only: they describe how
//! clients reach this BMC (the agent's address and this BMC's port) and what it accepts (auth
//! types, cipher suites), all of which come from the agent's configuration, not from IPMI.

use std::net::Ipv4Addr;

use super::cc;
use super::channel;
use super::config::BmcConfig;
use super::site::Site;

/// Parameter revision 1.1 (§23.2): "11h for parameters in this specification".
const REVISION: u8 = 0x11;
/// Auth type bits (§22.13 byte 2): none, MD5, straight password.
const AUTH_NONE: u8 = 0x01;
const AUTH_MD5: u8 = 0x04;
const AUTH_PASSWORD: u8 = 0x10;
/// Privilege nibble of a cipher suite entry that may run sessions up to Administrator.
const SUITE_MAX_ADMIN: u8 = 0x04;

/// The parameters this BMC answers (the ones `ipmitool lan print` reads, and the port).
mod param {
    pub const SET_IN_PROGRESS: u8 = 0;
    pub const AUTH_SUPPORT: u8 = 1;
    pub const AUTH_ENABLES: u8 = 2;
    pub const IP_ADDRESS: u8 = 3;
    pub const IP_SOURCE: u8 = 4;
    pub const MAC_ADDRESS: u8 = 5;
    pub const SUBNET_MASK: u8 = 6;
    pub const IPV4_HEADER: u8 = 7;
    pub const PRIMARY_RMCP_PORT: u8 = 8;
    pub const ARP_CONTROL: u8 = 10;
    pub const GRATUITOUS_ARP_INTERVAL: u8 = 11;
    pub const GATEWAY_IP: u8 = 12;
    pub const GATEWAY_MAC: u8 = 13;
    pub const BACKUP_GATEWAY_IP: u8 = 14;
    pub const BACKUP_GATEWAY_MAC: u8 = 15;
    pub const COMMUNITY: u8 = 16;
    pub const DESTINATIONS: u8 = 17;
    pub const VLAN_ID: u8 = 20;
    pub const VLAN_PRIORITY: u8 = 21;
    pub const SUITE_COUNT: u8 = 22;
    pub const SUITES: u8 = 23;
    pub const SUITE_PRIVILEGES: u8 = 24;
    pub const BAD_PASSWORD_THRESHOLD: u8 = 26;
}

/// The auth types IPMI 1.5 sessions may use: what Get Channel Authentication Capabilities
/// offers, for every privilege level.
fn auth_types(config: &BmcConfig) -> u8 {
    AUTH_MD5 | AUTH_PASSWORD | if config.allow_auth_none { AUTH_NONE } else { 0 }
}

/// The value of a parameter; None when we do not have it.
fn value(p: u8, config: &BmcConfig, site: &Site) -> Option<Vec<u8>> {
    let ip = site.ipv4();
    let lan = site.lan;
    let v = match p {
        param::SET_IN_PROGRESS => vec![0x00], // set complete
        param::AUTH_SUPPORT => vec![auth_types(config)],
        // Callback, User, Operator, Administrator, then OEM (never granted).
        param::AUTH_ENABLES => {
            let t = auth_types(config);
            vec![t, t, t, t, 0x00]
        }
        param::IP_ADDRESS => ip.octets().to_vec(),
        // Static: the agent's address is configured, not leased by this BMC.
        param::IP_SOURCE => vec![if ip.is_unspecified() { 0x00 } else { 0x01 }],
        param::MAC_ADDRESS => lan.map_or([0; 6], |l| l.mac).to_vec(),
        param::SUBNET_MASK => lan
            .map_or(Ipv4Addr::UNSPECIFIED, |l| l.netmask)
            .octets()
            .to_vec(),
        // The defaults of §23.4: TTL 64, don't fragment, TOS "minimize delay".
        param::IPV4_HEADER => vec![0x40, 0x40, 0x10],
        param::PRIMARY_RMCP_PORT => site.local.port().to_le_bytes().to_vec(),
        // ARP is answered for the address (by the host); none is generated unasked.
        param::ARP_CONTROL => vec![0x02],
        param::GRATUITOUS_ARP_INTERVAL => vec![0x00],
        param::GATEWAY_IP => lan
            .and_then(|l| l.gateway)
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
            .octets()
            .to_vec(),
        param::BACKUP_GATEWAY_IP => vec![0; 4],
        param::GATEWAY_MAC | param::BACKUP_GATEWAY_MAC => vec![0; 6],
        // No alerts are sent: no community string, no destinations.
        param::COMMUNITY => vec![0; 18],
        param::DESTINATIONS => vec![0x00],
        param::VLAN_ID => vec![0x00, 0x00], // disabled
        param::VLAN_PRIORITY => vec![0x00],
        param::SUITE_COUNT => vec![suite_ids(config).len() as u8],
        param::SUITES => {
            let mut v = vec![0x00];
            v.extend(suite_ids(config));
            v
        }
        // One nibble per cipher suite entry (in the order of parameter 23), 16 entries.
        param::SUITE_PRIVILEGES => {
            let n = suite_ids(config).len();
            let mut v = vec![0u8; 9];
            for i in 0..n {
                v[1 + i / 2] |= SUITE_MAX_ADMIN << (4 * (i % 2));
            }
            v
        }
        // No lockout after bad passwords (RAKP answers are rate-limited instead).
        param::BAD_PASSWORD_THRESHOLD => vec![0; 6],
        _ => return None,
    };
    Some(v)
}

/// The enabled cipher suite ids, at most the 16 entries parameter 23 holds.
fn suite_ids(config: &BmcConfig) -> Vec<u8> {
    config.suites().map(|s| s.id).take(16).collect()
}

/// Get LAN Configuration Parameters (§23.2): channel (bit 7: revision only), parameter, set
/// and block selectors (none of our parameters has sets or blocks).
pub fn get(d: &[u8], config: &BmcConfig, site: &Site) -> Result<Vec<u8>, u8> {
    let [chan, p, _set, _block] = d else {
        return Err(cc::REQUEST_LENGTH_INVALID);
    };
    if !channel::is_ours(*chan) || chan & 0x70 != 0 {
        return Err(cc::INVALID_DATA_FIELD);
    }
    let v = value(*p, config, site).ok_or(cc::PARAMETER_NOT_SUPPORTED)?;
    let mut out = vec![REVISION];
    if chan & 0x80 == 0 {
        out.extend_from_slice(&v);
    }
    Ok(out)
}

/// Set LAN Configuration Parameters (§23.1): every parameter we have is read-only (82h); the
/// others are not supported (80h).
pub fn set(d: &[u8], config: &BmcConfig, site: &Site) -> u8 {
    let [chan, p, _, ..] = d else {
        return cc::REQUEST_LENGTH_INVALID;
    };
    if !channel::is_ours(*chan) {
        return cc::INVALID_DATA_FIELD;
    }
    match value(*p, config, site) {
        Some(_) => cc::PARAMETER_READ_ONLY,
        None => cc::PARAMETER_NOT_SUPPORTED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::site::LanInterface;

    fn site() -> Site {
        Site {
            local: "10.254.23.1:6230".parse().unwrap(),
            lan: Some(LanInterface {
                mac: [0x02, 0, 0, 0, 0, 1],
                netmask: Ipv4Addr::new(255, 255, 255, 0),
                gateway: Some(Ipv4Addr::new(10, 254, 23, 254)),
            }),
            ..Site::default()
        }
    }

    fn get1(p: u8) -> Result<Vec<u8>, u8> {
        get(&[0x01, p, 0, 0], &BmcConfig::new(vec![]), &site())
    }

    #[test]
    fn address_port_and_interface() {
        assert_eq!(get1(3), Ok(vec![0x11, 10, 254, 23, 1]));
        assert_eq!(get1(4), Ok(vec![0x11, 0x01]));
        assert_eq!(get1(5), Ok(vec![0x11, 2, 0, 0, 0, 0, 1]));
        assert_eq!(get1(6), Ok(vec![0x11, 255, 255, 255, 0]));
        assert_eq!(get1(8), Ok(vec![0x11, 0x56, 0x18]), "6230, LS byte first");
        assert_eq!(get1(12), Ok(vec![0x11, 10, 254, 23, 254]));
        let bare = Site::default();
        let c = BmcConfig::new(vec![]);
        assert_eq!(get(&[1, 3, 0, 0], &c, &bare), Ok(vec![0x11, 0, 0, 0, 0]));
        assert_eq!(get(&[1, 4, 0, 0], &c, &bare), Ok(vec![0x11, 0x00]));
        assert_eq!(get(&[1, 8, 0, 0], &c, &bare), Ok(vec![0x11, 0x6F, 0x02]));
    }

    #[test]
    fn auth_types_and_cipher_suites_follow_the_config() {
        assert_eq!(get1(1), Ok(vec![0x11, 0x14]));
        assert_eq!(get1(2), Ok(vec![0x11, 0x14, 0x14, 0x14, 0x14, 0x00]));
        assert_eq!(get1(22), Ok(vec![0x11, 2]));
        assert_eq!(get1(23), Ok(vec![0x11, 0, 3, 17]));
        assert_eq!(get1(24), Ok(vec![0x11, 0, 0x44, 0, 0, 0, 0, 0, 0, 0]));
        let mut c = BmcConfig::new(vec![]);
        c.allow_auth_none = true;
        c.cipher_suites = vec![1, 2, 3];
        assert_eq!(get(&[1, 1, 0, 0], &c, &site()), Ok(vec![0x11, 0x15]));
        assert_eq!(
            get(&[1, 24, 0, 0], &c, &site()),
            Ok(vec![0x11, 0, 0x44, 0x04, 0, 0, 0, 0, 0, 0])
        );
    }

    #[test]
    fn every_parameter_lan_print_reads_has_its_length() {
        for (p, len) in [
            (0, 1),
            (1, 1),
            (2, 5),
            (3, 4),
            (4, 1),
            (5, 6),
            (6, 4),
            (7, 3),
            (10, 1),
            (11, 1),
            (12, 4),
            (13, 6),
            (14, 4),
            (15, 6),
            (16, 18),
            (20, 2),
            (21, 1),
            (22, 1),
            (24, 9),
            (26, 6),
        ] {
            assert_eq!(get1(p).map(|v| v.len() - 1), Ok(len), "parameter {p}");
        }
    }

    #[test]
    fn revision_only_unknown_parameters_and_writes() {
        let c = BmcConfig::new(vec![]);
        assert_eq!(get(&[0x81, 3, 0, 0], &c, &site()), Ok(vec![0x11]));
        assert_eq!(get1(9), Err(cc::PARAMETER_NOT_SUPPORTED));
        assert_eq!(get1(0xC0), Err(cc::PARAMETER_NOT_SUPPORTED));
        assert_eq!(
            get(&[0x02, 3, 0, 0], &c, &site()),
            Err(cc::INVALID_DATA_FIELD)
        );
        assert_eq!(
            get(&[1, 3, 0], &c, &site()),
            Err(cc::REQUEST_LENGTH_INVALID)
        );
        assert_eq!(
            set(&[1, 3, 10, 0, 0, 9], &c, &site()),
            cc::PARAMETER_READ_ONLY
        );
        assert_eq!(set(&[1, 0, 1], &c, &site()), cc::PARAMETER_READ_ONLY);
        assert_eq!(set(&[1, 9, 1, 2], &c, &site()), cc::PARAMETER_NOT_SUPPORTED);
        assert_eq!(set(&[1, 3], &c, &site()), cc::REQUEST_LENGTH_INVALID);
        assert_eq!(
            set(&[2, 3, 1, 2, 3, 4], &c, &site()),
            cc::INVALID_DATA_FIELD
        );
    }
}
