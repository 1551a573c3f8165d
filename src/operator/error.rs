//! The one error type of the operator.

/// Operator errors. Each maps to a bounded metrics category.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    /// Certificates could not be generated or read.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The object lacks a namespace or name.
    #[error("object is missing {0}")]
    MissingField(&'static str),
}

impl Error {
    /// Bounded label for the errors metric.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(_) => "kube_api",
            Error::Pki(_) => "certificate",
            Error::Finalizer(_) => "finalizer",
            Error::MissingField(_) => "invalid_object",
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
