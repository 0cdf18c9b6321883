//! Commands that do not manage sessions: who may run them ([`required_privilege`], the one
//! privilege table), and what they answer. Each family lives in its own module; this one
//! dispatches and holds the App and Chassis basics.

use std::time::Instant;

use super::boot::{self, BootParams};
use super::config::{BmcConfig, Privilege};
use super::reservation::Reservation;
use super::site::Site;
use super::vm::{Action, PowerState, VmView, When};
use super::{cc, channel, device, fru, lan_config, payload, sdr, sel, sensor, users};
use crate::wire::message::Request;

pub const NETFN_CHASSIS: u8 = 0x00;
pub const NETFN_SENSOR: u8 = 0x04;
pub const NETFN_APP: u8 = 0x06;
pub const NETFN_STORAGE: u8 = 0x0A;
pub const NETFN_TRANSPORT: u8 = 0x0C;

pub const CMD_GET_DEVICE_ID: u8 = 0x01;
pub const CMD_GET_SELF_TEST: u8 = 0x04;
pub const CMD_GET_ACPI_POWER_STATE: u8 = 0x07;
pub const CMD_GET_SYSTEM_GUID: u8 = 0x37;
pub const CMD_GET_AUTH_CAPS: u8 = 0x38;
pub const CMD_GET_SESSION_CHALLENGE: u8 = 0x39;
pub const CMD_ACTIVATE_SESSION: u8 = 0x3A;
pub const CMD_SET_SESSION_PRIVILEGE: u8 = 0x3B;
pub const CMD_CLOSE_SESSION: u8 = 0x3C;
pub const CMD_GET_SESSION_INFO: u8 = 0x3D;
pub const CMD_GET_CHANNEL_ACCESS: u8 = 0x41;
pub const CMD_GET_CHANNEL_INFO: u8 = 0x42;
pub const CMD_GET_USER_ACCESS: u8 = 0x44;
pub const CMD_GET_USER_NAME: u8 = 0x46;
pub const CMD_GET_CIPHER_SUITES: u8 = 0x54;

pub const CMD_GET_CHASSIS_STATUS: u8 = 0x01;
pub const CMD_CHASSIS_CONTROL: u8 = 0x02;
pub const CMD_CHASSIS_IDENTIFY: u8 = 0x04;
pub const CMD_SET_BOOT_OPTIONS: u8 = 0x08;
pub const CMD_GET_BOOT_OPTIONS: u8 = 0x09;

pub const CMD_GET_SENSOR_READING_FACTORS: u8 = 0x23;
pub const CMD_GET_SENSOR_HYSTERESIS: u8 = 0x25;
pub const CMD_GET_SENSOR_THRESHOLDS: u8 = 0x27;
pub const CMD_GET_SENSOR_EVENT_ENABLE: u8 = 0x29;
pub const CMD_GET_SENSOR_EVENT_STATUS: u8 = 0x2B;
pub const CMD_GET_SENSOR_READING: u8 = 0x2D;
pub const CMD_GET_SENSOR_TYPE: u8 = 0x2F;

pub const CMD_GET_FRU_AREA_INFO: u8 = 0x10;
pub const CMD_READ_FRU_DATA: u8 = 0x11;
pub const CMD_GET_SDR_REPOSITORY_INFO: u8 = 0x20;
pub const CMD_RESERVE_SDR_REPOSITORY: u8 = 0x22;
pub const CMD_GET_SDR: u8 = 0x23;
pub const CMD_GET_SEL_INFO: u8 = 0x40;
pub const CMD_RESERVE_SEL: u8 = 0x42;
pub const CMD_GET_SEL_ENTRY: u8 = 0x43;
pub const CMD_GET_SEL_TIME: u8 = 0x48;

pub const CMD_SET_LAN_CONFIG: u8 = 0x01;
pub const CMD_GET_LAN_CONFIG: u8 = 0x02;

