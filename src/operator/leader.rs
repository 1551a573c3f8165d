//! Lease-based leader election (coordination.k8s.io/v1), so two operator replicas never
//! both write. Like client-go, expiry is judged by how long this replica has seen the Lease
//! unchanged on its own clock, not by comparing clocks with the holder.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Name of the Lease object.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_interval: Duration,
}

/// One participant of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    // The Lease as last seen (resourceVersion) and when it was first seen in that state.
    observed: Mutex<Option<(String, Instant)>>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// A participant using Leases in `api`'s namespace.
    pub fn new(api: Api<Lease>, cfg: LeaseConfig) -> Self {
        LeaderElector {
            api,
            cfg,
            observed: Mutex::new(None),
        }
    }

    fn now() -> MicroTime {
        MicroTime(jiff::Timestamp::now())
    }

    fn spec(&self, acquire: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs() as i32),
            acquire_time: Some(acquire),
            renew_time: Some(Self::now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: acquire a free or expired Lease, renew ours, or report that another holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(Self::now(), 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let new_spec = if holder == self.cfg.identity {
            LeaseSpec {
                renew_time: Some(Self::now()),
                ..spec
            }
        } else if holder.is_empty() || self.expired(&lease) {
            self.spec(Self::now(), spec.lease_transitions.unwrap_or(0) + 1)
        } else {
            return Ok(false);
        };
        lease.spec = Some(new_spec);
        // replace() carries the resourceVersion we read: a concurrent writer makes this a 409.
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn expired(&self, lease: &Lease) -> bool {
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let duration = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.cfg.lease_duration);
        let Ok(mut observed) = self.observed.lock() else {
            return false;
        };
        match observed.as_ref() {
            Some((seen_rv, since)) if *seen_rv == rv => since.elapsed() >= duration,
            _ => {
                *observed = Some((rv, Instant::now()));
                false
            }
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
                    return;
                }
                Ok(false) => tracing::debug!(lease = %self.cfg.name, "another replica leads"),
                Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
            }
            tokio::time::sleep(self.cfg.renew_interval).await;
        }
    }

    /// Renews until renewal fails for longer than the lease duration; then returns, and the
    /// caller must stop writing (another replica may take over).
    pub async fn hold(&self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.renew_interval).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.cfg.name, "lost the Lease to another replica");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the Lease"),
            }
            // Stop before the Lease can expire in others' eyes.
            if last_ok.elapsed() + self.cfg.renew_interval >= self.cfg.lease_duration {
                tracing::error!(lease = %self.cfg.name, "could not renew the Lease in time");
                return;
            }
        }
    }

    /// Gives the Lease up on shutdown, so a successor need not wait for expiry.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await {
            let spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() == Some(self.cfg.identity.as_str()) {
                lease.spec = Some(LeaseSpec {
                    holder_identity: None,
                    ..spec
                });
                if let Err(e) = self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
                    tracing::warn!(error = %e, "cannot release the Lease");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fake_api::FakeApi;

    fn elector(api: &FakeApi, id: &str) -> LeaderElector {
        LeaderElector::new(
            Api::namespaced(api.client(), "eao-system"),
            LeaseConfig {
                name: "eao".into(),
                identity: id.into(),
                lease_duration: Duration::from_secs(15),
                renew_interval: Duration::from_secs(5),
            },
        )
    }

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/eao-system/leases/eao";

    fn holder(api: &FakeApi) -> Option<String> {
        api.get(LEASE)?["spec"]["holderIdentity"].as_str().map(str::to_string)
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_leads_until_the_lease_expires() {
        let api = FakeApi::default();
        let (a, b) = (elector(&api, "a"), elector(&api, "b"));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        assert_eq!(holder(&api).as_deref(), Some("a"));
        // a keeps renewing: b never sees the Lease unchanged for a whole duration.
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert!(a.try_acquire_or_renew().await.unwrap());
            assert!(!b.try_acquire_or_renew().await.unwrap());
        }
        // a stops renewing; after a full lease duration b takes over.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!b.try_acquire_or_renew().await.unwrap(), "not expired yet");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(b.try_acquire_or_renew().await.unwrap());
        assert_eq!(holder(&api).as_deref(), Some("b"));
        assert_eq!(api.get(LEASE).unwrap()["spec"]["leaseTransitions"], 1);
        assert!(
            !a.try_acquire_or_renew().await.unwrap(),
            "the old leader must not write"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn release_hands_over_at_once() {
        let api = FakeApi::default();
        let (a, b) = (elector(&api, "a"), elector(&api, "b"));
        assert!(a.try_acquire_or_renew().await.unwrap());
        a.release().await;
        assert_eq!(holder(&api), None);
        assert!(b.try_acquire_or_renew().await.unwrap());
    }
}
