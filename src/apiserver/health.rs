//! `/healthz`, `/livez` and `/readyz`, answered in kube-apiserver's plain-text style.

/// Answers a health path: `(ready, body)`. Liveness only needs the process to run; readiness
/// also needs the authentication configuration (and, later, storage).
pub fn check(path: &str, auth_loaded: bool, shutting_down: bool) -> (bool, String) {
    let ready_path = path == "/readyz";
    if ready_path && shutting_down {
        return (
            false,
            "[-]shutdown failed: reason withheld\nreadyz check failed\n".into(),
        );
    }
    if ready_path && !auth_loaded {
        return (
            false,
            "[-]authentication-config failed: extension-apiserver-authentication not loaded yet\nreadyz check failed\n"
                .into(),
        );
    }
    (true, "ok".into())
}
