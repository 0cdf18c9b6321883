//! Redfish virtual media in cluster mode: curl drives the agent's Redfish service against
//! kubesim (with the shipped RBAC enforced), and the cluster shows what each request did: a
//! DataVolume importing the image from a server the test runs on loopback, the volume in the
//! VM's CD-ROM drive, the CD first in the boot order after a Cd boot override, and both gone
//! after an eject. The drive reports the import's truth: not inserted while importing, nor
//! after a failed import; a failed request is a Warning Event on the VM.

mod kube_support;

use kube_support::*;
use kubesim::Kind;
use serde_json::{Value, json};

/// A loopback image server: 200 with a few KB for `/boot.iso`, 404 for anything else.
fn image_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let image = vec![0x43u8; 4096];
            if req.split_whitespace().nth(1) == Some("/boot.iso") {
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    image.len()
                );
                if !req.starts_with("HEAD") {
                    let _ = c.write_all(&image);
                }
            } else {
                let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            }
        }
    });
    addr
}

/// `curl -sk` against the BMC's Redfish port as admin: status and JSON body (Null if none).
async fn curl(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let url = format!("https://127.0.0.1:{port}{path}");
    let mut args = vec![
        "-sk",
        "-u",
        "admin:password",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ];
    if let Some(b) = body {
        args.extend_from_slice(&["-H", "Content-Type: application/json", "--data", b]);
    }
    args.push(&url);
    let mut cmd = std::process::Command::new("curl");
    cmd.args(&args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or(0);
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

const CD: &str = "/redfish/v1/Systems/1/VirtualMedia/Cd";
const INSERT: &str = "/redfish/v1/Systems/1/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia";
const EJECT: &str = "/redfish/v1/Systems/1/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia";

/// Polls the CD resource until `pred` holds; returns it.
async fn cd_until(port: u16, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let end = tokio::time::Instant::now() + T;
    loop {
        let (code, doc) = curl(port, "GET", CD, None).await;
        if code == 200 && pred(&doc) {
            return doc;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{what}: last {code} {doc}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn volumes(sim: &kubesim::Handle, vm: &str) -> Value {
    sim.get(Kind::VirtualMachine, NS, vm).unwrap()["spec"]["template"]["spec"]["volumes"].clone()
}

/// The boot order of the VM's disk `name` (Null without one), None if there is no such disk.
fn order(sim: &kubesim::Handle, name: &str) -> Option<Value> {
    sim.get(Kind::VirtualMachine, NS, "vm1").unwrap()["spec"]["template"]["spec"]["domain"]
        ["devices"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .map(|d| d["bootOrder"].clone())
}

/// kubesim with VM `vm1` (off, with an empty CD-ROM drive, as a virtual media VM is
/// declared) and its BMC, an agent serving it, and the image server: (cluster, agent,
/// the BMC's port, the server's address).
async fn media_vm(
    identity: &str,
    ports: std::ops::RangeInclusive<u16>,
) -> (kubesim::Handle, Agent, u16, std::net::SocketAddr) {
    let sim = sim().await;
    let mut vm = kubesim::vm_manifest("vm1", "Halted");
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "cd", "cdrom": { "bus": "sata" } }));
    sim.create(Kind::VirtualMachine, NS, vm).unwrap();
    sim.seed_secret(
        NS,
        "vm1-auth",
        &[("username", "admin"), ("password", "password")],
    );
    sim.seed_vmbmc(NS, "vm1-bmc", "vm1", "vm1-auth");
    let server = image_server();
    let agent = Agent::start_with_redfish(&sim, identity, ports).await;
    let port = agent.wait_served("default/vm1").await;
    (sim, agent, port, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redfish_virtual_media_imports_hotplugs_boots_and_ejects_on_kubevirt() {
    let (sim, _agent, port, server) = media_vm("agent-media", 31500..=31509).await;

    // Advertised under the System, empty.
    let doc = cd_until(port, "the empty drive", |d| d["Inserted"] == false).await;
    assert_eq!(doc["Image"], Value::Null, "{doc}");

    // Insert: a DataVolume importing the URL, hotplugged into the VM's drive at once.
    let image = format!("http://{server}/boot.iso");
    let body = json!({ "Image": image }).to_string();
    let (code, answer) = curl(port, "POST", INSERT, Some(&body)).await;
    assert_eq!(code, 204, "{answer}");
    let dv = sim.get(Kind::DataVolume, NS, "vm1-virtbmc-cd").unwrap();
    assert_eq!(dv["spec"]["source"]["http"]["url"], image.as_str());
    assert_eq!(
        dv["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "virtbmc"
    );
    assert_eq!(
        volumes(&sim, "vm1"),
        json!([
            { "name": "rootdisk", "containerDisk": { "image": "quay.io/containerdisks/fedora:latest" } },
            { "name": "cd", "dataVolume": { "name": "vm1-virtbmc-cd", "hotpluggable": true } },
        ])
    );
    // Inserted only once the import succeeded (each import phase lasts a fifth of a second).
    let (_, early) = curl(port, "GET", CD, None).await;
    assert_eq!(
        (&early["Inserted"], &early["ConnectedVia"]),
        (&json!(false), &json!("NotConnected")),
        "{early}"
    );
    let doc = cd_until(port, "the import done", |d| d["Inserted"] == true).await;
    assert_eq!(
        (&doc["ConnectedVia"], &doc["Image"], &doc["ImageName"]),
        (&json!("URI"), &json!(image), &json!("boot.iso"))
    );
    assert_eq!(
        sim.get(Kind::DataVolume, NS, "vm1-virtbmc-cd").unwrap()["status"]["phase"],
        "Succeeded"
    );

    // Boot from it once: the CD drive first in the VM's boot order.
    let boot = json!({ "Boot": { "BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once" } });
    let (code, doc) = curl(
        port,
        "PATCH",
        "/redfish/v1/Systems/1",
        Some(&boot.to_string()),
    )
    .await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(
        (order(&sim, "cd"), order(&sim, "rootdisk")),
        (Some(json!(1)), Some(json!(2))),
    );

    // An image the server does not have: the import fails, and the drive says so.
    let missing = json!({ "Image": format!("http://{server}/missing.iso") }).to_string();
    let (code, answer) = curl(port, "POST", INSERT, Some(&missing)).await;
    assert_eq!(code, 204, "{answer}");
    let doc = cd_until(port, "the failed import", |d| {
        d["Status"]["Health"] == "Critical"
    })
    .await;
    assert_eq!(
        (&doc["Inserted"], &doc["ConnectedVia"]),
        (&json!(false), &json!("NotConnected")),
        "{doc}"
    );
    assert_eq!(
        sim.get(Kind::DataVolume, NS, "vm1-virtbmc-cd").unwrap()["status"]["phase"],
        "Failed"
    );

    // Eject: the volume out of the VM (the drive stays), the DataVolume deleted.
    let (code, answer) = curl(port, "POST", EJECT, None).await;
    assert_eq!(code, 204, "{answer}");
    assert!(sim.get(Kind::DataVolume, NS, "vm1-virtbmc-cd").is_none());
    assert_eq!(
        volumes(&sim, "vm1"),
        json!([{ "name": "rootdisk", "containerDisk": { "image": "quay.io/containerdisks/fedora:latest" } }])
    );
    assert!(order(&sim, "cd").is_some(), "the drive stays");
    let doc = cd_until(port, "the empty drive again", |d| d["Image"].is_null()).await;
    assert_eq!(doc["Inserted"], false);

    // A URL the drive cannot read: 400 naming Image, nothing created.
    let bad = json!({ "Image": "ftp://10.0.0.1/boot.iso" }).to_string();
    let (code, answer) = curl(port, "POST", INSERT, Some(&bad)).await;
    assert_eq!(code, 400, "{answer}");
    assert_eq!(
        answer["error"]["@Message.ExtendedInfo"][0]["MessageArgs"][1],
        "Image"
    );
    assert!(sim.get(Kind::DataVolume, NS, "vm1-virtbmc-cd").is_none());

    // The API server failing the DataVolume's creation: a 500 to the client, and a Warning
    // Event on the VM saying why.
    sim.inject(kubesim::Fault::on("POST", "/datavolumes").status(500));
    let (code, answer) = curl(port, "POST", INSERT, Some(&body)).await;
    assert_eq!(code, 500, "{answer}");
    until("the VirtualMediaFailed Event", || {
        sim.list(Kind::Event, Some(NS)).iter().any(|e| {
            e["reason"] == "VirtualMediaFailed"
                && e["involvedObject"]["name"] == "vm1"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("creating the DataVolume"))
        })
    })
    .await;
    assert_agent_never_refused(&sim);
}

/// Ironic's virtual media boot as sushy (the library it drives Redfish with) runs it: find
/// the System's CD, insert the image, set a one-shot Cd boot in UEFI mode, power on; the VM
/// starts from the CD (the new VMI has the CD drive first) with the DataVolume imported and
/// attached; sushy reads the drive back inserted, then ejects it and it is gone.
const SUSHY_MEDIA: &str = r#"
import sys, urllib3, sushy
urllib3.disable_warnings()
url, step = sys.argv[1], sys.argv[2]
root = sushy.Sushy(url + '/redfish/v1', username='admin', password='password', verify=False)
system = root.get_system('/redfish/v1/Systems/1')
cd = system.virtual_media.get_members()[0]
if step == 'insert':
    cd.insert_media(sys.argv[3])
    system.set_system_boot_options(sushy.BootSource.CD,
                                   enabled=sushy.BootSourceOverrideEnabled.ONCE,
                                   mode=sushy.BootSourceOverrideMode.UEFI)
    system.reset_system(sushy.ResetType.ON)
elif step == 'eject':
    cd.eject_media()
cd.refresh()
system.refresh()
print('inserted', cd.inserted)
print('image', cd.image)
print('power', system.power_state.value)
"#;

/// Runs one sushy step against the BMC on `port`; None when sushy is not installed.
async fn sushy(port: u16, step: &[&str]) -> Option<String> {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c")
        .arg(SUSHY_MEDIA)
        .arg(format!("https://127.0.0.1:{port}"))
        .args(step);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'sushy'") {
        return None;
    }
    assert!(out.status.success(), "sushy {step:?}: {stderr}");
    Some(String::from_utf8_lossy(&out.stdout).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sushy_boots_a_kubevirt_vm_from_virtual_media_and_ejects_it() {
    let (sim, _agent, port, server) = media_vm("agent-sushy", 31520..=31529).await;
    cd_until(port, "the empty drive", |d| d["Inserted"] == false).await;

    let image = format!("http://{server}/boot.iso");
    let Some(out) = sushy(port, &["insert", &image]).await else {
        eprintln!("SKIP: sushy is not installed for python3");
        return;
    };
    assert!(out.contains(&format!("image {image}")), "{out}");
    assert!(
        sim.wait_vmi_phase(NS, "vm1", "Running", T).await.is_some(),
        "the VM never ran"
    );
    let vmi = sim.get(Kind::VirtualMachineInstance, NS, "vm1").unwrap();
    let disks = vmi["spec"]["domain"]["devices"]["disks"]
        .as_array()
        .unwrap();
    let first = disks.iter().find(|d| d["bootOrder"] == 1).unwrap();
    assert_eq!(first["name"], "cd", "the VMI boots the CD first: {disks:?}");
    assert_eq!(
        sim.get(Kind::DataVolume, NS, "vm1-virtbmc-cd").unwrap()["spec"]["source"]["http"]["url"],
        image.as_str()
    );
    assert_eq!(
        volumes(&sim, "vm1")[1]["dataVolume"]["name"],
        "vm1-virtbmc-cd"
    );
    cd_until(port, "the import done", |d| d["Inserted"] == true).await;
    let out = sushy(port, &["read"]).await.unwrap();
    assert!(
        out.contains("inserted True") && out.contains("power On"),
        "{out}"
    );

    let out = sushy(port, &["eject"]).await.unwrap();
    assert!(out.contains("inserted False"), "{out}");
    assert!(sim.get(Kind::DataVolume, NS, "vm1-virtbmc-cd").is_none());
    assert_eq!(volumes(&sim, "vm1").as_array().unwrap().len(), 1);
    assert_agent_never_refused(&sim);
}
