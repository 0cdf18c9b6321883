//! The agent's container image, built from the repository's `Containerfile` with podman:
//! `FROM scratch` with the agent, exactly the loader and libraries it links, and the XDP
//! object. `cargo xtask image` builds it into podman's own store; the image test builds it
//! the same way into a store of its own.
//!
//! The build context is a folder this module fills: `virtbmc` (the release binary without its
//! debug sections), `virtbmc-ebpf`, and `libs/`, a tree with every library `ldd` names at the
//! path it has on this machine (the dynamic loader too), so the binary runs in the image as
//! it runs here. No base image means no registry: the build needs no network.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The image's name as container runtimes spell `virtbmc:<version>` in full (the DaemonSet's
/// image): podman would otherwise name it `localhost/virtbmc`, which containerd does not
/// take for `virtbmc`.
pub fn tag() -> String {
    format!("docker.io/library/virtbmc:{}", env!("CARGO_PKG_VERSION"))
}

/// The repository's `Containerfile`.
pub fn containerfile() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Containerfile");
    path.canonicalize().unwrap_or(path)
}

/// Where the image holds the agent (its entrypoint) and the XDP object (named by
/// `VIRTBMC_EBPF_OBJECT` in the image, the agent's default when `--ebpf-object` is not given).
pub const AGENT_PATH: &str = "/usr/bin/virtbmc";
pub const OBJECT_PATH: &str = "/usr/lib/virtbmc/virtbmc-ebpf";

/// Runs a command; its stdout, or an error naming it with its stderr.
fn output(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| format!("{shown}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The absolute paths of the shared objects `ldd` says `bin` loads, the dynamic loader
/// included (the kernel's vDSO has no file and is left out).
pub fn linked_libraries(bin: &Path) -> Result<Vec<PathBuf>, String> {
    let text = output(Command::new("ldd").arg(bin))?;
    parse_ldd(&text)
}

/// `ldd`'s lines: `name => /path (0x...)`, `/loader/path (0x...)`, `linux-vdso.so.1 (0x...)`.
/// A library it cannot find (`name => not found`) is an error: the image would not run.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            return Err(format!("ldd: {line}"));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    if libs.is_empty() {
        return Err(format!("ldd named no library: {text}"));
    }
    Ok(libs)
}

/// What [`stage`] put in the build context, as paths inside the image.
#[derive(Debug, Clone)]
pub struct Staged {
    pub libraries: Vec<PathBuf>,
}

impl Staged {
    /// Every file the image holds, sorted: the agent, the XDP object, the libraries.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = [AGENT_PATH, OBJECT_PATH].map(PathBuf::from).into();
        all.extend(self.libraries.iter().cloned());
        all.sort();
        all
    }
}

/// Fills `context` (emptied first) with what the `Containerfile` copies.
pub fn stage(agent: &Path, object: &Path, context: &Path) -> Result<Staged, String> {
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    if context.exists() {
        std::fs::remove_dir_all(context).map_err(|e| io(context, e))?;
    }
    std::fs::create_dir_all(context).map_err(|e| io(context, e))?;
    // The release profile keeps line tables for backtraces here (about 100 MB of the
    // binary); the image keeps the symbols only.
    output(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(agent)
            .arg(context.join("virtbmc")),
    )?;
    std::fs::copy(object, context.join("virtbmc-ebpf")).map_err(|e| io(object, e))?;
    let libraries = linked_libraries(agent)?;
    for lib in &libraries {
        let dest = context
            .join("libs")
            .join(lib.strip_prefix("/").unwrap_or(lib));
        let dir = dest.parent().unwrap_or(context);
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        // `copy` follows symbolic links: the image holds the file under the name the binary
        // (or the loader's search path) asks for.
        std::fs::copy(lib, &dest).map_err(|e| io(lib, e))?;
    }
    Ok(Staged { libraries })
}

/// podman, either with the machine's own store or with a private one (root and run folders
/// of its own, the vfs driver: it works as root wherever podman does, in a container or on
/// any file system, at the cost of copying layers, which are small here).
#[derive(Debug, Clone, Default)]
pub struct Podman {
    store: Option<PathBuf>,
}

impl Podman {
    /// The machine's store (where `podman images` looks).
    pub fn system() -> Podman {
        Podman { store: None }
    }

    /// A store under `dir` (`dir/root`, `dir/run`), vfs.
    pub fn private(dir: &Path) -> Podman {
        Podman {
            store: Some(dir.to_path_buf()),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        if let Some(dir) = &self.store {
            cmd.arg("--root")
                .arg(dir.join("root"))
                .arg("--runroot")
                .arg(dir.join("run"))
                .args(["--storage-driver", "vfs"])
                // No journald needed (CI machines may have none).
                .args(["--events-backend", "none"]);
        }
        cmd
    }

    /// `podman build` of the `Containerfile` over `context`, tagged `tag`: no network, and
    /// no pull (the base is `scratch`).
    pub fn build(&self, context: &Path, tag: &str) -> Command {
        let mut cmd = self.cmd();
        cmd.args(["build", "--network=none", "--pull=never", "-t", tag, "-f"])
            .arg(containerfile())
            .arg(context);
        cmd
    }

    /// Runs `podman ARGS`; its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        output(self.cmd().args(args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f7e)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f7e)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f7e)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
        assert!(parse_ldd("\tnot a dynamic executable\n").is_err());
        assert!(parse_ldd("").is_err());
    }
}
