//! `/healthz`, `/livez` and `/readyz`, answered in kube-apiserver's plain-text style.

/// Whether `path` is a health endpoint (answered even before authentication can work).
pub fn is_health(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz")
}

/// One named readiness check and why it fails, if it does.
pub type Check<'a> = (&'a str, Option<String>);

/// Answers a health path: `(ok, body)`. Liveness only needs the process to run; readiness
/// also needs every check in `ready_checks` to pass (authentication configuration, namespace
/// cache, storage) and no shutdown under way. A failing `/readyz` lists each check as
/// kube-apiserver does; the reasons themselves are logged by the caller.
pub fn check(path: &str, ready_checks: &[Check<'_>], shutting_down: bool) -> (bool, String) {
    if path != "/readyz" {
        return (true, "ok".into());
    }
    let mut failed = false;
    let mut body = String::new();
    for (name, why) in ready_checks {
        match why {
            None => body.push_str(&format!("[+]{name} ok\n")),
            Some(_) => {
                // As kube-apiserver: the reason goes to the log, not to whoever asks (the
                // endpoint answers before authentication).
                failed = true;
                body.push_str(&format!("[-]{name} failed: reason withheld\n"));
            }
        }
    }
    if shutting_down {
        failed = true;
        body.push_str("[-]shutdown failed: reason withheld\n");
    }
    if !failed {
        return (true, "ok".into());
    }
    body.push_str("readyz check failed\n");
    (false, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_lists_failing_checks() {
        assert_eq!(
            check("/livez", &[("storage", Some("x".into()))], true),
            (true, "ok".into())
        );
        assert_eq!(check("/readyz", &[("storage", None)], false), (true, "ok".into()));
        let (ok, body) = check(
            "/readyz",
            &[("namespaces", None), ("storage", Some("disk full".into()))],
            false,
        );
        assert!(!ok);
        assert_eq!(
            body,
            "[+]namespaces ok\n[-]storage failed: reason withheld\nreadyz check failed\n"
        );
        let (ok, body) = check("/readyz", &[], true);
        assert!(!ok && body.contains("[-]shutdown failed"));
    }
}
