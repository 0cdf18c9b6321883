//! The user table as IPMI numbers it (IPMI 2.0 §22.27, §22.29): user ids 1..N are the
//! configured users in order; the slots after them, up to [`max_user_ids`], are empty, as on a
//! BMC with unused user slots. Users come from the configuration only: nothing here writes.

use super::cc;
use super::channel;
use super::config::BmcConfig;

/// The user slots a BMC reports when fewer users are configured (many physical BMCs have 16).
pub const USER_SLOTS: usize = 16;
/// User ids are six bits wide.
const MAX_ID: usize = 63;

/// How many user ids this BMC has: at least [`USER_SLOTS`], more if more users are
/// configured, at most 63. The same number answers both commands.
pub fn max_user_ids(config: &BmcConfig) -> u8 {
    config.users.len().clamp(USER_SLOTS, MAX_ID) as u8
}

/// The user id of a configured user (0, "no user", if it has none: it was removed or is past
/// id 63).
pub fn user_id(config: &BmcConfig, name: &str) -> u8 {
    config
        .users
        .iter()
        .position(|u| u.name == name)
        .filter(|i| *i < MAX_ID)
        .map_or(0, |i| i as u8 + 1)
}

/// Parses a user id byte: 1..=max, else invalid data (ipmitool reads 0xCC as "no such user").
fn slot(config: &BmcConfig, byte: u8) -> Result<usize, u8> {
    let id = (byte & 0x3F) as usize;
    if id == 0 || id > max_user_ids(config) as usize {
        return Err(cc::INVALID_DATA_FIELD);
    }
    Ok(id - 1)
}

/// Get User Access (IPMI 2.0 §22.27): channel, user id. A configured user may use IPMI
/// messaging up to its privilege; an empty slot is disabled with "no access" (0x0F).
pub fn get_user_access(d: &[u8], config: &BmcConfig) -> Result<Vec<u8>, u8> {
    let [chan, user] = d else {
        return Err(cc::REQUEST_LENGTH_INVALID);
    };
    if !channel::is_ours(*chan) {
        return Err(cc::INVALID_DATA_FIELD);
    }
    let index = slot(config, *user)?;
    let enabled = config.users.len().min(MAX_ID) as u8;
    let (status, access) = match config.users.get(index) {
        // Enabled (01b); IPMI messaging on (bit 4), link authentication off, not callback-only.
        Some(u) => (0x40, 0x10 | u.max_privilege.wire()),
        // Disabled (10b), no access.
        None => (0x80, 0x0F),
    };
    // Names are fixed: they come from the configuration, not from Set User Name.
    Ok(vec![
        max_user_ids(config),
        status | enabled,
        enabled,
        access,
    ])
}

/// Get User Name (IPMI 2.0 §22.29): 16 bytes, zero-padded; an empty slot has an empty name.
pub fn get_user_name(d: &[u8], config: &BmcConfig) -> Result<Vec<u8>, u8> {
    let [user] = d else {
        return Err(cc::REQUEST_LENGTH_INVALID);
    };
    let index = slot(config, *user)?;
    let mut name = vec![0u8; 16];
    if let Some(u) = config.users.get(index) {
        let n = u.name.as_bytes();
        name[..n.len().min(16)].copy_from_slice(&n[..n.len().min(16)]);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::{Privilege, User};

    fn config() -> BmcConfig {
        BmcConfig::new(vec![
            User::new("admin", "password", Privilege::Admin).unwrap(),
            User::new("viewer", "viewer", Privilege::User).unwrap(),
        ])
    }

    #[test]
    fn configured_users_in_order_then_empty_slots() {
        let c = config();
        assert_eq!(get_user_access(&[0x01, 1], &c), Ok(vec![16, 0x42, 2, 0x14]));
        assert_eq!(get_user_access(&[0x0E, 2], &c), Ok(vec![16, 0x42, 2, 0x12]));
        assert_eq!(
            get_user_access(&[0x01, 16], &c),
            Ok(vec![16, 0x82, 2, 0x0F])
        );
        let mut admin = b"admin".to_vec();
        admin.resize(16, 0);
        assert_eq!(get_user_name(&[1], &c), Ok(admin));
        assert_eq!(get_user_name(&[3], &c), Ok(vec![0; 16]));
        assert_eq!(user_id(&c, "viewer"), 2);
        assert_eq!(user_id(&c, "gone"), 0);
    }

    #[test]
    fn ids_out_of_range_and_bad_lengths() {
        let c = config();
        for id in [0u8, 17, 63] {
            assert_eq!(get_user_access(&[1, id], &c), Err(cc::INVALID_DATA_FIELD));
            assert_eq!(get_user_name(&[id], &c), Err(cc::INVALID_DATA_FIELD));
        }
        assert_eq!(get_user_access(&[2, 1], &c), Err(cc::INVALID_DATA_FIELD));
        assert_eq!(get_user_access(&[1], &c), Err(cc::REQUEST_LENGTH_INVALID));
        assert_eq!(get_user_name(&[], &c), Err(cc::REQUEST_LENGTH_INVALID));
    }

    #[test]
    fn many_users_raise_the_slot_count() {
        let users = (0..20)
            .map(|i| User::new(&format!("u{i}"), "pw", Privilege::User).unwrap())
            .collect();
        let c = BmcConfig::new(users);
        assert_eq!(max_user_ids(&c), 20);
        assert_eq!(get_user_access(&[1, 20], &c).unwrap()[3], 0x12);
        assert_eq!(get_user_access(&[1, 21], &c), Err(cc::INVALID_DATA_FIELD));
    }
}
