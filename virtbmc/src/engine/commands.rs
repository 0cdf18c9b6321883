//! IPMI commands that do not manage sessions: who may run them, and what they answer.

use super::cc;
use super::config::{BmcConfig, Privilege};
use super::vm::{Action, BootDevice, BootOverride, PowerState, VmView, When};
use crate::wire::message::Request;

pub const NETFN_CHASSIS: u8 = 0x00;
pub const NETFN_APP: u8 = 0x06;

pub const CMD_GET_DEVICE_ID: u8 = 0x01;
pub const CMD_GET_SYSTEM_GUID: u8 = 0x37;
pub const CMD_GET_AUTH_CAPS: u8 = 0x38;
pub const CMD_GET_SESSION_CHALLENGE: u8 = 0x39;
pub const CMD_ACTIVATE_SESSION: u8 = 0x3A;
pub const CMD_SET_SESSION_PRIVILEGE: u8 = 0x3B;
pub const CMD_CLOSE_SESSION: u8 = 0x3C;
pub const CMD_GET_CHANNEL_INFO: u8 = 0x42;
pub const CMD_GET_CIPHER_SUITES: u8 = 0x54;

pub const CMD_GET_CHASSIS_STATUS: u8 = 0x01;
pub const CMD_CHASSIS_CONTROL: u8 = 0x02;
pub const CMD_SET_BOOT_OPTIONS: u8 = 0x08;
pub const CMD_GET_BOOT_OPTIONS: u8 = 0x09;

/// The commands the metrics count by name (`virtbmc_requests_by_command_total`); any other
/// request counts as "other", the last slot.
pub const COUNTED: [(u8, u8, &str); 13] = [
    (NETFN_APP, CMD_GET_DEVICE_ID, "get_device_id"),
    (NETFN_APP, CMD_GET_SYSTEM_GUID, "get_system_guid"),
    (
        NETFN_APP,
        CMD_GET_AUTH_CAPS,
        "get_channel_auth_capabilities",
    ),
    (
        NETFN_APP,
        CMD_GET_SESSION_CHALLENGE,
        "get_session_challenge",
    ),
    (NETFN_APP, CMD_ACTIVATE_SESSION, "activate_session"),
    (
        NETFN_APP,
        CMD_SET_SESSION_PRIVILEGE,
        "set_session_privilege",
    ),
    (NETFN_APP, CMD_CLOSE_SESSION, "close_session"),
    (NETFN_APP, CMD_GET_CHANNEL_INFO, "get_channel_info"),
    (
        NETFN_APP,
        CMD_GET_CIPHER_SUITES,
        "get_channel_cipher_suites",
    ),
    (NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, "get_chassis_status"),
    (NETFN_CHASSIS, CMD_CHASSIS_CONTROL, "chassis_control"),
    (
        NETFN_CHASSIS,
        CMD_SET_BOOT_OPTIONS,
        "set_system_boot_options",
    ),
    (
        NETFN_CHASSIS,
        CMD_GET_BOOT_OPTIONS,
        "get_system_boot_options",
    ),
];

/// Slots of [`COUNTED`], plus "other".
pub const COMMAND_SLOTS: usize = COUNTED.len() + 1;

/// The metrics slot of a request.
pub fn command_slot(net_fn: u8, cmd: u8) -> usize {
    COUNTED
        .iter()
        .position(|&(n, c, _)| (n, c) == (net_fn, cmd))
        .unwrap_or(COUNTED.len())
}

/// The metrics label of a slot.
pub fn command_name(slot: usize) -> &'static str {
    COUNTED.get(slot).map_or("other", |c| c.2)
}

/// Our LAN channel number, answered for "this channel" (0x0E).
pub const LAN_CHANNEL: u8 = 0x01;
const THIS_CHANNEL: u8 = 0x0E;

pub enum Outcome {
    Reply(u8, Vec<u8>),
    /// The reply waits for the action's result; `When` says whether the action may run at
    /// once or only after the machine's power transition.
    Action(Action, When),
}

fn reply(cc: u8) -> Outcome {
    Outcome::Reply(cc, Vec::new())
}

/// Boot option parameters the BMC itself keeps (IPMI 2.0 §28.13): 0, 3 and 4. Parameter 5
/// (the boot device) lives in the backend, where it takes effect.
#[derive(Debug, Default, Clone, Copy)]
pub struct BootParams {
    set_in_progress: u8,
    valid_bit_clearing: u8,
    boot_info_ack: u8,
}

