//! The agent's command line.

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;

use crate::engine::config::{BmcConfig, Privilege, User, suite};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "virtbmc",
    version,
    about = "A virtual BMC: IPMI 1.5 and 2.0 over LAN for every VM on this node"
)]
pub struct Args {
    /// Address the BMC sockets bind to.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen: IpAddr,

    /// An embedded VM and its BMC port: NAME=PORT[,on|off] (repeatable).
    #[arg(long = "vm", value_name = "NAME=PORT[,on|off]")]
    pub vms: Vec<VmSpec>,

    /// Also serve N generated embedded VMs vm-<i> on ports BASE-PORT+i (for scale tests).
    #[arg(long, default_value_t = 0)]
    pub generate: u32,

    #[arg(long, default_value_t = 20000)]
    pub base_port: u16,

    /// A BMC user: NAME:PASSWORD[:user|operator|admin] (repeatable; default privilege admin).
    /// Required for the embedded VMs; with --kube the users come from each BMC's Secret.
    #[arg(long = "user", value_name = "NAME:PASSWORD[:PRIV]")]
    pub users: Vec<UserSpec>,

    /// Serve every VirtualMachineBMC of the cluster (kubeconfig, then in-cluster config).
    #[arg(long)]
    pub kube: bool,

    /// With --kube: talk to this API server URL instead (no credentials; for tests and the
    /// simulated cluster). Implies --kube.
    #[arg(long, value_name = "URL")]
    pub kube_url: Option<String>,

    /// With --kube: what this process does. `agent` serves IPMI and Redfish (the DaemonSet),
    /// `controller` runs the election and the leader's writes and serves nothing (the
    /// Deployment), `all` does both (one identity holding both sets of rights).
    #[arg(long, default_value = "all")]
    pub role: crate::cluster::role::Role,

    /// With --kube: agent ports handed out to VirtualMachineBMCs, FIRST-LAST.
    #[arg(long, default_value = "10000-19999", value_parser = parse_port_range)]
    pub port_range: (u16, u16),

    /// With --kube: the node this agent runs on (the default identity); default: $NODE_NAME.
    #[arg(long)]
    pub node_name: Option<String>,

    /// With --kube: namespace of the leader Lease (default: the client's namespace).
    #[arg(long)]
    pub lease_namespace: Option<String>,

    /// With --kube: label selector of the agent pods, in this pod's namespace ($POD_NAMESPACE,
    /// else the lease namespace): every BMC Service's endpoints.
    #[arg(long, default_value = crate::cluster::DEFAULT_AGENT_SELECTOR)]
    pub agent_selector: String,

    /// With --kube: the ConfigMap, in each VM's namespace, holding the CA that verifies https
    /// virtual media images (CDI's `certConfigMap`, mounted into its importer); without it,
    /// the importer's system roots.
    #[arg(long, value_name = "NAME", value_parser = configmap_name)]
    pub media_ca_configmap: Option<String>,

    /// With --kube, without the VirtualMachineBMC CRD: give a BMC to every VirtualMachine
    /// this label selector matches (e.g. `bmc.kubevirt.io/enabled=true`). Needs --auth-secret.
    #[arg(long, value_name = "SELECTOR", requires = "auth_secret")]
    pub vm_selector: Option<String>,

    /// With --vm-selector: NAMESPACE/NAME of the one Secret (`username`, `password`) every
    /// selected VM's BMC takes its user from.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "vm_selector")]
    pub auth_secret: Option<String>,

    /// With --kube: this agent's holder identity in the Lease (default: node name, else
    /// host name, else virtbmc-PID).
    #[arg(long)]
    pub identity: Option<String>,

    /// Accept IPMI 1.5 auth type NONE (no password at all). Off by default.
    #[arg(long)]
    pub allow_auth_none: bool,

    /// RMCP+ cipher suites offered, in order (1, 2, 3, 15, 16, 17; 0 only if you mean it).
    #[arg(long, value_delimiter = ',', default_value = "3,17")]
    pub cipher_suites: Vec<u8>,

    /// Embedded backend: how long a power transition takes, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub transition_ms: u64,

    /// Sessions per BMC (half-open and active together).
    #[arg(long, default_value_t = 16)]
    pub max_sessions: usize,

    /// RAKP2 answers per second per source address, per BMC (burst: twice as many). RAKP2
    /// carries an HMAC keyed by the password, an offline-guessing oracle (CVE-2013-4786).
    #[arg(long, default_value_t = 20.0)]
    pub rakp_per_second: f32,

    /// Idle seconds before an active session is closed.
    #[arg(long, default_value_t = 60)]
    pub session_timeout: u64,

