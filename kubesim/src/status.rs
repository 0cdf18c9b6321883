//! `Status` error bodies exactly as the apiserver writes them
//! (k8s.io/apimachinery/pkg/api/errors/errors.go).

use serde_json::{Value, json};

use crate::kinds::KindInfo;

/// An API error: an HTTP code and the Status object that goes in the body.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub details: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

fn details(info: &KindInfo, name: &str, kind: &str) -> Value {
    let mut d = json!({ "name": name, "kind": kind });
    if !info.group.is_empty() {
        d["group"] = json!(info.group);
    }
    d
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    /// `NewNotFound`: `virtualmachines.kubevirt.io "vm1" not found`.
    pub fn not_found(info: &KindInfo, name: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound".into(),
            message: format!("{} \"{}\" not found", info.qualified(), name),
            details: Some(details(info, name, info.plural)),
        }
    }

    /// `NewAlreadyExists`.
    pub fn already_exists(info: &KindInfo, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists".into(),
            message: format!("{} \"{}\" already exists", info.qualified(), name),
            details: Some(details(info, name, info.plural)),
        }
    }

    /// `NewConflict` with `OptimisticLockErrorMsg`, or another reason text.
    pub fn conflict(info: &KindInfo, name: &str, why: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict".into(),
            message: format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                info.qualified(),
                name,
                why
            ),
            details: Some(details(info, name, info.plural)),
        }
    }

    pub fn stale(info: &KindInfo, name: &str) -> Self {
        Self::conflict(
            info,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// `NewInvalid` with one field cause.
    pub fn invalid(info: &KindInfo, name: &str, field: &str, cause: &str) -> Self {
        ApiError {
            code: 422,
            reason: "Invalid".into(),
            message: format!(
                "{} \"{}\" is invalid: {}: {}",
                info.qualified(),
                name,
                field,
                cause
            ),
            details: Some(json!({
                "name": name,
                "group": info.group,
                "kind": info.kind_name,
                "causes": [{ "reason": "FieldValueInvalid", "message": cause, "field": field }],
            })),
        }
    }

    /// What a failed JSON-Patch `test` (or a missing path) gives: the generic 422 of
    /// `NewGenericServerResponse(422, ...)` with empty details (handlers/patch.go).
    pub fn patch_test_failed() -> Self {
        ApiError {
            code: 422,
            reason: "Invalid".into(),
            message: "the server rejected our request due to an error in our request".into(),
            details: Some(json!({})),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        let m: String = message.into();
        ApiError {
            code: 500,
            reason: "InternalError".into(),
            message: format!("Internal error occurred: {m}"),
            details: Some(json!({ "causes": [{ "message": m }] })),
        }
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// The 404 for a path no resource answers.
    pub fn no_route() -> Self {
        ApiError {
            code: 404,
            reason: "NotFound".into(),
            message: "the server could not find the requested resource".into(),
            details: Some(json!({})),
        }
    }

    /// A fault-injected answer with this code: the reason and message the apiserver uses for it.
    pub fn injected(code: u16) -> Self {
        match code {
            404 => Self::no_route(),
            409 => Self::new(
                409,
                "Conflict",
                "Operation cannot be fulfilled: injected conflict",
            ),
            410 => Self::gone("injected: resource version expired"),
            422 => Self::patch_test_failed(),
            429 => Self::new(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
            ),
            500 => Self::internal("injected fault"),
            503 => Self::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => Self::new(
                504,
                "Timeout",
                "the server was unable to return a response in the time allotted",
            ),
            c => Self::new(c, "Unknown", format!("injected fault {c}")),
        }
    }
}
