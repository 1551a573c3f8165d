//! Request metrics: every answer, early refusals included, is counted and timed by verb and
//! resource. Until the path is parsed the verb is the lower-cased HTTP method and the
//! resource empty; from the [`RequestInfo`] on, they are the parsed ones.

use crate::apiserver::body::Body;
use crate::apiserver::metrics::Metrics;
use crate::apiserver::request::RequestInfo;
use http::{Method, Response};
use std::time::Instant;

/// The labels of one request, filled in as the chain learns them.
pub struct Labels {
    start: Instant,
    verb: String,
    resource: String,
}

impl Labels {
    /// Starts timing a request made with `method`.
    pub fn start(method: &Method) -> Labels {
        Labels {
            start: Instant::now(),
            verb: method.as_str().to_ascii_lowercase(),
            resource: String::new(),
        }
    }

    /// Labels by the parsed request from now on.
    pub fn parsed(&mut self, info: &RequestInfo) {
        self.verb = info.verb.clone();
        self.resource = info.resource.clone();
    }

    /// Records the answer.
    pub fn observe(&self, metrics: &Metrics, resp: &Response<Body>) {
        metrics.observe(&self.verb, &self.resource, resp.status().as_u16(), self.start.elapsed());
    }
}
