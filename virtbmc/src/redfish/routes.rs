//! What each resource answers to each method. Reads need only a login; power, boot and
//! session changes of others need the privilege the IPMI side asks for the same change
//! (Operator for Chassis Control and boot options, IPMI 2.0 Appendix G), and so does a
//! change of the virtual CD, which decides what the machine boots as much as they do.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::Service;
use super::auth::{self, Caller};
use super::error::{Error, Msg};
use super::media::{self, Change, Place};
use super::resources as r;
use super::system::{self, BootPatch, Reset};
use crate::backend::media::{MediaError, Medium};
use crate::engine::config::Privilege;
use crate::engine::vm::VmView;

/// Request bodies larger than this are refused (413); the largest a client sends is a login.
pub const MAX_BODY: usize = 64 * 1024;
/// For a request body to arrive once its head has.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// What a retryable refusal asks the client to wait.
const RETRY_AFTER: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Versions,
    Root,
    OData,
    Metadata,
    Systems,
    System,
    Reset,
    Managers,
    Manager,
    MediaCollection(Place),
    Media(Place),
    InsertMedia(Place),
    EjectMedia(Place),
    ChassisAll,
    Chassis,
    SessionService,
    Sessions,
    Session(String),
    AccountService,
    Accounts,
    Account(String),
    Roles,
    Role(String),
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let path = path.strip_suffix('/').unwrap_or(path);
        let rest = path.strip_prefix("/redfish")?;
        if rest.is_empty() {
            return Some(Route::Versions);
        }
        let rest = rest.strip_prefix("/v1")?;
        let parts: Vec<&str> = if rest.is_empty() {
            vec![]
        } else {
            rest.strip_prefix('/')?.split('/').collect()
        };
        let id = |s: &str| s.to_string();
        let place = |p: &str| {
            if p == "Systems" {
                Place::System
            } else {
                Place::Manager
            }
        };
        Some(match parts.as_slice() {
            [p @ ("Systems" | "Managers"), "1", "VirtualMedia"] => Route::MediaCollection(place(p)),
            [p @ ("Systems" | "Managers"), "1", "VirtualMedia", media::CD] => {
                Route::Media(place(p))
            }
            [
                p @ ("Systems" | "Managers"),
                "1",
                "VirtualMedia",
                media::CD,
                "Actions",
                a,
            ] => match *a {
                media::INSERT => Route::InsertMedia(place(p)),
                media::EJECT => Route::EjectMedia(place(p)),
                _ => return None,
            },
            [] => Route::Root,
            ["odata"] => Route::OData,
            ["$metadata"] => Route::Metadata,
            ["Systems"] => Route::Systems,
            ["Systems", "1"] => Route::System,
            ["Systems", "1", "Actions", "ComputerSystem.Reset"] => Route::Reset,
            ["Managers"] => Route::Managers,
            ["Managers", "1"] => Route::Manager,
            ["Chassis"] => Route::ChassisAll,
            ["Chassis", "1"] => Route::Chassis,
            ["SessionService"] => Route::SessionService,
            ["SessionService", "Sessions"] => Route::Sessions,
            ["SessionService", "Sessions", s] => Route::Session(id(s)),
            ["AccountService"] => Route::AccountService,
            ["AccountService", "Accounts"] => Route::Accounts,
            ["AccountService", "Accounts", a] => Route::Account(id(a)),
            ["AccountService", "Roles"] => Route::Roles,
            ["AccountService", "Roles", role] => Route::Role(id(role)),
            _ => return None,
        })
    }

    /// The label requests are counted under.
    fn label(route: Option<&Route>) -> &'static str {
        match route {
            None => "unknown",
            Some(r) => match r {
                Route::Versions => "versions",
                Route::Root => "service_root",
                Route::OData => "odata",
                Route::Metadata => "metadata",
                Route::Systems => "systems",
                Route::System => "system",
                Route::Reset => "system_reset",
                Route::Managers => "managers",
                Route::Manager => "manager",
                Route::MediaCollection(_) => "virtual_media_collection",
                Route::Media(_) => "virtual_media",
                Route::InsertMedia(_) => "virtual_media_insert",
                Route::EjectMedia(_) => "virtual_media_eject",
                Route::ChassisAll => "chassis_collection",
                Route::Chassis => "chassis",
                Route::SessionService => "session_service",
                Route::Sessions => "sessions",
                Route::Session(_) => "session",
                Route::AccountService => "account_service",
                Route::Accounts => "accounts",
                Route::Account(_) => "account",
                Route::Roles => "roles",
                Route::Role(_) => "role",
            },
        }
    }

    /// The methods the resource answers (the `Allow` header).
    fn allow(&self) -> &'static str {
        match self {
            Route::System | Route::Media(_) => "GET, HEAD, PATCH",
            Route::Reset | Route::InsertMedia(_) | Route::EjectMedia(_) => "POST",
            Route::Sessions => "GET, HEAD, POST",
            Route::Session(_) => "GET, HEAD, DELETE",
            _ => "GET, HEAD",
        }
    }

    /// Anyone may read these, and log in (DSP0266 §13.3.1).
    fn open(&self, method: &Method) -> bool {
        match self {
            Route::Versions | Route::Root | Route::OData | Route::Metadata => true,
            Route::Sessions => method == Method::POST,
            _ => false,
        }
    }
}

