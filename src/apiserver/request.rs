//! Request attributes as k8s.io/apiserver's `RequestInfoFactory` builds them: the verb
//! (list/watch/get/create/update/patch/delete/deletecollection), API group and version,
//! namespace, resource, subresource and name. Authorization, metrics and routing all read
//! this one parse, so they can never disagree about what a path means.

use super::fieldselector;
use percent_encoding::percent_decode_str;

/// Why a path is refused before anything else looks at it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// Dot segments, empty segments, encoded slashes or invalid UTF-8: we never normalise
    /// (normalising is what leads to redirects and to authorizing one path but serving another).
    #[error("invalid path segment {0:?}")]
    BadSegment(String),
}

/// The attributes of one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// Whether this addresses a resource (`/apis/<g>/<v>/<resource>...`).
    pub is_resource_request: bool,
    /// The decoded path.
    pub path: String,
    /// k8s verb: for resources list/watch/get/create/update/patch/delete/deletecollection,
    /// otherwise the lower-cased HTTP method.
    pub verb: String,
    /// `apis` or `api`, empty for other paths.
    pub api_prefix: String,
    /// API group.
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Namespace, empty for cluster scope.
    pub namespace: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource, e.g. `status`.
    pub subresource: String,
    /// Object name.
    pub name: String,
    /// The path segments after group/version (and namespace), decoded.
    pub parts: Vec<String>,
    /// The first `fieldSelector` and `labelSelector` of a list, watch or deletecollection (not
    /// of a legacy `/watch/` path), which kube's authorizer passes on to SubjectAccessReviews.
    pub field_selector: String,
    pub label_selector: String,
}

