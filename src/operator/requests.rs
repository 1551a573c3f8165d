//! Counting the operator's API requests by verb. Each reconcile gets its own client that counts
//! into a fresh [`RequestCounts`] (kube's client hands requests to a worker task, so a
//! task-local counter would not see them); the counts go into the
//! `eao_reconcile_api_requests{verb}` histogram when the reconcile ends.

use http::{Method, Request};
use kube::client::Body;
use kube::Client;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Verbs as Kubernetes names them (`get` covers list: the path alone does not tell them apart
/// for every kind).
pub const VERBS: [&str; 6] = ["get", "watch", "create", "update", "patch", "delete"];

/// Requests per verb, in the order of [`VERBS`].
#[derive(Clone, Debug, Default)]
pub struct RequestCounts(Arc<[AtomicU64; 6]>);

impl RequestCounts {
    fn add(&self, verb: &str) {
        if let Some(i) = VERBS.iter().position(|v| *v == verb) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(verb, count)` for every verb.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        VERBS
            .iter()
            .zip(self.0.iter())
            .map(|(v, c)| (*v, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Requests that change something (create, update, patch, delete).
    pub fn writes(&self) -> u64 {
        self.snapshot()
            .iter()
            .filter(|(v, _)| !matches!(*v, "get" | "watch"))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The Kubernetes verb of a request.
pub fn verb<B>(req: &Request<B>) -> &'static str {
    match *req.method() {
        Method::GET
            if req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "watch=true")) =>
        {
            "watch"
        }
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    }
}

/// A client sending through `base` that counts every request into `counts`.
pub fn counting_client(base: Client, counts: RequestCounts) -> Client {
    let ns = base.default_namespace().to_string();
    let svc = tower::service_fn(move |req: Request<Body>| {
        counts.add(verb(&req));
        let base = base.clone();
        async move { base.send(req).await }
    });
    Client::new(svc, ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_follow_kubernetes() {
        let req = |m: Method, uri: &str| Request::builder().method(m).uri(uri).body(()).unwrap();
        assert_eq!(
            verb(&req(Method::GET, "/api/v1/secrets?watch=true&resourceVersion=1")),
            "watch"
        );
        assert_eq!(verb(&req(Method::GET, "/api/v1/secrets")), "get");
        assert_eq!(verb(&req(Method::PATCH, "/api/v1/namespaces/a/secrets/b")), "patch");
        let c = RequestCounts::default();
        c.add("patch");
        c.add("get");
        c.add("delete");
        assert_eq!(c.writes(), 2);
    }
}
