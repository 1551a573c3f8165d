//! Authorization: a SubjectAccessReview to kube-apiserver (cached 10 s, allow and deny alike),
//! or in standalone mode allow-all or a small static policy.
//!
//! As in k8s.io/apiserver's delegating authorizer, `/healthz`, `/livez` and `/readyz` are always
//! allowed and members of `system:masters` skip the review.

use super::cache::TtlCache;
use crate::apiserver::authn::UserInfo;
use crate::apiserver::fieldselector;
use crate::apiserver::labels::{self, Req};
use crate::apiserver::request::RequestInfo;
use k8s_openapi::api::authorization::v1::{FieldSelectorAttributes, LabelSelectorAttributes};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldSelectorRequirement, LabelSelectorRequirement};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

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
    /// Everything allowed, even anonymous requests (standalone with no authenticator at all).
    AllowAll,
    /// Every authenticated user may do everything; anonymous requests are denied (standalone
    /// default when a token file or client CA is configured).
    AllowAuthenticated,
    /// A static policy (standalone).
    Policy(Vec<PolicyRule>),
    /// SubjectAccessReview with a cache.
    Delegated(SarAuthorizer),
}

/// SubjectAccessReview client with a TTL cache keyed by the full review spec.
pub struct SarAuthorizer {
    client: kube::Client,
    cache: TtlCache<String, Decision>,
}

impl SarAuthorizer {
    /// A SAR authorizer using `client`, caching both allow and deny for `ttl`.
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        SarAuthorizer {
            client,
            cache: TtlCache::new(ttl),
        }
    }

    async fn review(&self, spec: SubjectAccessReviewSpec) -> Result<Decision, AuthzError> {
        let key = serde_json::to_string(&spec).unwrap_or_default();
        self.cache
            .get_or_fetch(key, || async {
                let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
                let sar = SubjectAccessReview {
                    spec,
                    ..Default::default()
                };
                let answer = api.create(&kube::api::PostParams::default(), &sar).await?;
                let status = answer.status.unwrap_or_default();
                Ok(Decision {
                    allowed: status.allowed && status.denied != Some(true),
                    reason: status.reason.unwrap_or_default(),
                })
            })
            .await
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
            field_selector: field_selector_attributes(&info.field_selector),
            label_selector: label_selector_attributes(&info.label_selector),
        });
    } else {
        spec.non_resource_attributes = Some(NonResourceAttributes {
            path: Some(info.path.clone()),
            verb: Some(info.verb.clone()),
        });
    }
    spec
}

/// A list's field selector as kube's webhook authorizer sends it: the parsed requirements
/// (`=`/`==` as `In`, `!=` as `NotIn`), none when it does not parse (selectors only narrow a
/// request, so leaving them out asks for the broader permission).
fn field_selector_attributes(selector: &str) -> Option<FieldSelectorAttributes> {
    let reqs = fieldselector::parse(selector).ok()?;
    let requirements: Vec<FieldSelectorRequirement> = reqs
        .into_iter()
        .map(|r| FieldSelectorRequirement {
            key: r.field,
            operator: if r.equals { "In" } else { "NotIn" }.into(),
            values: Some(vec![r.value]),
        })
        .collect();
    (!requirements.is_empty()).then_some(FieldSelectorAttributes {
        raw_selector: None,
        requirements: Some(requirements),
    })
}

/// A list's label selector as kube's webhook authorizer sends it: requirements sorted by key,
/// `=`/`==`/`in` as `In`, `!=`/`notin` as `NotIn`, existence as `Exists`/`DoesNotExist`;
/// `>` and `<` are left out (they only narrow), and nothing when it does not parse.
fn label_selector_attributes(selector: &str) -> Option<LabelSelectorAttributes> {
    let mut reqs = labels::parse(selector).ok()?;
    reqs.sort_by(|a, b| label_key(a).cmp(label_key(b)));
    let requirement = |key: &str, op: &str, values: Vec<String>| LabelSelectorRequirement {
        key: key.to_string(),
        operator: op.to_string(),
        values: (!values.is_empty()).then_some(values),
    };
    let requirements: Vec<LabelSelectorRequirement> = reqs
        .iter()
        .filter_map(|r| match r {
            Req::Eq(k, v) => Some(requirement(k, "In", vec![v.clone()])),
            Req::Ne(k, v) => Some(requirement(k, "NotIn", vec![v.clone()])),
            Req::In(k, vs) => Some(requirement(k, "In", vs.clone())),
            Req::NotIn(k, vs) => Some(requirement(k, "NotIn", vs.clone())),
            Req::Exists(k) => Some(requirement(k, "Exists", Vec::new())),
            Req::NotExists(k) => Some(requirement(k, "DoesNotExist", Vec::new())),
            Req::Gt(..) | Req::Lt(..) => None,
        })
        .collect();
    (!requirements.is_empty()).then_some(LabelSelectorAttributes {
        raw_selector: None,
        requirements: Some(requirements),
    })
}