/// Splits and percent-decodes a path. A single trailing slash is ignored, as k8s'
/// `splitPath` does; anything else unusual is refused.
pub fn split_path(raw: &str) -> Result<Vec<String>, PathError> {
    let trimmed = raw.strip_prefix('/').ok_or_else(|| PathError::BadSegment(raw.into()))?;
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    trimmed
        .split('/')
        .map(|seg| {
            let decoded = percent_decode_str(seg)
                .decode_utf8()
                .map_err(|_| PathError::BadSegment(seg.into()))?;
            if decoded.is_empty()
                || decoded == "."
                || decoded == ".."
                || decoded.contains(['/', '\\', '\0'])
                || decoded.chars().any(char::is_control)
            {
                return Err(PathError::BadSegment(seg.into()));
            }
            Ok(decoded.into_owned())
        })
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` query pairs.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (dec(k), dec(v))
    })
}

const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

impl RequestInfo {
    /// Builds the attributes of `method path?query`, following `RequestInfoFactory.NewRequestInfo`.
    pub fn parse(method: &str, raw_path: &str, query: &str) -> Result<RequestInfo, PathError> {
        let segments = split_path(raw_path)?;
        let mut path = format!("/{}", segments.join("/"));
        if raw_path.len() > 1 && raw_path.ends_with('/') {
            path.push('/');
        }
        let mut info = RequestInfo {
            path,
            verb: method.to_ascii_lowercase(),
            ..Default::default()
        };
        let mut parts: &[String] = &segments;
        let prefix = match parts.first().map(String::as_str) {
            Some(p @ ("apis" | "api")) => p.to_string(),
            _ => return Ok(info),
        };
        parts = &parts[1..];
        // /apis/<g>/<v>/<resource> needs 3 parts, /api/<v>/<resource> needs 2.
        let needed = if prefix == "apis" { 3 } else { 2 };
        if parts.len() < needed {
            return Ok(info);
        }
        info.api_prefix = prefix.clone();
        if prefix == "apis" {
            info.api_group = parts[0].clone();
            parts = &parts[1..];
        }
        info.api_version = parts[0].clone();
        parts = &parts[1..];
        info.is_resource_request = true;

        info.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .to_string();
        // `/watch/...` is the legacy form of `?watch=true`; it only applies to reads.
        let verb_via_path = parts.first().map(String::as_str) == Some("watch") && info.verb == "get";
        if verb_via_path {
            info.verb = "watch".into();
            parts = &parts[1..];
        }
        if parts.first().map(String::as_str) == Some("namespaces") && parts.len() > 1 {
            info.namespace = parts[1].clone();
            if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2].as_str()) {
                parts = &parts[2..];
            }
        }
        info.parts = parts.to_vec();
        if let Some(r) = parts.first() {
            info.resource = r.clone();
        }
        if parts.len() >= 2 {
            info.name = parts[1].clone();
        }
        if parts.len() >= 3 {
            info.subresource = parts[2].clone();
        }

        if info.name.is_empty() && info.verb == "get" {
            let mut watch = None;
            let mut field_seen = false;
            for (k, v) in query_pairs(query) {
                match k.as_str() {
                    // The first value counts, read as Kubernetes' query conversion reads a bool.
                    "watch" if watch.is_none() => watch = Some(go_query_bool(&v)),
                    // Also the first value only: the handler reads the same one, so what is
                    // authorized is what is served.
                    "fieldSelector" if !field_seen => {
                        field_seen = true;
                        if let Some(name) = exact_name(&v) {
                            info.name = name;
                        }
                    }
                    _ => {}
                }
            }
            info.verb = if watch == Some(true) { "watch" } else { "list" }.into();
        }
        if info.name.is_empty() && info.verb == "delete" {
            info.verb = "deletecollection".into();
        }
        // Selectors narrow what is asked for, so the authorizer is told them; the legacy watch
        // path does not take them consistently, so kube leaves them out there.
        if !verb_via_path && matches!(info.verb.as_str(), "list" | "watch" | "deletecollection") {
            let first = |key: &str| query_pairs(query).find(|(k, _)| k == key).map(|(_, v)| v);
            info.field_selector = first("fieldSelector").unwrap_or_default();
            info.label_selector = first("labelSelector").unwrap_or_default();
        }
        Ok(info)
    }
}

/// A boolean query parameter as Kubernetes' `Convert_Slice_string_To_bool` reads it: `0` and
/// any case of `false` are false, anything else (`yes`, the empty string) is true. Go's
/// `strings.EqualFold` also folds the long s (U+017F) to `s`.
pub fn go_query_bool(v: &str) -> bool {
    let folded: String = v
        .chars()
        .map(|c| if c == '\u{17f}' { 's' } else { c.to_ascii_lowercase() })
        .collect();
    !(v == "0" || folded == "false")
}

/// The name a field selector pins, as `RequestInfoFactory` takes it for authorization: the
/// selector must parse, and its first `metadata.name` equality (terms sorted, so
/// `metadata.namespace=n,metadata.name=x` pins `x`) must be a valid path segment.
pub(crate) fn exact_name(selector: &str) -> Option<String> {
    let reqs = fieldselector::parse(selector).ok()?;
    let value = fieldselector::exact_match(&reqs, "metadata.name")?;
    let valid = !value.is_empty() && value != "." && value != ".." && !value.contains(['/', '%']);
    valid.then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(m: &str, path: &str, q: &str) -> RequestInfo {
        RequestInfo::parse(m, path, q).expect("valid")
    }

    #[test]
    fn verbs_follow_k8s_rules() {
        let ns = "/apis/g.io/v1/namespaces/ns1/flunders";
        let cases = [
            ("GET", ns, "", "list", ""),
            ("GET", ns, "watch=true", "watch", ""),
            ("GET", ns, "watch=1&fieldSelector=metadata.name%3Dx", "watch", "x"),
            // Kubernetes' query bool (only 0 and false are false), and the first value wins.
            ("GET", ns, "watch=True", "watch", ""),
            ("GET", ns, "watch=t", "watch", ""),
            ("GET", ns, "watch=false&watch=true", "list", ""),
            ("GET", ns, "watch=yes", "watch", ""),
            ("GET", ns, "watch=", "watch", ""),
            ("GET", ns, "watch=FaLsE", "list", ""),
            ("GET", ns, "watch=0", "list", ""),
            ("GET", "/apis/g.io/v1/watch/namespaces/ns1/flunders/x", "", "watch", "x"),
            ("POST", ns, "", "create", ""),
            ("DELETE", ns, "", "deletecollection", ""),
            ("GET", "/apis/g.io/v1/namespaces/ns1/flunders/x", "", "get", "x"),
            ("PUT", "/apis/g.io/v1/namespaces/ns1/flunders/x", "", "update", "x"),
            ("PATCH", "/apis/g.io/v1/namespaces/ns1/flunders/x", "", "patch", "x"),
            ("DELETE", "/apis/g.io/v1/namespaces/ns1/flunders/x", "", "delete", "x"),
        ];
        for (m, path, q, verb, name) in cases {
            let i = p(m, path, q);
            assert!(i.is_resource_request, "{m} {path}");
            assert_eq!((i.verb.as_str(), i.name.as_str()), (verb, name), "{m} {path}?{q}");
            assert_eq!(i.namespace, "ns1");
            assert_eq!(i.resource, "flunders");
            assert_eq!(i.api_group, "g.io");
            assert_eq!(i.api_version, "v1");
        }
        let s = p("PUT", "/apis/g.io/v1/namespaces/ns1/flunders/x/status", "");
        assert_eq!((s.verb.as_str(), s.subresource.as_str()), ("update", "status"));
        let c = p("GET", "/apis/g.io/v1/fischers", "");
        assert_eq!((c.verb.as_str(), c.namespace.as_str()), ("list", ""));
    }

    #[test]
    fn discovery_and_other_paths_are_non_resource() {
        for path in [
            "/apis",
            "/apis/g.io",
            "/apis/g.io/v1",
            "/apis/g.io/v1/",
            "/healthz",
            "/openapi/v2",
        ] {
            let i = p("GET", path, "");
            assert!(!i.is_resource_request, "{path}");
            assert_eq!(i.verb, "get");
            assert_eq!(i.path, path);
        }
        assert_eq!(p("POST", "/metrics", "").verb, "post");
    }

    #[test]
    fn odd_paths_are_refused_not_normalised() {
        for path in [
            "/apis/../healthz",
            "/apis/g.io/v1/namespaces/a/%2e%2e/b",
            "//apis",
            "/apis//g.io",
            "/apis/g.io/v1/flunders/a%2Fb",
            "/apis/./g.io",
            "/apis/%ff",
            "relative",
        ] {
            assert!(RequestInfo::parse("GET", path, "").is_err(), "{path}");
        }
        assert_eq!(p("GET", "/apis/g.io/v1/flunders/a%20b", "").name, "a b");
    }
}
