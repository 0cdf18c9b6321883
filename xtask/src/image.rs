//! `cargo xtask image`: the agent's container image (`virtbmc:<workspace version>`, the
//! DaemonSet's image) built with podman from the `Containerfile`, into podman's own store,
//! and saved as an archive to load into a cluster's nodes.

use std::path::PathBuf;
use std::process::Command;

use virtbmc_e2e::image::{self, Podman};

use crate::tools;

pub fn run() -> Result<(), String> {
    ensure_podman()?;
    let agent = tools::build_agent()?;
    let object = crate::ebpf::build_ebpf()?;
    let dir = tools::target_dir().join("image");
    let context = dir.join("context");
    let staged = image::stage(&agent, &object, &context)?;
    println!(
        "==> build context {}: virtbmc, virtbmc-ebpf, libs/ ({})",
        context.display(),
        staged
            .libraries
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let tag = image::tag();
    let podman = Podman::system();
    tools::run(&mut podman.build(&context, &tag))?;
    let archive = archive_path();
    let archive_arg = archive.to_str().ok_or("target folder is not UTF-8")?;
    // docker-archive: what `docker load`, `ctr images import`, `kind load image-archive` and
    // `podman load` all read; it keeps the full name, so containerd finds `virtbmc:<version>`.
    let _ = std::fs::remove_file(&archive);
    tools::run(podman.cmd().args([
        "save",
        "--format",
        "docker-archive",
        "-o",
        archive_arg,
        &tag,
    ]))?;
    println!("==> built {tag} (podman images) and saved it to {archive_arg}");
    Ok(())
}

/// The archive `run` writes: `<target>/image/virtbmc-<version>.tar`.
pub fn archive_path() -> PathBuf {
    tools::target_dir()
        .join("image")
        .join(format!("virtbmc-{}.tar", env!("CARGO_PKG_VERSION")))
}

/// podman (Debian package `podman`), installed with apt when missing.
pub fn ensure_podman() -> Result<(), String> {
    if tools::on_path("podman") {
        return Ok(());
    }
    if !virtbmc_e2e::is_root() || !tools::on_path("apt-get") {
        return Err("podman is missing: install it (`apt-get install podman`)".into());
    }
    println!("==> podman missing: installing it with apt");
    tools::run(Command::new("apt-get").arg("update"))?;
    tools::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "podman"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    if tools::on_path("podman") {
        Ok(())
    } else {
        Err("podman is installed but not on PATH".into())
    }
}
