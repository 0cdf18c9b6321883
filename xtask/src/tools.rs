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

/// The Debian packages the end-to-end tests and the demo need (python3-cryptography gives
/// python-ipmi its AES; pip installs python-ipmi itself; podman builds the container image;
/// socat runs Ironic's serial console pipeline).
pub const PACKAGES: [&str; 14] = [
    "ipmitool",
    "freeipmi-tools",
    "ipmiutil",
    "iproute2",
    "curl",
    "python3",
    "python3-pyghmi",
    "python3-pip",
    "python3-venv",
    "python3-cryptography",
    "coreutils",
    "bpftool",
    "podman",
    "socat",
];

/// python-ipmi from PyPI (Debian has none): the version the end-to-end tests were written
/// against, for the system interpreter.
pub const PYTHON_IPMI: &str = "python-ipmi==0.6.1";

/// The Redfish clients from PyPI, for the system interpreter: sushy (the library Ironic
/// drives Redfish BMCs with) and the DMTF Service and Interop validators.
pub const REDFISH_PYPI: [&str; 3] = [
    "sushy==5.14.0",
    "redfish-service-validator==3.1.8",
    "redfish-interop-validator==3.0.4",
];

fn has_redfish_clients() -> bool {
    let checks: Vec<String> = REDFISH_PYPI
        .iter()
        .filter_map(|p| p.split_once("=="))
        .map(|(name, v)| format!("m.version('{name}') == '{v}'"))
        .collect();
    let probe = format!(
        "import importlib.metadata as m; assert {}",
        checks.join(" and ")
    );
    Command::new(PYGHMI_PYTHON)
        .args(["-c", &probe])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn pip_install_redfish_clients() -> Result<(), String> {
    run(Command::new(PYGHMI_PYTHON)
        .args(["-m", "pip", "install", "--quiet", "--break-system-packages"])
        .args(REDFISH_PYPI))
}

/// Binaries the end-to-end tests and the demo run.
pub const NEEDED: [&str; 14] = [
    "ipmitool",
    "ipmiutil",
    "ipmipower",
    "ipmi-chassis",
    "bmc-info",
    "rmcpping",
    "ipmiping",
    "ip",
    "curl",
    "python3",
    "timeout",
    "bpftool",
    "podman",
    "socat",
];

/// pyghmi (OpenStack Ironic's IPMI client) as Debian packages it: for the system interpreter.
pub const PYGHMI_PYTHON: &str = "/usr/bin/python3";

fn has_pyghmi() -> bool {
    Command::new(PYGHMI_PYTHON)
        .args(["-c", "import pyghmi.ipmi.command"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn has_python_ipmi() -> bool {
    let version = PYTHON_IPMI.split("==").nth(1).unwrap_or_default();
    let probe = format!(
        "import importlib.metadata as m, pyipmi.interfaces.rmcpplus as r; \
         assert m.version('python-ipmi') == '{version}' and r.aes_available()"
    );
    Command::new(PYGHMI_PYTHON)
        .args(["-c", &probe])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Missing binaries by name, plus `python3-pyghmi`, `python-ipmi` and `redfish-clients`.
fn missing() -> Vec<&'static str> {
    let mut missing: Vec<&str> = NEEDED.into_iter().filter(|bin| !on_path(bin)).collect();
    if !has_pyghmi() {
        missing.push("python3-pyghmi");
    }
    if !has_python_ipmi() {
        missing.push("python-ipmi");
    }
    if !has_redfish_clients() {
        missing.push("redfish-clients");
    }
    missing
}

/// `pip install` of python-ipmi for the system interpreter; Debian 12 marks that
/// interpreter as managed by apt, hence `--break-system-packages` (its dependency,
/// cryptography, comes from apt).
fn pip_install_python_ipmi() -> Result<(), String> {
    run(Command::new(PYGHMI_PYTHON).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--break-system-packages",
        "--no-deps",
        PYTHON_IPMI,
    ]))
}

/// The manifest linters the tests run: kubernetes-validate for the system interpreter, and
/// checkov in a venv of its own (its many dependencies must not replace apt's packages).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const CHECKOV: &str = "checkov==3.3.30";
const CHECKOV_VENV: &str = "/opt/virtbmc-checkov";

/// Installs the manifest linters with pip when missing.
fn ensure_linters() -> Result<(), String> {
    if !on_path("kubernetes-validate") {
        println!("==> installing {KUBERNETES_VALIDATE} with pip");
        run(Command::new(PYGHMI_PYTHON).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--break-system-packages",
            KUBERNETES_VALIDATE,
        ]))?;
    }
    let checkov = std::path::Path::new(CHECKOV_VENV).join("bin/checkov");
    if !checkov.is_file() {
        let has_venv = Command::new(PYGHMI_PYTHON)
            .args(["-c", "import venv, ensurepip"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_venv {
            run(Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "python3-venv"])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        }
        println!("==> installing {CHECKOV} with pip in {CHECKOV_VENV}");
        run(Command::new(PYGHMI_PYTHON).args(["-m", "venv", CHECKOV_VENV]))?;
        run(
            Command::new(std::path::Path::new(CHECKOV_VENV).join("bin/pip"))
                .args(["install", "--quiet", CHECKOV]),
        )?;
    }
    Ok(())
}

/// Installs the client tools with apt when any is missing (one `apt-get update`, then one
/// install of the whole package set), then the manifest linters with pip; does nothing when
/// all are present.
pub fn ensure_installed() -> Result<(), String> {
    let missing = missing();
    if missing.is_empty() {
        println!(
            "==> client tools present: {} pyghmi {PYTHON_IPMI}",
            NEEDED.join(" ")
        );
        return if virtbmc_e2e::is_root() {
            ensure_linters()
        } else {
            Ok(())
        };
    }
    if !virtbmc_e2e::is_root() {
        return Err(format!(
            "missing {} and not root: run as root or `apt-get install -y {}`",
            missing.join(", "),
            PACKAGES.join(" ")
        ));
    }
    if missing
        .iter()
        .any(|m| !["python-ipmi", "redfish-clients"].contains(m))
    {
        println!("==> missing {}: installing with apt", missing.join(", "));
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !has_python_ipmi() {
        pip_install_python_ipmi()?;
    }
    if !has_redfish_clients() {
        pip_install_redfish_clients()?;
    }
    ensure_linters()?;
    let still = self::missing();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("still missing after apt: {}", still.join(", ")))
    }
}

