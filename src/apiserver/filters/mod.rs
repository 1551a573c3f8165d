//! The request filter chain, in the spirit of kube-apiserver's `DefaultBuildHandlerChain`:
//! one file per step, composed here in `chain`, which reads top to bottom in the order the
//! steps run. Each step either hands the next what it needs or answers early (`Err`, a
//! complete response). The order is part of the contract: upgrades are refused before
//! anything else, oversize bodies before authentication, odd paths only after it, and the
//! in-flight permit is taken before a body is read.

pub mod audit_id;
pub mod authentication;
pub mod authorization;
pub mod body_limit;
pub mod inflight;
pub mod metrics;
pub mod requestinfo;
pub mod upgrade;

use crate::apiserver::body::Body;
use crate::apiserver::router::{App, ConnInfo, ResourceRequest};
use http::{Request, Response};

pub use crate::apiserver::body::Early;

/// Answers one request: `chain` inside the steps that see every answer, early ones too.
pub async fn serve(app: &App, req: Request<hyper::body::Incoming>, conn: &ConnInfo) -> Response<Body> {
    let mut labels = metrics::Labels::start(req.method());
    let audit_id = audit_id::of(req.headers());
    let resp = chain(app, req, conn, &mut labels).await.unwrap_or_else(|early| *early);
    let resp = audit_id::echo(audit_id, resp);
    labels.observe(&app.metrics, &resp);
    resp
}

/// The steps, in order. `labels` learns the verb and resource once the path is parsed.
async fn chain(
    app: &App,
    req: Request<hyper::body::Incoming>,
    conn: &ConnInfo,
    labels: &mut metrics::Labels,
) -> Result<Response<Body>, Early> {
    let (parts, body) = req.into_parts();
    upgrade::refuse(&parts)?;
    body_limit::refuse_declared(&parts)?;
    let user = authentication::authenticate(app, &parts, conn).await?;
    let info = requestinfo::resolve(&parts)?;
    labels.parsed(&info);
    authorization::authorize(&app.authz, &user, &info).await?;
    if !info.is_resource_request {
        return Ok(app.non_resource(&parts, &info));
    }
    let resource = app.lookup(&info)?;
    let mutating = inflight::is_mutating(&parts.method);
    // Held until the answer is built; taken before the body is read, so the cap also bounds
    // buffered request bodies.
    let _permit = inflight::limit(&app.inflight, &info, mutating)?;
    let body = body_limit::read(body, mutating, parts.version).await?;
    let query = parts.uri.query().unwrap_or_default().to_string();
    let req = ResourceRequest {
        info,
        user,
        resource,
        method: parts.method,
        headers: parts.headers,
        query,
        body,
        shutdown: app.shutdown.clone(),
    };
    Ok(app.resources.handle(req).await)
}
