//! System boot options (IPMI 2.0 §28.12, §28.13). Parameters 0, 3 and 4 are the BMC's own;
//! parameter 5, the boot device, lives in the backend, where it takes effect, and is read back
//! from the VM view.
//!
//! The boot flags valid bit expires (§28.12): a one-shot override that no restart follows
//! within 60 seconds is cleared, unless parameter 3 bit 3 turned the countdown off (as
//! OpenStack Ironic does before every boot device change). The countdown is a timer of the
//! engine ([`BootParams::poll_timeout`]); when it runs out the engine tells its driver, which
//! clears the override with the action `chassis bootdev none` asks for.

use std::time::{Duration, Instant};

use super::cc;
use super::commands::Outcome;
use super::vm::{Action, BootDevice, BootOverride, VmView, When};

const PARAM_SET_IN_PROGRESS: u8 = 0;
const PARAM_VALID_BIT_CLEARING: u8 = 3;
const PARAM_BOOT_INFO_ACK: u8 = 4;
const PARAM_BOOT_FLAGS: u8 = 5;

/// Parameter 3 bit 3: "don't automatically clear boot flag valid bit if Chassis Control
/// command not received within 60-second timeout".
const KEEP_PAST_TIMEOUT: u8 = 0x08;
/// How long set boot flags stay valid without a restart.
pub const FLAG_VALID_TIMEOUT: Duration = Duration::from_secs(60);

/// What the BMC keeps of the boot options, and the valid-bit countdown.
#[derive(Debug, Default, Clone, Copy)]
pub struct BootParams {
    set_in_progress: u8,
    valid_bit_clearing: u8,
    boot_info_ack: u8,
    /// When a one-shot override set through this BMC stops being valid, and the override.
    expires: Option<(Instant, BootOverride)>,
}

impl BootParams {
    /// The backend took a boot flags write (parameter 5) at `now`: a one-shot override starts
    /// the countdown unless parameter 3 turned it off. A persistent override is no pending
    /// flag but the machine's new boot order, so it never expires; clearing stops the count.
    pub fn flags_set(&mut self, flags: Option<BootOverride>, now: Instant) {
        self.expires = match flags {
            Some(o) if !o.persistent && self.valid_bit_clearing & KEEP_PAST_TIMEOUT == 0 => {
                Some((now + FLAG_VALID_TIMEOUT, o))
            }
            _ => None,
        };
    }

    /// A Chassis Control command was carried out at `now`. One that starts the machine
    /// (power on, cycle, reset) initiates the restart that consumes a one-shot override, so
    /// the countdown ends: the backend drops the override once the machine started with it,
    /// however long the start takes. Any other restarts the countdown (§28.12: "countdown
    /// restarts when a Chassis Control command is received").
    pub fn chassis_control(&mut self, action: Option<Action>, now: Instant) {
        match action {
            Some(Action::PowerOn | Action::PowerCycle | Action::HardReset) => self.expires = None,
            _ => {
                if let Some((_, flags)) = self.expires {
                    self.expires = Some((now + FLAG_VALID_TIMEOUT, flags));
                }
            }
        }
    }

    /// When [`BootParams::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expires.map(|(at, _)| at)
    }

    /// The one-shot flags whose countdown ran out by `now`, once.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<BootOverride> {
        match self.expires {
            Some((at, flags)) if at <= now => {
                self.expires = None;
                Some(flags)
            }
            _ => None,
        }
    }
}

/// Set System Boot Options (IPMI 2.0 §28.12).
pub fn set_boot_option(d: &[u8], params: &mut BootParams) -> Outcome {
    let reply = |code| Outcome::Reply(code, Vec::new());
    let Some((&selector, value)) = d.split_first() else {
        return reply(cc::REQUEST_LENGTH_INVALID);
    };
    match (selector & 0x7F, value.len()) {
        (PARAM_SET_IN_PROGRESS, 1) => {
            if value[0] & 0x03 == 0x03 {
                return reply(cc::INVALID_DATA_FIELD);
            }
            params.set_in_progress = value[0] & 0x03;
            reply(cc::OK)
        }
        (PARAM_VALID_BIT_CLEARING, 1) => {
            params.valid_bit_clearing = value[0] & 0x1F;
            if params.valid_bit_clearing & KEEP_PAST_TIMEOUT != 0 {
                params.expires = None;
            }
            reply(cc::OK)
        }
        (PARAM_BOOT_INFO_ACK, 2) => {
            let (mask, data) = (value[0], value[1]);
            params.boot_info_ack = (params.boot_info_ack & !mask) | (data & mask);
            reply(cc::OK)
        }
        (PARAM_BOOT_FLAGS, 5) => match boot_flags(value) {
            Ok(o) => Outcome::Action(Action::SetBoot(o), When::Now),
            Err(code) => reply(code),
        },
        (
            PARAM_SET_IN_PROGRESS
            | PARAM_VALID_BIT_CLEARING
            | PARAM_BOOT_INFO_ACK
            | PARAM_BOOT_FLAGS,
            _,
        ) => reply(cc::REQUEST_LENGTH_INVALID),
        _ => reply(cc::PARAMETER_NOT_SUPPORTED),
    }
}

