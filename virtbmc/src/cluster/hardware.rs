//! A VM's size as its spec declares it, for Redfish's processor and memory summaries: the
//! vCPUs KubeVirt gives the guest and the guest's memory, read from the VirtualMachine's
//! template (the VMI may not exist while the VM is off).

use serde_json::Value;

use crate::backend::Hardware;

/// vCPUs and memory of a VirtualMachine (its `spec.template.spec.domain`), as KubeVirt sizes
/// the guest: the CPU topology (cores x sockets x threads, each 1 when absent) when one is
/// given, else the CPU limit or request rounded up, else one; memory from `memory.guest`,
/// else the memory request, else the limit.
pub fn of_vm(vm: &Value) -> Hardware {
    let domain = &vm["spec"]["template"]["spec"]["domain"];
    let cpu = &domain["cpu"];
    let topology = ["cores", "sockets", "threads"].map(|k| cpu[k].as_u64());
    let cpus = if topology.iter().any(Option::is_some) {
        topology.iter().map(|n| n.unwrap_or(1).max(1)).product()
    } else {
        ["limits", "requests"]
            .iter()
            .find_map(|k| domain["resources"][k]["cpu"].as_str())
            .and_then(quantity)
            .map_or(1, |c| c.ceil().max(1.0) as u64)
    };
    let memory = [
        &domain["memory"]["guest"],
        &domain["resources"]["requests"]["memory"],
        &domain["resources"]["limits"]["memory"],
    ]
    .into_iter()
    .find_map(Value::as_str)
    .and_then(quantity);
    Hardware {
        cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
        memory_mib: memory.map(|bytes| (bytes / (1024.0 * 1024.0)) as u64),
    }
}

/// A Kubernetes resource quantity ("2Gi", "512M", "500m", "1.5", "1e3") as a number; None
/// when it is not one.
fn quantity(q: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let q = q.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((q, 1.0));
    let n: f64 = number.parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(domain: Value) -> Value {
        json!({ "spec": { "template": { "spec": { "domain": domain } } } })
    }

    #[test]
    fn topology_first_then_cpu_resources_then_one() {
        let h = of_vm(&vm(json!({ "cpu": { "cores": 2, "sockets": 2 } })));
        assert_eq!(h.cpus, 4);
        let h = of_vm(&vm(
            json!({ "resources": { "limits": { "cpu": "1500m" } } }),
        ));
        assert_eq!(h.cpus, 2, "rounded up");
        let h = of_vm(&vm(json!({ "resources": { "requests": { "cpu": "3" } } })));
        assert_eq!(h.cpus, 3);
        assert_eq!(of_vm(&vm(json!({}))).cpus, 1);
        assert_eq!(of_vm(&json!({})).cpus, 1);
    }

    #[test]
    fn memory_from_guest_then_request_then_limit() {
        let h = of_vm(&vm(json!({
            "memory": { "guest": "2Gi" },
            "resources": { "requests": { "memory": "4Gi" } },
        })));
        assert_eq!(h.memory_mib, Some(2048));
        let h = of_vm(&vm(
            json!({ "resources": { "requests": { "memory": "1G" } } }),
        ));
        assert_eq!(h.memory_mib, Some(953));
        let h = of_vm(&vm(
            json!({ "resources": { "limits": { "memory": "128Mi" } } }),
        ));
        assert_eq!(h.memory_mib, Some(128));
        assert_eq!(of_vm(&vm(json!({}))).memory_mib, None);
        let h = of_vm(&vm(json!({ "memory": { "guest": "lots" } })));
        assert_eq!(h.memory_mib, None, "not a quantity");
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity("1.5"), Some(1.5));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("64Ki"), Some(65536.0));
        assert_eq!(quantity("-1Gi"), None);
        assert_eq!(quantity("Gi"), None);
        assert_eq!(quantity(""), None);
    }
}
