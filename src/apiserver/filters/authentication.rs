//! Authentication: who is asking, from the client certificate (front proxy or client CA) or
//! a bearer token, with the configuration kube-apiserver publishes in
//! `extension-apiserver-authentication`. Until that configuration is loaded nobody can be
//! authenticated: the health endpoints are still answered (probes must see the server start)
//! and everything else is 503, never served unauthenticated.

use super::Early;
use crate::apiserver::apierrors::Status;
use crate::apiserver::authn::{self as auth, UserInfo};
use crate::apiserver::health::is_health;
use crate::apiserver::router::{App, ConnInfo};
use http::request::Parts;

/// The filter: the authenticated user; 401 for credentials that do not authenticate.
pub async fn authenticate(app: &App, parts: &Parts, conn: &ConnInfo) -> Result<UserInfo, Early> {
    let Some(auth_cfg) = app.auth.get() else {
        let path = parts.uri.path();
        if is_health(path) {
            return Err(Box::new(app.health(path)));
        }
        let s = Status::unavailable("the server is starting: authentication configuration not loaded yet");
        return Err(Box::new(s.into_response()));
    };
    auth::authenticate(&auth_cfg, &app.tokens, conn.peer.as_ref(), &parts.headers)
        .await
        .map_err(|e| {
            tracing::info!(error = %e, remote = ?conn.remote, "authentication failed");
            Box::new(Status::unauthorized().into_response())
        })
}
