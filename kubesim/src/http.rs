//! HTTP/1.1 front end: routing, JSON answers, and chunked watch streams.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::Config;
use crate::faults::{FaultAction, Faults};
use crate::kinds::Kind;
use crate::kubevirt;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Deleted, EventType, PatchType, Store, Target};
use crate::util::parse_query;

pub type RespBody = BoxBody<Bytes, std::io::Error>;

/// One request as the server saw it, for tests to assert on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
}

pub struct State {
    pub store: Store,
    pub faults: Faults,
    pub log: Mutex<Vec<RecordedRequest>>,
    pub cfg: Config,
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Hard resets per "ns/name" VMI (the guest reboots in place; nothing else changes).
    pub resets: Mutex<std::collections::HashMap<String, u64>>,
    /// The VMIs' serial consoles and their simulated guests.
    pub consoles: crate::console::Consoles,
    /// Authentication and RBAC; None serves every request (no credentials needed).
    pub auth: Option<crate::rbac::Auth>,
}

/// A body fed from a channel: each message is one chunk; an `Err` aborts the connection
/// mid-stream (the client sees an unexpected EOF, as when a real apiserver goes away).
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into())
        .map_err(|n: Infallible| match n {})
        .boxed()
}

fn json_response(code: u16, v: &Value) -> Response<RespBody> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response<RespBody> {
    let mut r = json_response(e.code, &e.to_status());
    if e.code == 429 || e.code == 503 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

fn text(code: u16, s: &'static str) -> Response<RespBody> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(s))
        .expect("valid response")
}

/// Entry point for every request.
pub async fn handle(
    state: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<RespBody>, std::io::Error> {
    let method = req.method().clone();
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    {
        let mut log = state.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() < 200_000 {
            log.push(RecordedRequest {
                method: method.to_string(),
                uri: uri.clone(),
            });
        }
    }
    log::debug!("{method} {uri}");
    // As in the apiserver's handler chain, authentication and authorization come before
    // anything the request's handler (or an injected fault) would answer.
    let who = match &state.auth {
        Some(auth) => match authorize(auth, &req, &uri) {
            Ok(who) => who,
            Err(e) => return Ok(error_response(&e)),
        },
        None => None,
    };
    if let Some(action) = state.faults.take(method.as_str(), &uri) {
        log::info!("fault injected on {method} {uri}: {action:?}");
        match action {
            FaultAction::Status(c) => return Ok(error_response(&ApiError::injected(c))),
            FaultAction::Hang => {
                stopped(state.stop.clone()).await;
                return Ok(error_response(&ApiError::injected(503)));
            }
            FaultAction::Delay(d) => tokio::time::sleep(d).await,
            FaultAction::Disconnect => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "injected disconnect",
                ));
            }
        }
    }
    // The console is a WebSocket: it keeps the request (and its connection) to upgrade it.
    if let Some((ns, name)) = crate::console::path(req.uri().path()) {
        return Ok(
            crate::console::handle(&state, &ns, &name, req).unwrap_or_else(|e| error_response(&e))
        );
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let table = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    Ok(route(
        &state,
        &method,
        &path,
        &query,
        &content_type,
        &body,
        table,
        who.as_ref(),
    )
    .await
    .unwrap_or_else(|e| error_response(&e)))
}

/// Who sent `req` (401 if no one known) and whether RBAC lets them do it (403 if not); on
/// success, who asked for what, for the admission policies. Non-resource paths (discovery,
/// `/version`, health) are open to every authenticated user, as the bootstrap ClusterRoles
/// `system:discovery` and `system:public-info-viewer` make them (None then).
fn authorize(
    auth: &crate::rbac::Auth,
    req: &Request<hyper::body::Incoming>,
    uri: &str,
) -> Result<Option<Who>, ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = auth.authenticate(header)?;
    let segs: Vec<&str> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let query = parse_query(req.uri().query().unwrap_or(""));
    match crate::rbac::Attributes::of(req.method().as_str(), &segs, &query) {
        Some(attrs) => auth
            .authorize(&user, &attrs, req.method().as_str(), uri)
            .map(|()| Some((user, attrs))),
        None => Ok(None),
    }
}

/// An authenticated request's user and attributes.
type Who = (crate::rbac::User, crate::rbac::Attributes);

fn q<'a>(query: &'a [(String, String)], k: &str) -> Option<&'a str> {
    query
        .iter()
        .rev()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

