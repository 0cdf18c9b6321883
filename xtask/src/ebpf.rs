//! `cargo xtask build-ebpf`: builds the XDP object with nightly, installing what is missing.
//!
//! Steps: `rust-src` for the nightly toolchain (for
//! `-Z build-std=core`), `bpf-linker` linked against the libLLVM that the nightly itself ships
//! (its major version is read from the library's file name, the matching `llvm-NN` feature is
//! selected), then `cargo +nightly build --release` in `virtbmc-ebpf/`, whose
//! `.cargo/config.toml` holds the target, build-std and BTF flags.
//!
//! The object lands in `target/bpfel-unknown-none/release/virtbmc-ebpf`, where the agent
//! looks by default (`--ebpf-object`).

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

type Result<T> = std::result::Result<T, String>;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent folder")
        .to_path_buf()
}

/// Where the built object lands.
pub fn object_path() -> PathBuf {
    workspace_root().join("target/bpfel-unknown-none/release/virtbmc-ebpf")
}

/// Installs what is missing and builds the XDP object; returns its path.
pub fn build_ebpf() -> Result<PathBuf> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    let root = workspace_root();
    let status = nightly(Command::new("cargo"))
        .args(["+nightly", "build", "--release", "--target-dir"])
        .arg(root.join("target"))
        .current_dir(root.join("virtbmc-ebpf"))
        .status()
        .map_err(|e| format!("running cargo +nightly: {e}"))?;
    if !status.success() {
        return Err(format!("building virtbmc-ebpf failed: {status}"));
    }
    let obj = object_path();
    if !obj.exists() {
        return Err(format!("build succeeded but {} is missing", obj.display()));
    }
    eprintln!("xtask: built {}", obj.display());
    Ok(obj)
}

/// A command with the variables of the outer (stable) cargo run removed, so that `+nightly`
/// and the eBPF crate's own configuration apply.
fn nightly(mut cmd: Command) -> Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let outer = k == "RUSTUP_TOOLCHAIN"
            || k == "RUSTC"
            || k == "RUSTDOC"
            || k.starts_with("RUSTC_")
            || k == "RUSTFLAGS"
            || (k.starts_with("CARGO") && k != "CARGO_HOME" && k != "CARGO_NET_OFFLINE");
        if outer {
            cmd.env_remove(OsStr::new(&*k));
        }
    }
    cmd
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_rust_src() -> Result<()> {
    // The machines come with a nightly; install one only where it is missing.
    let has_nightly = nightly(Command::new("rustc"))
        .args(["+nightly", "-V"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        eprintln!("xtask: installing the nightly toolchain");
        let ok = nightly(Command::new("rustup"))
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("rustup toolchain install nightly failed".into());
        }
    }
    let installed = output(nightly(Command::new("rustup")).args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for nightly");
    let status = nightly(Command::new("rustup"))
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .map_err(|e| format!("running rustup: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| "rustup component add rust-src failed".into())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let s = output(nightly(Command::new("rustc")).args(["+nightly", "--print", "sysroot"]))?;
    Ok(PathBuf::from(s.trim()))
}

/// The nightly's own libLLVM (`libLLVM.so.22.1-rust-...`, or `libLLVM-22-rust-...so`) and
/// its major version.
fn nightly_llvm(sysroot: &Path) -> Result<(PathBuf, u32)> {
    let lib = sysroot.join("lib");
    let entries = fs::read_dir(&lib).map_err(|e| format!("reading {}: {e}", lib.display()))?;
    let mut found = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(major) = llvm_major(&name) {
            // Prefer the versioned file over the `libLLVM-NN` alias.
            if found.is_none() || name.starts_with("libLLVM.so.") {
                found = Some((e.path(), major));
            }
        }
    }
    found.ok_or_else(|| format!("no libLLVM in {}", lib.display()))
}

/// The LLVM major version in a libLLVM file name.
fn llvm_major(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("libLLVM.so.")
        .or_else(|| name.strip_prefix("libLLVM-"))?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn bpf_linker_works(sysroot: &Path) -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .env("LD_LIBRARY_PATH", sysroot.join("lib"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ensure_bpf_linker() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if bpf_linker_works(&sysroot) {
        return Ok(());
    }
    let (libllvm, major) = nightly_llvm(&sysroot)?;
    // bpf-linker's build looks for $LLVM_PREFIX/lib64/libLLVM.so.
    let prefix = workspace_root().join("target/llvm-prefix");
    let lib64 = prefix.join("lib64");
    fs::create_dir_all(&lib64).map_err(|e| format!("creating {}: {e}", lib64.display()))?;
    let link = lib64.join("libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .map_err(|e| format!("linking {}: {e}", link.display()))?;
    eprintln!(
        "xtask: installing bpf-linker against LLVM {major} ({})",
        libllvm.display()
    );
    let status = nightly(Command::new("cargo"))
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .map_err(|e| format!("running cargo install: {e}"))?;
    if !status.success() {
        return Err("cargo install bpf-linker failed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn llvm_major_from_file_name() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.23.0-rust-1.99.0-nightly"), Some(23));
        assert_eq!(llvm_major("librustc_driver-b5a9.so"), None);
    }
}
