//! SOL configuration parameters (IPMI 2.0 §26.2, §26.3): what `ipmitool sol info` reads and
//! `sol set` writes. A BMC keeps them for its own life; writes take effect at once (the
//! set-in-progress parameter is a lock clients bracket their writes with, §26.3 table 26-5).

use std::time::Duration;

use super::cc;
use super::channel;
use super::commands::LAN_CHANNEL;
use super::config::Privilege;

/// Parameter revision (§26.3): 1.1, as present-day BMCs answer.
const REVISION: u8 = 0x11;

/// Bit rates a serial line of ours may be set to (§26.3 parameters 5 and 6): 0 "use the
/// serial port's own setting", then 9.6, 19.2, 38.4, 57.6 and 115.2 kbit/s.
const RATES: [u8; 6] = [0x00, 0x06, 0x07, 0x08, 0x09, 0x0A];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SolConfig {
    /// Parameter 0: 0 set complete, 1 set in progress, 2 commit write.
    pub set_in_progress: u8,
    /// Parameter 1, bit 0.
    pub enabled: bool,
    /// Parameter 2: bit 7 force encryption, bit 6 force authentication, bits 3:0 the
    /// privilege a session needs to activate SOL.
    pub force_encryption: bool,
    pub force_authentication: bool,
    pub privilege: Privilege,
    /// Parameter 3: accumulate interval in 5 ms units (1 or more) and send threshold (chars).
    pub accumulate_5ms: u8,
    pub send_threshold: u8,
    /// Parameter 4: retry count (bits 2:0) and retry interval in 10 ms units.
    pub retry_count: u8,
    pub retry_10ms: u8,
    /// Parameters 5 and 6.
    pub nv_rate: u8,
    pub volatile_rate: u8,
}

impl Default for SolConfig {
    /// Enabled for sessions at User privilege or above that encrypt and authenticate (what
    /// typed passwords deserve); a character goes out as soon as no packet is awaiting its
    /// acknowledgement (send threshold 1, as OpenBMC ships it, so typing echoes at once),
    /// and what the guest writes meanwhile follows in one packet; the 60 ms accumulate
    /// interval matters only to a larger threshold. An unacknowledged packet is sent again
    /// every 100 ms, 7 times.
    fn default() -> SolConfig {
        SolConfig {
            set_in_progress: 0,
            enabled: true,
            force_encryption: true,
            force_authentication: true,
            privilege: Privilege::User,
            accumulate_5ms: 12,
            send_threshold: 1,
            retry_count: 7,
            retry_10ms: 10,
            nv_rate: 0x0A,
            volatile_rate: 0x0A,
        }
    }
}

impl SolConfig {
    pub fn accumulate(&self) -> Duration {
        Duration::from_millis(5 * u64::from(self.accumulate_5ms.max(1)))
    }

    pub fn retry_interval(&self) -> Duration {
        Duration::from_millis(10 * u64::from(self.retry_10ms.max(1)))
    }

    fn auth_byte(&self) -> u8 {
        (u8::from(self.force_encryption) << 7)
            | (u8::from(self.force_authentication) << 6)
            | self.privilege.wire()
    }