    /// An action's deadline: for a power transition to end (0xC0 after it) and for the
    /// backend to accept the action (0xC3 after it).
    #[arg(long, default_value_t = 1500)]
    pub action_timeout_ms: u64,

    /// Serve no Redfish: by default each BMC's port number also serves Redfish over HTTPS
    /// on TCP.
    #[arg(long)]
    pub no_redfish: bool,

    /// Also answer plain HTTP (no TLS) on each BMC's Redfish port, for clients that cannot
    /// speak TLS; credentials then travel in clear.
    #[arg(long, conflicts_with = "no_redfish")]
    pub redfish_plain_http: bool,

    /// Redfish TLS certificate chain (PEM), re-read when it changes; with --redfish-key.
    /// Without both, a self-signed certificate is made at start.
    #[arg(long, requires = "redfish_key")]
    pub redfish_cert: Option<std::path::PathBuf>,

    /// Redfish TLS private key (PEM), re-read when it changes.
    #[arg(long, requires = "redfish_cert")]
    pub redfish_key: Option<std::path::PathBuf>,

    /// Admin HTTP endpoint: /healthz, /vms, /metrics.
    #[arg(long, default_value = "127.0.0.1:9623")]
    pub admin: std::net::SocketAddr,

    /// Interface to attach the XDP fast path to (none: no fast path).
    #[arg(long)]
    pub xdp_iface: Option<String>,

    /// XDP attach mode: auto (generic on veth, native elsewhere), native, skb, off.
    #[arg(long, default_value = "auto")]
    pub xdp_mode: crate::fastpath::XdpMode,

    /// The XDP object (default: $VIRTBMC_EBPF_OBJECT, else
    /// target/bpfel-unknown-none/release/virtbmc-ebpf; build it with `cargo xtask build-ebpf`).
    #[arg(long)]
    pub ebpf_object: Option<std::path::PathBuf>,

    /// bpffs folder the maps are pinned in (one per agent: a second agent must not share it).
    #[arg(long, default_value = crate::fastpath::PIN_DIR)]
    pub bpf_pin_dir: std::path::PathBuf,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("expected FIRST-LAST")?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!("{a}-{b} is empty or starts at 0"));
    }
    Ok((a, b))
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub port: u16,
    pub on: bool,
}

impl std::str::FromStr for VmSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = s.split_once('=').ok_or("expected NAME=PORT[,on|off]")?;
        let (port, state) = rest.split_once(',').unwrap_or((rest, "off"));
        let port = port.parse().map_err(|e| format!("port {port:?}: {e}"))?;
        let on = match state {
            "on" => true,
            "off" => false,
            other => return Err(format!("power state {other:?} is neither on nor off")),
        };
        if name.is_empty() {
            return Err("empty VM name".into());
        }
        Ok(VmSpec {
            name: name.to_string(),
            port,
            on,
        })
    }
}

#[derive(Debug, Clone)]
pub struct UserSpec(pub User);

impl std::str::FromStr for UserSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = s.split_once(':').ok_or("expected NAME:PASSWORD[:PRIV]")?;
        // The privilege is whatever follows the last colon, if it names one: passwords may
        // contain colons.
        let (password, privilege) = match rest.rsplit_once(':') {
            Some((pw, p)) if p.parse::<Privilege>().is_ok() => {
                (pw, p.parse().unwrap_or(Privilege::Admin))
            }
            _ => (rest, Privilege::Admin),
        };
        User::new(name, password, privilege).map(UserSpec)
    }
}

/// A ConfigMap name as it will go into a DataVolume: a DNS-1123 subdomain.
fn configmap_name(s: &str) -> Result<String, String> {
    if crate::cluster::names::is_subdomain(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a ConfigMap name"))
    }
}

impl Args {
    pub fn kube_mode(&self) -> bool {
        self.kube || self.kube_url.is_some() || self.vm_selector.is_some()
    }

    /// The mode without the CRD, if asked for.
    pub fn label_mode(&self) -> Result<Option<crate::cluster::labeled::LabelMode>, String> {
        match (&self.vm_selector, &self.auth_secret) {
            (Some(sel), Some(secret)) => {
                crate::cluster::labeled::LabelMode::new(sel, secret).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// --node-name, else $NODE_NAME (the DaemonSet sets it from spec.nodeName).
    pub fn node_name(&self) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
    }

    /// The agent pods' namespace: $POD_NAMESPACE (the DaemonSet sets it from the pod's own
    /// metadata), else the lease namespace.
    pub fn agent_namespace(&self, lease_namespace: &str) -> String {
        std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| lease_namespace.to_string())
    }

    /// The cluster agent's name: --identity, else the node name, else the host name.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| self.node_name())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| format!("virtbmc-{}", std::process::id()))
    }

