//! Sensor commands (IPMI 2.0 §35) for the sensors the SDR repository describes: readings
//! come from the VM view at the time of the request.

use super::cc;
use super::device::acpi_system_state;
use super::sdr::{READING_SENSOR_SPECIFIC, SENSOR_ACPI_POWER, SENSOR_TYPE_ACPI_POWER};
use super::vm::VmView;

/// Reading flags (§35.14): sensor scanning enabled; event messages disabled (this BMC sends
/// none); reading available.
const SCANNING_ENABLED: u8 = 0x40;
/// Byte 4 of a discrete reading: bit 7 is reserved and returned as 1b (§35.14).
const DISCRETE_HIGH_STATES: u8 = 0x80;

/// The one request byte every command here takes: a sensor number we have.
fn sensor(d: &[u8]) -> Result<u8, u8> {
    match d {
        [SENSOR_ACPI_POWER] => Ok(SENSOR_ACPI_POWER),
        [_] => Err(cc::NOT_PRESENT),
        _ => Err(cc::REQUEST_LENGTH_INVALID),
    }
}

/// Get Sensor Reading (§35.14). The ACPI power state sensor asserts exactly one state, S0/G0
/// (offset 0) or S5/G2 (offset 5); the reading byte, which the spec leaves unused for discrete
/// sensors, repeats that offset, so that readers that print it (ipmitool's `sdr -v`, which
/// OpenStack Ironic collects) show the state too.
pub fn reading(d: &[u8], vm: &VmView) -> Result<[u8; 4], u8> {
    sensor(d)?;
    let offset = acpi_system_state(vm);
    Ok([offset, SCANNING_ENABLED, 1 << offset, DISCRETE_HIGH_STATES])
}

/// Get Sensor Event Status (§35.15): no event has been asserted, since none is generated.
pub fn event_status(d: &[u8]) -> Result<[u8; 5], u8> {
    sensor(d)?;
    Ok([SCANNING_ENABLED, 0, 0, 0, 0])
}

/// Get Sensor Event Enable (§35.11): scanning on, every event off.
pub fn event_enable(d: &[u8]) -> Result<[u8; 5], u8> {
    sensor(d)?;
    Ok([SCANNING_ENABLED, 0, 0, 0, 0])
}

/// Get Sensor Type (§35.17).
pub fn sensor_type(d: &[u8]) -> Result<[u8; 2], u8> {
    sensor(d)?;
    Ok([SENSOR_TYPE_ACPI_POWER, READING_SENSOR_SPECIFIC])
}

/// Get Sensor Thresholds, Hysteresis, Reading Factors (§35.9, §35.7, §35.5) of a discrete
/// sensor: "command illegal for this sensor", as BMCs answer for sensors without thresholds.
pub fn threshold_only(d: &[u8]) -> Result<Vec<u8>, u8> {
    // Get Sensor Hysteresis carries a reserved second byte, Get Sensor Reading Factors the
    // raw reading; only the sensor number matters.
    match d.first() {
        Some(&n) => sensor(&[n]).and(Err(cc::ILLEGAL_FOR_SENSOR)),
        None => Err(cc::REQUEST_LENGTH_INVALID),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::vm::PowerState;

    fn vm(power: PowerState) -> VmView {
        VmView::with_power(power)
    }

    #[test]
    fn reading_asserts_the_acpi_state_of_the_view() {
        assert_eq!(
            reading(&[1], &vm(PowerState::On)),
            Ok([0x00, 0x40, 0x01, 0x80])
        );
        assert_eq!(
            reading(&[1], &vm(PowerState::Off)),
            Ok([0x05, 0x40, 0x20, 0x80])
        );
        assert_eq!(reading(&[2], &vm(PowerState::On)), Err(cc::NOT_PRESENT));
        assert_eq!(
            reading(&[], &vm(PowerState::On)),
            Err(cc::REQUEST_LENGTH_INVALID)
        );
    }

    #[test]
    fn discrete_sensor_has_no_thresholds() {
        assert_eq!(threshold_only(&[1]), Err(cc::ILLEGAL_FOR_SENSOR));
        assert_eq!(threshold_only(&[1, 0xFF]), Err(cc::ILLEGAL_FOR_SENSOR));
        assert_eq!(threshold_only(&[9]), Err(cc::NOT_PRESENT));
        assert_eq!(threshold_only(&[]), Err(cc::REQUEST_LENGTH_INVALID));
        assert_eq!(event_enable(&[1]), Ok([0x40, 0, 0, 0, 0]));
        assert_eq!(event_status(&[1]), Ok([0x40, 0, 0, 0, 0]));
        assert_eq!(sensor_type(&[1]), Ok([0x22, 0x6F]));
    }
}