/// An answer before it becomes an HTTP response.
struct Answer {
    status: u16,
    body: Option<Body>,
    headers: Vec<(header::HeaderName, String)>,
}

enum Body {
    Json(Value),
    Xml(String),
}

impl Answer {
    fn json(status: u16, v: Value) -> Answer {
        Answer {
            status,
            body: Some(Body::Json(v)),
            headers: vec![],
        }
    }

    fn empty(status: u16) -> Answer {
        Answer {
            status,
            body: None,
            headers: vec![],
        }
    }

    fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

impl From<Error> for Answer {
    fn from(e: Error) -> Answer {
        let mut a = Answer::json(e.status, e.body());
        if let Some(s) = e.retry_after {
            a = a.header(header::RETRY_AFTER, s.to_string());
        }
        if e.status == 401 {
            a = a.header(header::WWW_AUTHENTICATE, "Basic realm=\"virtbmc\"");
        }
        a
    }
}

type Result<T> = std::result::Result<T, Error>;

pub async fn handle(service: &Service, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let route = Route::parse(req.uri().path());
    let answer = match &route {
        None => Error::not_found("Resource", req.uri().path()).into(),
        Some(route) => match answer(service, route, req).await {
            Ok(a) => a,
            Err(e) => e.into(),
        },
    };
    service
        .metrics
        .request(Route::label(route.as_ref()), &method, answer.status);
    let head = method == Method::HEAD;
    let mut resp = Response::builder().status(answer.status);
    let h = resp.headers_mut().expect("a fresh builder has headers");
    h.insert("OData-Version", HeaderValue::from_static("4.0"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(route) = &route {
        h.insert(header::ALLOW, HeaderValue::from_static(route.allow()));
    }
    for (name, value) in answer.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.append(name, v);
        }
    }
    let body = match answer.body {
        Some(Body::Json(v)) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        Some(Body::Xml(s)) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml; charset=utf-8"),
            );
            Bytes::from(s)
        }
        None => Bytes::new(),
    };
    let body = if head { Bytes::new() } else { body };
    resp.body(Full::new(body)).unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