/// The commands allowed outside a session (IPMI 2.0 §13.7): the ones that set one up.
pub fn is_sessionless(net_fn: u8, cmd: u8) -> bool {
    net_fn == NETFN_APP
        && matches!(
            cmd,
            CMD_GET_AUTH_CAPS
                | CMD_GET_CIPHER_SUITES
                | CMD_GET_SESSION_CHALLENGE
                | CMD_ACTIVATE_SESSION
        )
}

/// Minimum privilege of each command we implement; None for commands we do not know.
fn required_privilege(net_fn: u8, cmd: u8) -> Option<Privilege> {
    match (net_fn, cmd) {
        (NETFN_APP, CMD_GET_AUTH_CAPS | CMD_GET_CIPHER_SUITES) => Some(Privilege::Callback),
        (NETFN_APP, CMD_GET_DEVICE_ID | CMD_GET_SYSTEM_GUID) => Some(Privilege::User),
        (NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS | CMD_GET_BOOT_OPTIONS) => Some(Privilege::User),
        (NETFN_CHASSIS, CMD_CHASSIS_CONTROL | CMD_SET_BOOT_OPTIONS) => Some(Privilege::Operator),
        _ => None,
    }
}

/// Runs a command for a caller at `privilege` (None: outside a session, where only the
/// session-less discovery commands reach this function).
pub fn execute(
    req: &Request,
    privilege: Option<Privilege>,
    config: &BmcConfig,
    vm: &VmView,
    params: &mut BootParams,
) -> Outcome {
    let Some(needed) = required_privilege(req.net_fn, req.cmd) else {
        return reply(cc::INVALID_COMMAND);
    };
    if privilege.is_some_and(|p| p < needed) {
        return reply(cc::INSUFFICIENT_PRIVILEGE);
    }
    let d = req.data;
    match (req.net_fn, req.cmd) {
        (NETFN_APP, CMD_GET_AUTH_CAPS) => match auth_caps(d, config.allow_auth_none) {
            Ok(data) => Outcome::Reply(cc::OK, data.to_vec()),
            Err(code) => reply(code),
        },
        (NETFN_APP, CMD_GET_CIPHER_SUITES) => match cipher_suites(d, &suite_records(config)) {
            Ok(data) => Outcome::Reply(cc::OK, data),
            Err(code) => reply(code),
        },
        (NETFN_APP, CMD_GET_DEVICE_ID) if d.is_empty() => {
            Outcome::Reply(cc::OK, DEVICE_ID.to_vec())
        }
        (NETFN_APP, CMD_GET_SYSTEM_GUID) if d.is_empty() => {
            Outcome::Reply(cc::OK, vm.guid.to_vec())
        }
        (NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS) if d.is_empty() => {
            Outcome::Reply(cc::OK, chassis_status(vm).to_vec())
        }
        (NETFN_CHASSIS, CMD_CHASSIS_CONTROL) if d.len() == 1 => chassis_control(d[0], vm),
        (NETFN_CHASSIS, CMD_SET_BOOT_OPTIONS) if !d.is_empty() => set_boot_option(d, params),
        (NETFN_CHASSIS, CMD_GET_BOOT_OPTIONS) if d.len() == 3 => get_boot_option(d, vm, params),
        _ => reply(cc::REQUEST_LENGTH_INVALID),
    }
}

/// Get Device ID (IPMI 2.0 §20.1): 15 bytes, IPMI version 0x02 (BCD "2.0": low nibble is the
/// major version), chassis device support. freeipmi rejects any other length.
pub const DEVICE_ID: [u8; 15] = [
    0x20, // device id
    0x01, // device revision
    0x00, // firmware major (bit 7 clear: normal operation)
    0x01, // firmware minor, BCD
    0x02, // IPMI version 2.0
    0x80, // additional device support: chassis device
    0x00, 0x00, 0x00, // manufacturer id: unspecified
    0x00, 0x00, // product id
    0x00, 0x00, 0x00, 0x00, // auxiliary firmware revision
];

/// Get Channel Authentication Capabilities (IPMI 2.0 §22.13). Offers only what is enforced:
/// MD5 and straight password, NONE when the operator enabled it, IPMI 2.0 in the extended form.
pub fn auth_caps(d: &[u8], allow_none: bool) -> Result<[u8; 8], u8> {
    if d.len() != 2 {
        return Err(cc::REQUEST_LENGTH_INVALID);
    }
    let channel = d[0] & 0x0F;
    let extended = d[0] & 0x80 != 0;
    if (channel != THIS_CHANNEL && channel != LAN_CHANNEL)
        || d[0] & 0x70 != 0
        || Privilege::from_wire(d[1]).is_none()
    {
        return Err(cc::INVALID_DATA_FIELD);
    }
    let mut types = 0x04 | 0x10; // MD5, straight password
    if allow_none {
        types |= 0x01;
    }
    if extended {
        types |= 0x80;
    }
    // Login status 0x04: non-null user names only; per-message and user-level auth enabled.
    Ok([
        LAN_CHANNEL,
        types,
        0x04,
        if extended { 0x03 } else { 0x00 },
        0,
        0,
        0,
        0,
    ])
}

