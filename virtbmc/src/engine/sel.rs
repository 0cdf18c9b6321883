//! The System Event Log (IPMI 2.0 §31): this BMC generates no events, so its SEL is always
//! empty and has no room; clients can still ask for its info, reserve it, read (nothing) and
//! read its clock.

use std::time::Instant;

use super::cc;
use super::reservation::Reservation;
use super::sdr::RecordRead;
use super::site::Site;

/// SEL version 1.5, as IPMI 2.0 keeps it (§31.2).
const SEL_VERSION: u8 = 0x51;

/// Get SEL Info (§31.2): no entries, no free space, no add or erase ever ("unspecified"
/// timestamps), no overflow; Reserve SEL is the only optional command supported.
pub fn info() -> [u8; 14] {
    let mut out = [0u8; 14];
    out[0] = SEL_VERSION;
    // out[1..3] entries, out[3..5] free space: 0.
    out[5..13].fill(0xFF);
    out[13] = 0x02; // Reserve SEL supported
    out
}

/// Get SEL Entry (§31.5): every record id names an absent record. A partial read still needs
/// the current reservation, which is checked first, as for a present record.
pub fn entry(d: &[u8], reservation: &Reservation) -> Result<Vec<u8>, u8> {
    let rq = RecordRead::parse(d)?;
    reservation.check(rq.reservation, rq.offset)?;
    Err(cc::NOT_PRESENT)
}

/// Get SEL Time (§31.10): seconds since the Unix epoch, LS byte first. Without a wall clock,
/// the time since this BMC started would be wrong by decades; the spec's "unspecified"
/// timestamp (FFFFFFFFh) says so instead.
pub fn time(site: &Site, now: Instant) -> [u8; 4] {
    site.clock
        .map_or(u32::MAX, |c| c.unix_seconds(now))
        .to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::site::WallClock;
    use std::time::Duration;

    #[test]
    fn empty_sel_reads_as_such() {
        assert_eq!(
            info(),
            [
                0x51, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02
            ]
        );
        let mut r = Reservation::default();
        // ipmitool's first read: record 0000h, whole record, no reservation.
        assert_eq!(entry(&[0, 0, 0, 0, 0, 0xFF], &r), Err(cc::NOT_PRESENT));
        assert_eq!(
            entry(&[9, 0, 1, 0, 4, 8], &r),
            Err(cc::RESERVATION_CANCELLED)
        );
        let id = r.reserve().to_le_bytes();
        assert_eq!(entry(&[id[0], id[1], 1, 0, 4, 8], &r), Err(cc::NOT_PRESENT));
        assert_eq!(entry(&[0, 0], &r), Err(cc::REQUEST_LENGTH_INVALID));
    }

    #[test]
    fn time_from_the_wall_clock_or_unspecified() {
        let at = Instant::now();
        let mut site = Site::default();
        assert_eq!(time(&site, at), [0xFF; 4]);
        site.clock = Some(WallClock {
            at,
            unix: Duration::from_secs(0x6543_2100),
        });
        assert_eq!(
            time(&site, at + Duration::from_secs(2)),
            [0x02, 0x21, 0x43, 0x65]
        );
    }
}
