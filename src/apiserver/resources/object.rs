//! Object bookkeeping of creates and updates: type checks, names, system metadata,
//! generation and the status subresource split.

use super::Cx;
use crate::apiserver::apierrors::Status;
use crate::apiserver::names::dns1123_subdomain_error;
use serde_json::{json, Map, Value};

/// The body of a create or update as JSON: JSON as sent, YAML converted (kubectl and
/// client-go may send either), any other media type 415 as kube-apiserver answers.
fn body_as_json<'a>(cx: &Cx, body: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, Status> {
    let media = cx.content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "" | "application/json" | "*/*" => Ok(std::borrow::Cow::Borrowed(body)),
        "application/yaml" => {
            let v: Value = serde_yaml::from_slice(body).map_err(|e| {
                Status::bad_request(format!(
                    "the object provided is unrecognized (must be of type {}): couldn't get version/kind; yaml parse error: {e}",
                    cx.res.kind
                ))
            })?;
            Ok(std::borrow::Cow::Owned(serde_json::to_vec(&v).unwrap_or_default()))
        }
        _ => Err(Status::unsupported_media_type("application/json, application/yaml")),
    }
}

/// Parses the body of a create or update (JSON or YAML) as an object of the URL's type.
pub fn decode_request(cx: &Cx, body: &[u8]) -> Result<Value, Status> {
    decode(cx, &body_as_json(cx, body)?)
}

