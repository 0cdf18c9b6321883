//! Redfish beside IPMI on each BMC's port: sushy (PyPI, the library Ironic drives BMCs
//! with) reads the System, powers it on and off, restarts it and sets boot overrides, each
//! checked against the embedded backend through `/vms`; curl shows the raw answers (status
//! codes, ETag and 412, the 401 body, sessions); ipmitool and Redfish read each other's
//! changes; sushy finds the virtual CD as Ironic does, inserts an image, boots from it and
//! ejects it; and the DMTF Redfish Service Validator and Interop Validator (with the Ironic
//! profile) run against the agent, offline.

mod common;

use std::path::PathBuf;

use virtbmc_e2e::{Bmc, Iface, Out};

const PYTHON: &str = "/usr/bin/python3";
const SUSHY: &str = "5.14.0";

/// One sushy step per run: `read`, `reset TYPE`, `boot TARGET ENABLED [MODE]`, `insert URL`
/// or `eject`; each prints the System and its virtual CD as sushy parsed them afterwards.
const SUSHY_SCRIPT: &str = r#"
import sys, urllib3, sushy
urllib3.disable_warnings()
url, user, password, step = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
root = sushy.Sushy(url + '/redfish/v1', username=user, password=password, verify=False)
system = root.get_system()
if step == 'reset':
    system.reset_system(sushy.ResetType(sys.argv[5]))
elif step == 'boot':
    mode = sushy.BootSourceOverrideMode(sys.argv[7]) if len(sys.argv) > 7 else None
    system.set_system_boot_options(sushy.BootSource(sys.argv[5]),
                                   enabled=sushy.BootSourceOverrideEnabled(sys.argv[6]),
                                   mode=mode)
# The virtual CD as Ironic finds it: under the System when it links one, else the Manager's.
try:
    place, media = 'system', system.virtual_media
except sushy.exceptions.MissingAttributeError:
    place, media = 'manager', system.managers[0].virtual_media
cd = next(m for m in media.get_members() if 'CD' in [t.value for t in m.media_types])
if step == 'insert':
    cd.insert_media(sys.argv[5])
elif step == 'eject':
    cd.eject_media()
cd.refresh()
system.refresh()
print('identity', system.identity)
print('uuid', system.uuid)
print('power', system.power_state.value)
print('memory', system.memory_summary.size_gib)
print('boot', system.boot.target.value, system.boot.enabled.value, system.boot.mode.value)
print('resets', ','.join(sorted(v.value for v in system.get_allowed_reset_system_values())))
print('targets', ','.join(sorted(getattr(v, 'value', v) for v in system.boot.allowed_values)))
print('managers', ','.join(m.identity for m in root.get_manager_collection().get_members()))
print('session', type(root._conn._auth).__name__, bool(root._conn._auth.get_session_key()))
print('media', place, cd.identity, ','.join(sorted(t.value for t in cd.media_types)))
print('inserted', cd.inserted, cd.connected_via.value, cd.image, cd.image_name, cd.write_protected)
"#;

fn url(bmc: &Bmc) -> String {
    format!("https://{}:{}", bmc.ip(), common::PORT)
}

fn sushy(bmc: &Bmc, user: &str, password: &str, step: &[&str]) -> Out {
    let url = url(bmc);
    let mut argv = vec![PYTHON, "-c", SUSHY_SCRIPT, &url, user, password];
    argv.extend_from_slice(step);
    bmc.client(&argv)
}

fn sushy_ready() -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("redfish")
        .to_string();
    if virtbmc_e2e::skip_unless_ready(&test, &[]) {
        return false;
    }
    let probe = format!("import importlib.metadata as m; assert m.version('sushy') == '{SUSHY}'");
    let ok = std::process::Command::new(PYTHON)
        .args(["-c", &probe])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("VIRTBMC_E2E_REQUIRED").is_ok_and(|v| v == "1") {
            panic!(
                "{test}: VIRTBMC_E2E_REQUIRED=1 but {PYTHON} lacks sushy {SUSHY} \
                 (pip install --break-system-packages sushy=={SUSHY})"
            );
        }
        eprintln!("SKIP {test}: needs sushy {SUSHY} for {PYTHON}");
    }
    ok
}

/// A raw HTTP answer as curl saw it.
struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    #[track_caller]
    fn message_id(&self) -> String {
        let j = self.json();
        let info = &j["error"]["@Message.ExtendedInfo"][0]["MessageId"];
        assert_eq!(j["error"]["code"], *info, "{}", self.body);
        info.as_str().unwrap_or_default().to_string()
    }
}

/// `curl -k -i` with `args` against `path` on the BMC's Redfish port.
fn curl(bmc: &Bmc, method: &str, path: &str, args: &[&str]) -> Http {
    let target = format!("{}{path}", url(bmc));
    let mut argv = vec!["curl", "-sk", "-i", "-X", method];
    argv.extend_from_slice(args);
    argv.push(&target);
    let out = bmc.client(&argv);
    out.assert_ok();
    let raw = out.stdout.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {raw}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Http {
        status,
        headers,
        body: body.to_string(),
    }
}

