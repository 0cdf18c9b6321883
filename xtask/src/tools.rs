//! Where the workspace is, how to run cargo and other commands, which tools are present.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The cargo that runs us (set by `cargo run`), else `cargo` from PATH.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Prints the command, runs it with inherited stdio, and fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}").replace('"', "");
    println!("==> {shown}");
    let status = cmd.status().map_err(|e| format!("{shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

pub fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(tool).is_file())
}

/// Binaries the end-to-end tests and the demo run, and the Debian package of each.
pub const NEEDED: [(&str, &str); 10] = [
    ("ipmitool", "ipmitool"),
    ("ipmipower", "freeipmi-tools"),
    ("ipmi-chassis", "freeipmi-tools"),
    ("bmc-info", "freeipmi-tools"),
    ("rmcpping", "freeipmi-tools"),
    ("ipmiping", "freeipmi-tools"),
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("timeout", "coreutils"),
];

/// Installs the client tools with apt when any is missing (one `apt-get update`, then one
/// install of the usual package set); does nothing when all are present.
pub fn ensure_installed() -> Result<(), String> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(bin, _)| *bin)
        .collect();
    if missing.is_empty() {
        println!(
            "==> client tools present: {}",
            NEEDED.map(|(b, _)| b).join(" ")
        );
        return Ok(());
    }
    if !virtbmc_e2e::is_root() {
        return Err(format!(
            "missing {} and not root: run as root or `apt-get install -y ipmitool freeipmi-tools iproute2 curl python3`",
            missing.join(", ")
        ));
    }
    println!("==> missing {}: installing with apt", missing.join(", "));
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args([
            "ipmitool",
            "freeipmi-tools",
            "iproute2",
            "curl",
            "python3",
            "coreutils",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let still: Vec<&str> = NEEDED
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(bin, _)| *bin)
        .collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("still missing after apt: {}", still.join(", ")))
    }
}

/// `cargo build -p virtbmc --release`; returns the binary's path. With `VIRTBMC_BIN` set,
/// that prebuilt binary is used instead and nothing is built.
pub fn build_agent() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("VIRTBMC_BIN") {
        let bin = PathBuf::from(bin);
        println!("==> using VIRTBMC_BIN={} (not building)", bin.display());
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("VIRTBMC_BIN={} not found", bin.display()))
        };
    }
    run(cargo().args(["build", "-p", "virtbmc", "--release"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("release/virtbmc");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{} was not built", bin.display()))
    }
}