/// The cipher suite records (IPMI 2.0 §22.15.2) of the enabled suites: 0xC0, id, then the
/// authentication, integrity (tag 01b) and confidentiality (tag 10b) algorithm numbers.
pub fn suite_records(config: &BmcConfig) -> Vec<u8> {
    config
        .suites()
        .flat_map(|s| {
            [
                0xC0,
                s.id,
                s.auth.wire(),
                0x40 | s.integ.wire(),
                0x80 | s.conf.wire(),
            ]
        })
        .collect()
}

/// Get Channel Cipher Suites (IPMI 2.0 §22.15): 16 bytes of records per list index.
pub fn cipher_suites(d: &[u8], records: &[u8]) -> Result<Vec<u8>, u8> {
    if d.len() != 3 {
        return Err(cc::REQUEST_LENGTH_INVALID);
    }
    let channel = d[0] & 0x0F;
    if (channel != THIS_CHANNEL && channel != LAN_CHANNEL) || d[1] != 0x00 {
        return Err(cc::INVALID_DATA_FIELD);
    }
    let start = (d[2] & 0x3F) as usize * 16;
    let mut out = vec![LAN_CHANNEL];
    if d[2] & 0x80 != 0 {
        out.extend_from_slice(
            records
                .get(start..records.len().min(start + 16))
                .unwrap_or(&[]),
        );
    } else {
        // "List supported algorithms": each distinct algorithm once, with its tag bits.
        let mut algs: Vec<u8> = Vec::new();
        for chunk in records.chunks(5) {
            for a in &chunk[2..] {
                if !algs.contains(a) {
                    algs.push(*a);
                }
            }
        }
        out.extend_from_slice(algs.get(start..algs.len().min(start + 16)).unwrap_or(&[]));
    }
    Ok(out)
}

/// Get Chassis Status (IPMI 2.0 §28.2): power bit set only when the machine is on, every
/// fault and policy bit clear (restore policy "always off").
pub fn chassis_status(vm: &VmView) -> [u8; 3] {
    [u8::from(vm.power.is_on()), 0x00, 0x00]
}

/// Chassis Control (IPMI 2.0 §28.3), answered as a physical BMC would. A client reads power
/// through [`chassis_status`]: Starting reads "off" and Stopping reads "on". A command whose
/// goal the machine is already heading to succeeds without touching it; one that needs the
/// transition to end is done once it has ([`When::Settled`]: the driver waits, within the
/// action deadline, and answers 0xC0 "node busy" only when the transition outlasts it).
///
/// | command | Off | On | Starting (reads off) | Stopping (reads on) |
/// |---|---|---|---|---|
/// | off (0) | OK, nothing done | power off | power off now: a chassis cuts power during power-on at once, and a start stuck before the guest runs must stay stoppable | OK, nothing done: already going off |
/// | on (1) | power on | OK, nothing done | OK, nothing done: already coming up | power on once off |
/// | cycle (2) | 0xD5 | power cycle | power cycle once on: the boot starts over | power on once off: the off half is underway |
/// | reset (3) | 0xD5 | hard reset | hard reset once on: the boot starts over | power on once off: a reset of a machine going down brings it back up |
/// | NMI (4) | 0xD6 | 0xD6 | 0xD6 | 0xD6 |
/// | soft (5) | OK, nothing done | soft off | soft off once on: no guest runs yet to hear the ACPI request | OK, nothing done: already going off |
///
/// A cycle or reset of a machine that is off is not possible in that state (0xD5); a virtual
/// machine has no NMI line to pulse through KubeVirt (0xD6).
fn chassis_control(op: u8, vm: &VmView) -> Outcome {
    use Action::{HardReset, PowerCycle, PowerOff, PowerOn, SoftOff};
    use PowerState::{Off, On, Starting, Stopping};
    let now = |a| Outcome::Action(a, When::Now);
    let settled = |a| Outcome::Action(a, When::Settled);
    match (op & 0x0F, vm.power) {
        (0, Off) => reply(cc::OK),
        (0, On | Starting) => now(PowerOff),
        (0, Stopping) => reply(cc::OK),
        (1, Off) => now(PowerOn),
        (1, On | Starting) => reply(cc::OK),
        (1, Stopping) => settled(PowerOn),
        (2 | 3, Off) => reply(cc::NOT_IN_STATE),
        (2, On) => now(PowerCycle),
        (2, Starting) => settled(PowerCycle),
        (3, On) => now(HardReset),
        (3, Starting) => settled(HardReset),
        (2 | 3, Stopping) => settled(PowerOn),
        (4, _) => reply(cc::UNAVAILABLE),
        (5, Off | Stopping) => reply(cc::OK),
        (5, On) => now(SoftOff),
        (5, Starting) => settled(SoftOff),
        _ => reply(cc::INVALID_DATA_FIELD),
    }
}

