//! The deploy manifests (manifests/) linted: `kubernetes-validate --strict` against the
//! Kubernetes OpenAPI schemas it ships (unknown fields are errors), the example
//! VirtualMachineBMC against our CRD's own schema, and checkov's Kubernetes checks, whose
//! accepted findings carry a `checkov.io/skipN` annotation with the reason. Each linter is
//! also shown a broken copy, which it must refuse. No root needed; the linters come from PyPI
//! (`.ci/run` installs them); missing ones skip the test unless `VIRTBMC_E2E_REQUIRED=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where `.ci/run` puts checkov: a venv of its own, so that its many dependencies never
/// replace the ones apt installed for the IPMI clients.
const CHECKOV_VENV: &str = "/opt/virtbmc-checkov/bin/checkov";

/// Canonical: checkov given a path through `..` scans nothing and reports success.
fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .canonicalize()
        .unwrap()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The tool's path, or None (after saying so) when the test must be skipped.
fn tool(test: &str, candidates: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = candidates.iter().find_map(|c| {
        let c = Path::new(c);
        if c.is_absolute() {
            c.is_file().then(|| c.to_path_buf())
        } else {
            std::env::split_paths(&path)
                .map(|d| d.join(c))
                .find(|p| p.is_file())
        }
    });
    if found.is_none() {
        let why = format!("{test}: none of {candidates:?} is installed (see .ci/run)");
        if std::env::var("VIRTBMC_E2E_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("{why}");
        }
        eprintln!("SKIP {why}");
    }
    found
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A copy of the manifests folder with `file`'s `from` replaced by `to`.
fn broken_copy(name: &str, file: &str, from: &str, to: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("virtbmc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::fs::read_to_string(manifests().join(file)).unwrap();
    assert_eq!(
        src.matches(from).count(),
        1,
        "{file} must hold {from:?} once"
    );
    std::fs::write(dir.join(file), src.replace(from, to)).unwrap();
    dir
}

#[test]
fn manifests_validate_strictly_against_the_kubernetes_schemas() {
    const TEST: &str = "manifests_validate_strictly_against_the_kubernetes_schemas";
    let Some(kv) = tool(TEST, &["kubernetes-validate"]) else {
        return;
    };
    let files = yaml_files(&manifests());
    let out = Command::new(&kv)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for resource in [
        "customresourcedefinition/virtualmachinebmcs.bmc.kubevirt.io",
        "daemonset/virtbmc",
        "deployment/virtbmc-controller",
        "networkpolicy/virtbmc",
        "networkpolicy/virtbmc-controller",
        "clusterrole/virtbmc-agent",
        "clusterrole/virtbmc-controller",
        "clusterrole/virtbmc-agent-label-mode",
        "validatingadmissionpolicy/virtbmc-agent-boot-orders-only",
        "validatingadmissionpolicybinding/virtbmc-agent-boot-orders-only",
        "validatingadmissionpolicy/virtbmc-agent-boot-override-only",
        "validatingadmissionpolicybinding/virtbmc-agent-boot-override-only",
        "secret/testvm-bmc-auth",
    ] {
        assert!(
            log.contains(&format!("passed for resource {resource} ")),
            "{resource} not validated:\n{log}"
        );
    }
    // The only objects without a Kubernetes schema are our CRD's (checked below).
    for line in log.lines().filter(|l| !l.starts_with("INFO ")) {
        assert!(
            line.contains("Couldn't find schema for kind VirtualMachineBMC with api version bmc.kubevirt.io/v1beta1"),
            "unexpected: {line}\n{log}"
        );
    }

    // Strict means strict: a misspelt container field is refused. (Not inside a
    // securityContext: kubernetes-validate 1.37 lets `allowPrivilegeEscalations` through
    // there; checkov's checks below are what notice a hardening field gone wrong.)
    let dir = broken_copy(
        "kv",
        "daemonset.yaml",
        "imagePullPolicy: IfNotPresent",
        "imagePullPolicys: IfNotPresent",
    );
    let out = Command::new(&kv)
        .arg("--strict")
        .arg(dir.join("daemonset.yaml"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "misspelt field accepted:\n{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);

    // The example VirtualMachineBMC against the CRD's openAPIV3Schema (jsonschema comes with
    // kubernetes-validate; same interpreter).
    let python = std::fs::read_to_string(&kv)
        .ok()
        .and_then(|s| s.lines().next()?.strip_prefix("#!").map(str::to_string))
        .unwrap_or_else(|| "python3".into());
    let check = r#"
import sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
n = 0
for doc in yaml.safe_load_all(open(sys.argv[2])):
    if doc and doc["kind"] == "VirtualMachineBMC":
        jsonschema.validate(doc, schema)
        n += 1
print("validated", n)
"#;
    let run = |example: &Path| {
        Command::new(python.trim())
            .args(["-c", check])
            .arg(manifests().join("crd-virtualmachinebmc.yaml"))
            .arg(example)
            .output()
            .unwrap()
    };
    let out = run(&manifests().join("example-bmc.yaml"));
    assert!(
        out.status.success() && text(&out).contains("validated 1"),
        "{}",
        text(&out)
    );
    let dir = broken_copy(
        "crd",
        "example-bmc.yaml",
        "name: testvm-bmc-auth\n  ipmi",
        "name: 42\n  ipmi",
    );
    let out = run(&dir.join("example-bmc.yaml"));
    assert!(
        !out.status.success(),
        "a number for a name accepted:\n{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn manifests_pass_checkov_with_every_accepted_finding_explained() {
    const TEST: &str = "manifests_pass_checkov_with_every_accepted_finding_explained";
    let Some(checkov) = tool(TEST, &[CHECKOV_VENV, "checkov"]) else {
        return;
    };
    // --skip-download: no request to the vendor's platform (offline, and nothing to send).
    let run = |dir: &Path| {
        Command::new(&checkov)
            .arg("-d")
            .arg(dir)
            .args([
                "--quiet",
                "--compact",
                "--framework",
                "kubernetes",
                "--skip-download",
            ])
            .output()
            .unwrap()
    };
    let out = run(&manifests());
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Failed checks: 0,"), "{log}");
    // Every skip is one of the annotated ones, each with a reason.
    let annotated: Vec<String> = yaml_files(&manifests())
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter_map(|l| l.trim().strip_prefix("checkov.io/skip"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    for a in &annotated {
        let (_, rest) = a.split_once(": ").expect("checkov.io/skipN: CHECK=reason");
        let (check, reason) = rest.split_once('=').expect("CHECK=reason");
        assert!(
            (check.starts_with("CKV_K8S_") || check.starts_with("CKV2_K8S_")) && reason.len() > 20,
            "{a}"
        );
    }
    assert!(
        log.contains(&format!("Skipped checks: {}", annotated.len())),
        "{} annotated skips:\n{log}",
        annotated.len()
    );

    // A container allowed to gain privileges is a finding.
    let dir = broken_copy(
        "checkov",
        "daemonset.yaml",
        "\n            allowPrivilegeEscalation: false\n",
        "\n            allowPrivilegeEscalation: true\n",
    );
    let out = run(&dir);
    assert!(
        !out.status.success() && text(&out).contains("CKV_K8S_20"),
        "privilege escalation not reported:\n{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The NetworkPolicy opens what the DaemonSet serves: the agent's default BMC port range and
/// the admin port the agent listens on (on the pod IP) and the probes use.
#[test]
fn network_policy_matches_the_daemonset() {
    let read = |f: &str| std::fs::read_to_string(manifests().join(f)).unwrap();
    let (ds, np) = (read("daemonset.yaml"), read("networkpolicy.yaml"));
    let range = virtbmc::cluster::ClusterOptions::new(
        "x",
        "y",
        virtbmc::engine::config::BmcConfig::new(vec![]),
    )
    .port_range;
    let udp = format!(
        "{{protocol: UDP, port: {}, endPort: {}}}",
        range.start(),
        range.end()
    );
    assert!(np.contains(&udp), "{udp} not in the NetworkPolicy:\n{np}");
    assert!(ds.contains("- --admin=$(POD_IP):9623\n"), "{ds}");
    assert!(
        ds.contains("{name: admin, containerPort: 9623, protocol: TCP}"),
        "{ds}"
    );
    assert!(np.contains("{protocol: TCP, port: 9623}"), "{np}");
    assert!(
        !ds.contains("--port-range"),
        "a non-default range needs the policy changed too"
    );
}