async fn answer(service: &Service, route: &Route, req: Request<Incoming>) -> Result<Answer> {
    let method = req.method().clone();
    let allowed = route.allow().split(", ").any(|m| m == method.as_str());
    let caller = if route.open(&method) {
        None
    } else {
        Some(authenticate(service, req.headers())?)
    };
    if !allowed {
        return Err(Error::new(405, Msg::OperationNotAllowed, &[]));
    }
    if caller
        .as_ref()
        .is_some_and(|c| auth::role(c.privilege).is_none())
    {
        return Err(Error::new(403, Msg::InsufficientPrivilege, &[]));
    }
    let if_match = req
        .headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = if matches!(method, Method::POST | Method::PATCH) {
        read_body(req.into_body()).await?
    } else {
        None
    };
    let config = service.config();
    let view = service.backend.view(&service.name);
    let efi = service.efi.load(Relaxed);
    let vmedia = has_media(service);
    let get = |v: Value| Ok(Answer::json(200, v));
    match (route, &method) {
        (Route::Versions, _) => get(r::versions()),
        (Route::Root, _) => get(r::service_root(&service_uuid(&service.name))),
        (Route::OData, _) => get(r::odata()),
        (Route::Metadata, _) => Ok(Answer {
            status: 200,
            body: Some(Body::Xml(r::metadata())),
            headers: vec![],
        }),
        (Route::Systems, _) => get(r::systems()),
        (Route::System, &Method::PATCH) => {
            let caller = caller.expect("authenticated");
            patch_system(service, &caller, body, if_match.as_deref()).await
        }
        (Route::System, _) => {
            let doc = system_doc(service, view.as_ref(), efi, vmedia);
            let etag = etag(&doc);
            Ok(Answer::json(200, doc).header(header::ETAG, etag))
        }
        (Route::Reset, _) => {
            let caller = caller.expect("authenticated");
            reset(service, &caller, body).await
        }
        (Route::Managers, _) => get(r::managers()),
        (Route::Manager, _) => get(r::manager(&service.name, vmedia)),
        (Route::MediaCollection(place), _) => {
            medium(service, *place)?;
            get(media::collection(*place))
        }
        (Route::Media(place), &Method::PATCH) => {
            let caller = caller.expect("authenticated");
            patch_media(service, &caller, *place, body, if_match.as_deref()).await
        }
        (Route::Media(place), _) => {
            let doc = media::cd(*place, medium(service, *place)?.as_ref());
            let etag = etag(&doc);
            Ok(Answer::json(200, doc).header(header::ETAG, etag))
        }
        (Route::InsertMedia(place), _) => {
            let caller = caller.expect("authenticated");
            medium(service, *place)?;
            need(&caller, Privilege::Operator)?;
            let image = media::insert(&object(body)?)?;
            change_media(service, &caller, *place, Change::Insert(image)).await?;
            Ok(Answer::empty(204))
        }
        (Route::EjectMedia(place), _) => {
            let caller = caller.expect("authenticated");
            medium(service, *place)?;
            need(&caller, Privilege::Operator)?;
            media::eject(&object(body)?)?;
            change_media(service, &caller, *place, Change::Eject).await?;
            Ok(Answer::empty(204))
        }
        (Route::ChassisAll, _) => get(r::chassis_all()),
        (Route::Chassis, _) => get(r::chassis(&service.name, view.as_ref())),
        (Route::SessionService, _) => get(r::session_service()),
        (Route::Sessions, &Method::POST) => login(service, body),
        (Route::Sessions, _) => {
            let caller = caller.expect("authenticated");
            let ids: Vec<String> = visible_sessions(service, &caller)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            get(r::sessions(&ids))
        }
        (Route::Session(id), m) => {
            let caller = caller.expect("authenticated");
            let Some((_, user)) = visible_sessions(service, &caller)
                .into_iter()
                .find(|(s, _)| s == id)
            else {
                return Err(Error::not_found("Session", id));
            };
            if m == Method::DELETE {
                service.sessions().close(id);
                log::info!(
                    "redfish: bmc={} session {id} of {user} closed",
                    service.name
                );
                Ok(Answer::empty(204))
            } else {
                get(r::session(id, &user))
            }
        }
        (Route::AccountService, _) => get(r::account_service()),
        (Route::Accounts, _) => {
            let caller = caller.expect("authenticated");
            let ids: Vec<String> = config
                .users
                .iter()
                .filter(|u| caller.privilege == Privilege::Admin || u.name == caller.user)
                .map(|u| r::account_id(&config, &u.name))
                .collect();
            get(r::accounts(&ids))
        }
        (Route::Account(id), _) => {
            let caller = caller.expect("authenticated");
            let user = config.users.iter().find(|u| {
                r::account_id(&config, &u.name) == *id
                    && (caller.privilege == Privilege::Admin || u.name == caller.user)
            });
            match user {
                Some(u) => get(r::account(id, &u.name, u.max_privilege)),
                None => Err(Error::not_found("ManagerAccount", id)),
            }
        }
        (Route::Roles, _) => get(r::roles()),
        (Route::Role(id), _) => r::role(id)
            .map(|v| Answer::json(200, v))
            .ok_or_else(|| Error::not_found("Role", id)),
    }
}