fn line<'a>(out: &'a Out, key: &str) -> &'a str {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no `{key}` line in {out}"))
}

#[test]
fn redfish_sushy_power_and_boot_read_back() {
    if !sushy_ready() {
        return;
    }
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let out = sushy(&bmc, "admin", "password", &["read"]);
    out.assert_ok();
    assert_eq!(line(&out, "identity"), "1");
    assert_eq!(line(&out, "power"), "Off");
    assert_eq!(
        line(&out, "memory").parse::<f64>().ok(),
        Some(1.0),
        "the simulated machine's 1 GiB"
    );
    assert_eq!(line(&out, "boot"), "None Disabled UEFI");
    assert_eq!(
        line(&out, "resets"),
        "ForceOff,ForceRestart,GracefulRestart,GracefulShutdown,On",
        "no Nmi: KubeVirt has none"
    );
    assert_eq!(line(&out, "targets"), "BiosSetup,Cd,Hdd,None,Pxe");
    assert_eq!(line(&out, "managers"), "1");
    assert_eq!(
        line(&out, "session"),
        "SessionOrBasicAuth True",
        "sushy logged in with a session"
    );
    assert!(common::is_guid(line(&out, "uuid")));

    // On: the backend starts the VM once; sushy reads it back on.
    sushy(&bmc, "admin", "password", &["reset", "On"]).assert_ok();
    let v = bmc.wait_power(common::VM, "on");
    assert_eq!((v.starts, v.stops), (1, 0), "{v:?}");
    assert_eq!(
        line(&sushy(&bmc, "admin", "password", &["read"]), "power"),
        "On"
    );

    // GracefulRestart: a power cycle, down and up again.
    sushy(&bmc, "admin", "password", &["reset", "GracefulRestart"]).assert_ok();
    let v = bmc.wait_vm(
        common::VM,
        "restarted",
        std::time::Duration::from_secs(10),
        |v| v.starts == 2 && v.power == "on",
    );
    assert_eq!(v.stops, 1, "{v:?}");

    // ForceRestart: a reset in place.
    sushy(&bmc, "admin", "password", &["reset", "ForceRestart"]).assert_ok();
    assert_eq!(bmc.vm(common::VM).resets, 1);

    // GracefulShutdown, then On again (waiting out nothing), then ForceOff.
    sushy(&bmc, "admin", "password", &["reset", "GracefulShutdown"]).assert_ok();
    let v = bmc.wait_power(common::VM, "off");
    assert_eq!(v.stops, 2, "{v:?}");
    assert_eq!(
        line(&sushy(&bmc, "admin", "password", &["read"]), "power"),
        "Off"
    );
    sushy(&bmc, "admin", "password", &["reset", "On"]).assert_ok();
    bmc.wait_power(common::VM, "on");
    sushy(&bmc, "admin", "password", &["reset", "ForceOff"]).assert_ok();
    let v = bmc.wait_power(common::VM, "off");
    assert_eq!((v.starts, v.stops), (3, 3), "{v:?}");
    assert_eq!(
        line(&sushy(&bmc, "admin", "password", &["read"]), "power"),
        "Off"
    );

    // Boot overrides as Ironic sets them, each read back by sushy and by the backend.
    for (target, enabled, mode, boot, persistent, efi) in [
        ("Pxe", "Once", "UEFI", "pxe", false, true),
        ("Hdd", "Continuous", "UEFI", "disk", true, true),
        ("Cd", "Once", "UEFI", "cdrom", false, true),
        ("Pxe", "Once", "Legacy", "pxe", false, false),
    ] {
        let out = sushy(&bmc, "admin", "password", &["boot", target, enabled, mode]);
        out.assert_ok();
        assert_eq!(line(&out, "boot"), format!("{target} {enabled} {mode}"));
        let v = bmc.vm(common::VM);
        assert_eq!(
            (v.boot.as_str(), v.persistent, v.efi),
            (boot, persistent, efi),
            "{v:?}"
        );
    }

    // A read-only user reads, but cannot power on.
    let out = sushy(&bmc, "viewer", "viewer", &["reset", "On"]);
    assert!(!out.ok(), "{out}");
    assert!(out.text().contains("403"), "{out}");
    assert_eq!(bmc.vm(common::VM).power, "off");
    // Wrong credentials: refused, nothing changes.
    let out = sushy(&bmc, "admin", "wrong", &["reset", "On"]);
    assert!(!out.ok(), "{out}");
    assert_eq!(bmc.vm(common::VM).starts, 3);
}