/// Decodes boot flags (parameter 5): None clears the override.
pub fn boot_flags(v: &[u8]) -> Result<Option<BootOverride>, u8> {
    if v[0] & 0x80 == 0 {
        return Ok(None);
    }
    let selector = (v[1] >> 2) & 0x0F;
    if selector == 0 {
        return Ok(None);
    }
    let device = BootDevice::from_selector(selector).ok_or(cc::INVALID_DATA_FIELD)?;
    Ok(Some(BootOverride {
        device,
        persistent: v[0] & 0x40 != 0,
        efi: v[0] & 0x20 != 0,
    }))
}

pub fn encode_boot_flags(o: Option<BootOverride>) -> [u8; 5] {
    match o {
        None => [0; 5],
        Some(o) => [
            0x80 | u8::from(o.persistent) << 6 | u8::from(o.efi) << 5,
            o.device.selector() << 2,
            0,
            0,
            0,
        ],
    }
}

/// Get System Boot Options (IPMI 2.0 §28.13): parameter version 1, then the parameter.
pub fn get_boot_option(d: &[u8], vm: &VmView, params: &BootParams) -> Outcome {
    let param = d[0] & 0x7F;
    let mut out = vec![0x01, param];
    match param {
        PARAM_SET_IN_PROGRESS => out.push(params.set_in_progress),
        PARAM_VALID_BIT_CLEARING => out.push(params.valid_bit_clearing),
        PARAM_BOOT_INFO_ACK => out.extend_from_slice(&[0x00, params.boot_info_ack]),
        PARAM_BOOT_FLAGS => out.extend_from_slice(&encode_boot_flags(vm.boot)),
        _ => return Outcome::Reply(cc::PARAMETER_NOT_SUPPORTED, Vec::new()),
    }
    Outcome::Reply(cc::OK, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_flags_round_trip_what_ipmitool_sends() {
        // `chassis bootdev pxe options=persistent,efiboot`
        let o = boot_flags(&[0xE0, 0x04, 0, 0, 0]).unwrap().unwrap();
        assert_eq!(
            o,
            BootOverride {
                device: BootDevice::Pxe,
                persistent: true,
                efi: true
            }
        );
        assert_eq!(encode_boot_flags(Some(o)), [0xE0, 0x04, 0, 0, 0]);
        assert_eq!(
            boot_flags(&[0x80, 0x14, 0, 0, 0]).unwrap().unwrap().device,
            BootDevice::Cdrom
        );
        assert_eq!(
            boot_flags(&[0x80, 0x3C, 0, 0, 0]),
            Err(cc::INVALID_DATA_FIELD)
        );
        assert_eq!(boot_flags(&[0x00, 0x04, 0, 0, 0]), Ok(None));
    }

    const PXE_ONCE: BootOverride = BootOverride {
        device: BootDevice::Pxe,
        persistent: false,
        efi: false,
    };

    #[test]
    fn one_shot_flags_expire_after_sixty_seconds() {
        let t0 = Instant::now();
        let mut p = BootParams::default();
        p.flags_set(Some(PXE_ONCE), t0);
        assert_eq!(p.poll_timeout(), Some(t0 + FLAG_VALID_TIMEOUT));
        assert_eq!(p.handle_timeout(t0 + Duration::from_secs(59)), None);
        assert_eq!(p.handle_timeout(t0 + FLAG_VALID_TIMEOUT), Some(PXE_ONCE));
        assert_eq!(p.poll_timeout(), None, "fires once");
        assert_eq!(p.handle_timeout(t0 + FLAG_VALID_TIMEOUT * 2), None);
    }

    #[test]
    fn parameter_three_and_persistent_flags_keep_them() {
        let t0 = Instant::now();
        let mut p = BootParams::default();
        // What Ironic sends first: raw 0x00 0x08 0x03 0x08.
        assert!(matches!(
            set_boot_option(&[3, 0x08], &mut p),
            Outcome::Reply(0, _)
        ));
        p.flags_set(Some(PXE_ONCE), t0);
        assert_eq!(p.poll_timeout(), None);

        let mut p = BootParams::default();
        p.flags_set(
            Some(BootOverride {
                persistent: true,
                ..PXE_ONCE
            }),
            t0,
        );
        assert_eq!(p.poll_timeout(), None);

        // Turning the countdown off while it runs stops it.
        let mut p = BootParams::default();
        p.flags_set(Some(PXE_ONCE), t0);
        set_boot_option(&[3, 0x08], &mut p);
        assert_eq!(p.poll_timeout(), None);
        // Clearing the flags stops it too.
        let mut p = BootParams::default();
        p.flags_set(Some(PXE_ONCE), t0);
        p.flags_set(None, t0);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn chassis_control_restarts_or_ends_the_countdown() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(30);
        let mut p = BootParams::default();
        p.flags_set(Some(PXE_ONCE), t0);
        p.chassis_control(Some(Action::PowerOff), later);
        assert_eq!(p.poll_timeout(), Some(later + FLAG_VALID_TIMEOUT));
        p.chassis_control(None, later);
        assert_eq!(p.poll_timeout(), Some(later + FLAG_VALID_TIMEOUT));
        p.chassis_control(Some(Action::PowerOn), later);
        assert_eq!(p.poll_timeout(), None);
        // Without a countdown, a chassis control starts none.
        p.chassis_control(Some(Action::PowerOff), later);
        assert_eq!(p.poll_timeout(), None);
    }
}