/// The service's UUID: stable per BMC, distinct from the System's.
fn service_uuid(name: &str) -> String {
    system::uuid(crate::agent::name_guid(&format!("redfish service {name}")))
}

/// A strong ETag over the representation: it changes whenever anything in it does.
fn etag(doc: &Value) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(serde_json::to_vec(doc).unwrap_or_default());
    let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether an `If-Match` value names `current` (weak or strong, or `*`; RFC 9110 §13.1.1).
fn etag_matches(if_match: &str, current: &str) -> bool {
    if_match
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == current || t.strip_prefix("W/") == Some(current))
}

fn authenticate(service: &Service, headers: &HeaderMap) -> Result<Caller> {
    let config = service.config();
    let refused = || {
        service.metrics.auth_failures.fetch_add(1, Relaxed);
        Error::new(401, Msg::NoValidSession, &[])
    };
    if let Some(token) = headers.get("X-Auth-Token") {
        let token = token.to_str().map_err(|_| refused())?;
        return service
            .sessions()
            .caller(&config, token, std::time::Instant::now())
            .ok_or_else(refused);
    }
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let (name, password) = value
            .to_str()
            .ok()
            .and_then(auth::basic)
            .ok_or_else(refused)?;
        let privilege = auth::check_password(&config, &name, &password).ok_or_else(refused)?;
        return Ok(Caller {
            user: name,
            privilege,
            session: None,
        });
    }
    Err(refused())
}

/// Sessions the caller may see: all for an administrator, its own otherwise.
fn visible_sessions(service: &Service, caller: &Caller) -> Vec<(String, String)> {
    service
        .sessions()
        .list(std::time::Instant::now())
        .into_iter()
        .filter(|(_, u)| caller.privilege == Privilege::Admin || *u == caller.user)
        .collect()
}

async fn read_body(body: Incoming) -> Result<Option<Value>> {
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect())
        .await
        .map_err(|_| Error::new(400, Msg::MalformedJSON, &[]))?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(Error::new(413, Msg::PayloadTooLarge, &[]));
        }
        Err(_) => return Err(Error::new(400, Msg::MalformedJSON, &[])),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| Error::new(400, Msg::MalformedJSON, &[]))
}

fn object(body: Option<Value>) -> Result<Map<String, Value>> {
    match body {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(Error::new(400, Msg::MalformedJSON, &[])),
    }
}

fn login(service: &Service, body: Option<Value>) -> Result<Answer> {
    let body = object(body)?;
    let field = |k: &str| match body.get(k) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(Error::new(
            400,
            Msg::PropertyValueTypeError,
            &[&v.to_string(), k],
        )),
        None => Err(Error::new(400, Msg::PropertyMissing, &[k])),
    };
    let name = field("UserName")?;
    let password = field("Password")?;
    let config = service.config();
    // The same answer for an unknown name and a wrong password.
    let privilege = auth::check_password(&config, &name, &password);
    if privilege.and_then(auth::role).is_none() {
        service.metrics.auth_failures.fetch_add(1, Relaxed);
        return Err(Error::new(401, Msg::NoValidSession, &[]));
    }
    let login = service
        .sessions()
        .open(&config, &name, std::time::Instant::now())
        .ok_or_else(|| Error::new(401, Msg::NoValidSession, &[]))?;
    service.metrics.sessions_created.fetch_add(1, Relaxed);
    log::info!(
        "redfish: bmc={} session {} opened for {name}",
        service.name,
        login.id
    );
    let location = format!("{}/{}", r::SESSIONS, login.id);
    Ok(Answer::json(201, r::session(&login.id, &name))
        .header(header::LOCATION, location)
        .header(header::HeaderName::from_static("x-auth-token"), login.token))
}