#[test]
fn redfish_sushy_virtual_media_insert_boot_and_eject() {
    if !sushy_ready() {
        return;
    }
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let image = "http://10.0.0.1:8080/images/boot.iso";
    let read = |step: &[&str]| {
        let out = sushy(&bmc, "admin", "password", step);
        out.assert_ok();
        out
    };

    // Found under the System, as Ironic looks first; an empty, read-only CD/DVD drive.
    let out = read(&["read"]);
    assert_eq!(line(&out, "media"), "system Cd CD,DVD");
    assert_eq!(line(&out, "inserted"), "False NotConnected None None True");

    // Insert: sushy reads it back inserted over a URI; the backend holds the image.
    let out = read(&["insert", image]);
    assert_eq!(
        line(&out, "inserted"),
        format!("True URI {image} boot.iso True")
    );
    assert_eq!(bmc.vm(common::VM).media, image);

    // Boot from it once, as Ironic does before powering on: the machine boots the CD and
    // the one-shot override is spent.
    let out = read(&["boot", "Cd", "Once", "UEFI"]);
    assert_eq!(line(&out, "boot"), "Cd Once UEFI");
    read(&["reset", "On"]);
    let v = bmc.wait_power(common::VM, "on");
    assert_eq!(
        (v.booted.as_str(), v.boot.as_str()),
        ("cdrom", "none"),
        "{v:?}"
    );
    assert_eq!(line(&read(&["read"]), "boot"), "None Disabled UEFI");

    // A read-only user cannot change it (sushy's eject hides a refusal; its insert does not).
    let out = sushy(
        &bmc,
        "viewer",
        "viewer",
        &["insert", "http://10.0.0.1/other.iso"],
    );
    assert!(!out.ok() && out.text().contains("403"), "{out}");
    assert_eq!(bmc.vm(common::VM).media, image);

    // Eject: empty again, and a CD boot now falls through to the disk.
    let out = read(&["eject"]);
    assert_eq!(line(&out, "inserted"), "False NotConnected None None True");
    assert_eq!(bmc.vm(common::VM).media, "none");
    read(&["boot", "Cd", "Once", "UEFI"]);
    read(&["reset", "ForceRestart"]);
    let v = bmc.vm(common::VM);
    assert_eq!((v.resets, v.booted.as_str()), (1, "disk"), "{v:?}");
    // Ejecting an empty drive is no error (Ironic ejects before every insert).
    read(&["eject"]);
}

