//! Certificate settings with defaults applied: what validation produces and the certificate
//! planning (certs.rs, rotation.rs) consumes. A module of its own so that planning does not
//! depend on validation, which depends on the builders.

use crate::crd::KeyAlgorithm;
use crate::pki::{DEFAULT_CA_VALIDITY, DEFAULT_SERVING_VALIDITY};
use std::time::Duration;

/// Default minimum time both CAs stay published after the new CA signs the leaf (see
/// [`super::rotation`]); a default of the settings, so it lives with them.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(600);

/// Certificate settings with defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertSettings {
    /// Key algorithm of new keys.
    pub key_algorithm: KeyAlgorithm,
    /// Lifetime of a new serving certificate.
    pub serving_validity: Duration,
    /// Renew the serving certificate this long before expiry (default: a third of its lifetime).
    pub serving_renew_before: Option<Duration>,
    /// Lifetime of a new CA.
    pub ca_validity: Duration,
    /// Rotate the CA this long before expiry (default: a third of its lifetime).
    pub ca_renew_before: Option<Duration>,
    /// Minimum time both CAs stay published once the new one signs.
    pub ca_overlap: Duration,
}

impl Default for CertSettings {
    /// The defaults: ECDSA P-256, a 90-day serving certificate and a 5-year CA, each renewed
    /// when a third of its lifetime remains, and a 10-minute CA overlap.
    fn default() -> Self {
        CertSettings {
            key_algorithm: KeyAlgorithm::default(),
            serving_validity: DEFAULT_SERVING_VALIDITY,
            serving_renew_before: None,
            ca_validity: DEFAULT_CA_VALIDITY,
            ca_renew_before: None,
            ca_overlap: DEFAULT_OVERLAP,
        }
    }
}
