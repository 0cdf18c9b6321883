//! Completion codes (IPMI 2.0 §5.2, table 5-2) and the command-specific ones we send.

pub const OK: u8 = 0x00;
/// Generic "node busy": a power transition outlasted the action's deadline.
pub const NODE_BUSY: u8 = 0xC0;
pub const INVALID_COMMAND: u8 = 0xC1;
pub const TIMEOUT: u8 = 0xC3;
pub const OUT_OF_SPACE: u8 = 0xC4;
/// A reservation id that is not the current one (SDR, SEL partial reads).
pub const RESERVATION_CANCELLED: u8 = 0xC5;
pub const REQUEST_LENGTH_INVALID: u8 = 0xC7;
/// An offset beyond the record or FRU area.
pub const PARAMETER_OUT_OF_RANGE: u8 = 0xC9;
/// "Requested sensor, data, or record not present."
pub const NOT_PRESENT: u8 = 0xCB;
pub const INVALID_DATA_FIELD: u8 = 0xCC;
/// "Command illegal for specified sensor or record type": a threshold command on a discrete
/// sensor.
pub const ILLEGAL_FOR_SENSOR: u8 = 0xCD;
pub const INSUFFICIENT_PRIVILEGE: u8 = 0xD4;
pub const NOT_IN_STATE: u8 = 0xD5;
/// "Command sub-function has been disabled or is unavailable."
pub const UNAVAILABLE: u8 = 0xD6;
pub const UNSPECIFIED: u8 = 0xFF;

/// Get Session Challenge (IPMI 2.0 §22.16): invalid user name / null user name not enabled.
pub const INVALID_USER: u8 = 0x81;
pub const NULL_USER_DISABLED: u8 = 0x82;
/// Activate Session (§22.17): privilege exceeds the user's limit.
pub const PRIVILEGE_EXCEEDS_LIMIT: u8 = 0x86;
/// Set Session Privilege Level (§22.18): requested level exceeds the user's or channel's limit.
pub const SET_PRIV_EXCEEDS_LIMIT: u8 = 0x81;
/// Close Session (§22.19): invalid session id.
pub const INVALID_SESSION_ID: u8 = 0x87;
/// Get/Set System Boot Options (§28.12), Get/Set LAN Configuration Parameters (§23.1, §23.2):
/// parameter not supported.
pub const PARAMETER_NOT_SUPPORTED: u8 = 0x80;
/// Set LAN Configuration Parameters (§23.1): attempt to write a read-only parameter.
pub const PARAMETER_READ_ONLY: u8 = 0x82;