    pub fn bmc_config(&self) -> Result<BmcConfig, String> {
        let mut c = BmcConfig::new(self.users.iter().map(|u| u.0.clone()).collect());
        for id in &self.cipher_suites {
            if suite(*id).is_none() {
                return Err(format!(
                    "cipher suite {id} is not implemented (choose from 0, 1, 2, 3, 15, 16, 17)"
                ));
            }
        }
        c.cipher_suites = self.cipher_suites.clone();
        c.allow_auth_none = self.allow_auth_none;
        c.max_sessions = self.max_sessions.max(1);
        if !(self.rakp_per_second.is_finite() && self.rakp_per_second > 0.0) {
            return Err(format!(
                "--rakp-per-second {} must be a positive number",
                self.rakp_per_second
            ));
        }
        c.rakp_per_second = self.rakp_per_second;
        c.rakp_burst = 2.0 * self.rakp_per_second;
        c.session_timeout = Duration::from_secs(self.session_timeout.max(1));
        Ok(c)
    }

    /// Every embedded VM, the named ones first, then the generated ones.
    pub fn all_vms(&self) -> Vec<VmSpec> {
        let mut v = self.vms.clone();
        for i in 0..self.generate {
            v.push(VmSpec {
                name: format!("vm-{i}"),
                port: self.base_port.wrapping_add(i as u16),
                on: false,
            });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let v: VmSpec = "web=6230,on".parse().unwrap();
        assert_eq!((v.name.as_str(), v.port, v.on), ("web", 6230, true));
        assert!("web".parse::<VmSpec>().is_err());
        let u: UserSpec = "viewer:pa:ss:user".parse().unwrap();
        assert_eq!(
            (u.0.name.as_str(), u.0.max_privilege),
            ("viewer", Privilege::User)
        );
        assert_eq!(
            u.0.key,
            crate::crypto::Key20::from_password("pa:ss").unwrap()
        );
        let u: UserSpec = "admin:password".parse().unwrap();
        assert_eq!(u.0.max_privilege, Privilege::Admin);
        assert!("x:".parse::<UserSpec>().is_ok(), "empty password");
        assert!(":pw".parse::<UserSpec>().is_err());
    }

    #[test]
    fn rakp_rate_reaches_the_engine_config() {
        let args = |extra: &[&str]| {
            let mut v = vec!["virtbmc", "--user", "admin:password"];
            v.extend_from_slice(extra);
            Args::try_parse_from(v).unwrap()
        };
        let c = args(&[]).bmc_config().unwrap();
        assert_eq!((c.rakp_per_second, c.rakp_burst), (20.0, 40.0));
        let c = args(&["--rakp-per-second", "500"]).bmc_config().unwrap();
        assert_eq!((c.rakp_per_second, c.rakp_burst), (500.0, 1000.0));
        assert!(args(&["--rakp-per-second", "0"]).bmc_config().is_err());
        assert!(args(&["--rakp-per-second", "NaN"]).bmc_config().is_err());
    }

    #[test]
    fn kube_mode_needs_no_user() {
        let a = Args::try_parse_from([
            "virtbmc",
            "--kube-url",
            "http://127.0.0.1:1",
            "--port-range",
            "20000-20009",
        ])
        .unwrap();
        assert!(a.kube_mode() && a.users.is_empty());
        assert_eq!(a.port_range, (20000, 20009));
        assert_eq!(a.agent_selector, "app.kubernetes.io/name=virtbmc");
        assert_eq!(a.label_mode(), Ok(None));
        let a = Args::try_parse_from([
            "virtbmc",
            "--vm-selector",
            "bmc=on",
            "--auth-secret",
            "virtbmc-system/creds",
        ])
        .unwrap();
        let m = a.label_mode().unwrap().unwrap();
        assert!(a.kube_mode());
        assert_eq!(
            (m.selector.as_str(), m.secret_name.as_str()),
            ("bmc=on", "creds")
        );
        let a = Args::try_parse_from(["virtbmc", "--kube", "--media-ca-configmap", "image-ca"])
            .unwrap();
        assert_eq!(a.media_ca_configmap.as_deref(), Some("image-ca"));
        assert!(
            Args::try_parse_from(["virtbmc", "--kube", "--media-ca-configmap", "a/b"]).is_err()
        );
        // One without the other is refused.
        assert!(Args::try_parse_from(["virtbmc", "--vm-selector", "bmc=on"]).is_err());
        assert!(Args::try_parse_from(["virtbmc", "--auth-secret", "a/b"]).is_err());
        assert!(Args::try_parse_from(["virtbmc", "--kube", "--port-range", "9-1"]).is_err());
        assert_eq!(
            Args::try_parse_from(["virtbmc"]).unwrap().port_range,
            (10000, 19999)
        );
    }
}
