//! Our one channel: an 802.3 LAN channel, number [`LAN_CHANNEL`], that "this channel" (0x0E)
//! also names. Get Channel Info and Get Channel Access describe it (IPMI 2.0 §22.23, §22.24).

use super::cc;
use super::commands::LAN_CHANNEL;

const THIS_CHANNEL: u8 = 0x0E;

/// Whether a request's channel byte (low nibble) names our channel.
pub fn is_ours(byte: u8) -> bool {
    matches!(byte & 0x0F, THIS_CHANNEL | LAN_CHANNEL)
}

/// Get Channel Info (IPMI 2.0 §22.24), mandatory in IPMI 2.0: an 802.3 LAN channel speaking
/// IPMB-1.0 framing, multi-session, with the IPMI IANA as vendor.
pub fn channel_info(d: &[u8], active: usize) -> (u8, Vec<u8>) {
    if d.len() != 1 {
        return (cc::REQUEST_LENGTH_INVALID, Vec::new());
    }
    if !is_ours(d[0]) {
        return (cc::INVALID_DATA_FIELD, Vec::new());
    }
    let sessions = 0x80 | (active.min(0x3F) as u8);
    (
        cc::OK,
        vec![
            LAN_CHANNEL,
            0x04,
            0x01,
            sessions,
            0xF2,
            0x1B,
            0x00,
            0x00,
            0x00,
        ],
    )
}

/// Get Channel Access (IPMI 2.0 §22.23): the same answer for the non-volatile (01b) and
/// volatile (10b) settings, since nothing can change them: always available, per-message and
/// user-level authentication enabled, PEF alerting disabled (this BMC sends no alerts), and
/// an Administrator privilege limit.
pub fn channel_access(d: &[u8]) -> Result<[u8; 2], u8> {
    let [chan, which] = d else {
        return Err(cc::REQUEST_LENGTH_INVALID);
    };
    if !is_ours(*chan) || !matches!(which >> 6, 0b01 | 0b10) {
        return Err(cc::INVALID_DATA_FIELD);
    }
    const ALERTING_DISABLED: u8 = 0x20;
    const ALWAYS_AVAILABLE: u8 = 0x02;
    Ok([ALERTING_DISABLED | ALWAYS_AVAILABLE, 0x04])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_for_both_setting_kinds_on_our_channel_only() {
        assert_eq!(channel_access(&[0x0E, 0x80]), Ok([0x22, 0x04]));
        assert_eq!(channel_access(&[0x01, 0x40]), Ok([0x22, 0x04]));
        assert_eq!(channel_access(&[0x01, 0x00]), Err(cc::INVALID_DATA_FIELD));
        assert_eq!(channel_access(&[0x01, 0xC0]), Err(cc::INVALID_DATA_FIELD));
        assert_eq!(channel_access(&[0x02, 0x80]), Err(cc::INVALID_DATA_FIELD));
        assert_eq!(channel_access(&[0x01]), Err(cc::REQUEST_LENGTH_INVALID));
    }

    #[test]
    fn info_counts_active_sessions() {
        assert_eq!(
            channel_info(&[0x0E], 2),
            (0, vec![1, 4, 1, 0x82, 0xF2, 0x1B, 0, 0, 0])
        );
        assert_eq!(channel_info(&[0x05], 0).0, cc::INVALID_DATA_FIELD);
        assert_eq!(channel_info(&[], 0).0, cc::REQUEST_LENGTH_INVALID);
    }
}
