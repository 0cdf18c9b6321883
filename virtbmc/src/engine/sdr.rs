//! The Sensor Data Record repository (IPMI 2.0 §33, records in §43): fixed records that
//! describe the machine's sensors, read with Get SDR Repository Info, Reserve SDR Repository
//! and Get SDR, in pieces as clients do. Nothing adds to it, so it never changes while a BMC
//! runs and its timestamps are "unspecified".

use std::sync::LazyLock;

use super::cc;
use super::commands::DEVICE_SUPPORT;
use super::reservation::Reservation;

/// SDR version 1.5, the format IPMI 2.0 keeps (§43).
const SDR_VERSION: u8 = 0x51;
const RECORD_COMPACT_SENSOR: u8 = 0x02;
const RECORD_MC_LOCATOR: u8 = 0x12;
/// The BMC's IPMB slave address: the owner of every sensor, on channel 0, LUN 0, so that
/// clients read them from the BMC itself instead of bridging.
pub const BMC_ADDRESS: u8 = 0x20;

/// Sensor numbers.
pub const SENSOR_ACPI_POWER: u8 = 0x01;
/// Sensor type and event/reading type of the ACPI power state sensor (§42.2, table 42-3:
/// "System ACPI Power State", sensor-specific offsets).
pub const SENSOR_TYPE_ACPI_POWER: u8 = 0x22;
pub const READING_SENSOR_SPECIFIC: u8 = 0x6F;

/// Entity ids (§43.14, table 43-13).
const ENTITY_SYSTEM_CHASSIS: u8 = 0x17;
const ENTITY_MANAGEMENT_MODULE: u8 = 0x06;

/// "No timestamp" (§37).
const UNSPECIFIED_TIME: [u8; 4] = [0xFF; 4];

/// The records, in order; record ids count from 1.
static RECORDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    vec![
        record(1, RECORD_COMPACT_SENSOR, &acpi_power_sensor()),
        record(2, RECORD_MC_LOCATOR, &bmc_locator()),
    ]
});

/// A record: header (id, version, type, length of the rest) and body.
fn record(id: u16, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(5 + body.len());
    r.extend_from_slice(&id.to_le_bytes());
    r.extend_from_slice(&[SDR_VERSION, kind, body.len() as u8]);
    r.extend_from_slice(body);
    r
}

/// An ID string type/length byte (8-bit ASCII + Latin 1, §43.15) and the string, at most 16
/// bytes.
fn id_string(s: &str, out: &mut Vec<u8>) {
    let b = &s.as_bytes()[..s.len().min(16)];
    out.push(0xC0 | b.len() as u8);
    out.extend_from_slice(b);
}

/// Compact Sensor Record (§43.2, table 43-2) of the discrete "System ACPI Power State"
/// sensor: readable states S0/G0 (offset 0) and S5/G2 (offset 5), scanned, no events.
fn acpi_power_sensor() -> Vec<u8> {
    let mut b = vec![
        BMC_ADDRESS,
        0x00, // channel 0, LUN 0
        SENSOR_ACPI_POWER,
        ENTITY_SYSTEM_CHASSIS,
        0x01, // physical entity, instance 1
        0x41, // initialization: scanning initialized; scanning enabled at power-up
        0x43, // capabilities: auto re-arm, no hysteresis, no thresholds, no events
        SENSOR_TYPE_ACPI_POWER,
        READING_SENSOR_SPECIFIC,
        0x00,
        0x00, // assertion event mask: none (no events are generated)
        0x00,
        0x00, // deassertion event mask: none
        0x21,
        0x00, // reading mask: offsets 0 (S0/G0) and 5 (S5/G2)
        0xC0, // units: no analog reading
        0x00, // base unit: unspecified
        0x00, // modifier unit: none
        0x01, // one sensor, no sharing
        0x00,
        0x00, // positive-going hysteresis
        0x00, // negative-going hysteresis
        0x00,
        0x00,
        0x00, // reserved
        0x00, // OEM
    ];
    id_string("ACPI Power State", &mut b);
    b
}

/// Management Controller Device Locator Record (§43.9, table 43-7) of this BMC.
fn bmc_locator() -> Vec<u8> {
    let mut b = vec![
        BMC_ADDRESS,
        0x00, // channel 0
        0x01, // no ACPI notifications; event message generation disabled (none are sent)
        DEVICE_SUPPORT,
        0x00,
        0x00,
        0x00, // reserved
        ENTITY_MANAGEMENT_MODULE,
        0x01, // instance 1
        0x00, // OEM
    ];
    id_string("virtbmc", &mut b);
    b
}

/// Get SDR Repository Info (§33.9): version, record count, no free space (the repository is
/// read-only), unspecified timestamps, and only Reserve SDR Repository as an optional command.
pub fn repository_info() -> [u8; 14] {
    let count = (RECORDS.len() as u16).to_le_bytes();
    let mut out = [0u8; 14];
    out[0] = SDR_VERSION;
    out[1..3].copy_from_slice(&count);
    // out[3..5]: free space 0
    out[5..9].copy_from_slice(&UNSPECIFIED_TIME);
    out[9..13].copy_from_slice(&UNSPECIFIED_TIME);
    out[13] = 0x02; // Reserve SDR Repository supported
    out
}

