//! The benchmarked resource: paths and request bodies, built by string formatting so the
//! client spends little CPU (it shares the machine with the server).

use bytes::Bytes;

/// What to write and where.
pub struct Resource {
    /// `group/version`.
    pub group_version: String,
    pub kind: String,
    pub plural: String,
    /// Namespace prefix; empty for cluster-scoped resources.
    pub namespace: String,
    /// JSON of `spec` (the resource's schema may prune unknown fields, so padding goes into an
    /// annotation instead).
    pub spec: String,
}

/// Annotation carrying a write's sequence number, which watchers look for.
pub const SEQ_KEY: &str = "eas-bench/seq";

impl Resource {
    /// The namespace of one part of the benchmark (`<ns>-<part>`), or none for cluster scope.
    pub fn ns(&self, part: &str) -> String {
        match (self.namespace.is_empty(), part.is_empty()) {
            (true, _) => String::new(),
            (false, true) => self.namespace.clone(),
            (false, false) => format!("{}-{part}", self.namespace),
        }
    }

    /// The collection path in namespace `ns`.
    pub fn collection(&self, ns: &str) -> String {
        if ns.is_empty() {
            format!("/apis/{}/{}", self.group_version, self.plural)
        } else {
            format!("/apis/{}/namespaces/{ns}/{}", self.group_version, self.plural)
        }
    }

    pub fn item(&self, ns: &str, name: &str) -> String {
        format!("{}/{name}", self.collection(ns))
    }

    /// An object of about `size` bytes of JSON, padded with an annotation; `rv` makes it an
    /// update body; `seq` is recorded in an annotation.
    pub fn body(&self, ns: &str, name: &str, size: usize, rv: Option<&str>, seq: u64) -> Bytes {
        let ns_field = if ns.is_empty() {
            String::new()
        } else {
            format!(",\"namespace\":\"{ns}\"")
        };
        let rv_field = rv
            .map(|rv| format!(",\"resourceVersion\":\"{rv}\""))
            .unwrap_or_default();
        let head = format!(
            "{{\"apiVersion\":\"{}\",\"kind\":\"{}\",\"metadata\":{{\"name\":\"{name}\"{ns_field}{rv_field},\"annotations\":{{\"{SEQ_KEY}\":\"{seq}\",\"eas-bench/pad\":\"",
            self.group_version, self.kind
        );
        let tail = format!("\"}}}},\"spec\":{}}}", self.spec);
        let pad = size.saturating_sub(head.len() + tail.len());
        let mut out = Vec::with_capacity(head.len() + pad + tail.len());
        out.extend_from_slice(head.as_bytes());
        out.resize(head.len() + pad, b'x');
        out.extend_from_slice(tail.as_bytes());
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_json_of_the_requested_size() {
        let r = Resource {
            group_version: "wardle.example.com/v1alpha1".into(),
            kind: "Flunder".into(),
            plural: "flunders".into(),
            namespace: "bench".into(),
            spec: r#"{"reference":"x"}"#.into(),
        };
        let b = r.body("bench-load", "a", 1024, Some("7"), 3);
        assert_eq!(b.len(), 1024);
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        assert_eq!(v["metadata"]["annotations"][SEQ_KEY], "3");
        assert_eq!(
            r.item("bench-load", "a"),
            "/apis/wardle.example.com/v1alpha1/namespaces/bench-load/flunders/a"
        );
    }
}
