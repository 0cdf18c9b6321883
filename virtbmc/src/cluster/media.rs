//! A VM's virtual CD on KubeVirt: the image is imported by CDI into a DataVolume named
//! `<vm>-virtbmc-cd`, which KubeVirt's `addvolume` subresource puts into the VM's first
//! CD-ROM drive (declarative hotplug: the VM's template changes, a running VMI follows);
//! `removevolume` and deleting the DataVolume eject it. What the drive holds is read from
//! the caches: the VM's volumes say whether the DataVolume is in the drive, the DataVolume's
//! phase whether its import is done, under way or failed.

use std::sync::Arc;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::{MANAGED_BY, Shared, Stores, names};
use crate::backend::media::{self, MediaError, MediaState, Medium};

/// The CD-ROM drive added to a VM that has none. KubeVirt takes new hotplugged disks on the
/// SCSI bus only.
pub const ADDED_DRIVE: &str = "virtbmc-cd";

/// The volume requested for an image: CDI needs a size up front, and an installer ISO fits.
pub const IMAGE_SIZE: &str = "4Gi";

pub fn dv_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cdi.kubevirt.io",
        "v1beta1",
        "DataVolume",
    ))
}

/// The DataVolume holding `vm`'s image.
pub fn dv_name(vm: &str) -> String {
    format!("{vm}-virtbmc-cd")
}

