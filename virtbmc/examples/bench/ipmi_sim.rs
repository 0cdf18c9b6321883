//! ipmi_sim, OpenIPMI's LAN BMC simulator (Debian package `openipmi`), as the reference BMC:
//! its configuration is written into a fresh temporary folder, it listens on loopback, and it
//! is killed when the guard drops (also on a panic) or when this process dies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virtbmc::console;

/// `$IPMI_SIM`, else `ipmi_sim` from PATH; the error says why the comparison cannot run.
pub fn find() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("IPMI_SIM") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("IPMI_SIM={} does not exist", bin.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("ipmi_sim"))
        .find(|bin| bin.is_file())
        .ok_or_else(|| {
            "ipmi_sim is not on PATH (Debian package openipmi; `cargo xtask bench` installs it \
             with apt when it can)"
                .to_string()
        })
}

/// The first line `ipmi_sim -v` prints and the Debian package's version, for the record.
pub fn version(bin: &Path) -> String {
    let package = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "openipmi"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!(", Debian openipmi {}", String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    let own = Command::new(bin)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    own + &package
}

/// The LAN channel (see ipmi_lan(5)): one address, one admin user with the same name and
/// password the virtbmc agent gets. User 1 is the anonymous user whose name is ignored, so the
/// named user is number 2; 63 is both its session limit and the channel's table size.
fn lan_conf(port: u16) -> String {
    format!(
        r#"name "virtbmc-bench"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback md5 straight
    allowed_auths_user md5 straight
    allowed_auths_operator md5 straight
    allowed_auths_admin md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  user 2 true "admin" "password" admin 63 md5 straight
"#
    )
}

/// The emulated hardware (see ipmi_sim_cmd(5)): one BMC at IPMB address 0x20, enabled.
const COMMANDS: &str = "mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
mc_enable 0x20
";

/// A running ipmi_sim and its folder; both go away on drop.
pub struct IpmiSim {
    child: Child,
    dir: PathBuf,
}

impl IpmiSim {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const FOLDER_PREFIX: &str = "virtbmc-bench-ipmi-sim-";

/// Folders of earlier runs whose process is gone: a SIGKILL gave their guard no chance.
fn remove_stale_folders() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix(FOLDER_PREFIX));
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Starts ipmi_sim on 127.0.0.1:`port` and waits until it answers Get Channel
/// Authentication Capabilities.
pub fn start(bin: &Path, port: u16) -> Result<IpmiSim, String> {
    remove_stale_folders();
    let dir = std::env::temp_dir().join(format!("{FOLDER_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write("lan.conf", &lan_conf(port))?;
    write("cmds.emu", COMMANDS)?;
    let stderr = std::fs::File::create(dir.join("stderr")).map_err(|e| e.to_string())?;
    // -n: no console on stdin/stdout; -p: no persistent state; -s: state folder (unused with
    // -p, but kept out of /var).
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(dir.join("lan.conf"))
        .arg("-f")
        .arg(dir.join("cmds.emu"))
        .arg("-s")
        .arg(&dir)
        .args(["-n", "-p"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    super::die_with_parent(&mut cmd);
    let child = cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut sim = IpmiSim { child, dir };

    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let sock = super::socket(target);
    let probe = console::sessionless_v15(0x06, 0x38, 1, &[0x8e, 0x04]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = sim.child.try_wait() {
            let log = std::fs::read_to_string(sim.dir.join("stderr")).unwrap_or_default();
            return Err(format!("ipmi_sim exited ({status}): {}", log.trim()));
        }
        if super::exchange(&sock)(&probe).is_some_and(|r| console::parse_v15(&r).is_ok()) {
            return Ok(sim);
        }
        if Instant::now() > deadline {
            return Err("ipmi_sim did not answer within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
