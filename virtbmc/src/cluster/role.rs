//! Which part of the cluster work a process does, so that each part runs under a
//! ServiceAccount holding only the rights that part needs.
//!
//! - `agent` (the DaemonSet, one per node): serves IPMI and Redfish, so it powers VMs,
//!   changes their boot orders, opens their consoles and records Events; its users come
//!   from the controller's copies, never from a tenant's Secret.
//! - `controller` (a Deployment): takes part in the Lease election and, when elected, writes
//!   ports, Services, EndpointSlices, status conditions and finalizers, copies each BMC's user
//!   for the agents, and restores one-shot boot overrides once their boot came. It serves
//!   nothing.
//! - `all`: both in one process, for a single-node or development set-up (its identity then
//!   holds both sets of rights).
//!
//! Where it is read: [`super::serve::spawn`] starts the tasks of the role, the binary's
//! start-up binds the BMC sockets, the fast path and Redfish only for a role that serves,
//! and the Secret cache and the leader follow [`Role::credential_copies`].

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Serves the BMCs of the cluster; writes only what a BMC command asks for.
    Agent,
    /// Takes part in the election and, as leader, writes what the BMCs need to be reached
    /// and what a person reads; serves nothing.
    Controller,
    /// Both, in one process (one identity holding both sets of rights).
    #[default]
    All,
}

impl Role {
    /// Binds the BMC sockets, answers IPMI and Redfish, and finishes the boot overrides that
    /// a request of an agent left half done when it starts.
    pub fn serves(self) -> bool {
        matches!(self, Role::Agent | Role::All)
    }

    /// Runs the Lease election and, when elected, the leader's writes.
    pub fn controls(self) -> bool {
        matches!(self, Role::Controller | Role::All)
    }

    /// With the roles in two processes, credentials pass through copies
    /// ([`super::credentials`]): the controller writes one per BMC in the agents' namespace
    /// and the agents read those alone, never a tenant's Secret. A process of both roles
    /// reads the tenants' Secrets itself.
    pub fn credential_copies(self) -> bool {
        !matches!(self, Role::All)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("role {0:?} is none of agent, controller, all")]
pub struct UnknownRole(String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "agent" => Ok(Role::Agent),
            "controller" => Ok(Role::Controller),
            "all" => Ok(Role::All),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Agent => "agent",
            Role::Controller => "controller",
            Role::All => "all",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_runs_its_half_and_all_runs_both() {
        let parts = |r: Role| (r.serves(), r.controls());
        assert_eq!(parts(Role::Agent), (true, false));
        assert_eq!(parts(Role::Controller), (false, true));
        assert_eq!(parts(Role::All), (true, true));
        assert!(Role::Agent.credential_copies() && Role::Controller.credential_copies());
        assert!(!Role::All.credential_copies());
        for r in [Role::Agent, Role::Controller, Role::All] {
            assert_eq!(r.to_string().parse::<Role>(), Ok(r));
        }
        assert_eq!(
            "leader".parse::<Role>().unwrap_err().to_string(),
            "role \"leader\" is none of agent, controller, all"
        );
    }
}