/// The commands the metrics count by name (`virtbmc_requests_by_command_total`); any other
/// request counts as "other", the last slot.
pub const COUNTED: [(u8, u8, &str); 29] = [
    (NETFN_APP, CMD_GET_DEVICE_ID, "get_device_id"),
    (NETFN_APP, CMD_GET_SELF_TEST, "get_self_test_results"),
    (NETFN_APP, CMD_GET_ACPI_POWER_STATE, "get_acpi_power_state"),
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
    (NETFN_APP, CMD_GET_SESSION_INFO, "get_session_info"),
    (NETFN_APP, CMD_GET_CHANNEL_ACCESS, "get_channel_access"),
    (NETFN_APP, CMD_GET_CHANNEL_INFO, "get_channel_info"),
    (NETFN_APP, CMD_GET_USER_ACCESS, "get_user_access"),
    (NETFN_APP, CMD_GET_USER_NAME, "get_user_name"),
    (
        NETFN_APP,
        CMD_GET_CIPHER_SUITES,
        "get_channel_cipher_suites",
    ),
    (NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, "get_chassis_status"),
    (NETFN_CHASSIS, CMD_CHASSIS_CONTROL, "chassis_control"),
    (NETFN_CHASSIS, CMD_CHASSIS_IDENTIFY, "chassis_identify"),
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
    (NETFN_SENSOR, CMD_GET_SENSOR_READING, "get_sensor_reading"),
    (
        NETFN_STORAGE,
        CMD_GET_FRU_AREA_INFO,
        "get_fru_inventory_area_info",
    ),
    (NETFN_STORAGE, CMD_READ_FRU_DATA, "read_fru_data"),
    (
        NETFN_STORAGE,
        CMD_GET_SDR_REPOSITORY_INFO,
        "get_sdr_repository_info",
    ),
    (
        NETFN_STORAGE,
        CMD_RESERVE_SDR_REPOSITORY,
        "reserve_sdr_repository",
    ),
    (NETFN_STORAGE, CMD_GET_SDR, "get_sdr"),
    (NETFN_STORAGE, CMD_GET_SEL_INFO, "get_sel_info"),
    (NETFN_STORAGE, CMD_GET_SEL_ENTRY, "get_sel_entry"),
    (
        NETFN_TRANSPORT,
        CMD_GET_LAN_CONFIG,
        "get_lan_configuration_parameters",
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

pub enum Outcome {
    Reply(u8, Vec<u8>),
    /// The reply waits for the action's result; `When` says whether the action may run at
    /// once or only after the machine's power transition.
    Action(Action, When),
}

fn reply(cc: u8) -> Outcome {
    Outcome::Reply(cc, Vec::new())
}

/// A command's answer from a module's `Result`: the data, or a completion code alone.
fn answer<T: AsRef<[u8]>>(r: Result<T, u8>) -> Outcome {
    match r {
        Ok(data) => Outcome::Reply(cc::OK, data.as_ref().to_vec()),
        Err(code) => reply(code),
    }
}

/// What a command may read: the BMC's configuration and site, the machine, the time.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub config: &'a BmcConfig,
    pub site: &'a Site,
    pub vm: &'a VmView,
    pub now: Instant,
}

/// What a BMC keeps between commands, besides its sessions.
#[derive(Debug, Default)]
pub struct Kept {
    pub boot: BootParams,
    pub sdr: Reservation,
    pub sel: Reservation,
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

/// Minimum privilege of each command we implement (IPMI 2.0 Appendix G); None for commands
/// we do not know. The session commands the engine runs itself are listed too.
pub fn required_privilege(net_fn: u8, cmd: u8) -> Option<Privilege> {
    use Privilege::{Admin, Callback, Operator, User};
    let p = match (net_fn, cmd) {
        (
            NETFN_APP,
            CMD_GET_AUTH_CAPS
            | CMD_GET_CIPHER_SUITES
            | CMD_GET_SESSION_CHALLENGE
            | CMD_ACTIVATE_SESSION
            | CMD_SET_SESSION_PRIVILEGE
            | CMD_CLOSE_SESSION,
        ) => Callback,
        (
            NETFN_APP,
            CMD_GET_DEVICE_ID
            | CMD_GET_SELF_TEST
            | CMD_GET_ACPI_POWER_STATE
            | CMD_GET_SYSTEM_GUID
            | CMD_GET_SESSION_INFO
            | CMD_GET_CHANNEL_ACCESS
            | CMD_GET_CHANNEL_INFO,
        ) => User,
        // User names and access are Operator reads: a User may not list the accounts.
        (NETFN_APP, CMD_GET_USER_ACCESS | CMD_GET_USER_NAME) => Operator,
        (NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS | CMD_GET_BOOT_OPTIONS) => User,
        (NETFN_CHASSIS, CMD_CHASSIS_CONTROL | CMD_CHASSIS_IDENTIFY | CMD_SET_BOOT_OPTIONS) => {
            Operator
        }
        (
            NETFN_SENSOR,
            CMD_GET_SENSOR_READING_FACTORS
            | CMD_GET_SENSOR_HYSTERESIS
            | CMD_GET_SENSOR_THRESHOLDS
            | CMD_GET_SENSOR_EVENT_ENABLE
            | CMD_GET_SENSOR_EVENT_STATUS
            | CMD_GET_SENSOR_READING
            | CMD_GET_SENSOR_TYPE,
        ) => User,
        (
            NETFN_STORAGE,
            CMD_GET_FRU_AREA_INFO
            | CMD_READ_FRU_DATA
            | CMD_GET_SDR_REPOSITORY_INFO
            | CMD_RESERVE_SDR_REPOSITORY
            | CMD_GET_SDR
            | CMD_GET_SEL_INFO
            | CMD_RESERVE_SEL
            | CMD_GET_SEL_ENTRY
            | CMD_GET_SEL_TIME,
        ) => User,
        (NETFN_TRANSPORT, CMD_GET_LAN_CONFIG) => Operator,
        // Payload commands and SOL configuration (IPMI 2.0 Appendix G, §24, §26). What SOL
        // itself needs is a parameter of its own (engine::sol_config).
        (
            NETFN_APP,
            payload::CMD_ACTIVATE_PAYLOAD
            | payload::CMD_DEACTIVATE_PAYLOAD
            | payload::CMD_GET_PAYLOAD_ACTIVATION_STATUS
            | payload::CMD_GET_PAYLOAD_INSTANCE_INFO
            | payload::CMD_GET_CHANNEL_PAYLOAD_SUPPORT
            | payload::CMD_GET_CHANNEL_PAYLOAD_VERSION,
        ) => User,
        (NETFN_TRANSPORT, payload::CMD_GET_SOL_CONFIG) => User,
        (NETFN_TRANSPORT, payload::CMD_SET_SOL_CONFIG) => Admin,
        (NETFN_TRANSPORT, CMD_SET_LAN_CONFIG) => Admin,
        _ => return None,
    };
    Some(p)
}

/// Runs a command for a caller at `privilege` (None: outside a session, where only the
/// session-less discovery commands reach this function).
pub fn execute(
    req: &Request,
    privilege: Option<Privilege>,
    ctx: &Context,
    kept: &mut Kept,
) -> Outcome {
    let Some(needed) = required_privilege(req.net_fn, req.cmd) else {
        return reply(cc::INVALID_COMMAND);
    };
    if privilege.is_some_and(|p| p < needed) {
        return reply(cc::INSUFFICIENT_PRIVILEGE);
    }
    let (config, vm, d) = (ctx.config, ctx.vm, req.data);
    match (req.net_fn, req.cmd) {
        (NETFN_APP, CMD_GET_AUTH_CAPS) => answer(auth_caps(d, config.allow_auth_none)),
        (NETFN_APP, CMD_GET_CIPHER_SUITES) => answer(cipher_suites(d, &suite_records(config))),
        (NETFN_APP, CMD_GET_DEVICE_ID) if d.is_empty() => answer(Ok(DEVICE_ID)),
        (NETFN_APP, CMD_GET_SELF_TEST) if d.is_empty() => answer(Ok(device::SELF_TEST_PASSED)),
        (NETFN_APP, CMD_GET_ACPI_POWER_STATE) if d.is_empty() => {
            answer(Ok(device::acpi_power_state(vm)))
        }
        (NETFN_APP, CMD_GET_SYSTEM_GUID) if d.is_empty() => answer(Ok(vm.guid)),
        (NETFN_APP, CMD_GET_CHANNEL_ACCESS) => answer(channel::channel_access(d)),
        (NETFN_APP, CMD_GET_USER_ACCESS) => answer(users::get_user_access(d, config)),
        (NETFN_APP, CMD_GET_USER_NAME) => answer(users::get_user_name(d, config)),
        (NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS) if d.is_empty() => answer(Ok(chassis_status(vm))),
        (NETFN_CHASSIS, CMD_CHASSIS_CONTROL) if d.len() == 1 => chassis_control(d[0], vm),
        (NETFN_CHASSIS, CMD_CHASSIS_IDENTIFY) => reply(chassis_identify(d)),
        (NETFN_CHASSIS, CMD_SET_BOOT_OPTIONS) => boot::set_boot_option(d, &mut kept.boot),
        (NETFN_CHASSIS, CMD_GET_BOOT_OPTIONS) if d.len() == 3 => {
            boot::get_boot_option(d, vm, &kept.boot)
        }
        (NETFN_SENSOR, CMD_GET_SENSOR_READING) => answer(sensor::reading(d, vm)),
        (NETFN_SENSOR, CMD_GET_SENSOR_EVENT_STATUS) => answer(sensor::event_status(d)),
        (NETFN_SENSOR, CMD_GET_SENSOR_EVENT_ENABLE) => answer(sensor::event_enable(d)),
        (NETFN_SENSOR, CMD_GET_SENSOR_TYPE) => answer(sensor::sensor_type(d)),
        (
            NETFN_SENSOR,
            CMD_GET_SENSOR_THRESHOLDS | CMD_GET_SENSOR_HYSTERESIS | CMD_GET_SENSOR_READING_FACTORS,
        ) => answer(sensor::threshold_only(d)),
        (NETFN_STORAGE, CMD_GET_FRU_AREA_INFO) => answer(fru::area_info(d, fru_image(ctx).len())),
        (NETFN_STORAGE, CMD_READ_FRU_DATA) => answer(fru::read(d, &fru_image(ctx))),
        (NETFN_STORAGE, CMD_GET_SDR_REPOSITORY_INFO) if d.is_empty() => {
            answer(Ok(sdr::repository_info()))
        }
        (NETFN_STORAGE, CMD_RESERVE_SDR_REPOSITORY) if d.is_empty() => {
            answer(Ok(kept.sdr.reserve().to_le_bytes()))
        }
        (NETFN_STORAGE, CMD_GET_SDR) => answer(sdr::get_sdr(d, &kept.sdr)),
        (NETFN_STORAGE, CMD_GET_SEL_INFO) if d.is_empty() => answer(Ok(sel::info())),
        (NETFN_STORAGE, CMD_RESERVE_SEL) if d.is_empty() => {
            answer(Ok(kept.sel.reserve().to_le_bytes()))
        }
        (NETFN_STORAGE, CMD_GET_SEL_ENTRY) => answer(sel::entry(d, &kept.sel)),
        (NETFN_STORAGE, CMD_GET_SEL_TIME) if d.is_empty() => {
            answer(Ok(sel::time(ctx.site, ctx.now)))
        }
        (NETFN_TRANSPORT, CMD_GET_LAN_CONFIG) => answer(lan_config::get(d, config, ctx.site)),
        (NETFN_TRANSPORT, CMD_SET_LAN_CONFIG) => reply(lan_config::set(d, config, ctx.site)),
        _ => reply(cc::REQUEST_LENGTH_INVALID),
    }
}

/// The FRU image of this BMC's machine.
fn fru_image(ctx: &Context) -> Vec<u8> {
    fru::image(&ctx.site.vm_name, &ctx.vm.guid)
}

/// What this BMC is (Get Device ID byte 6, §20.1): a chassis device with an SDR repository,
/// a SEL, FRU inventory and sensors. The SDR repository's own locator record says the same.
pub const DEVICE_SUPPORT: u8 = 0x8F;

/// Get Device ID (IPMI 2.0 §20.1): 15 bytes, IPMI version 0x02 (BCD "2.0": low nibble is the
/// major version), then what the device supports. freeipmi rejects any other length. Device
/// revision bit 7 is clear: no device SDRs, so clients read the SDR repository instead.
pub const DEVICE_ID: [u8; 15] = [
    0x20, // device id
    0x01, // device revision
    0x00, // firmware major (bit 7 clear: normal operation)
    0x01, // firmware minor, BCD
    0x02, // IPMI version 2.0
    DEVICE_SUPPORT,
    0x00,
    0x00,
    0x00, // manufacturer id: unspecified
    0x00,
    0x00, // product id
    0x00,
    0x00,
    0x00,
    0x00, // auxiliary firmware revision
];

/// Get Channel Authentication Capabilities (IPMI 2.0 §22.13). Offers only what is enforced:
/// MD5 and straight password, NONE when the operator enabled it, IPMI 2.0 in the extended form.
pub fn auth_caps(d: &[u8], allow_none: bool) -> Result<[u8; 8], u8> {
    if d.len() != 2 {
        return Err(cc::REQUEST_LENGTH_INVALID);
    }
    let extended = d[0] & 0x80 != 0;
    if !channel::is_ours(d[0]) || d[0] & 0x70 != 0 || Privilege::from_wire(d[1]).is_none() {
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
    if !channel::is_ours(d[0]) || d[1] != 0x00 {
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

/// Chassis Identify (IPMI 2.0 §28.5): an interval (0 turns it off) and optionally "force
/// on". A virtual machine has no light to blink; the command is accepted as on a chassis
/// whose identify indicator nobody can see.
fn chassis_identify(d: &[u8]) -> u8 {
    match d {
        [] | [_] => cc::OK,
        [_, force] if force & 0xFE == 0 => cc::OK,
        [_, _] => cc::INVALID_DATA_FIELD,
        _ => cc::REQUEST_LENGTH_INVALID,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::User;
    use crate::engine::vm::PowerState;

    fn vm(power: PowerState) -> VmView {
        VmView::with_power(power)
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
        run_kept(r, p, power, &mut Kept::default())
    }

    fn run_kept(
        r: &Request,
        p: Privilege,
        power: PowerState,
        kept: &mut Kept,
    ) -> (u8, Vec<u8>, Option<(Action, When)>) {
        let cfg = BmcConfig::new(vec![
            User::new("admin", "password", Privilege::Admin).unwrap(),
        ]);
        let site = Site {
            vm_name: "vm-0".into(),
            ..Site::default()
        };
        let vm = vm(power);
        let ctx = Context {
            config: &cfg,
            site: &site,
            vm: &vm,
            now: Instant::now(),
        };
        match execute(r, Some(p), &ctx, kept) {
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
    fn device_id_announces_sdr_sel_fru_and_sensors() {
        let (code, id, _) = run(
            &req(NETFN_APP, CMD_GET_DEVICE_ID, &[]),
            Privilege::User,
            PowerState::Off,
        );
        assert_eq!((code, id.len(), id[1] & 0x80, id[5]), (0, 15, 0, 0x8F));
    }

    #[test]
    fn new_reads_answer_at_user_privilege() {
        let user =
            |net_fn, cmd, d: &[u8]| run(&req(net_fn, cmd, d), Privilege::User, PowerState::On);
        assert_eq!(
            user(NETFN_APP, CMD_GET_SELF_TEST, &[]),
            (0, vec![0x55, 0], None)
        );
        assert_eq!(
            user(NETFN_APP, CMD_GET_ACPI_POWER_STATE, &[]),
            (0, vec![0, 0], None)
        );
        assert_eq!(
            user(NETFN_APP, CMD_GET_CHANNEL_ACCESS, &[1, 0x80]),
            (0, vec![0x22, 4], None)
        );
        assert_eq!(
            user(NETFN_SENSOR, CMD_GET_SENSOR_READING, &[1]),
            (0, vec![0, 0x40, 1, 0x80], None)
        );
        assert_eq!(
            user(NETFN_SENSOR, CMD_GET_SENSOR_THRESHOLDS, &[1]).0,
            cc::ILLEGAL_FOR_SENSOR
        );
        assert_eq!(user(NETFN_STORAGE, CMD_GET_SEL_INFO, &[]).1.len(), 14);
        assert_eq!(
            user(NETFN_STORAGE, CMD_GET_SEL_ENTRY, &[0, 0, 0, 0, 0, 0xFF]).0,
            cc::NOT_PRESENT
        );
        assert_eq!(
            user(NETFN_STORAGE, CMD_GET_SEL_TIME, &[]),
            (0, vec![0xFF; 4], None)
        );
        assert_eq!(
            user(NETFN_STORAGE, CMD_GET_SDR_REPOSITORY_INFO, &[]).1[..3],
            [0x51, 2, 0]
        );
        assert_eq!(
            user(NETFN_APP, CMD_GET_SELF_TEST, &[1]).0,
            cc::REQUEST_LENGTH_INVALID
        );
    }

    #[test]
    fn accounts_lan_and_identify_need_operator_or_more() {
        let at = |p, net_fn, cmd, d: &[u8]| run(&req(net_fn, cmd, d), p, PowerState::On).0;
        for (net_fn, cmd, d) in [
            (NETFN_APP, CMD_GET_USER_ACCESS, &[1u8, 1][..]),
            (NETFN_APP, CMD_GET_USER_NAME, &[1]),
            (NETFN_TRANSPORT, CMD_GET_LAN_CONFIG, &[1, 3, 0, 0]),
            (NETFN_CHASSIS, CMD_CHASSIS_IDENTIFY, &[]),
        ] {
            assert_eq!(
                at(Privilege::User, net_fn, cmd, d),
                cc::INSUFFICIENT_PRIVILEGE
            );
            assert_eq!(at(Privilege::Operator, net_fn, cmd, d), cc::OK);
        }
        let set_ip = &[1, 3, 10, 0, 0, 1][..];
        assert_eq!(
            at(
                Privilege::Operator,
                NETFN_TRANSPORT,
                CMD_SET_LAN_CONFIG,
                set_ip
            ),
            cc::INSUFFICIENT_PRIVILEGE
        );
        assert_eq!(
            at(
                Privilege::Admin,
                NETFN_TRANSPORT,
                CMD_SET_LAN_CONFIG,
                set_ip
            ),
            cc::PARAMETER_READ_ONLY
        );
    }

    #[test]
    fn identify_takes_an_interval_and_force() {
        let id = |d: &[u8]| {
            run(
                &req(NETFN_CHASSIS, CMD_CHASSIS_IDENTIFY, d),
                Privilege::Operator,
                PowerState::Off,
            )
        };
        assert_eq!(id(&[]), (0, vec![], None));
        assert_eq!(id(&[15]), (0, vec![], None));
        assert_eq!(id(&[0, 1]), (0, vec![], None));
        assert_eq!(id(&[0, 2]).0, cc::INVALID_DATA_FIELD);
        assert_eq!(id(&[0, 1, 0]).0, cc::REQUEST_LENGTH_INVALID);
    }

    #[test]
    fn sdr_and_fru_read_through_the_dispatch() {
        let mut kept = Kept::default();
        let mut call = |net_fn, cmd, d: &[u8]| {
            run_kept(
                &req(net_fn, cmd, d),
                Privilege::User,
                PowerState::Off,
                &mut kept,
            )
        };
        let (code, res, _) = call(NETFN_STORAGE, CMD_RESERVE_SDR_REPOSITORY, &[]);
        assert_eq!((code, res.clone()), (0, vec![1, 0]));
        let (code, body, _) = call(NETFN_STORAGE, CMD_GET_SDR, &[res[0], res[1], 1, 0, 5, 0xFF]);
        assert_eq!((code, body.len()), (0, 2 + 43));
        assert_eq!(
            call(NETFN_STORAGE, CMD_RESERVE_SEL, &[]).1,
            [1, 0],
            "a counter of its own"
        );
        let (_, info, _) = call(NETFN_STORAGE, CMD_GET_FRU_AREA_INFO, &[0]);
        let size = info[0] as usize;
        let (code, data, _) = call(NETFN_STORAGE, CMD_READ_FRU_DATA, &[0, 0, 0, size as u8]);
        assert_eq!((code, data[0] as usize), (0, size));
        let name = b"vm-0";
        assert!(
            data.windows(5).any(|w| w[0] == 0xC4 && &w[1..] == name),
            "product name"
        );
    }

    #[test]
    fn unknown_commands_answer_c1() {
        assert_eq!(
            run(&req(0x2C, 0x3E, &[0, 2]), Privilege::Admin, PowerState::On).0,
            cc::INVALID_COMMAND
        );
    }
}