fn need(caller: &Caller, p: Privilege) -> Result<()> {
    if caller.privilege >= p {
        Ok(())
    } else {
        Err(Error::new(403, Msg::InsufficientPrivilege, &[]))
    }
}

/// Runs `action` through the same path as an IPMI request: wait out a transition, one
/// deadline for all of it.
async fn run(
    service: &Service,
    action: crate::engine::Action,
    when: crate::engine::When,
) -> Result<()> {
    use crate::engine::ActionError;
    let deadline = Instant::now() + service.action_timeout;
    let result =
        crate::agent::action::run(&*service.backend, &service.name, action, when, deadline).await;
    match result {
        Ok(()) => {
            log::info!("redfish: bmc={} action={action} done", service.name);
            Ok(())
        }
        Err(e) => {
            log::info!("redfish: bmc={} action={action} refused: {e}", service.name);
            Err(match e {
                ActionError::Busy | ActionError::Timeout => Error::unavailable(RETRY_AFTER),
                ActionError::NotInState(_) => Error::new(409, Msg::ResourceInStandby, &[]),
                ActionError::Unsupported(what) => {
                    Error::new(400, Msg::ActionNotSupported, &[&what])
                }
                ActionError::Failed(_) => Error::new(500, Msg::GeneralError, &[]),
            })
        }
    }
}

async fn reset(service: &Service, caller: &Caller, body: Option<Value>) -> Result<Answer> {
    const ACTION: &str = "ComputerSystem.Reset";
    need(caller, Privilege::Operator)?;
    let body = object(body)?;
    if let Some(k) = body.keys().find(|k| *k != "ResetType") {
        return Err(Error::new(400, Msg::ActionParameterUnknown, &[ACTION, k]));
    }
    let reset_type = match body.get("ResetType") {
        None => {
            return Err(Error::new(
                400,
                Msg::ActionParameterMissing,
                &[ACTION, "ResetType"],
            ));
        }
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(Error::new(
                400,
                Msg::ActionParameterValueNotInList,
                &[&v.to_string(), "ResetType", ACTION],
            ));
        }
    };
    let not_in_list = || {
        Error::new(
            400,
            Msg::ActionParameterValueNotInList,
            &[&reset_type, "ResetType", ACTION],
        )
    };
    let power = service
        .backend
        .view(&service.name)
        .map(|v| v.power)
        .ok_or_else(|| Error::unavailable(RETRY_AFTER))?;
    match system::reset(&reset_type, power).ok_or_else(not_in_list)? {
        Reset::Done => {}
        Reset::Off => return Err(Error::new(409, Msg::ResourceInStandby, &[])),
        Reset::Run(action, when) => run(service, action, when).await?,
    }
    log::info!(
        "redfish: bmc={} reset {reset_type} by {}",
        service.name,
        caller.user
    );
    Ok(Answer::empty(204))
}