    /// Get SOL Configuration Parameters (§26.3): [channel (bit 7: revision only), parameter,
    /// set selector, block selector]. `port` is the BMC's UDP port (parameter 8).
    pub fn get(&self, d: &[u8], port: u16) -> Result<Vec<u8>, u8> {
        let [ch, param, _set, _block] = *d else {
            return Err(cc::REQUEST_LENGTH_INVALID);
        };
        if !channel::is_ours(ch) || ch & 0x70 != 0 {
            return Err(cc::INVALID_DATA_FIELD);
        }
        let data: Vec<u8> = match param {
            0 => vec![self.set_in_progress],
            1 => vec![u8::from(self.enabled)],
            2 => vec![self.auth_byte()],
            3 => vec![self.accumulate_5ms, self.send_threshold],
            4 => vec![self.retry_count, self.retry_10ms],
            5 => vec![self.nv_rate],
            6 => vec![self.volatile_rate],
            7 => vec![LAN_CHANNEL],
            8 => port.to_le_bytes().to_vec(),
            _ => return Err(cc::PARAMETER_NOT_SUPPORTED),
        };
        let mut out = vec![REVISION];
        if ch & 0x80 == 0 {
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// Set SOL Configuration Parameters (§26.2): [channel, parameter, data...].
    pub fn set(&mut self, d: &[u8]) -> u8 {
        let [ch, param, data @ ..] = d else {
            return cc::REQUEST_LENGTH_INVALID;
        };
        if !channel::is_ours(*ch) || ch & 0xF0 != 0 {
            return cc::INVALID_DATA_FIELD;
        }
        let want = match param {
            0 | 1 | 2 | 5 | 6 => 1,
            3 | 4 => 2,
            7 | 8 => return cc::PARAMETER_READ_ONLY,
            _ => return cc::PARAMETER_NOT_SUPPORTED,
        };
        if data.len() != want {
            return cc::REQUEST_LENGTH_INVALID;
        }
        let v = data[0];
        match param {
            // Writes apply at once, so a commit completes the set. A second "set in progress"
            // is not refused (§26.2 allows 81h): a client killed between its bracketing
            // writes would otherwise lock the parameters for the BMC's whole life.
            0 => match v & 0x03 {
                3 => return cc::INVALID_DATA_FIELD,
                s => self.set_in_progress = if s == 2 { 0 } else { s },
            },
            1 if v & 0xFE == 0 => self.enabled = v == 1,
            2 => match Privilege::from_wire(v & 0x0F) {
                Some(p) if v & 0x30 == 0 => {
                    self.force_encryption = v & 0x80 != 0;
                    self.force_authentication = v & 0x40 != 0;
                    self.privilege = p;
                }
                _ => return cc::INVALID_DATA_FIELD,
            },
            3 if v != 0 => (self.accumulate_5ms, self.send_threshold) = (v, data[1]),
            4 if v & 0xF8 == 0 => (self.retry_count, self.retry_10ms) = (v, data[1]),
            5 if RATES.contains(&v) => self.nv_rate = v,
            6 if RATES.contains(&v) => self.volatile_rate = v,
            _ => return cc::INVALID_DATA_FIELD,
        }
        cc::OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_parameter_with_the_revision_first() {
        let c = SolConfig::default();
        let get = |p: u8| c.get(&[0x0E, p, 0, 0], 0x26F);
        assert_eq!(get(0), Ok(vec![0x11, 0]));
        assert_eq!(get(1), Ok(vec![0x11, 1]));
        assert_eq!(get(2), Ok(vec![0x11, 0xC2]));
        assert_eq!(get(3), Ok(vec![0x11, 12, 1]));
        assert_eq!(get(4), Ok(vec![0x11, 7, 10]));
        assert_eq!(get(5), Ok(vec![0x11, 0x0A]));
        assert_eq!(get(6), Ok(vec![0x11, 0x0A]));
        assert_eq!(get(7), Ok(vec![0x11, 1]));
        assert_eq!(get(8), Ok(vec![0x11, 0x6F, 0x02]));
        assert_eq!(get(9), Err(cc::PARAMETER_NOT_SUPPORTED));
        assert_eq!(c.get(&[0x8E, 3, 0, 0], 623), Ok(vec![0x11]));
        assert_eq!(c.get(&[0x05, 1, 0, 0], 623), Err(cc::INVALID_DATA_FIELD));
        assert_eq!(c.get(&[0x0E, 1, 0], 623), Err(cc::REQUEST_LENGTH_INVALID));
    }

    #[test]
    fn writes_read_back_and_bad_values_are_refused() {
        let mut c = SolConfig::default();
        assert_eq!(c.set(&[0x0E, 0, 1]), cc::OK);
        assert_eq!(c.get(&[0x0E, 0, 0, 0], 623), Ok(vec![0x11, 1]));
        assert_eq!(c.set(&[0x0E, 1, 0]), cc::OK);
        assert_eq!(c.set(&[0x01, 2, 0x84]), cc::OK);
        assert_eq!(c.set(&[0x01, 3, 20, 1]), cc::OK);
        assert_eq!(c.set(&[0x01, 4, 3, 50]), cc::OK);
        assert_eq!(c.set(&[0x01, 6, 0x06]), cc::OK);
        assert_eq!(c.set(&[0x0E, 0, 2]), cc::OK);
        assert_eq!(c.set(&[0x0E, 0, 0]), cc::OK);
        let get = |p: u8| c.get(&[0x0E, p, 0, 0], 623).unwrap()[1..].to_vec();
        assert_eq!(
            (0..7).map(get).collect::<Vec<_>>(),
            [
                vec![0],
                vec![0],
                vec![0x84],
                vec![20, 1],
                vec![3, 50],
                vec![0x0A],
                vec![0x06]
            ]
        );
        assert_eq!(c.retry_interval(), Duration::from_millis(500));
        for bad in [
            &[0x0E, 1, 2][..],
            &[0x0E, 2, 0x05],
            &[0x0E, 3, 0, 1],
            &[0x0E, 4, 8, 1],
            &[0x0E, 5, 0x0B],
            &[0x0E, 0, 3],
        ] {
            assert_eq!(c.set(bad), cc::INVALID_DATA_FIELD, "{bad:?}");
        }
        assert_eq!(c.set(&[0x0E, 8, 1, 2]), cc::PARAMETER_READ_ONLY);
        assert_eq!(c.set(&[0x0E, 9, 1]), cc::PARAMETER_NOT_SUPPORTED);
        assert_eq!(c.set(&[0x0E, 3, 1]), cc::REQUEST_LENGTH_INVALID);
        assert_eq!(c, {
            let mut same = c;
            same.set(&[0x0E, 7, 1]);
            same
        });
    }
}