/// ipmi_sim (Debian package `openipmi`), the reference BMC `bench` compares the agent with;
/// installed with apt when missing. It is not among [`PACKAGES`]: the tests do not use it.
/// The error says why it is absent, and the bench then skips that comparison.
pub fn ensure_ipmi_sim() -> Result<(), String> {
    if on_path("ipmi_sim") {
        return Ok(());
    }
    if !virtbmc_e2e::is_root() {
        return Err("ipmi_sim is missing and we are not root to `apt-get install openipmi`".into());
    }
    if !on_path("apt-get") {
        return Err("ipmi_sim is missing and there is no apt-get to install openipmi".into());
    }
    println!("==> ipmi_sim missing: installing openipmi with apt");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "openipmi"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    if on_path("ipmi_sim") {
        Ok(())
    } else {
        Err("openipmi is installed but ipmi_sim is not on PATH".into())
    }
}

/// Where cargo puts what it builds: `$CARGO_TARGET_DIR`, else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// `cargo build -p <package> --release`; returns the path of its binary of the same name.
pub fn build_release(package: &str) -> Result<PathBuf, String> {
    run(cargo().args(["build", "-p", package, "--release"]))?;
    let bin = target_dir().join("release").join(package);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{} was not built", bin.display()))
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
    build_release("virtbmc")
}