async fn patch_system(
    service: &Service,
    caller: &Caller,
    body: Option<Value>,
    if_match: Option<&str>,
) -> Result<Answer> {
    need(caller, Privilege::Operator)?;
    let body = object(body)?;
    let view = service.backend.view(&service.name);
    let efi = service.efi.load(Relaxed);
    let vmedia = has_media(service);
    // The System as it is before this PATCH: its ETag, and which properties exist.
    let before = system_doc(service, view.as_ref(), efi, vmedia);
    if let Some(m) = if_match
        && !etag_matches(m, &etag(&before))
    {
        return Err(Error::new(412, Msg::PreconditionFailed, &[]));
    }
    let mut patch = BootPatch::default();
    for (k, v) in &body {
        match (k.as_str(), v) {
            ("Boot", Value::Object(boot)) => {
                for (bk, bv) in boot {
                    let path = format!("Boot/{bk}");
                    let (slot, allowed): (&mut Option<&str>, &[&str]) = match bk.as_str() {
                        "BootSourceOverrideTarget" => (&mut patch.target, &system::TARGETS),
                        "BootSourceOverrideEnabled" => (&mut patch.enabled, &system::ENABLED),
                        "BootSourceOverrideMode" => (&mut patch.mode, &system::MODES),
                        _ => return Err(Error::new(400, Msg::PropertyUnknown, &[&path])),
                    };
                    let Value::String(s) = bv else {
                        return Err(Error::new(
                            400,
                            Msg::PropertyValueTypeError,
                            &[&bv.to_string(), &path],
                        ));
                    };
                    let Some(known) = allowed.iter().find(|a| *a == s) else {
                        return Err(Error::new(400, Msg::PropertyValueNotInList, &[s, &path]));
                    };
                    *slot = Some(known);
                }
            }
            ("Boot", v) => {
                return Err(Error::new(
                    400,
                    Msg::PropertyValueTypeError,
                    &[&v.to_string(), "Boot"],
                ));
            }
            (k, _) if before.get(k).is_some() => {
                return Err(Error::new(400, Msg::PropertyNotWritable, &[k]));
            }
            (k, _) => return Err(Error::new(400, Msg::PropertyUnknown, &[k])),
        }
    }
    let current = view.and_then(|v| v.boot);
    let (next, next_efi) = system::apply(current, efi, patch);
    if next != current {
        run(
            service,
            crate::engine::Action::SetBoot(next),
            crate::engine::When::Now,
        )
        .await?;
    }
    service.efi.store(next_efi, Relaxed);
    log::info!(
        "redfish: bmc={} boot {:?} by {}",
        service.name,
        system::boot(next, next_efi),
        caller.user
    );
    let view = service.backend.view(&service.name);
    let doc = system_doc(service, view.as_ref(), next_efi, vmedia);
    let etag = etag(&doc);
    Ok(Answer::json(200, doc).header(header::ETAG, etag))
}

/// The System for `view` and `efi`, with the machine's size and, when `vmedia`, the link to
/// its virtual CD.
fn system_doc(service: &Service, view: Option<&VmView>, efi: bool, vmedia: bool) -> Value {
    r::system(&service.name, view, efi, service.hardware(), vmedia)
}

/// Whether the backend has a virtual CD: the System and the Manager link to one only then.
fn has_media(service: &Service) -> bool {
    !matches!(
        service.backend.media(&service.name),
        Err(MediaError::Unsupported)
    )
}

/// The medium in the drive; a backend without virtual media serves no such resource.
fn medium(service: &Service, place: Place) -> Result<Option<Medium>> {
    service
        .backend
        .media(&service.name)
        .map_err(|e| media_error(e, &place.collection()))
}

fn media_error(e: MediaError, path: &str) -> Error {
    match e {
        MediaError::Unsupported => Error::not_found("VirtualMediaCollection", path),
        MediaError::NoMachine(_) => Error::unavailable(RETRY_AFTER),
        MediaError::BadImage(url) => Error::new(
            400,
            Msg::ActionParameterValueFormatError,
            &[&url, "Image", media::INSERT],
        ),
        MediaError::Failed(_) => Error::new(500, Msg::GeneralError, &[]),
    }
}

