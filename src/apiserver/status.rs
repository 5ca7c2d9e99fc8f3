//! Errors as the API server answers them: a `Status` with the reason, code, details and
//! field causes of apimachinery's `pkg/api/errors`, worded so that kubectl prints exactly
//! what it prints against any cluster.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::resources::Resource;
use crate::api::error::{Classify, ErrorClass};
use crate::api::validation::{FieldError, Invalid};
use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn details(mut self, d: Value) -> ApiError {
        self.details = Some(d);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn not_found(r: &Resource, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", r.qualified()),
        )
        .details(json!({"name": name, "group": r.group, "kind": r.plural}))
    }

    pub fn already_exists(r: &Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", r.qualified()),
        )
        .details(json!({"name": name, "group": r.group, "kind": r.plural}))
    }

    pub fn conflict(r: &Resource, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                r.qualified()
            ),
        )
        .details(json!({"name": name, "group": r.group, "kind": r.plural}))
    }

    pub fn modified(r: &Resource, name: &str) -> ApiError {
        ApiError::conflict(
            r,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(r: &Resource, name: &str, causes: Vec<FieldError>) -> ApiError {
        ApiError::invalid_kind(r.group, r.kind, name, causes)
    }

    /// 422 Invalid for a kind that is not a stored resource (a TokenRequest).
    pub fn invalid_kind(group: &str, kind: &str, name: &str, causes: Vec<FieldError>) -> ApiError {
        let message = Invalid {
            kind: if group.is_empty() {
                kind.to_string()
            } else {
                format!("{kind}.{group}")
            },
            name: name.to_string(),
            causes: causes.clone(),
        }
        .to_string();
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| {
                let text = c.to_string();
                let msg = text
                    .strip_prefix(&format!("{}: ", c.field))
                    .unwrap_or(&text)
                    .to_string();
                json!({"reason": c.kind.reason(), "message": msg, "field": c.field})
            })
            .collect();
        ApiError::new(422, "Invalid", message).details(json!({
            "name": name, "group": group, "kind": kind, "causes": causes
        }))
    }

    pub fn method_not_allowed(verb: &str, r: &Resource) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({verb} {})",
                r.qualified()
            ),
        )
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    pub fn unsupported_media(ct: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ct:?})"),
        )
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    pub fn status_json(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e.class() {
            ErrorClass::Expired => ApiError::gone(format!("too old resource version: {e}")),
            ErrorClass::Transient => {
                ApiError::new(504, "Timeout", format!("storage is not ready: {e}"))
            }
            _ => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.status_json()).unwrap_or_default();
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}
