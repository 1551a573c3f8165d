//! kube-apiserver's `--max-requests-inflight` / `--max-mutating-requests-inflight`: a cap on
//! concurrently served requests, so a burst (or 1000 HTTP/2 streams per connection, each with
//! a body of up to 3 MiB) cannot exhaust memory. Over the cap a request is answered 429 with
//! `Retry-After`, which every client-go client retries. Watches are long-running and do not
//! count, as in kube-apiserver.

//!
//! The pools live here, in the server's state; the step that takes a permit is
//! [`super::filters::inflight`].

use crate::apiserver::apierrors::Status;
use crate::apiserver::body::{Body, Early};
use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Map};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The two pools.
pub struct InFlight {
    readonly: Option<Arc<Semaphore>>,
    mutating: Option<Arc<Semaphore>>,
}

fn pool(max: usize) -> Option<Arc<Semaphore>> {
    // 0 means no limit, as for kube-apiserver's flags.
    (max > 0).then(|| Arc::new(Semaphore::new(max)))
}

impl InFlight {
    /// Limits of `max_readonly` and `max_mutating` concurrent requests (0: unlimited).
    pub fn new(max_readonly: usize, max_mutating: usize) -> InFlight {
        InFlight {
            readonly: pool(max_readonly),
            mutating: pool(max_mutating),
        }
    }

    /// A permit to serve one request, held until it is answered; a 429 when the pool is full.
    pub fn admit(&self, mutating: bool) -> Result<Option<OwnedSemaphorePermit>, Early> {
        let pool = if mutating { &self.mutating } else { &self.readonly };
        match pool {
            None => Ok(None),
            Some(p) => p
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| Box::new(too_many_requests())),
        }
    }
}

/// kube-apiserver's answer when a pool is exhausted.
fn too_many_requests() -> Response<Body> {
    let mut details = Map::new();
    details.insert("retryAfterSeconds".into(), json!(1));
    let s = Status {
        code: StatusCode::TOO_MANY_REQUESTS,
        reason: "TooManyRequests",
        message: "Too many requests, please try again later.".into(),
        details: Some(details),
    };
    let mut r = s.into_response();
    r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_separate_and_release_on_drop() {
        let f = InFlight::new(1, 1);
        let read = f.admit(false).expect("first read");
        let refused = f.admit(false).expect_err("second read refused");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()["retry-after"], "1");
        let write = f.admit(true).expect("writes have their own pool");
        drop(read);
        assert!(f.admit(false).is_ok(), "released when answered");
        drop(write);
        let unlimited = InFlight::new(0, 0);
        let held: Vec<_> = (0..10_000).map(|_| unlimited.admit(true)).collect();
        assert!(held.iter().all(Result::is_ok));
    }
}
