//! A container's argv and environment as kubelet builds them, for [`super::pod`]: `$(VAR)`
//! expansion, `env`/`envFrom` with `valueFrom` read from the cluster, and the rewriting of
//! in-container paths to the host directories that stand in for volume mounts.

use super::netns::Error;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// kubelet's `$(VAR)` expansion (k8s.io/kubernetes third_party/forked/golang/expansion):
/// `$(NAME)` becomes the value of NAME when `lookup` knows it and stays literal otherwise, `$$`
/// is an escaped `$`, and any other `$` is kept as is (so is an unterminated `$(`).
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(close) => {
                    let name = &inner[..close];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[close + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What a `fieldRef` may name, resolved for one pod.
pub struct PodFields {
    /// `status.podIP`.
    pub pod_ip: String,
    /// `status.hostIP`.
    pub host_ip: String,
}

pub(crate) fn field_value(pod: &Pod, fields: &PodFields, path: &str) -> Result<String, Error> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "status.podIP" => Some(fields.pod_ip.clone()),
        "status.hostIP" => Some(fields.host_ip.clone()),
        _ => {
            // `metadata.labels['key']` and `metadata.annotations['key']`.
            let pick = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
                let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
                Some(map.as_ref().and_then(|m| m.get(key).cloned()).unwrap_or_default())
            };
            return pick("metadata.labels['", &meta.labels)
                .or_else(|| pick("metadata.annotations['", &meta.annotations))
                .ok_or_else(|| format!("fieldRef {path} is not supported by the pod runner").into());
        }
    };
    Ok(value.unwrap_or_default())
}