/// A Get SDR request (§33.12), also the shape of Get SEL Entry's (§31.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRead {
    pub reservation: u16,
    pub id: u16,
    pub offset: u8,
    /// Bytes to read; 0xFF reads to the end of the record.
    pub count: u8,
}

impl RecordRead {
    pub fn parse(d: &[u8]) -> Result<RecordRead, u8> {
        let [r0, r1, i0, i1, offset, count] = d else {
            return Err(cc::REQUEST_LENGTH_INVALID);
        };
        Ok(RecordRead {
            reservation: u16::from_le_bytes([*r0, *r1]),
            id: u16::from_le_bytes([*i0, *i1]),
            offset: *offset,
            count: *count,
        })
    }
}

/// The id that follows the record at `index`: FFFFh after the last (§33.12).
fn next_id(index: usize) -> u16 {
    if index + 1 < RECORDS.len() {
        index as u16 + 2
    } else {
        0xFFFF
    }
}

/// Get SDR (§33.12): record 0000h is the first, FFFFh the last; a read past the end of a
/// record returns what is there.
pub fn get_sdr(d: &[u8], reservation: &Reservation) -> Result<Vec<u8>, u8> {
    let rq = RecordRead::parse(d)?;
    reservation.check(rq.reservation, rq.offset)?;
    let index = match rq.id {
        0x0000 => 0,
        0xFFFF => RECORDS.len() - 1,
        id => id as usize - 1,
    };
    let rec = RECORDS.get(index).ok_or(cc::NOT_PRESENT)?;
    let start = rq.offset as usize;
    if start >= rec.len() {
        return Err(cc::PARAMETER_OUT_OF_RANGE);
    }
    let end = rec.len().min(start + rq.count as usize);
    let mut out = next_id(index).to_le_bytes().to_vec();
    out.extend_from_slice(&rec[start..end]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(res: u16, id: u16, offset: u8, count: u8) -> Vec<u8> {
        let mut d = res.to_le_bytes().to_vec();
        d.extend_from_slice(&id.to_le_bytes());
        d.extend_from_slice(&[offset, count]);
        d
    }

    #[test]
    fn records_have_consistent_headers() {
        for (i, r) in RECORDS.iter().enumerate() {
            assert_eq!(u16::from_le_bytes([r[0], r[1]]) as usize, i + 1);
            assert_eq!(r[2], SDR_VERSION);
            assert_eq!(r[4] as usize, r.len() - 5, "record {}", i + 1);
        }
        let acpi = &RECORDS[0];
        assert_eq!(
            acpi.len(),
            32 + 16,
            "compact record: 32 bytes and a 16-byte name"
        );
        assert_eq!(
            &acpi[12..14],
            [SENSOR_TYPE_ACPI_POWER, READING_SENSOR_SPECIFIC]
        );
        assert_eq!(acpi[31], 0xC0 | 16);
        assert_eq!(&acpi[32..], b"ACPI Power State");
        assert_eq!(repository_info()[..5], [0x51, 2, 0, 0, 0]);
    }

    #[test]
    fn header_then_body_as_ipmitool_reads_them() {
        let mut r = Reservation::default();
        let id = r.reserve();
        // The 5-byte header of the first record, then the rest from offset 5.
        let h = get_sdr(&read(id, 0, 0, 5), &r).unwrap();
        assert_eq!(h, [2, 0, 1, 0, 0x51, 0x02, 43]);
        let body = get_sdr(&read(id, 1, 5, 43), &r).unwrap();
        assert_eq!(body[..2], [2, 0]);
        assert_eq!(body[2..], RECORDS[0][5..]);
        // The last record says FFFFh comes next; FFFFh names it too.
        let last = get_sdr(&read(0, 2, 0, 0xFF), &r).unwrap();
        assert_eq!(last[..2], [0xFF, 0xFF]);
        assert_eq!(last[2..], RECORDS[1][..]);
        assert_eq!(get_sdr(&read(0, 0xFFFF, 0, 0xFF), &r), Ok(last));
        // A read past the end returns what is there.
        let tail = get_sdr(&read(id, 1, 40, 0xFF), &r).unwrap();
        assert_eq!(tail[2..], RECORDS[0][40..]);
    }

    #[test]
    fn errors_a_client_can_provoke() {
        let mut r = Reservation::default();
        let old = r.reserve();
        r.reserve();
        assert_eq!(
            get_sdr(&read(old, 1, 5, 10), &r),
            Err(cc::RESERVATION_CANCELLED)
        );
        assert_eq!(get_sdr(&read(0, 3, 0, 5), &r), Err(cc::NOT_PRESENT));
        assert_eq!(
            get_sdr(&read(0, 1, 200, 5), &r),
            Err(cc::RESERVATION_CANCELLED)
        );
        let cur = r.reserve();
        assert_eq!(
            get_sdr(&read(cur, 1, 200, 5), &r),
            Err(cc::PARAMETER_OUT_OF_RANGE)
        );
        assert_eq!(get_sdr(&[0; 5], &r), Err(cc::REQUEST_LENGTH_INVALID));
    }
}
