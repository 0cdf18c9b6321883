//! A simulated CDI importer: a DataVolume with an `http` source goes ImportScheduled, then
//! ImportInProgress once its URL answers, then Succeeded; Failed when the URL cannot be
//! reached or answers an error status. The URL is really asked (an HTTP HEAD; for https only
//! the TCP connection, as kubesim speaks no TLS), so a test decides the outcome by what it
//! serves. Each phase lasts one `step`, so a client sees every one of them.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kinds::Kind;
use crate::store::Store;
use crate::util;

/// How long the importer waits for the image server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn run(store: Store, step: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(step) => {}
        }
        if *stop.borrow() {
            return;
        }
        for dv in store.all(Kind::DataVolume, None) {
            advance(&store, &dv).await;
        }
    }
}

/// Moves one DataVolume a phase on.
async fn advance(store: &Store, dv: &Value) {
    if dv["metadata"].get("deletionTimestamp").is_some() {
        return;
    }
    let ns = dv["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = dv["metadata"]["name"].as_str().unwrap_or_default();
    let url = dv["spec"]["source"]["http"]["url"].as_str();
    let next = match (dv["status"]["phase"].as_str().unwrap_or(""), url) {
        ("", _) => status("ImportScheduled", "N/A", None),
        ("ImportScheduled", None) => status(
            "Failed",
            "N/A",
            Some("only spec.source.http is imported".into()),
        ),
        ("ImportScheduled", Some(url)) => match probe(url).await {
            Ok(()) => status("ImportInProgress", "50.00%", None),
            Err(why) => status("Failed", "N/A", Some(why)),
        },
        ("ImportInProgress", _) => status("Succeeded", "100.0%", None),
        _ => return,
    };
    store.modify(Kind::DataVolume, ns, name, |v| v["status"] = next);
}

/// The status of a phase, with the Ready and Running conditions CDI writes.
fn status(phase: &str, progress: &str, failure: Option<String>) -> Value {
    let now = util::now_rfc3339();
    let cond = |t: &str, on: bool, reason: &str, message: &str| {
        json!({ "type": t, "status": if on { "True" } else { "False" }, "reason": reason,
                "message": message, "lastTransitionTime": now, "lastHeartbeatTime": now })
    };
    let (ready, running) = match (phase, &failure) {
        ("Succeeded", _) => (
            cond("Ready", true, "", ""),
            cond("Running", false, "Completed", "Import Complete"),
        ),
        (_, Some(why)) => (
            cond("Ready", false, "", ""),
            cond("Running", false, "Error", why),
        ),
        ("ImportInProgress", _) => (
            cond("Ready", false, "", ""),
            cond("Running", true, "Pod is running", ""),
        ),
        _ => (cond("Ready", false, "", ""), cond("Running", false, "", "")),
    };
    json!({ "phase": phase, "progress": progress, "conditions": [ready, running] })
}

/// Asks the image server for `url`: Ok when it answers 2xx or 3xx.
async fn probe(url: &str) -> Result<(), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("unsupported URL scheme in {url:?}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let ask = async {
        let mut conn = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("unable to connect to {addr}: {e}"))?;
        if tls {
            return Ok(());
        }
        let head =
            format!("HEAD {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        conn.write_all(head.as_bytes())
            .await
            .map_err(|e| format!("writing to {addr}: {e}"))?;
        let mut answer = vec![0; 256];
        let n = conn
            .read(&mut answer)
            .await
            .map_err(|e| format!("reading from {addr}: {e}"))?;
        let line = String::from_utf8_lossy(&answer[..n]);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP status from {addr}"))?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP {code} from {url}"))
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, ask)
        .await
        .map_err(|_| format!("no answer from {addr}"))?
}