fn label_key(r: &Req) -> &str {
    match r {
        Req::Eq(k, _) | Req::Ne(k, _) | Req::In(k, _) | Req::NotIn(k, _) => k,
        Req::Exists(k) | Req::NotExists(k) | Req::Gt(k, _) | Req::Lt(k, _) => k,
    }
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
            Authorizer::AllowAuthenticated => Ok(Decision {
                allowed: user.name != crate::apiserver::authn::ANONYMOUS,
                reason: String::new(),
            }),
            Authorizer::Policy(rules) => Ok(Decision {
                allowed: rules.iter().any(|r| r.matches(user, info)),
                reason: String::new(),
            }),
            Authorizer::Delegated(sar) => sar.review(sar_spec(user, info)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn static_policy_and_always_allowed() {
        let rules: Vec<PolicyRule> = serde_yaml::from_str(
            "- group: devs\n  verbs: [get, list]\n  resources: [flunders]\n  namespaces: [team-a]\n- user: ops\n  verbs: [\"*\"]\n  resources: [\"flunders/status\"]\n  nonResourcePaths: [\"/openapi/*\"]\n",
        )
        .expect("policy");
        let authz = Authorizer::Policy(rules);
        let list_a = RequestInfo::parse("GET", "/apis/g/v1/namespaces/team-a/flunders", "").expect("path");
        let list_b = RequestInfo::parse("GET", "/apis/g/v1/namespaces/team-b/flunders", "").expect("path");
        let status = RequestInfo::parse("PUT", "/apis/g/v1/namespaces/x/flunders/f/status", "").expect("path");
        let openapi = RequestInfo::parse("GET", "/openapi/v3", "").expect("path");
        let health = RequestInfo::parse("GET", "/readyz", "").expect("path");
        let allowed = |u: UserInfo, i: RequestInfo| {
            let authz = &authz;
            async move { authz.authorize(&u, &i).await.expect("decision").allowed }
        };
        assert!(allowed(user("a", &["devs"]), list_a.clone()).await);
        assert!(!allowed(user("a", &["devs"]), list_b).await);
        assert!(!allowed(user("a", &[]), list_a.clone()).await);
        assert!(allowed(user("ops", &[]), status.clone()).await);
        assert!(!allowed(user("a", &["devs"]), status).await);
        assert!(allowed(user("ops", &[]), openapi.clone()).await);
        assert!(!allowed(user("a", &["devs"]), openapi).await);
        assert!(allowed(UserInfo::anonymous(), health).await, "health is always allowed");
        assert!(allowed(user("root", &["system:masters"]), list_a.clone()).await);
        let anon_ok = Authorizer::AllowAuthenticated
            .authorize(&UserInfo::anonymous(), &list_a)
            .await;
        assert!(!anon_ok.expect("decision").allowed);
    }

    #[test]
    fn sar_spec_carries_selectors_as_requirements() {
        let q = "labelSelector=tier%21%3Dweb%2Capp+in+%28b%2Ca%29%2C%21gone%2Cn%3E3&fieldSelector=metadata.namespace%3Dns1%2Cmetadata.name%3Dx";
        let info = RequestInfo::parse("GET", "/apis/g/v1/fischers", q).expect("path");
        let spec = serde_json::to_value(sar_spec(&user("u", &[]), &info)).expect("json");
        assert_eq!(spec["resourceAttributes"]["name"], "x");
        assert_eq!(
            spec["resourceAttributes"]["fieldSelector"],
            serde_json::json!({"requirements": [
                {"key": "metadata.name", "operator": "In", "values": ["x"]},
                {"key": "metadata.namespace", "operator": "In", "values": ["ns1"]}]})
        );
        assert_eq!(
            spec["resourceAttributes"]["labelSelector"],
            serde_json::json!({"requirements": [
                {"key": "app", "operator": "In", "values": ["a", "b"]},
                {"key": "gone", "operator": "DoesNotExist"},
                {"key": "tier", "operator": "NotIn", "values": ["web"]}]})
        );
        let bad = RequestInfo::parse("GET", "/apis/g/v1/fischers", "labelSelector=a+in&fieldSelector=x").expect("path");
        let spec = serde_json::to_value(sar_spec(&user("u", &[]), &bad)).expect("json");
        assert!(spec["resourceAttributes"].get("labelSelector").is_none());
        assert!(spec["resourceAttributes"].get("fieldSelector").is_none());
    }

    #[test]
    fn sar_spec_omits_empty_attributes() {
        let info = RequestInfo::parse("GET", "/apis/g/v1/fischers", "").expect("path");
        let spec = serde_json::to_value(sar_spec(&user("u", &["g1"]), &info)).expect("json");
        assert_eq!(
            spec,
            serde_json::json!({"user": "u", "groups": ["g1"], "resourceAttributes": {"verb": "list", "group": "g", "version": "v1", "resource": "fischers"}})
        );
    }
}