/// Asks the backend for `change`, within the action deadline.
async fn change_media(
    service: &Service,
    caller: &Caller,
    place: Place,
    change: Change,
) -> Result<()> {
    let path = place.collection();
    let work = match &change {
        Change::Nothing => return Ok(()),
        Change::Insert(image) => service.backend.insert_media(&service.name, image),
        Change::Eject => service.backend.eject_media(&service.name),
    };
    // The deadline bounds the answer, not the work: an insert half done (the image imported,
    // not yet attached) runs on to the end in its own task, and its outcome is counted.
    let op = change.op();
    let metrics = service.metrics.clone();
    let started = std::time::Instant::now();
    let task = tokio::spawn(async move {
        let result = work.await;
        metrics.media(op, result.is_ok(), started.elapsed());
        result
    });
    let result = match tokio::time::timeout(service.action_timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(MediaError::Failed(join.to_string())),
        Err(_) => {
            log::info!(
                "redfish: bmc={} media {change:?} outlasts the deadline; it goes on",
                service.name
            );
            return Err(Error::unavailable(RETRY_AFTER));
        }
    };
    match result {
        Ok(()) => {
            log::info!(
                "redfish: bmc={} media {change:?} by {}",
                service.name,
                caller.user
            );
            Ok(())
        }
        Err(e) => {
            log::info!(
                "redfish: bmc={} media {change:?} refused: {e}",
                service.name
            );
            Err(media_error(e, &path))
        }
    }
}

async fn patch_media(
    service: &Service,
    caller: &Caller,
    place: Place,
    body: Option<Value>,
    if_match: Option<&str>,
) -> Result<Answer> {
    let current = medium(service, place)?;
    need(caller, Privilege::Operator)?;
    if let Some(m) = if_match
        && !etag_matches(m, &etag(&media::cd(place, current.as_ref())))
    {
        return Err(Error::new(412, Msg::PreconditionFailed, &[]));
    }
    let change = media::patch(&object(body)?, current.as_ref())?;
    change_media(service, caller, place, change).await?;
    let doc = media::cd(place, medium(service, place)?.as_ref());
    let etag = etag(&doc);
    Ok(Answer::json(200, doc).header(header::ETAG, etag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_with_or_without_a_trailing_slash() {
        assert_eq!(Route::parse("/redfish/v1/"), Some(Route::Root));
        assert_eq!(Route::parse("/redfish/v1"), Some(Route::Root));
        assert_eq!(Route::parse("/redfish"), Some(Route::Versions));
        assert_eq!(Route::parse("/redfish/v1/Systems/1/"), Some(Route::System));
        assert_eq!(
            Route::parse("/redfish/v1/SessionService/Sessions/ab"),
            Some(Route::Session("ab".into()))
        );
        assert_eq!(Route::parse("/redfish/v1/Systems/2"), None);
        assert_eq!(
            Route::parse("/redfish/v1/Systems/1/VirtualMedia"),
            Some(Route::MediaCollection(Place::System))
        );
        assert_eq!(
            Route::parse("/redfish/v1/Managers/1/VirtualMedia/Cd/"),
            Some(Route::Media(Place::Manager))
        );
        assert_eq!(
            Route::parse("/redfish/v1/Systems/1/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia"),
            Some(Route::InsertMedia(Place::System))
        );
        assert_eq!(
            Route::parse("/redfish/v1/Managers/1/VirtualMedia/Floppy"),
            None
        );
        assert_eq!(Route::parse("/redfish/v1/Chassis/1/VirtualMedia"), None);
        assert_eq!(Route::parse("/redfishx"), None);
        assert_eq!(Route::parse("/"), None);
    }

    #[test]
    fn if_match_takes_weak_strong_and_star() {
        assert!(etag_matches("\"ab\"", "\"ab\""));
        assert!(etag_matches("W/\"ab\"", "\"ab\""));
        assert!(etag_matches("*", "\"ab\""));
        assert!(etag_matches("\"x\", \"ab\"", "\"ab\""));
        assert!(!etag_matches("\"ac\"", "\"ab\""));
    }
}
