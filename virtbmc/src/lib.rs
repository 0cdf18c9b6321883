//! virtbmc: a virtual BMC for KubeVirt virtual machines.
//!
//! - [`wire`]: RMCP, ASF and IPMI framing (no state, no I/O).
//! - [`engine`]: the sans-IO IPMI engine (sessions, users, commands).
//! - [`backend`]: the power backends the engine's actions go through.
//! - [`cluster`]: the Kubernetes backend (VirtualMachineBMC, KubeVirt subresources, Lease).
//! - [`agent`]: the tokio wiring (sockets, timers, admin endpoint).
//! - [`redfish`]: Redfish over HTTPS on each BMC's port, beside IPMI.
//! - [`fastpath`]: the XDP program loader and its maps (the only module that knows aya).

#[cfg(feature = "agent")]
pub mod agent;
pub mod backend;
#[cfg(feature = "agent")]
pub mod cluster;
pub mod console;
pub mod crypto;
pub mod engine;
#[cfg(feature = "agent")]
pub mod fastpath;
#[cfg(feature = "agent")]
pub mod redfish;
pub mod wire;