#[allow(clippy::too_many_arguments)]
async fn route(
    state: &Arc<State>,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    content_type: &str,
    body: &Bytes,
    table: bool,
    who: Option<&Who>,
) -> Result<Response<RespBody>, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["healthz" | "readyz" | "livez"] => return Ok(text(200, "ok")),
        ["version"] => {
            return Ok(json_response(
                200,
                &json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-kubesim", "platform": "linux/amd64"}),
            ));
        }
        _ => {}
    }
    if method == Method::GET
        && let Some(doc) = discovery(&segs)
    {
        return Ok(json_response(200, &doc));
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    let dry_run = q(query, "dryRun") == Some("All");

    if group == "subresources.kubevirt.io" && (version == "v1" || version == "v1alpha3") {
        return match rest {
            ["namespaces", ns, "virtualmachines", name, op]
                if crate::hotplug::Op::parse(op).is_some() =>
            {
                let op = crate::hotplug::Op::parse(op).ok_or_else(ApiError::no_route)?;
                if method != Method::PUT {
                    return Err(ApiError::method_not_allowed());
                }
                crate::hotplug::handle(&state.store, ns, name, op, body)?;
                Ok(Response::builder()
                    .status(StatusCode::ACCEPTED)
                    .body(full(Bytes::new()))
                    .expect("valid response"))
            }
            ["namespaces", ns, "virtualmachines", name, action] => {
                let action = kubevirt::Action::parse(action).ok_or_else(ApiError::no_route)?;
                if method != Method::PUT {
                    return Err(ApiError::method_not_allowed());
                }
                kubevirt::handle(&state.store, ns, name, action, body)?;
                Ok(Response::builder()
                    .status(StatusCode::ACCEPTED)
                    .body(full(Bytes::new()))
                    .expect("valid response"))
            }
            ["namespaces", ns, "virtualmachineinstances", name, "reset"] => {
                if method != Method::PUT {
                    return Err(ApiError::method_not_allowed());
                }
                kubevirt::reset(&state.store, ns, name)?;
                if let Some(vmi) = state.store.get(Kind::VirtualMachineInstance, ns, name) {
                    state.consoles.reset(&format!("{ns}/{name}"), &vmi);
                }
                *state
                    .resets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(format!("{ns}/{name}"))
                    .or_default() += 1;
                Ok(Response::builder()
                    .status(StatusCode::OK)
                    .body(full(Bytes::new()))
                    .expect("valid response"))
            }
            _ => Err(ApiError::no_route()),
        };
    }

    let (ns, plural, name, sub) = match rest {
        [plural] => (None, *plural, None, None),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        _ => return Err(ApiError::no_route()),
    };
    let kind = Kind::from_path(group, version, plural).ok_or_else(ApiError::no_route)?;
    let target = match sub {
        None => Target::Main,
        Some("status") if kind.info().status_subresource => Target::Status,
        Some(_) => return Err(ApiError::no_route()),
    };
    let store = &state.store;
    let parse_body = || -> Result<Value, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
    };
    // Updates pass the ValidatingAdmissionPolicies that match them.
    let admit_update = |old: &Value, new: &Value| match (&state.auth, who) {
        (Some(auth), Some((user, attrs))) => auth.policies.admit(user, attrs, Some(old), new),
        _ => Ok(()),
    };
    let admit: crate::store::Admit<'_> = Some(&admit_update);

    match (method, name) {
        (&Method::GET, None) => {
            let labels = LabelSelector::parse(q(query, "labelSelector").unwrap_or(""))?;
            let fields = FieldSelector::parse(q(query, "fieldSelector").unwrap_or(""))?;
            if matches!(q(query, "watch"), Some("true" | "1")) {
                return watch(state, kind, ns, query, labels, fields, table);
            }
            let limit = q(query, "limit").and_then(|l| l.parse().ok());
            let cont = q(query, "continue").filter(|c| !c.is_empty());
            let (items, rv, token, remaining) =
                store.list(kind, ns, &labels, &fields, limit, cont)?;
            let info = kind.info();
            let mut md = json!({ "resourceVersion": rv.to_string() });
            if let Some(t) = token {
                md["continue"] = json!(t);
                md["remainingItemCount"] = json!(remaining);
            }
            let items: Vec<&Value> = items.iter().map(|a| a.as_ref()).collect();
            if table {
                return Ok(json_response(200, &crate::table::table(kind, &items, md)));
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": format!("{}List", info.kind_name),
                    "apiVersion": info.api_version(),
                    "metadata": md,
                    "items": items,
                }),
            ))
        }
        (&Method::POST, None) => {
            let ns = ns.ok_or_else(ApiError::method_not_allowed)?;
            let obj = store.create(kind, ns, parse_body()?, dry_run)?;
            Ok(json_response(201, &obj))
        }
        (_, None) => Err(ApiError::method_not_allowed()),
        (&Method::GET, Some(name)) => {
            let ns = ns.unwrap_or("");
            store
                .get(kind, ns, name)
                .map(|o| {
                    if table && target == Target::Main {
                        json_response(200, &crate::table::table(kind, &[&o], json!({})))
                    } else {
                        json_response(200, &o)
                    }
                })
                .ok_or_else(|| ApiError::not_found(kind.info(), name))
        }
        (&Method::PUT, Some(name)) => {
            let (obj, created) = store.replace_admitted(
                kind,
                ns.unwrap_or(""),
                name,
                parse_body()?,
                target,
                dry_run,
                admit,
            )?;
            Ok(json_response(if created { 201 } else { 200 }, &obj))
        }
        (&Method::PATCH, Some(name)) => {
            let ptype = match content_type {
                "application/json-patch+json" => PatchType::Json,
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
                other => {
                    return Err(ApiError::unsupported_media(format!(
                        "the body of the request was in an unknown format - accepted media types include: \
                         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml \
                         (got {other:?})"
                    )));
                }
            };
            let fm = q(query, "fieldManager");
            let (obj, created) = store.patch_admitted(
                kind,
                ns.unwrap_or(""),
                name,
                ptype,
                body,
                target,
                fm,
                dry_run,
                admit,
            )?;
            Ok(json_response(if created { 201 } else { 200 }, &obj))
        }
        (&Method::DELETE, Some(name)) if target == Target::Main => {
            let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                parse_body()?
            };
            match store.delete(kind, ns.unwrap_or(""), name, &opts, dry_run)? {
                Deleted::Finalizing(obj) => Ok(json_response(200, &obj)),
                Deleted::Gone { object, status } => {
                    if kind.info().return_deleted {
                        Ok(json_response(200, &object))
                    } else {
                        Ok(json_response(200, &status))
                    }
                }
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// A watch event line; with `table`, the object is a one-row Table (kubectl get -w).
fn watch_line(etype: &str, obj: &Value, kind: Kind, table: bool) -> Bytes {
    if table {
        event_line(
            etype,
            &crate::table::table(
                kind,
                &[obj],
                json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
            ),
        )
    } else {
        event_line(etype, obj)
    }
}

fn event_line(etype: &str, obj: &Value) -> Bytes {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(b"{\"type\":\"");
    v.extend_from_slice(etype.as_bytes());
    v.extend_from_slice(b"\",\"object\":");
    serde_json::to_writer(&mut v, obj).expect("serialisable");
    v.extend_from_slice(b"}\n");
    Bytes::from(v)
}

fn watch(
    state: &Arc<State>,
    kind: Kind,
    ns: Option<&str>,
    query: &[(String, String)],
    labels: LabelSelector,
    fields: FieldSelector,
    table: bool,
) -> Result<Response<RespBody>, ApiError> {
    let rv_param = q(query, "resourceVersion").unwrap_or("");
    let start_rv: Option<u64> = match rv_param {
        "" | "0" => None,
        s => Some(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))?,
        ),
    };
    let send_initial = q(query, "sendInitialEvents") == Some("true");
    let bookmarks = q(query, "allowWatchBookmarks") == Some("true");
    let timeout = q(query, "timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(state.cfg.default_watch_timeout);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1024);
    let state = state.clone();
    let ns = ns.map(str::to_string);
    tokio::spawn(async move {
        let store = &state.store;
        let info = kind.info();
        let mut changes = store.subscribe();
        changes.borrow_and_update();
        let (expire0, drop0) = store.epochs();
        let stop = state.stop.clone();
        let matches = |o: &Value| labels.matches(o) && fields.matches(o);
        let bookmark = |rv: u64, initial_end: bool| {
            let mut md = json!({ "resourceVersion": rv.to_string() });
            if initial_end {
                md["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
            }
            event_line(
                "BOOKMARK",
                &json!({ "kind": info.kind_name, "apiVersion": info.api_version(), "metadata": md }),
            )
        };
        let expired = |asked: u64, oldest: u64| {
            let e = ApiError::gone(format!("too old resource version: {asked} ({oldest})"));
            event_line("ERROR", &e.to_status())
        };

        let mut cursor = match start_rv {
            Some(r) if !send_initial => r,
            _ => {
                // No RV (or 0, or sendInitialEvents): the current state as ADDED events first.
                let Ok((items, rv, _, _)) =
                    store.list(kind, ns.as_deref(), &labels, &fields, None, None)
                else {
                    return;
                };
                for o in items {
                    if tx
                        .send(Ok(watch_line("ADDED", &o, kind, table)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if send_initial && bookmarks && tx.send(Ok(bookmark(rv, true))).await.is_err() {
                    return;
                }
                rv
            }
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next_bookmark = tokio::time::Instant::now() + state.cfg.bookmark_interval;
        loop {
            let (expire, dropped) = store.epochs();
            if dropped != drop0 {
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "watch dropped",
                    )))
                    .await;
                return;
            }
            if expire != expire0 {
                let oldest = store.lock().history_start;
                let _ = tx.send(Ok(expired(cursor, oldest))).await;
                return;
            }
            match store.events_since(kind, ns.as_deref(), cursor) {
                Err(oldest) => {
                    let _ = tx.send(Ok(expired(cursor, oldest))).await;
                    return;
                }
                Ok((events, now_rv)) => {
                    for e in events {
                        let now_m = matches(&e.object);
                        let prev_m = e.prev.as_deref().is_some_and(matches);
                        let etype = match e.etype {
                            EventType::Added if now_m => "ADDED",
                            EventType::Modified if now_m && prev_m => "MODIFIED",
                            EventType::Modified if now_m => "ADDED",
                            EventType::Modified if prev_m => "DELETED",
                            EventType::Deleted if now_m || prev_m => "DELETED",
                            _ => continue,
                        };
                        if tx
                            .send(Ok(watch_line(etype, &e.object, kind, table)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    cursor = cursor.max(now_rv);
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(next_bookmark) => {
                    next_bookmark = tokio::time::Instant::now() + state.cfg.bookmark_interval;
                    if bookmarks && tx.send(Ok(bookmark(cursor, false))).await.is_err() {
                        return;
                    }
                }
                // The stream ends cleanly at timeoutSeconds (handlers/watch.go).
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = stopped(stop.clone()) => return,
            }
        }
    });
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(ChannelBody(rx).boxed())
        .expect("valid response"))
}

/// Resolves once the server is stopping.
pub async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Legacy discovery documents (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`), enough
/// for `kubectl --server http://... get vms` and for kube's `Discovery`.
fn discovery(segs: &[&str]) -> Option<Value> {
    use crate::kinds::ALL;
    let verbs = json!([
        "create", "delete", "get", "list", "patch", "update", "watch"
    ]);
    let resources = |group: &str, version: &str| -> Vec<Value> {
        let mut out = vec![];
        for i in ALL
            .iter()
            .filter(|i| i.group == group && i.version == version)
        {
            out.push(json!({
                "name": i.plural,
                "singularName": i.kind_name.to_ascii_lowercase(),
                "namespaced": true,
                "kind": i.kind_name,
                "verbs": verbs,
                "shortNames": i.short_names,
            }));
            if i.status_subresource {
                out.push(json!({
                    "name": format!("{}/status", i.plural),
                    "singularName": "",
                    "namespaced": true,
                    "kind": i.kind_name,
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        out
    };
    match segs {
        ["api"] => Some(json!({ "kind": "APIVersions", "versions": ["v1"] })),
        ["apis"] => {
            let mut groups: Vec<(String, String)> = ALL
                .iter()
                .filter(|i| !i.group.is_empty())
                .map(|i| (i.group.to_string(), i.version.to_string()))
                .collect();
            groups.push(("subresources.kubevirt.io".into(), "v1".into()));
            groups.dedup();
            let groups: Vec<Value> = groups
                .iter()
                .map(|(g, v)| {
                    let gv = json!({ "groupVersion": format!("{g}/{v}"), "version": v });
                    json!({ "name": g, "versions": [gv.clone()], "preferredVersion": gv })
                })
                .collect();
            Some(json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }))
        }
        ["api", "v1"] => Some(json!({
            "kind": "APIResourceList", "groupVersion": "v1", "resources": resources("", "v1"),
        })),
        ["apis", "subresources.kubevirt.io", v @ ("v1" | "v1alpha3")] => {
            let res: Vec<Value> = ["virtualmachines/start", "virtualmachines/stop", "virtualmachines/restart", "virtualmachines/addvolume", "virtualmachines/removevolume", "virtualmachineinstances/reset"]
                .iter()
                .map(|a| json!({ "name": a, "singularName": "", "namespaced": true, "kind": "", "verbs": ["update"] }))
                .chain(std::iter::once(json!({ "name": "virtualmachineinstances/console", "singularName": "", "namespaced": true, "kind": "", "verbs": ["get"] })))
                .collect();
            Some(json!({
                "kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": format!("subresources.kubevirt.io/{v}"), "resources": res,
            }))
        }
        ["apis", g, v] => {
            let res = resources(g, v);
            (!res.is_empty()).then(|| {
                json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{g}/{v}"), "resources": res })
            })
        }
        _ => None,
    }
}
