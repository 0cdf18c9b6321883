//! What the BMC says about itself and its machine's power as ACPI sees it: Get Self Test
//! Results (IPMI 2.0 §20.4) and Get ACPI Power State (§20.7).

use super::vm::VmView;

/// "No error. All Self Tests Passed." (§20.4, table 20-4): a software BMC has no hardware to
/// fail a test.
pub const SELF_TEST_PASSED: [u8; 2] = [0x55, 0x00];

/// ACPI system power states (§20.6, table 20-6) a virtual machine is in.
pub const ACPI_S0_G0: u8 = 0x00;
pub const ACPI_S5_G2: u8 = 0x05;
/// ACPI device power states: D0 (on) and D3 (off).
const ACPI_D0: u8 = 0x00;
const ACPI_D3: u8 = 0x03;

/// The machine's ACPI system state: working while it is on (a machine stopping is still on,
/// as Get Chassis Status says), soft-off otherwise.
pub fn acpi_system_state(vm: &VmView) -> u8 {
    if vm.power.is_on() {
        ACPI_S0_G0
    } else {
        ACPI_S5_G2
    }
}

/// Get ACPI Power State: system then device power state.
pub fn acpi_power_state(vm: &VmView) -> [u8; 2] {
    let system = acpi_system_state(vm);
    let device = if system == ACPI_S0_G0 {
        ACPI_D0
    } else {
        ACPI_D3
    };
    [system, device]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::vm::PowerState;

    fn vm(power: PowerState) -> VmView {
        VmView::with_power(power)
    }

    #[test]
    fn acpi_state_follows_chassis_power() {
        assert_eq!(acpi_power_state(&vm(PowerState::On)), [0x00, 0x00]);
        assert_eq!(acpi_power_state(&vm(PowerState::Stopping)), [0x00, 0x00]);
        assert_eq!(acpi_power_state(&vm(PowerState::Off)), [0x05, 0x03]);
        assert_eq!(acpi_power_state(&vm(PowerState::Starting)), [0x05, 0x03]);
    }
}
