//! Authorization: a SubjectAccessReview to kube-apiserver (cached 10 s, allow and deny alike),
//! or in standalone mode allow-all or a small static policy.
//!
//! As in k8s.io/apiserver's delegating authorizer, `/healthz`, `/livez` and `/readyz` are always
//! allowed and members of `system:masters` skip the review.

use super::auth::UserInfo;
use super::requestinfo::RequestInfo;
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Paths every user may read.
pub const ALWAYS_ALLOW_PATHS: [&str; 3] = ["/healthz", "/livez", "/readyz"];
/// Group whose members are always allowed.
pub const PRIVILEGED_GROUP: &str = "system:masters";

/// Errors of authorization.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// The SubjectAccessReview call failed.
    #[error("subject access review failed: {0}")]
    Review(#[from] kube::Error),
    /// The policy file is unusable.
    #[error("policy file {0}: {1}")]
    Policy(String, String),
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// The authorizer's reason, appended to the 403 message.
    pub reason: String,
}

/// One rule of a standalone policy file. Empty lists and missing fields match nothing,
/// `"*"` matches anything.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// User name this rule applies to.
    #[serde(default)]
    pub user: Option<String>,
    /// Group this rule applies to.
    #[serde(default)]
    pub group: Option<String>,
    /// Verbs.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// Resources (`flunders`, `flunders/status`).
    #[serde(default)]
    pub resources: Vec<String>,
    /// Namespaces; empty means all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Non-resource paths; a trailing `*` matches a prefix.
    #[serde(default)]
    pub non_resource_paths: Vec<String>,
}

fn any(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == "*" || x == v)
}

impl PolicyRule {
    fn matches(&self, user: &UserInfo, info: &RequestInfo) -> bool {
        let who = match (&self.user, &self.group) {
            (None, None) => false,
            (u, g) => {
                u.as_ref().is_none_or(|u| u == "*" || *u == user.name)
                    && g.as_ref().is_none_or(|g| g == "*" || user.groups.contains(g))
            }
        };
        if !who || !any(&self.verbs, &info.verb) {
            return false;
        }
        if info.is_resource_request {
            let full = if info.subresource.is_empty() {
                info.resource.clone()
            } else {
                format!("{}/{}", info.resource, info.subresource)
            };
            any(&self.resources, &full) && (self.namespaces.is_empty() || any(&self.namespaces, &info.namespace))
        } else {
            self.non_resource_paths.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => info.path.starts_with(prefix),
                None => *p == info.path,
            })
        }
    }
}

/// Where decisions come from.
pub enum Authorizer {
    /// Everything allowed (standalone default).
    AllowAll,
    /// A static policy (standalone).
    Policy(Vec<PolicyRule>),
    /// SubjectAccessReview with a cache.
    Delegated(SarAuthorizer),
}

/// SubjectAccessReview client with a TTL cache keyed by the full review spec.
pub struct SarAuthorizer {
    client: kube::Client,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Decision)>>,
}

impl SarAuthorizer {
    /// A SAR authorizer using `client`, caching both allow and deny for `ttl`.
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        SarAuthorizer {
            client,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn review(&self, spec: SubjectAccessReviewSpec) -> Result<Decision, AuthzError> {
        let key = serde_json::to_string(&spec).unwrap_or_default();
        if let Some((at, d)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if at.elapsed() < self.ttl {
                return Ok(d.clone());
            }
        }
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let sar = SubjectAccessReview {
            spec,
            ..Default::default()
        };
        let answer = api.create(&kube::api::PostParams::default(), &sar).await?;
        let status = answer.status.unwrap_or_default();
        let decision = Decision {
            allowed: status.allowed && status.denied != Some(true),
            reason: status.reason.unwrap_or_default(),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        cache.insert(key, (Instant::now(), decision.clone()));
        Ok(decision)
    }
}

/// The SubjectAccessReview spec k8s.io/apiserver's webhook authorizer sends for a request.
pub fn sar_spec(user: &UserInfo, info: &RequestInfo) -> SubjectAccessReviewSpec {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let mut spec = SubjectAccessReviewSpec {
        user: Some(user.name.clone()),
        uid: opt(&user.uid),
        groups: (!user.groups.is_empty()).then(|| user.groups.clone()),
        extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
        ..Default::default()
    };
    if info.is_resource_request {
        spec.resource_attributes = Some(ResourceAttributes {
            namespace: opt(&info.namespace),
            verb: opt(&info.verb),
            group: Some(info.api_group.clone()),
            version: opt(&info.api_version),
            resource: opt(&info.resource),
            subresource: opt(&info.subresource),
            name: opt(&info.name),
            ..Default::default()
        });
    } else {
        spec.non_resource_attributes = Some(NonResourceAttributes {
            path: Some(info.path.clone()),
            verb: Some(info.verb.clone()),
        });
    }
    spec
}

impl Authorizer {
    /// Reads a standalone policy file (a YAML list of [`PolicyRule`]).
    pub fn from_policy_file(path: &Path) -> Result<Self, AuthzError> {
        let err = |m: String| AuthzError::Policy(path.display().to_string(), m);
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let rules: Vec<PolicyRule> = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        Ok(Authorizer::Policy(rules))
    }

    /// Decides whether `user` may do `info`.
    pub async fn authorize(&self, user: &UserInfo, info: &RequestInfo) -> Result<Decision, AuthzError> {
        let allow = Decision {
            allowed: true,
            reason: String::new(),
        };
        if !info.is_resource_request && ALWAYS_ALLOW_PATHS.contains(&info.path.as_str()) {
            return Ok(allow);
        }
        if user.groups.iter().any(|g| g == PRIVILEGED_GROUP) {
            return Ok(allow);
        }
        match self {
            Authorizer::AllowAll => Ok(allow),
            Authorizer::Policy(rules) => Ok(Decision {
                allowed: rules.iter().any(|r| r.matches(user, info)),
                reason: String::new(),
            }),
            Authorizer::Delegated(sar) => sar.review(sar_spec(user, info)).await,
        }
    }
}