const PARAM_SET_IN_PROGRESS: u8 = 0;
const PARAM_VALID_BIT_CLEARING: u8 = 3;
const PARAM_BOOT_INFO_ACK: u8 = 4;
const PARAM_BOOT_FLAGS: u8 = 5;

/// Set System Boot Options (IPMI 2.0 §28.12).
fn set_boot_option(d: &[u8], params: &mut BootParams) -> Outcome {
    let value = &d[1..];
    match (d[0] & 0x7F, value.len()) {
        (PARAM_SET_IN_PROGRESS, 1) => {
            if value[0] & 0x03 == 0x03 {
                return reply(cc::INVALID_DATA_FIELD);
            }
            params.set_in_progress = value[0] & 0x03;
            reply(cc::OK)
        }
        (PARAM_VALID_BIT_CLEARING, 1) => {
            params.valid_bit_clearing = value[0] & 0x1F;
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
fn get_boot_option(d: &[u8], vm: &VmView, params: &BootParams) -> Outcome {
    let param = d[0] & 0x7F;
    let mut out = vec![0x01, param];
    match param {
        PARAM_SET_IN_PROGRESS => out.push(params.set_in_progress),
        PARAM_VALID_BIT_CLEARING => out.push(params.valid_bit_clearing),
        PARAM_BOOT_INFO_ACK => out.extend_from_slice(&[0x00, params.boot_info_ack]),
        PARAM_BOOT_FLAGS => out.extend_from_slice(&encode_boot_flags(vm.boot)),
        _ => return reply(cc::PARAMETER_NOT_SUPPORTED),
    }
    Outcome::Reply(cc::OK, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::User;
    use crate::engine::vm::PowerState;

    fn vm(power: PowerState) -> VmView {
        VmView {
            power,
            boot: None,
            guid: [0; 16],
        }
    }

    fn req(net_fn: u8, cmd: u8, data: &[u8]) -> Request<'_> {
        Request {
            rs_addr: 0x20,
            net_fn,
            rs_lun: 0,
            rq_addr: 0x81,
            rq_seq: 1,
            rq_lun: 0,
            cmd,
            data,
        }
    }

    fn run(r: &Request, p: Privilege, power: PowerState) -> (u8, Vec<u8>, Option<(Action, When)>) {
        let cfg = BmcConfig::new(vec![
            User::new("admin", "password", Privilege::Admin).unwrap(),
        ]);
        match execute(r, Some(p), &cfg, &vm(power), &mut BootParams::default()) {
            Outcome::Reply(c, d) => (c, d, None),
            Outcome::Action(a, w) => (0, Vec::new(), Some((a, w))),
        }
    }

    #[test]
    fn auth_caps_offers_only_enforced_types() {
        assert_eq!(
            auth_caps(&[0x0e, 0x04], false),
            Ok([1, 0x14, 0x04, 0, 0, 0, 0, 0])
        );
        assert_eq!(
            auth_caps(&[0x8e, 0x04], false),
            Ok([1, 0x94, 0x04, 0x03, 0, 0, 0, 0])
        );
        assert_eq!(
            auth_caps(&[0x8e, 0x04], true),
            Ok([1, 0x95, 0x04, 0x03, 0, 0, 0, 0])
        );
        assert_eq!(auth_caps(&[0x0e, 0x07], false), Err(cc::INVALID_DATA_FIELD));
        assert_eq!(auth_caps(&[0x0e], false), Err(cc::REQUEST_LENGTH_INVALID));
    }

    #[test]
    fn cipher_suite_pages() {
        let cfg = BmcConfig::new(vec![]);
        let rec = suite_records(&cfg);
        assert_eq!(rec, [0xC0, 3, 1, 0x41, 0x81, 0xC0, 17, 3, 0x44, 0x81]);
        assert_eq!(cipher_suites(&[0x0e, 0, 0x80], &rec).unwrap()[1..], rec[..]);
        assert_eq!(cipher_suites(&[0x0e, 0, 0x81], &rec).unwrap(), [1]);
        assert_eq!(
            cipher_suites(&[0x0e, 0, 0x00], &rec).unwrap(),
            [1, 1, 0x41, 0x81, 3, 0x44]
        );
    }

    #[test]
    fn chassis_control_follows_state_and_privilege() {
        let off = req(NETFN_CHASSIS, CMD_CHASSIS_CONTROL, &[0]);
        let on = req(NETFN_CHASSIS, CMD_CHASSIS_CONTROL, &[1]);
        assert_eq!(
            run(&off, Privilege::User, PowerState::On).0,
            cc::INSUFFICIENT_PRIVILEGE
        );
        assert_eq!(
            run(&off, Privilege::Operator, PowerState::On).2,
            Some((Action::PowerOff, When::Now))
        );
        assert_eq!(
            run(&off, Privilege::Operator, PowerState::Off),
            (0, vec![], None)
        );
        // Already coming up: a physical BMC says yes at once, it does not answer busy.
        assert_eq!(
            run(&on, Privilege::Admin, PowerState::Starting),
            (cc::OK, vec![], None)
        );
        assert_eq!(
            run(&req(0, 2, &[2]), Privilege::Admin, PowerState::Off).0,
            cc::NOT_IN_STATE
        );
        assert_eq!(
            run(&req(0, 2, &[4]), Privilege::Admin, PowerState::On).0,
            cc::UNAVAILABLE
        );
        assert_eq!(
            run(&req(0, 2, &[]), Privilege::Admin, PowerState::On).0,
            cc::REQUEST_LENGTH_INVALID
        );
    }

    /// Every cell of the table on [`chassis_control`], as Chassis Control request bytes
    /// (netfn 00h, cmd 02h, one data byte) from an operator.
    #[test]
    fn chassis_control_table_every_command_in_every_state() {
        use Action::{HardReset, PowerCycle, PowerOff, PowerOn, SoftOff};
        use PowerState::{Off, On, Starting, Stopping};
        let ok = (cc::OK, None);
        let now = |a| (cc::OK, Some((a, When::Now)));
        let settled = |a| (cc::OK, Some((a, When::Settled)));
        let code = |c| (c, None);
        #[rustfmt::skip]
        let table = [
            // op   Off                          On                Starting              Stopping
            (0x00, [ok,                          now(PowerOff),    now(PowerOff),        ok]),
            (0x01, [now(PowerOn),                ok,               ok,                   settled(PowerOn)]),
            (0x02, [code(cc::NOT_IN_STATE),      now(PowerCycle),  settled(PowerCycle),  settled(PowerOn)]),
            (0x03, [code(cc::NOT_IN_STATE),      now(HardReset),   settled(HardReset),   settled(PowerOn)]),
            (0x04, [code(cc::UNAVAILABLE),       code(cc::UNAVAILABLE), code(cc::UNAVAILABLE), code(cc::UNAVAILABLE)]),
            (0x05, [ok,                          now(SoftOff),     settled(SoftOff),     ok]),
        ];
        for (op, row) in table {
            for (power, want) in [Off, On, Starting, Stopping].into_iter().zip(row) {
                let data = [op];
                let (c, d, action) = run(
                    &req(NETFN_CHASSIS, CMD_CHASSIS_CONTROL, &data),
                    Privilege::Operator,
                    power,
                );
                assert!(d.is_empty(), "chassis control answers no data");
                assert_eq!((c, action), want, "op {op:#04x} while {power}");
            }
        }
        // Reserved operations, in every state; the reserved high nibble is ignored.
        for power in [Off, On, Starting, Stopping] {
            for op in 0x06..=0x0F {
                assert_eq!(
                    run(&req(0, 2, &[op]), Privilege::Operator, power).0,
                    cc::INVALID_DATA_FIELD,
                    "op {op:#04x} while {power}"
                );
            }
            assert_eq!(
                run(&req(0, 2, &[0x31]), Privilege::Operator, power),
                run(&req(0, 2, &[0x01]), Privilege::Operator, power),
            );
        }
    }

    #[test]
    fn status_sets_only_the_power_bit() {
        assert_eq!(chassis_status(&vm(PowerState::Off)), [0, 0, 0]);
        assert_eq!(chassis_status(&vm(PowerState::On)), [1, 0, 0]);
        assert_eq!(chassis_status(&vm(PowerState::Starting)), [0, 0, 0]);
    }

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

    #[test]
    fn unknown_commands_answer_c1() {
        assert_eq!(
            run(&req(0x2C, 0x3E, &[0, 2]), Privilege::Admin, PowerState::On).0,
            cc::INVALID_COMMAND
        );
    }
}