fn disks(vm: &Value) -> Vec<Value> {
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The VM's first CD-ROM drive (its disk entry).
pub fn cd_drive(vm: &Value) -> Option<Value> {
    disks(vm).into_iter().find(|d| d.get("cdrom").is_some())
}

/// The volume that puts DataVolume `dv` into the VM, by name.
pub fn attached(vm: &Value, dv: &str) -> Option<String> {
    vm["spec"]["template"]["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["dataVolume"]["name"] == dv)
        .and_then(|v| v["name"].as_str())
        .map(str::to_string)
}

/// What the drive holds, from whether the DataVolume is in the VM and the DataVolume itself.
pub fn medium(in_vm: bool, dv: Option<&Value>) -> Option<Medium> {
    let Some(dv) = dv else {
        // In the drive, but not (yet) in the cache: nothing the machine can read so far.
        return in_vm.then(|| Medium {
            image: String::new(),
            state: MediaState::Importing { progress: None },
        });
    };
    let image = dv["spec"]["source"]["http"]["url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let status = &dv["status"];
    let progress = status["progress"]
        .as_str()
        .filter(|p| *p != "N/A")
        .map(str::to_string);
    let state = match status["phase"].as_str().unwrap_or_default() {
        "Succeeded" if in_vm => MediaState::Inserted,
        "Failed" => MediaState::Failed {
            reason: status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Running"))
                .and_then(|c| c["message"].as_str())
                .unwrap_or("import failed")
                .to_string(),
        },
        // Imported but not (or no longer) in the drive: a half-done insert or eject.
        "Succeeded" => MediaState::Failed {
            reason: "imported but not in the drive".into(),
        },
        _ => MediaState::Importing { progress },
    };
    Some(Medium { image, state })
}

/// The drive of BMC `ns/vm` from the caches.
pub fn read(stores: &Stores, ns: &str, vm: &str) -> Result<Option<Medium>, MediaError> {
    let obj = stores
        .vm(ns, vm)
        .ok_or_else(|| MediaError::NoMachine(format!("{ns}/{vm}")))?;
    let dv_name = dv_name(vm);
    let dv = stores
        .data_volume
        .get(&ObjectRef::new_with(&dv_name, dv_resource()).within(ns));
    let in_vm = attached(&obj.data, &dv_name).is_some();
    Ok(medium(in_vm, dv.as_ref().map(|d| &d.data)))
}

/// The DataVolume that imports `url` for `vm`. An https image is verified against the CA in
/// the ConfigMap `ca` of the VM's namespace when one is configured (CDI's `certConfigMap`),
/// else against the importer's system roots.
pub fn data_volume(vm: &str, url: &str, ca: Option<&str>) -> Value {
    let mut http = json!({ "url": url });
    if let Some(ca) = ca.filter(|_| url.starts_with("https://")) {
        http["certConfigMap"] = json!(ca);
    }
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": { "name": dv_name(vm), "labels": { MANAGED_BY.0: MANAGED_BY.1 } },
        "spec": {
            "source": { "http": http },
            "storage": { "resources": { "requests": { "storage": IMAGE_SIZE } } },
        },
    })
}

fn failed(what: &str, e: kube::Error) -> MediaError {
    MediaError::Failed(format!("{what}: {e}"))
}

fn check(ns: &str, vm: &str) -> Result<(), MediaError> {
    // The DataVolume's name is the VM's plus a suffix: it must still be a name.
    if names::is_label(ns) && names::is_subdomain(vm) && names::is_subdomain(&dv_name(vm)) {
        Ok(())
    } else {
        Err(MediaError::Failed(format!(
            "{ns}/{vm}: no DataVolume name can be made for it"
        )))
    }
}

async fn volume_op(
    sh: &Shared,
    ns: &str,
    vm: &str,
    op: &str,
    body: Value,
) -> Result<(), kube::Error> {
    let url = format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachines");
    let body = serde_json::to_vec(&body).expect("serialisable");
    let req = kube::core::Request::new(url)
        .replace_subresource(op, vm, &PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    sh.call(sh.client.request_text(req)).await.map(|_| ())
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Imports `url` and puts it into `vm`'s CD drive (the first CD-ROM disk, or one added),
/// ejecting what was there. Done once KubeVirt accepted the volume; the import carries on.
pub async fn insert(sh: &Arc<Shared>, ns: &str, vm: &str, url: &str) -> Result<(), MediaError> {
    check(ns, vm)?;
    if !media::valid_image(url) {
        return Err(MediaError::BadImage(url.to_string()));
    }
    let obj = eject(sh, ns, vm).await?;
    let dvs: Api<DynamicObject> = Api::namespaced_with(sh.client.clone(), ns, &dv_resource());
    let ca = sh.opts.media_ca_configmap.as_deref();
    let dv: DynamicObject =
        serde_json::from_value(data_volume(vm, url, ca)).expect("a DataVolume is an object");
    sh.call(dvs.create(&PostParams::default(), &dv))
        .await
        .map_err(|e| failed("creating the DataVolume", e))?;
    let disk = cd_drive(&obj)
        .unwrap_or_else(|| json!({ "name": ADDED_DRIVE, "cdrom": { "bus": "scsi" } }));
    let name = disk["name"].as_str().unwrap_or(ADDED_DRIVE).to_string();
    let body = json!({
        "name": name,
        "disk": disk,
        "volumeSource": { "dataVolume": { "name": dv_name(vm), "hotpluggable": true } },
    });
    volume_op(sh, ns, vm, "addvolume", body)
        .await
        .map_err(|e| failed("adding the volume", e))?;
    log::info!("vm={ns}/{vm} media inserted drive={name} image={url}");
    Ok(())
}

/// The VM as the API server has it now: an insert just before may not be in the cache yet,
/// and an eject that missed its volume would leave the drive pointing at nothing.
async fn fresh_vm(sh: &Shared, ns: &str, vm: &str) -> Result<Value, MediaError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(sh.client.clone(), ns, &super::vm_resource());
    match sh.call(api.get(vm)).await {
        Ok(o) => Ok(o.data),
        Err(e) if not_found(&e) => Err(MediaError::NoMachine(format!("{ns}/{vm}"))),
        Err(e) => Err(failed("reading the VM", e)),
    }
}

/// Takes the image out of `vm`'s drive and deletes its DataVolume; an empty drive is fine.
/// Returns the VM as it was read, before the removal.
pub async fn eject(sh: &Arc<Shared>, ns: &str, vm: &str) -> Result<Value, MediaError> {
    check(ns, vm)?;
    let obj = fresh_vm(sh, ns, vm).await?;
    if let Some(volume) = attached(&obj, &dv_name(vm)) {
        match volume_op(sh, ns, vm, "removevolume", json!({ "name": volume })).await {
            Ok(()) => {}
            // Removed meanwhile: what was asked.
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(failed("removing the volume", e)),
        }
    }
    let dvs: Api<DynamicObject> = Api::namespaced_with(sh.client.clone(), ns, &dv_resource());
    match sh
        .call(dvs.delete(&dv_name(vm), &DeleteParams::default()))
        .await
    {
        Ok(_) => log::info!("vm={ns}/{vm} media ejected"),
        Err(e) if not_found(&e) => {}
        Err(e) => return Err(failed("deleting the DataVolume", e)),
    }
    Ok(obj)
}

/// A failed insert or eject is a Warning Event on the VM, as a refused power action is, so
/// that `kubectl describe vm` says why the drive is not as asked.
pub fn record_failure(sh: &Shared, ns: &str, vm: &str, what: &str, r: &Result<(), MediaError>) {
    if let Err(e @ MediaError::Failed(_)) = r {
        super::events::record(
            sh,
            ns,
            vm,
            "VirtualMediaFailed",
            &format!("Redfish virtual media {what}: {e}"),
        );
    }
}

/// Caches our DataVolumes. Not part of readiness: a cluster without CDI still serves power
/// and boot, and its drives just stay empty.
pub fn reflect(
    sh: &Arc<Shared>,
    writer: reflector::store::Writer<DynamicObject>,
) -> JoinHandle<()> {
    let api: Api<DynamicObject> = Api::all_with(sh.client.clone(), &dv_resource());
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let events = watcher(api, watcher::Config::default().labels(&selector)).default_backoff();
    super::serve::reflect_untracked(sh, "datavolumes", writer, events, |_, _| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(volumes: Value) -> Value {
        json!({ "spec": { "template": { "spec": {
            "domain": { "devices": { "disks": [
                { "name": "root", "disk": {} }, { "name": "cd1", "cdrom": { "bus": "sata" } },
            ] } },
            "volumes": volumes,
        } } } })
    }

    #[test]
    fn an_https_image_is_verified_with_the_configured_ca() {
        let dv = data_volume("vm1", "https://images/boot.iso", Some("image-ca"));
        assert_eq!(
            dv["spec"]["source"]["http"],
            json!({ "url": "https://images/boot.iso", "certConfigMap": "image-ca" })
        );
        let dv = data_volume("vm1", "http://images/boot.iso", Some("image-ca"));
        assert_eq!(
            dv["spec"]["source"]["http"],
            json!({ "url": "http://images/boot.iso" }),
            "no CA for plain http"
        );
        let dv = data_volume("vm1", "https://images/boot.iso", None);
        assert!(dv["spec"]["source"]["http"].get("certConfigMap").is_none());
        assert_eq!(dv["metadata"]["name"], "vm1-virtbmc-cd");
    }

    #[test]
    fn the_drive_is_the_first_cdrom_and_the_volume_names_the_data_volume() {
        let v = vm(json!([{ "name": "cd1", "dataVolume": { "name": "a-virtbmc-cd" } }]));
        assert_eq!(cd_drive(&v).unwrap()["name"], "cd1");
        assert_eq!(attached(&v, "a-virtbmc-cd").as_deref(), Some("cd1"));
        assert_eq!(attached(&vm(json!([])), "a-virtbmc-cd"), None);
        assert_eq!(cd_drive(&json!({})), None);
    }

    #[test]
    fn inserted_only_once_imported_and_in_the_drive() {
        let dv = |phase: &str| {
            json!({ "spec": { "source": { "http": { "url": "http://h/x.iso" } } },
                    "status": { "phase": phase, "progress": "50.00%",
                                "conditions": [{ "type": "Running", "message": "HTTP 404" }] } })
        };
        assert_eq!(medium(false, None), None);
        let m = medium(true, Some(&dv("Succeeded"))).unwrap();
        assert_eq!((m.image.as_str(), m.inserted()), ("http://h/x.iso", true));
        assert_eq!(
            medium(true, Some(&dv("ImportInProgress"))).unwrap().state,
            MediaState::Importing {
                progress: Some("50.00%".into())
            }
        );
        assert_eq!(
            medium(true, Some(&dv("Failed"))).unwrap().state,
            MediaState::Failed {
                reason: "HTTP 404".into()
            }
        );
        assert!(!medium(false, Some(&dv("Succeeded"))).unwrap().inserted());
        assert!(!medium(true, None).unwrap().inserted());
    }
}
