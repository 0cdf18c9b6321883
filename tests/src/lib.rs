//! End-to-end fixture for virtbmc: the agent runs in one network namespace, real IPMI clients
//! (ipmitool, freeipmi) run in a second one, joined by a veth pair. Nothing here touches the
//! host's own network: every address lives inside namespaces the fixture made and deletes.
//!
//! ```no_run
//! use virtbmc_e2e::{Bmc, Iface};
//! if virtbmc_e2e::skip_unless_ready("example", &["ipmitool"]) { return; }
//! let bmc = Bmc::builder().vm("vm-0=6230").start();
//! let out = bmc.ipmitool(Iface::Lan, "admin", "password", 6230, &["power", "status"]);
//! assert!(out.stdout.contains("Chassis Power is off"));
//! assert_eq!(bmc.vm("vm-0").power, "off");
//! ```

mod agent;
mod client;
pub mod hex;
pub mod image;
mod netns;
mod precheck;
mod pyghmi;
mod shell;
pub mod terminal;
mod vms;

pub use agent::{Bmc, BmcBuilder, agent_binary};
pub use client::{Iface, Out};
pub use netns::NetnsPair;
pub use precheck::{is_root, skip_unless_ready};
pub use pyghmi::PYGHMI_SCRIPT;
pub use shell::Shell;
pub use terminal::Terminal;
pub use vms::Vm;
