//! `meta.k8s.io/v1` Table answers (`Accept: application/json;as=Table;...`), so that
//! `kubectl get vm` against kubesim prints the columns KubeVirt's CRDs declare.

use serde_json::{Value, json};

use crate::kinds::Kind;

fn cond(o: &Value, t: &str) -> Value {
    o["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == t))
        .map(|c| c["status"].clone())
        .unwrap_or(Value::Null)
}

type Column = (&'static str, &'static str, fn(&Value) -> Value);

/// Columns after Name, as in the CRDs' additionalPrinterColumns (kv:crds.go, the VMBMC CRD)
/// and kubectl's built-in printers.
fn columns(kind: Kind) -> Vec<Column> {
    let age: Column = ("Age", "date", |o| {
        o["metadata"]["creationTimestamp"].clone()
    });
    match kind {
        Kind::VirtualMachine => vec![
            age,
            ("Status", "string", |o| {
                o["status"]["printableStatus"].clone()
            }),
            ("Ready", "string", |o| cond(o, "Ready")),
        ],
        Kind::VirtualMachineInstance => vec![
            age,
            ("Phase", "string", |o| o["status"]["phase"].clone()),
            ("IP", "string", |o| {
                o["status"]["interfaces"][0]["ipAddress"].clone()
            }),
            ("NodeName", "string", |o| o["status"]["nodeName"].clone()),
            ("Ready", "string", |o| cond(o, "Ready")),
        ],
        Kind::VirtualMachineBmc => vec![
            ("VirtualMachine", "string", |o| {
                o["spec"]["virtualMachineRef"]["name"].clone()
            }),
            ("Secret", "string", |o| {
                o["spec"]["authSecretRef"]["name"].clone()
            }),
            ("ClusterIP", "string", |o| o["status"]["clusterIP"].clone()),
            ("Ready", "string", |o| cond(o, "Ready")),
            age,
        ],
        Kind::Secret => vec![
            ("Type", "string", |o| o["type"].clone()),
            ("Data", "integer", |o| {
                json!(o["data"].as_object().map_or(0, |m| m.len()))
            }),
            age,
        ],
        Kind::Service => vec![
            ("Type", "string", |o| o["spec"]["type"].clone()),
            ("Cluster-IP", "string", |o| o["spec"]["clusterIP"].clone()),
            ("Port(s)", "string", |o| {
                let ports: Vec<String> = o["spec"]["ports"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| match p["nodePort"].as_u64() {
                                Some(np) => format!(
                                    "{}:{np}/{}",
                                    p["port"],
                                    p["protocol"].as_str().unwrap_or("TCP")
                                ),
                                None => format!(
                                    "{}/{}",
                                    p["port"],
                                    p["protocol"].as_str().unwrap_or("TCP")
                                ),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                json!(ports.join(","))
            }),
            age,
        ],
        Kind::Pod => vec![
            ("Ready", "string", |o| {
                let statuses = o["status"]["containerStatuses"].as_array();
                let ready =
                    statuses.map_or(0, |cs| cs.iter().filter(|c| c["ready"] == true).count());
                let all = o["spec"]["containers"].as_array().map_or(0, Vec::len);
                json!(format!("{ready}/{all}"))
            }),
            ("Status", "string", |o| {
                if o["metadata"]["deletionTimestamp"].is_string() {
                    json!("Terminating")
                } else {
                    o["status"]["phase"].clone()
                }
            }),
            age,
            ("IP", "string", |o| o["status"]["podIP"].clone()),
            ("Node", "string", |o| o["spec"]["nodeName"].clone()),
        ],
        Kind::EndpointSlice => vec![
            ("AddressType", "string", |o| o["addressType"].clone()),
            ("Ports", "string", |o| {
                let ports: Vec<String> = o["ports"]
                    .as_array()
                    .map(|ps| ps.iter().map(|p| p["port"].to_string()).collect())
                    .unwrap_or_default();
                json!(ports.join(","))
            }),
            ("Endpoints", "string", |o| {
                let addrs: Vec<&str> = o["endpoints"]
                    .as_array()
                    .map(|es| {
                        es.iter()
                            .filter_map(|e| e["addresses"][0].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                json!(addrs.join(","))
            }),
            age,
        ],
        Kind::Lease => vec![
            ("Holder", "string", |o| o["spec"]["holderIdentity"].clone()),
            age,
        ],
        // What `kubectl get dv` prints.
        Kind::DataVolume => vec![
            ("Phase", "string", |o| o["status"]["phase"].clone()),
            ("Progress", "string", |o| o["status"]["progress"].clone()),
            age,
        ],
        Kind::Event | Kind::EventV1 => vec![
            ("Reason", "string", |o| o["reason"].clone()),
            ("Object", "string", |o| {
                let r = if o["regarding"].is_object() {
                    &o["regarding"]
                } else {
                    &o["involvedObject"]
                };
                json!(
                    format!(
                        "{}/{}",
                        r["kind"].as_str().unwrap_or(""),
                        r["name"].as_str().unwrap_or("")
                    )
                    .to_lowercase()
                )
            }),
            ("Message", "string", |o| {
                if o["note"].is_string() {
                    o["note"].clone()
                } else {
                    o["message"].clone()
                }
            }),
            age,
        ],
    }
}

/// A Table of `items`; `list_meta` is the list's metadata (resourceVersion, continue).
pub fn table(kind: Kind, items: &[&Value], list_meta: Value) -> Value {
    let cols = columns(kind);
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}),
    ];
    defs.extend(cols.iter().map(
        |(n, t, _)| json!({"name": n, "type": t, "format": "", "description": "", "priority": 0}),
    ));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            cells.extend(cols.iter().map(|(_, t, f)| {
                let v = f(o);
                match (*t, v.as_str()) {
                    // The server renders date columns as ages (TableConvertor).
                    ("date", Some(ts)) => json!(crate::util::human_age(ts)),
                    ("string", None) if v.is_null() => json!(""),
                    _ => v,
                }
            }));
            json!({
                "cells": cells,
                "object": { "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"] },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}
