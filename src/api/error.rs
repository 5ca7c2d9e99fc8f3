//! What an error means to a client, whatever layer it comes from: its class. The API server
//! turns a class into a `Status` (reason and HTTP code, with field causes for `Invalid`);
//! module errors implement [`Classify`] so that the mapping is decided where the error is
//! made, once.

use super::validation::{FieldError, Invalid};

/// The kinds of failure a client can act on differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// What was named does not exist.
    NotFound,
    /// It exists already (a create of a taken name).
    AlreadyExists,
    /// It changed under the request (a stale resourceVersion, a lock held).
    Conflict,
    /// The revision asked for is too old: it was compacted (a watch must relist).
    Expired,
    /// The request itself is wrong; its field causes say where.
    Invalid,
    /// Try again: the node or a dependency is busy, out of something, or unreachable.
    Transient,
    /// A fault of knode or of the machine it runs on.
    Internal,
}

impl ErrorClass {
    /// The `Status.reason` the API server gives it.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorClass::NotFound => "NotFound",
            ErrorClass::AlreadyExists => "AlreadyExists",
            ErrorClass::Conflict => "Conflict",
            ErrorClass::Expired => "Expired",
            ErrorClass::Invalid => "Invalid",
            ErrorClass::Transient => "ServiceUnavailable",
            ErrorClass::Internal => "InternalError",
        }
    }

    /// The HTTP status code that goes with it.
    pub fn code(self) -> u16 {
        match self {
            ErrorClass::NotFound => 404,
            ErrorClass::AlreadyExists | ErrorClass::Conflict => 409,
            ErrorClass::Expired => 410,
            ErrorClass::Invalid => 422,
            ErrorClass::Transient => 503,
            ErrorClass::Internal => 500,
        }
    }

    /// The class of an I/O error: missing is NotFound, out of resources or interrupted is
    /// Transient, the rest Internal.
    pub fn of_io(e: &std::io::Error) -> ErrorClass {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => ErrorClass::NotFound,
            K::AlreadyExists => ErrorClass::AlreadyExists,
            K::WouldBlock | K::Interrupted | K::TimedOut | K::OutOfMemory => ErrorClass::Transient,
            // EMFILE, ENFILE, EAGAIN: out of descriptors or processes for now.
            _ if matches!(e.raw_os_error(), Some(24 | 23 | 11)) => ErrorClass::Transient,
            _ => ErrorClass::Internal,
        }
    }
}

/// An error that knows its class (and, when Invalid, its field causes).
pub trait Classify: std::error::Error {
    fn class(&self) -> ErrorClass;

    /// The field errors of an Invalid error.
    fn causes(&self) -> &[FieldError] {
        &[]
    }
}

impl Classify for Invalid {
    fn class(&self) -> ErrorClass {
        ErrorClass::Invalid
    }

    fn causes(&self) -> &[FieldError] {
        &self.causes
    }
}

impl Classify for super::quantity::QuantityError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_to_the_api_servers_status() {
        let e = Invalid {
            kind: "Pod".into(),
            name: "x".into(),
            causes: vec![crate::api::validation::required("spec.containers", "")],
        };
        assert_eq!((e.class().reason(), e.class().code()), ("Invalid", 422));
        assert_eq!(e.causes().len(), 1);
        assert_eq!(ErrorClass::NotFound.code(), 404);
        assert_eq!(ErrorClass::Conflict.reason(), "Conflict");
        let emfile = std::io::Error::from_raw_os_error(24);
        assert_eq!(ErrorClass::of_io(&emfile), ErrorClass::Transient);
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(ErrorClass::of_io(&gone), ErrorClass::NotFound);
        let perm = std::io::Error::from_raw_os_error(13);
        assert_eq!(ErrorClass::of_io(&perm), ErrorClass::Internal);
    }
}