/// Reads key `key` of Secret or ConfigMap `name`; `None` when missing and `optional`.
async fn key_ref(
    client: &Client,
    ns: &str,
    secret: bool,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, Error> {
    let data = object_data(client, ns, secret, name).await?;
    match data.and_then(|d| d.get(key).cloned()) {
        Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
        None if optional => Ok(None),
        None => Err(format!(
            "{} {ns}/{name} key {key} is missing (kubelet would not start the container)",
            if secret { "Secret" } else { "ConfigMap" }
        )
        .into()),
    }
}

/// All keys of a Secret or ConfigMap (`data` and `binaryData`), or `None` when it does not exist.
pub(crate) async fn object_data(
    client: &Client,
    ns: &str,
    secret: bool,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    if secret {
        let s = Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await?;
        Ok(s.map(|s| {
            let mut data: BTreeMap<String, Vec<u8>> =
                s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            data
        }))
    } else {
        let c = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await?;
        Ok(c.map(|c| {
            let mut data: BTreeMap<String, Vec<u8>> = c
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in c.binary_data.unwrap_or_default() {
                data.insert(k, v.0);
            }
            data
        }))
    }
}

/// The container's environment in kubelet's order: `base` (what kubelet adds, such as
/// `KUBERNETES_SERVICE_HOST`), then `envFrom`, then `env`, each `value` expanded with the
/// variables defined before it. Later definitions win.
pub async fn container_env(
    client: &Client,
    pod: &Pod,
    container: &Container,
    fields: &PodFields,
    base: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    for (k, v) in base {
        set(&mut env, k, v);
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (secret, name, optional) = match (&from.secret_ref, &from.config_map_ref) {
            (Some(s), _) => (true, s.name.clone(), s.optional.unwrap_or(false)),
            (None, Some(c)) => (false, c.name.clone(), c.optional.unwrap_or(false)),
            (None, None) => continue,
        };
        match object_data(client, &ns, secret, &name).await? {
            Some(data) => {
                for (k, v) in data {
                    set(
                        &mut env,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => return Err(format!("envFrom {name} in {ns} does not exist").into()),
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                Some(field_value(pod, fields, &f.field_path)?)
            } else if let Some(s) = &from.secret_key_ref {
                key_ref(client, &ns, true, &s.name, &s.key, s.optional.unwrap_or(false)).await?
            } else if let Some(c) = &from.config_map_key_ref {
                key_ref(client, &ns, false, &c.name, &c.key, c.optional.unwrap_or(false)).await?
            } else {
                return Err(format!("env {}: valueFrom not supported by the pod runner", var.name).into());
            }
        } else {
            let known = env.clone();
            let lookup = move |n: &str| known.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            Some(expand(var.value.as_deref().unwrap_or(""), &lookup))
        };
        if let Some(v) = value {
            set(&mut env, var.name.clone(), v);
        }
    }
    Ok(env)
}

/// `command` + `args` with `$(VAR)` expanded from `env` (kubelet expands both; an image's
/// entrypoint is not expanded, and is `image_entrypoint` when the container has no `command`).
pub fn container_argv(container: &Container, env: &[(String, String)], image_entrypoint: &[String]) -> Vec<String> {
    let lookup = |n: &str| env.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut argv: Vec<String> = match &container.command {
        Some(c) if !c.is_empty() => c.iter().map(|s| expand(s, &lookup)).collect(),
        _ => image_entrypoint.to_vec(),
    };
    argv.extend(container.args.iter().flatten().map(|s| expand(s, &lookup)));
    argv
}

/// Rewrites every absolute path in `s` that lies under a mount's path to the host directory
/// standing in for it. The process runs on the host's filesystem (no mount namespace), so
/// `--tls-cert-file=/var/run/x/tls.crt` must become `--tls-cert-file=<tempdir>/x/tls.crt`.
///
/// A path is recognised where it starts the string or follows `=`, `:`, `,` or a space, and
/// the mount path must end there or continue with `/` (so `/etc/foo` does not match `/etc/foobar`).
/// Longer mount paths are tried first, so nested mounts resolve to the innermost.
pub fn rewrite_paths(s: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut sorted: Vec<&(String, PathBuf)> = mounts.iter().collect();
    sorted.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    'outer: while i < s.len() {
        let at_boundary = i == 0 || matches!(s.as_bytes()[i - 1], b'=' | b':' | b',' | b' ');
        if at_boundary && s.as_bytes()[i] == b'/' {
            for (mount, host) in &sorted {
                let mount = mount.trim_end_matches('/');
                let rest = &s[i..];
                if let Some(tail) = rest.strip_prefix(mount) {
                    if tail.is_empty() || tail.starts_with('/') || tail.starts_with([':', ',', ' ']) {
                        out.push_str(&host.display().to_string());
                        i += mount.len();
                        continue 'outer;
                    }
                }
            }
        }
        // Copy one character (UTF-8 aware).
        let ch_len = s[i..].chars().next().map(char::len_utf8).unwrap_or(1);
        out.push_str(&s[i..i + ch_len]);
        i += ch_len;
    }
    out
}

/// A kubeconfig with the control plane's URL, the CA and token files of the pod's
/// kube-api-access volume (`tokenFile` is re-read by clients, as the in-cluster token is).
pub(crate) fn write_kubeconfig(
    cp: &super::controlplane::ControlPlane,
    path: &std::path::Path,
    sa_dir: Option<&std::path::Path>,
) -> Result<(), Error> {
    let (ca, user) = match sa_dir {
        Some(d) => (
            d.join("ca.crt").display().to_string(),
            format!("    tokenFile: {}\n", d.join("token").display()),
        ),
        // automountServiceAccountToken: false: no credentials, as in a real pod.
        None => {
            let ca = path.with_extension("ca.crt");
            std::fs::write(&ca, &cp.ca().cert_pem)?;
            (ca.display().to_string(), "    {}\n".to_string())
        }
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n    server: {}\n    \
         certificate-authority: {ca}\nusers:\n- name: pod\n  user:\n{user}contexts:\n- name: pod\n  context:\n    \
         cluster: cluster\n    user: pod\ncurrent-context: pod\n",
        cp.url()
    );
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubelet() {
        let env = [("A".to_string(), "x".to_string())];
        let lookup = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(expand("--ns=$(A)", &lookup), "--ns=x");
        assert_eq!(expand("$(B)/$(A)", &lookup), "$(B)/x", "unknown stays literal");
        assert_eq!(expand("$$(A)", &lookup), "$(A)", "$$ escapes");
        assert_eq!(expand("cost $5 $(A", &lookup), "cost $5 $(A");
        assert_eq!(expand("a$", &lookup), "a$");
    }

    #[test]
    fn paths_under_mounts_are_rewritten() {
        let mounts = vec![
            ("/etc/eas".to_string(), PathBuf::from("/tmp/p/config")),
            ("/etc/eas/nested".to_string(), PathBuf::from("/tmp/p/nested")),
        ];
        assert_eq!(
            rewrite_paths("--config=/etc/eas/config.yaml", &mounts),
            "--config=/tmp/p/config/config.yaml"
        );
        assert_eq!(rewrite_paths("/etc/eas/nested/x", &mounts), "/tmp/p/nested/x");
        assert_eq!(rewrite_paths("/etc/easy", &mounts), "/etc/easy", "prefix of a name");
        assert_eq!(rewrite_paths("a:/etc/eas,b", &mounts), "a:/tmp/p/config,b");
        assert_eq!(rewrite_paths("x/etc/eas", &mounts), "x/etc/eas", "not a path start");
    }
}
