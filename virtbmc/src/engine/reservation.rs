//! Reservations (IPMI 2.0 §31.4 for the SEL, §33.11 for the SDR repository): a client
//! reserves before reading a record in pieces, and a newer reservation cancels the older one,
//! so that a piece read under a stale reservation cannot be mixed with a changed record.

use super::cc;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The current reservation id; 0 before the first (0 is never handed out).
    current: u16,
}

impl Reservation {
    /// Hands out a new id, cancelling the previous one.
    pub fn reserve(&mut self) -> u16 {
        self.current = self.current.wrapping_add(1).max(1);
        self.current
    }

    /// A read from `offset` under reservation `id`: only a partial read (non-zero offset)
    /// needs the current reservation (§33.12: "only required for partial reads").
    pub fn check(&self, id: u16, offset: u8) -> Result<(), u8> {
        if offset == 0 || (id != 0 && id == self.current) {
            Ok(())
        } else {
            Err(cc::RESERVATION_CANCELLED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_reservation_cancels_the_older_one() {
        let mut r = Reservation::default();
        assert_eq!(r.check(0, 5), Err(cc::RESERVATION_CANCELLED));
        assert_eq!(r.check(0, 0), Ok(()));
        let a = r.reserve();
        assert_eq!(r.check(a, 5), Ok(()));
        let b = r.reserve();
        assert_ne!(a, b);
        assert_eq!(r.check(a, 5), Err(cc::RESERVATION_CANCELLED));
        assert_eq!(r.check(a, 0), Ok(()), "whole reads need none");
        assert_eq!(r.check(b, 5), Ok(()));
    }

    #[test]
    fn ids_wrap_past_zero() {
        let mut r = Reservation { current: u16::MAX };
        assert_eq!(r.reserve(), 1);
    }
}