/// Parses JSON as an object of the URL's type.
pub fn decode(cx: &Cx, body: &[u8]) -> Result<Value, Status> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let snippet: String = String::from_utf8_lossy(body).chars().take(100).collect();
        Status::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: {} ({snippet})",
            cx.res.kind,
            go_json_error(&e)
        ))
    })?;
    if !v.is_object() {
        return Err(Status::bad_request(format!(
            "the object provided is unrecognized (must be of type {})",
            cx.res.kind
        )));
    }
    check_depth(&v)?;
    let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind.is_empty() {
        let text: String = String::from_utf8_lossy(body).chars().take(1024).collect();
        let snippet: String = text.chars().take(100).collect();
        return Err(Status::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): Object 'Kind' is missing in '{text}' ({snippet})",
            cx.res.kind
        )));
    }
    if api_version != cx.api_version {
        return Err(Status::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            cx.api_version
        )));
    }
    if kind != cx.res.kind {
        // Decoded, then refused by validation: 422 on `kind`, named as the body names it.
        return Err(Status::invalid(
            &cx.group,
            kind,
            &name_of(&v),
            &[(
                "kind".into(),
                format!("Invalid value: {kind:?}: must be {}", cx.res.kind),
            )],
        ));
    }
    if let Some(ns) = v.pointer("/metadata/namespace").and_then(Value::as_str) {
        if !ns.is_empty() && !cx.namespace.is_empty() && ns != cx.namespace {
            return Err(Status::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    Ok(v)
}

/// What a patch produced must still be an object of the URL's type (a merge patch of `1` or
/// `null`, or a JSON patch replacing the root, is not), as kube-apiserver's decoding of the
/// patched object checks.
pub fn check_patched(cx: &Cx, v: &Value) -> Result<(), Status> {
    if !v.is_object() || v.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(Status::bad_request(format!(
            "the patched object is not a {} object",
            cx.res.kind
        )));
    }
    let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version != cx.api_version || kind != cx.res.kind {
        return Err(Status::bad_request(format!(
            "the API version in the data ({api_version}) and kind ({kind}) do not match the expected {} {}",
            cx.api_version, cx.res.kind
        )));
    }
    Ok(())
}

/// Deepest nesting an object may have. serde_json reads at most 128 levels and the stored
/// object adds a few (managedFields' fieldsV1 mirrors the object's paths four levels down), so
/// anything deeper could be written but never read back, and would stop the store loading.
pub const MAX_DEPTH: usize = 100;

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Refuses an object nested deeper than [`MAX_DEPTH`].
pub fn check_depth(v: &Value) -> Result<(), Status> {
    if depth(v) > MAX_DEPTH {
        return Err(Status::bad_request(format!(
            "the object is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(())
}

/// Go's wording for a truncated document, which clients and the contract expect.
fn go_json_error(e: &serde_json::Error) -> String {
    if e.is_eof() {
        "unexpected end of JSON input".into()
    } else {
        e.to_string()
    }
}

/// `metadata.name`.
pub fn name_of(v: &Value) -> String {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// `metadata.finalizers`.
pub fn finalizers(v: &Value) -> Vec<String> {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Whether `metadata.deletionTimestamp` is set.
pub fn is_deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

/// Now, as metav1.Time serializes it (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The process-wide CSPRNG of the TLS stack; failure is practically impossible, and then a
    // time-derived fallback keeps names distinct enough.
    if crate::apiserver::tls::provider().secure_random.fill(&mut b).is_err() {
        let t = jiff::Timestamp::now().as_nanosecond().to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = t[i % t.len()];
        }
    }
    b
}

/// A random version-4 UUID.
pub fn uuid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The 5-character suffix of `generateName`, from the alphabet of `utilrand.String`.
pub fn name_suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>()
        .iter()
        .map(|x| ALPHA[*x as usize % ALPHA.len()] as char)
        .collect()
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    // Callers pass objects (decode and check_patched refuse anything else); indexing a
    // non-object would panic, so make sure.
    if !v.is_object() {
        *v = json!({});
    }
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    // Just ensured to be an object.
    v["metadata"].as_object_mut().expect("metadata object")
}

/// Fills the system fields of a new object and validates its name.
pub fn prepare_create(cx: &Cx, v: &mut Value) -> Result<(), Status> {
    let status_sub = cx.res.subresources.as_ref().is_some_and(|s| s.status.is_some());
    let m = meta_mut(v);
    let mut name = m.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    if name.is_empty() {
        let gen = m.get("generateName").and_then(Value::as_str).unwrap_or_default();
        if gen.is_empty() {
            return Err(Status::invalid(
                &cx.group,
                &cx.res.kind,
                "",
                &[(
                    "metadata.name".into(),
                    "Required value: name or generateName is required".into(),
                )],
            ));
        }
        name = format!("{gen}{}", name_suffix());
    }
    if let Some(why) = dns1123_subdomain_error(&name) {
        return Err(Status::invalid(
            &cx.group,
            &cx.res.kind,
            &name,
            &[("metadata.name".into(), format!("Invalid value: {name:?}: {why}"))],
        ));
    }
    m.insert("name".into(), json!(name));
    if cx.namespace.is_empty() {
        m.remove("namespace");
    } else {
        m.insert("namespace".into(), json!(cx.namespace));
    }
    m.insert("uid".into(), json!(uuid()));
    m.insert("creationTimestamp".into(), json!(now()));
    m.insert("generation".into(), json!(1));
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        m.remove(k);
    }
    // With a status subresource, status is only written through /status.
    if status_sub {
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
        }
    }
    Ok(())
}

/// What `generation` counts changes of: everything outside metadata, and outside status when
/// status is a subresource. Without one, status is written with the object and counts like
/// the rest of it, as in the CRD strategy's `PrepareForUpdate`.
fn spec_part(v: &Value, status_sub_enabled: bool) -> Value {
    let mut c = v.clone();
    if let Some(o) = c.as_object_mut() {
        o.remove("metadata");
        if status_sub_enabled {
            o.remove("status");
        }
    }
    c
}

/// The object an update writes: system metadata from `old`, the rest from `new`, with the
/// status subresource split and generation bumped on spec changes.
pub fn prepare_update(cx: &Cx, old: &Value, new: Value, status_sub_enabled: bool) -> Result<Value, Status> {
    let mut next = if cx.status_sub {
        // /status writes only .status (and nothing else changes).
        let mut n = old.clone();
        match new.get("status") {
            Some(s) => n["status"] = s.clone(),
            None => {
                if let Some(o) = n.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        n
    } else {
        let mut n = new;
        if status_sub_enabled {
            match (old.get("status"), n.as_object_mut()) {
                (Some(s), Some(o)) => {
                    o.insert("status".into(), s.clone());
                }
                (None, Some(o)) => {
                    o.remove("status");
                }
                _ => {}
            }
        }
        n
    };
    let name = name_of(old);
    let m = meta_mut(&mut next);
    // A uid the write names stays, for validation to refuse when it differs (kube's
    // `BeforeUpdate` fills in only an empty one); a patch has no uid precondition to stop it.
    if m.get("uid").and_then(Value::as_str).is_none_or(str::is_empty) {
        match old.pointer("/metadata/uid") {
            Some(x) => {
                m.insert("uid".into(), x.clone());
            }
            None => {
                m.remove("uid");
            }
        }
    }
    // Fields only the server sets are kept as they were.
    for k in [
        "name",
        "namespace",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old.pointer(&format!("/metadata/{k}")) {
            Some(x) => {
                m.insert(k.into(), x.clone());
            }
            None => {
                m.remove(k);
            }
        }
    }
    if is_deleting(old) {
        // A deleting object may lose finalizers but not gain new ones.
        let before = finalizers(old);
        let after = finalizers(&next);
        if after.iter().any(|f| !before.contains(f)) {
            return Err(Status::invalid(
                &cx.group,
                &cx.res.kind,
                &name,
                &[(
                    "metadata.finalizers".into(),
                    "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                )],
            ));
        }
    }
    if spec_part(old, status_sub_enabled) != spec_part(&next, status_sub_enabled) {
        let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        meta_mut(&mut next).insert("generation".into(), json!(g + 1));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uids() {
        assert!(dns1123_subdomain_error("a.b-c.d1").is_none());
        assert!(dns1123_subdomain_error("Bad_Name").is_some());
        assert!(dns1123_subdomain_error("-a").is_some());
        assert!(dns1123_subdomain_error("").is_some());
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(name_suffix().len(), 5);
        assert_eq!(now().len(), 20);
    }
}