#[test]
fn redfish_raw_virtual_media_json_and_errors() {
    ready_or_skip!();
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let admin = ["-u", "admin:password"];
    let json = ["-H", "Content-Type: application/json", "--data"];
    let cd = "/redfish/v1/Managers/1/VirtualMedia/Cd";
    let insert = format!("{cd}/Actions/VirtualMedia.InsertMedia");
    let eject = format!("{cd}/Actions/VirtualMedia.EjectMedia");
    let post = |path: &str, user: &[&str], body: &str| {
        let mut args = user.to_vec();
        args.extend_from_slice(&[json[0], json[1], json[2], body]);
        curl(&bmc, "POST", path, &args)
    };

    let coll = curl(&bmc, "GET", "/redfish/v1/Managers/1/VirtualMedia", &admin);
    assert_eq!(coll.status, 200, "{}", coll.body);
    let j = coll.json();
    assert_eq!(j["Members@odata.count"], 1);
    assert_eq!(j["Members"][0]["@odata.id"], cd);

    let empty = curl(&bmc, "GET", cd, &admin);
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(empty.header("Allow"), Some("GET, HEAD, PATCH"));
    let j = empty.json();
    assert_eq!(j["@odata.type"], "#VirtualMedia.v1_6_0.VirtualMedia");
    assert_eq!(j["MediaTypes"], serde_json::json!(["CD", "DVD"]));
    assert_eq!(
        (
            &j["Inserted"],
            &j["ConnectedVia"],
            &j["Image"],
            &j["WriteProtected"]
        ),
        (
            &serde_json::json!(false),
            &serde_json::json!("NotConnected"),
            &serde_json::Value::Null,
            &serde_json::json!(true)
        )
    );
    assert_eq!(j["Actions"]["#VirtualMedia.InsertMedia"]["target"], insert);

    // A scheme the drive cannot read: 400 naming the parameter, nothing inserted.
    let bad = post(&insert, &admin, r#"{"Image":"nfs://10.0.0.1/boot.iso"}"#);
    assert_eq!(
        (bad.status, bad.message_id().as_str()),
        (400, "Base.1.22.1.ActionParameterValueFormatError"),
        "{}",
        bad.body
    );
    let info = &bad.json()["error"]["@Message.ExtendedInfo"][0];
    assert_eq!(
        info["MessageArgs"],
        serde_json::json!([
            "nfs://10.0.0.1/boot.iso",
            "Image",
            "VirtualMedia.InsertMedia"
        ])
    );
    let missing = post(&insert, &admin, "{}");
    assert_eq!(
        (missing.status, missing.message_id().as_str()),
        (400, "Base.1.22.1.ActionParameterMissing")
    );
    assert_eq!(bmc.vm(common::VM).media, "none");

    // A read-only user may read but not insert.
    let image = "https://10.0.0.1/images/boot.iso";
    let body = format!(r#"{{"Image":"{image}","TransferProtocolType":"HTTPS"}}"#);
    let refused = post(&insert, &["-u", "viewer:viewer"], &body);
    assert_eq!(
        (refused.status, refused.message_id().as_str()),
        (403, "Base.1.22.1.InsufficientPrivilege")
    );

    let ok = post(&insert, &admin, &body);
    assert_eq!(ok.status, 204, "{}", ok.body);
    assert_eq!(bmc.vm(common::VM).media, image);
    // Both places show the one drive.
    for path in [cd, "/redfish/v1/Systems/1/VirtualMedia/Cd"] {
        let j = curl(&bmc, "GET", path, &admin).json();
        assert_eq!(j["@odata.id"], path);
        assert_eq!(
            (
                &j["Inserted"],
                &j["ConnectedVia"],
                &j["Image"],
                &j["ImageName"]
            ),
            (
                &serde_json::json!(true),
                &serde_json::json!("URI"),
                &serde_json::json!(image),
                &serde_json::json!("boot.iso")
            )
        );
        assert_eq!(j["TransferProtocolType"], "HTTPS");
    }

    // PATCH: a stale ETag is refused; the current one ejects with Image null.
    let etag = curl(&bmc, "GET", cd, &admin)
        .header("ETag")
        .expect("ETag on the CD")
        .to_string();
    let mut patch_args = admin.to_vec();
    let stale = ["-H", "If-Match: \"0000000000000000\""];
    patch_args.extend_from_slice(&stale);
    patch_args.extend_from_slice(&[json[0], json[1], json[2], r#"{"Image":null}"#]);
    let r = curl(&bmc, "PATCH", cd, &patch_args);
    assert_eq!(r.status, 412, "{}", r.body);
    let if_match = format!("If-Match: {etag}");
    let mut patch_args = admin.to_vec();
    patch_args.extend_from_slice(&["-H", &if_match]);
    patch_args.extend_from_slice(&[json[0], json[1], json[2], r#"{"Image":null}"#]);
    let r = curl(&bmc, "PATCH", cd, &patch_args);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["Inserted"], false);
    assert_ne!(r.header("ETag"), Some(etag.as_str()));
    assert_eq!(bmc.vm(common::VM).media, "none");

    // PATCH inserts too; EjectMedia with no body at all (as Ironic first sends it) ejects.
    let mut patch_args = admin.to_vec();
    let body = format!(r#"{{"Image":"{image}","Inserted":true,"WriteProtected":true}}"#);
    patch_args.extend_from_slice(&[json[0], json[1], json[2], &body]);
    let r = curl(&bmc, "PATCH", cd, &patch_args);
    assert_eq!(
        (r.status, &r.json()["Inserted"]),
        (200, &serde_json::json!(true))
    );
    let r = curl(&bmc, "POST", &eject, &admin);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(bmc.vm(common::VM).media, "none");
    let r = post(&eject, &admin, "{}");
    assert_eq!(r.status, 204, "{}", r.body);
    let r = curl(&bmc, "GET", &eject, &admin);
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));

    // Each operation that reached the backend is counted with its duration.
    let metrics = bmc.http_get("/metrics").unwrap();
    let count = |op: &str| {
        let key = format!("virtbmc_redfish_media_seconds_count{{op=\"{op}\",result=\"ok\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in /metrics:\n{metrics}"))
    };
    assert!(count("insert") >= 2 && count("eject") >= 1, "{metrics}");
    assert!(metrics.contains("virtbmc_redfish_media_seconds_sum{op=\"insert\",result=\"ok\"}"));
}

#[test]
fn redfish_raw_json_status_codes_etag_and_sessions() {
    ready_or_skip!();
    let bmc = Bmc::builder().vm("vm-0=6230").start();

    // The service root is open.
    let root = curl(&bmc, "GET", "/redfish/v1/", &[]);
    assert_eq!(root.status, 200, "{}", root.body);
    assert_eq!(root.header("OData-Version"), Some("4.0"));
    let j = root.json();
    assert_eq!(j["@odata.id"], "/redfish/v1");
    assert_eq!(
        j["Links"]["Sessions"]["@odata.id"],
        "/redfish/v1/SessionService/Sessions"
    );
    assert_eq!(j["Systems"]["@odata.id"], "/redfish/v1/Systems");

    // No credentials, an unknown user and a wrong password: the same 401 and body.
    let none = curl(&bmc, "GET", "/redfish/v1/Systems/1", &[]);
    let unknown = curl(
        &bmc,
        "GET",
        "/redfish/v1/Systems/1",
        &["-u", "nobody:password"],
    );
    let wrong = curl(&bmc, "GET", "/redfish/v1/Systems/1", &["-u", "admin:wrong"]);
    for r in [&none, &unknown, &wrong] {
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.message_id(), "Base.1.22.1.NoValidSession");
        assert!(
            r.header("WWW-Authenticate")
                .is_some_and(|v| v.starts_with("Basic"))
        );
    }
    assert_eq!(unknown.body, wrong.body, "no user enumeration");
    let login_body = |u: &str, p: &str| format!("{{\"UserName\":\"{u}\",\"Password\":\"{p}\"}}");
    let json = ["-H", "Content-Type: application/json", "--data"];
    let bad_a = curl(
        &bmc,
        "POST",
        "/redfish/v1/SessionService/Sessions",
        &[json[0], json[1], json[2], &login_body("nobody", "password")],
    );
    let bad_b = curl(
        &bmc,
        "POST",
        "/redfish/v1/SessionService/Sessions",
        &[json[0], json[1], json[2], &login_body("admin", "wrong")],
    );
    assert_eq!((bad_a.status, bad_b.status), (401, 401));
    assert_eq!(bad_a.body, bad_b.body);

    // Login: 201, a token and the session's Location.
    let login = curl(
        &bmc,
        "POST",
        "/redfish/v1/SessionService/Sessions",
        &[json[0], json[1], json[2], &login_body("admin", "password")],
    );
    assert_eq!(login.status, 201, "{}", login.body);
    let token = login
        .header("X-Auth-Token")
        .expect("X-Auth-Token")
        .to_string();
    let location = login.header("Location").expect("Location").to_string();
    assert!(
        location.starts_with("/redfish/v1/SessionService/Sessions/"),
        "{location}"
    );
    assert_eq!(login.json()["@odata.id"], location);
    assert_eq!(login.json()["UserName"], "admin");
    let auth = format!("X-Auth-Token: {token}");

    // The System with its ETag, linking the virtual CD's collection as the Manager does.
    let sys = curl(&bmc, "GET", "/redfish/v1/Systems/1", &["-H", &auth]);
    assert_eq!(sys.status, 200, "{}", sys.body);
    let etag = sys.header("ETag").expect("ETag on the System").to_string();
    let j = sys.json();
    assert_eq!(j["PowerState"], "Off");
    assert_eq!(j["ProcessorSummary"]["Count"], 1);
    assert_eq!(j["MemorySummary"]["TotalSystemMemoryGiB"], 1.0);
    assert_eq!(j["Boot"]["BootSourceOverrideEnabled"], "Disabled");
    assert_eq!(
        j["Links"]["ManagedBy"][0]["@odata.id"],
        "/redfish/v1/Managers/1"
    );
    assert_eq!(
        j["VirtualMedia"]["@odata.id"],
        "/redfish/v1/Systems/1/VirtualMedia"
    );
    let mgr = curl(&bmc, "GET", "/redfish/v1/Managers/1", &["-H", &auth]);
    assert_eq!(mgr.status, 200);
    assert_eq!(
        mgr.json()["VirtualMedia"]["@odata.id"],
        "/redfish/v1/Managers/1/VirtualMedia",
        "{}",
        mgr.body
    );
    assert_eq!(
        mgr.json()["Links"]["ManagerForServers"][0]["@odata.id"],
        "/redfish/v1/Systems/1"
    );

    // PATCH with the current ETag: 200 and a new ETag; with the stale one: 412.
    let patch = r#"{"Boot":{"BootSourceOverrideTarget":"Pxe","BootSourceOverrideEnabled":"Once"}}"#;
    let if_match = format!("If-Match: {etag}");
    let ok = curl(
        &bmc,
        "PATCH",
        "/redfish/v1/Systems/1",
        &[
            "-H", &auth, "-H", &if_match, json[0], json[1], json[2], patch,
        ],
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["Boot"]["BootSourceOverrideTarget"], "Pxe");
    assert_ne!(ok.header("ETag"), Some(etag.as_str()));
    assert_eq!(bmc.vm(common::VM).boot, "pxe");
    let stale = curl(
        &bmc,
        "PATCH",
        "/redfish/v1/Systems/1",
        &[
            "-H",
            &auth,
            "-H",
            &if_match,
            json[0],
            json[1],
            json[2],
            r#"{"Boot":{"BootSourceOverrideTarget":"Hdd"}}"#,
        ],
    );
    assert_eq!(stale.status, 412, "{}", stale.body);
    assert_eq!(stale.message_id(), "Base.1.22.1.PreconditionFailed");
    assert_eq!(
        bmc.vm(common::VM).boot,
        "pxe",
        "a stale PATCH changes nothing"
    );

    // Client mistakes: 400 with the property named, never 500.
    let bad = curl(
        &bmc,
        "PATCH",
        "/redfish/v1/Systems/1",
        &[
            "-H",
            &auth,
            json[0],
            json[1],
            json[2],
            r#"{"Boot":{"BootSourceOverrideTarget":"Floppy"}}"#,
        ],
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.message_id(), "Base.1.22.1.PropertyValueNotInList");
    let ro = curl(
        &bmc,
        "PATCH",
        "/redfish/v1/Systems/1",
        &[
            "-H",
            &auth,
            json[0],
            json[1],
            json[2],
            r#"{"PowerState":"On"}"#,
        ],
    );
    assert_eq!(
        (ro.status, ro.message_id().as_str()),
        (400, "Base.1.22.1.PropertyNotWritable")
    );
    let garbled = curl(
        &bmc,
        "PATCH",
        "/redfish/v1/Systems/1",
        &["-H", &auth, json[0], json[1], json[2], "{\"Boot\":"],
    );
    assert_eq!(
        (garbled.status, garbled.message_id().as_str()),
        (400, "Base.1.22.1.MalformedJSON")
    );
    let nmi = curl(
        &bmc,
        "POST",
        "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
        &[
            "-H",
            &auth,
            json[0],
            json[1],
            json[2],
            r#"{"ResetType":"Nmi"}"#,
        ],
    );
    assert_eq!(
        (nmi.status, nmi.message_id().as_str()),
        (400, "Base.1.22.1.ActionParameterValueNotInList")
    );
    let missing = curl(
        &bmc,
        "POST",
        "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
        &["-H", &auth, json[0], json[1], json[2], "{}"],
    );
    assert_eq!(
        (missing.status, missing.message_id().as_str()),
        (400, "Base.1.22.1.ActionParameterMissing")
    );
    let restart_off = curl(
        &bmc,
        "POST",
        "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
        &[
            "-H",
            &auth,
            json[0],
            json[1],
            json[2],
            r#"{"ResetType":"ForceRestart"}"#,
        ],
    );
    assert_eq!(
        restart_off.status, 409,
        "a restart of a machine that is off: {}",
        restart_off.body
    );
    let gone = curl(&bmc, "GET", "/redfish/v1/Systems/2", &["-H", &auth]);
    assert_eq!(
        (gone.status, gone.message_id().as_str()),
        (404, "Base.1.22.1.ResourceNotFound")
    );
    let floppy = curl(
        &bmc,
        "GET",
        "/redfish/v1/Managers/1/VirtualMedia/Floppy",
        &["-H", &auth],
    );
    assert_eq!(floppy.status, 404, "one slot, the CD");
    let post_sys = curl(
        &bmc,
        "POST",
        "/redfish/v1/Systems/1",
        &["-H", &auth, json[0], json[1], json[2], "{}"],
    );
    assert_eq!(
        (post_sys.status, post_sys.message_id().as_str()),
        (405, "Base.1.22.1.OperationNotAllowed")
    );
    assert_eq!(post_sys.header("Allow"), Some("GET, HEAD, PATCH"));

    // A read-only user (IPMI privilege User) may read but not reset: 403.
    let viewer = curl(
        &bmc,
        "POST",
        "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
        &[
            "-u",
            "viewer:viewer",
            json[0],
            json[1],
            json[2],
            r#"{"ResetType":"On"}"#,
        ],
    );
    assert_eq!(
        (viewer.status, viewer.message_id().as_str()),
        (403, "Base.1.22.1.InsufficientPrivilege")
    );
    assert_eq!(bmc.vm(common::VM).power, "off");
    let on = curl(
        &bmc,
        "POST",
        "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
        &[
            "-u",
            "admin:password",
            json[0],
            json[1],
            json[2],
            r#"{"ResetType":"On"}"#,
        ],
    );
    assert_eq!(on.status, 204, "{}", on.body);
    bmc.wait_power(common::VM, "on");

    // Accounts: the BMC's users with their roles.
    let accounts = curl(
        &bmc,
        "GET",
        "/redfish/v1/AccountService/Accounts",
        &["-H", &auth],
    )
    .json();
    assert_eq!(accounts["Members@odata.count"], 2);
    let first = accounts["Members"][0]["@odata.id"]
        .as_str()
        .unwrap()
        .to_string();
    let a = curl(&bmc, "GET", &first, &["-H", &auth]).json();
    assert_eq!(
        (a["UserName"].as_str(), a["RoleId"].as_str()),
        (Some("admin"), Some("Administrator"))
    );

    // Logout ends the token.
    let sessions = curl(
        &bmc,
        "GET",
        "/redfish/v1/SessionService/Sessions",
        &["-H", &auth],
    )
    .json();
    assert_eq!(sessions["Members"][0]["@odata.id"], location);
    let out = curl(&bmc, "DELETE", &location, &["-H", &auth]);
    assert_eq!(out.status, 204);
    assert_eq!(
        curl(&bmc, "GET", "/redfish/v1/Systems/1", &["-H", &auth]).status,
        401
    );

    // Counted by resource, method and status; handshakes too.
    let metrics = bmc.http_get("/metrics").unwrap();
    assert!(
        metrics.contains(
            r#"virtbmc_redfish_requests_total{resource="system",method="PATCH",status="412"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"virtbmc_redfish_tls_handshakes_total{result="ok"}"#),
        "{metrics}"
    );
}

#[test]
fn redfish_and_ipmi_see_each_others_changes() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let iface = Iface::LanplusC(17);
    let power = |bmc: &Bmc| {
        curl(
            bmc,
            "GET",
            "/redfish/v1/Systems/1",
            &["-u", "admin:password"],
        )
        .json()["PowerState"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(power(&bmc), "Off");
    bmc.admin(iface, common::PORT, &["power", "on"]).assert_ok();
    bmc.wait_power(common::VM, "on");
    assert_eq!(power(&bmc), "On", "Redfish reads what IPMI did");

    // Redfish sets the override; ipmitool reads it from boot parameter 5.
    let patch = r#"{"Boot":{"BootSourceOverrideTarget":"Pxe","BootSourceOverrideEnabled":"Continuous","BootSourceOverrideMode":"UEFI"}}"#;
    let r = curl(
        &bmc,
        "PATCH",
        "/redfish/v1/Systems/1",
        &[
            "-u",
            "admin:password",
            "-H",
            "Content-Type: application/json",
            "--data",
            patch,
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    bmc.admin(iface, common::PORT, &["chassis", "bootparam", "get", "5"])
        .assert_ok()
        .assert_stdout_has("- Options apply to all future boots")
        .assert_stdout_has("- BIOS EFI boot")
        .assert_stdout_has("Boot Device Selector : Force PXE");

    // ipmitool sets one; Redfish reads it.
    bmc.admin(iface, common::PORT, &["chassis", "bootdev", "cdrom"])
        .assert_ok();
    let j = curl(
        &bmc,
        "GET",
        "/redfish/v1/Systems/1",
        &["-u", "admin:password"],
    )
    .json();
    assert_eq!(j["Boot"]["BootSourceOverrideTarget"], "Cd");
    assert_eq!(j["Boot"]["BootSourceOverrideEnabled"], "Once");
    assert_eq!(j["Boot"]["BootSourceOverrideMode"], "Legacy");

    // Redfish powers off; ipmitool reads it.
    let r = curl(
        &bmc,
        "POST",
        "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
        &[
            "-u",
            "admin:password",
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"ResetType":"ForceOff"}"#,
        ],
    );
    assert_eq!(r.status, 204, "{}", r.body);
    bmc.wait_power(common::VM, "off");
    common::power_status_is(&bmc, iface, common::PORT, "off");
}

/// The DMTF schemas, registry and Ironic profile shipped beside the repository.
fn shared() -> PathBuf {
    std::env::var_os("VIRTBMC_REDFISH_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/redfish"))
}

/// The PASS/WARN/FAIL/NOT TESTED counts a validator prints last.
fn totals(out: &Out) -> [u64; 4] {
    let lines: Vec<&str> = out.stdout.lines().collect();
    let at = lines
        .iter()
        .rposition(|l| l.contains("PASS") && l.contains("FAIL"))
        .unwrap_or_else(|| panic!("no summary table: {out}"));
    let nums: Vec<u64> = lines[at + 2]
        .split('|')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    nums.try_into()
        .unwrap_or_else(|_| panic!("summary row: {}", lines[at + 2]))
}

#[test]
fn redfish_dmtf_validators_pass() {
    ready_or_skip!("rf_service_validator", "rf_interop_validator");
    let shared = shared();
    let csdl = shared.join("csdl");
    let profile = shared.join("profiles/OpenStackIronicProfile.v1_2_0.json");
    assert!(
        csdl.is_dir() && profile.is_file(),
        "no {}",
        shared.display()
    );
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let logs = std::env::temp_dir().join(format!("{}-validators", bmc.net.bmc));
    let _ = std::fs::remove_dir_all(&logs);
    let url = url(&bmc);
    let (csdl, profile, service_logs, interop_logs) = (
        csdl.display().to_string(),
        profile.display().to_string(),
        logs.join("service").display().to_string(),
        logs.join("interop").display().to_string(),
    );

    let out = bmc.client(&[
        "rf_service_validator",
        "-r",
        &url,
        "-u",
        "admin",
        "-p",
        "password",
        "--authtype",
        "Session",
        "--schema_directory",
        &csdl,
        "--logdir",
        &service_logs,
    ]);
    let [pass, _warn, fail, _] = totals(&out);
    assert_eq!(fail, 0, "{out}");
    assert!(pass > 150, "the whole tree was checked: {out}");
    for r in [
        "/redfish/v1/Systems/1",
        "/redfish/v1/Managers/1",
        "/redfish/v1/Chassis/1",
        "/redfish/v1/AccountService/Roles/ReadOnly",
        "/redfish/v1/Systems/1/VirtualMedia/Cd",
        "/redfish/v1/Managers/1/VirtualMedia/Cd",
    ] {
        assert!(
            out.stdout.contains(&format!("Validating {r}...")),
            "{r} not validated: {out}"
        );
    }

    let out = bmc.client(&[
        "rf_interop_validator",
        &profile,
        "-r",
        &url,
        "-u",
        "admin",
        "-p",
        "password",
        "--logdir",
        &interop_logs,
    ]);
    let [pass, _, fail, _] = totals(&out);
    assert!(pass >= 15, "{out}");
    assert_eq!(fail, 0, "{out}");
    // The report agrees: no FAIL cell in any row, the VirtualMedia ones included.
    let report = std::fs::read_dir(&interop_logs)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .find(|f| f.path().extension().is_some_and(|e| e == "html"))
        .map(|f| std::fs::read_to_string(f.path()).unwrap())
        .unwrap_or_else(|| panic!("no HTML report in {interop_logs}: {out}"));
    let text: String = {
        let mut t = String::new();
        let mut tag = false;
        for c in report.chars() {
            match c {
                '<' => tag = true,
                '>' => {
                    tag = false;
                    t.push(' ');
                }
                c if !tag => t.push(c),
                _ => {}
            }
        }
        t.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let failed_rows: Vec<String> = text
        .match_indices(" FAIL")
        .filter(|(i, _)| !text[*i..].starts_with(" FAIL NOT TESTED"))
        .map(|(i, _)| {
            let before: Vec<char> = text[..i].chars().collect();
            before[before.len().saturating_sub(200)..].iter().collect()
        })
        .filter(|before: &String| !before.ends_with("PASS WARN"))
        .collect();
    assert!(failed_rows.is_empty(), "{failed_rows:#?}\n{out}");
    assert!(
        text.contains("VirtualMedia"),
        "the profile's VirtualMedia items were checked: {out}"
    );
}

/// A self-signed certificate for DNS name `bmc` (EC P-256), written as `<dir>/<stem>.crt`
/// and `.key` (into temporary names first, then renamed, as a Secret volume update does).
fn make_cert(dir: &std::path::Path, stem: &str) {
    let (crt, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    let (tmp_crt, tmp_key) = (dir.join("new.crt"), dir.join("new.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=bmc",
            "-addext",
            "subjectAltName=DNS:bmc",
            "-keyout",
        ])
        .arg(&tmp_key)
        .arg("-out")
        .arg(&tmp_crt)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp_key, key).unwrap();
    std::fs::rename(&tmp_crt, crt).unwrap();
}

/// The certificate given on the command line is served (curl verifies it against itself as
/// CA), and a new one written over it is served within seconds, without a restart.
#[test]
fn redfish_serves_the_given_certificate_and_reloads_it() {
    ready_or_skip!("openssl");
    let dir = cert_dir("cert");
    make_cert(&dir, "tls");
    std::fs::copy(dir.join("tls.crt"), dir.join("first.crt")).unwrap();
    let (bmc, crt) = with_cert_files(&dir);
    let first = dir.join("first.crt").display().to_string();
    let out = verified(&bmc, &first);
    assert_eq!(out.stdout, "200", "{out}");
    assert!(!bmc.log().contains("self-signed"), "{}", bmc.log());

    make_cert(&dir, "tls");
    until_verified(&bmc, &crt);
    let out = verified(&bmc, &first);
    assert!(!out.ok(), "the old certificate is no longer served: {out}");
    assert!(bmc.log().contains("certificate reloaded"), "{}", bmc.log());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An empty folder of this test process for certificate files.
fn cert_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("virtbmc-redfish-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An agent told to serve `dir`'s tls.crt and tls.key; also the certificate's path.
fn with_cert_files(dir: &std::path::Path) -> (Bmc, String) {
    let (crt, key) = (
        dir.join("tls.crt").display().to_string(),
        dir.join("tls.key").display().to_string(),
    );
    let bmc = Bmc::builder()
        .vm("vm-0=6230")
        .arg("--redfish-cert")
        .arg(&crt)
        .arg("--redfish-key")
        .arg(&key)
        .start();
    (bmc, crt)
}

/// A GET of the service root that verifies the BMC's certificate against `ca`.
fn verified(bmc: &Bmc, ca: &str) -> Out {
    let connect = format!("bmc:6230:{}:6230", bmc.ip());
    bmc.client(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        ca,
        "--connect-to",
        &connect,
        "https://bmc:6230/redfish/v1/",
    ])
}

/// Waits (15 s at most) until the BMC serves a certificate `ca` verifies.
fn until_verified(bmc: &Bmc, ca: &str) {
    let start = std::time::Instant::now();
    loop {
        let out = verified(bmc, ca);
        if out.stdout == "200" {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "never reloaded: {out}\n{}",
            bmc.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Certificate files named but not there yet (an optional Secret before cert-manager wrote
/// it): a self-signed certificate meanwhile, then the files once they appear.
#[test]
fn redfish_serves_self_signed_until_the_named_files_appear() {
    ready_or_skip!("openssl");
    let dir = cert_dir("late");
    let (bmc, crt) = with_cert_files(&dir);
    let anon = curl(&bmc, "GET", "/redfish/v1/", &[]);
    assert_eq!(anon.status, 200, "self-signed meanwhile: {}", anon.body);
    assert!(bmc.log().contains("exists yet"), "{}", bmc.log());
    make_cert(&dir, "tls");
    until_verified(&bmc, &crt);
    assert!(bmc.log().contains("certificate reloaded"), "{}", bmc.log());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Plain HTTP only when asked for: with `--redfish-plain-http` the same port answers both
/// `http://` and `https://`; without it a plain request gets no answer.
#[test]
fn redfish_plain_http_only_when_asked_for() {
    ready_or_skip!("curl");
    let plain = |bmc: &Bmc| {
        bmc.client(&[
            "curl",
            "-s",
            "--max-time",
            "5",
            "-u",
            "admin:password",
            "-w",
            "\n%{http_code}",
            &format!("http://{}:6230/redfish/v1/Systems/1", bmc.ip()),
        ])
    };
    let bmc = Bmc::builder()
        .vm("vm-0=6230")
        .arg("--redfish-plain-http")
        .start();
    let out = plain(&bmc);
    out.assert_ok();
    let (body, code) = out.stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{}", out.stdout);
    let j: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(j["PowerState"], "Off");
    let tls = curl(
        &bmc,
        "GET",
        "/redfish/v1/Systems/1",
        &["-u", "admin:password"],
    );
    assert_eq!(tls.status, 200, "HTTPS still: {}", tls.body);
    drop(bmc);

    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let out = plain(&bmc);
    assert!(
        !out.stdout.contains("PowerState"),
        "plain HTTP answered without the flag: {}",
        out.stdout
    );
    let tls = curl(
        &bmc,
        "GET",
        "/redfish/v1/Systems/1",
        &["-u", "admin:password"],
    );
    assert_eq!(tls.status, 200, "{}", tls.body);
}
