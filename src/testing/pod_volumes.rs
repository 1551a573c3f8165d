//! A pod's volumes as host directories, for [`super::pod`]: Secret, ConfigMap, downwardAPI and
//! projected volumes (ServiceAccount token included) in kubelet's atomic-writer layout, kept in
//! sync with the cluster; emptyDir per pod; a directory per PersistentVolumeClaim that outlives
//! the pod.
//!
//! The atomic-writer layout (k8s.io/kubernetes pkg/volume/util/atomic_writer.go) is what makes
//! hot reload work in a real pod: the files live in `..<timestamp>/`, `..data` is a symlink to
//! that directory, and each top-level entry is a symlink `name -> ..data/name`. An update writes
//! a new timestamped directory and renames a fresh symlink over `..data`, so a reader sees either
//! the old set of files or the new one, never a mix (a certificate and its key always match).

use super::netns::Error;
use super::pod_env::object_data;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{KeyToPath, Pod, ServiceAccount, Volume};
use kube::api::PostParams;
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default file mode of Secret, ConfigMap, downwardAPI and projected volumes (0644).
const DEFAULT_MODE: u32 = 0o644;

/// Relative path → (content, mode).
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// A ServiceAccount token of a projected volume, refreshed like kubelet does at 80% of its life.
struct Token {
    token: String,
    fetched: Instant,
    lifetime: Duration,
}

/// One volume's host directory.
struct HostVolume {
    volume: Volume,
    dir: PathBuf,
    /// What was written last (synced volumes only); `None` before the first write.
    written: Option<Files>,
}

/// The volumes of one pod.
pub struct PodVolumes {
    volumes: Vec<HostVolume>,
    tokens: BTreeMap<String, Token>,
}

impl PodVolumes {
    /// Creates the host directories: `<pod_dir>/volumes/<name>` for pod-lifetime volumes and
    /// `<claims_dir>/<namespace>/<claim>` for PersistentVolumeClaims (kept across pods, as a
    /// bound PersistentVolume would be). Other volume types are refused.
    pub fn prepare(pod: &Pod, pod_dir: &Path, claims_dir: &Path) -> Result<Self, Error> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut volumes = Vec::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let dir = if let Some(pvc) = &v.persistent_volume_claim {
                claims_dir.join(ns).join(&pvc.claim_name)
            } else if v.secret.is_some()
                || v.config_map.is_some()
                || v.projected.is_some()
                || v.downward_api.is_some()
                || v.empty_dir.is_some()
            {
                pod_dir.join("volumes").join(&v.name)
            } else {
                return Err(format!("volume {} has a type the pod runner does not support", v.name).into());
            };
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            volumes.push(HostVolume {
                volume: v.clone(),
                dir,
                written: None,
            });
        }
        Ok(PodVolumes {
            volumes,
            tokens: BTreeMap::new(),
        })
    }

    /// The host directory of volume `name`.
    pub fn host_dir(&self, name: &str) -> Option<&Path> {
        self.volumes
            .iter()
            .find(|v| v.volume.name == name)
            .map(|v| v.dir.as_path())
    }

    /// Reads every Secret, ConfigMap and token the volumes project and rewrites the volumes
    /// whose content changed. Fails (and kubelet would not start the container) when a
    /// non-optional source is missing.
    pub async fn sync(&mut self, client: &Client, pod: &Pod, pod_ip: &str) -> Result<(), Error> {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        for i in 0..self.volumes.len() {
            let v = self.volumes[i].volume.clone();
            let files = match self.desired(client, pod, &ns, pod_ip, &v).await? {
                Some(f) => f,
                None => continue,
            };
            let hv = &mut self.volumes[i];
            if hv.written.as_ref() != Some(&files) {
                write_atomic(&hv.dir, &files)
                    .map_err(|e| format!("cannot write volume {} in {}: {e}", v.name, hv.dir.display()))?;
                hv.written = Some(files);
            }
        }
        Ok(())
    }

    /// The files a synced volume should hold, or `None` for emptyDir and claims.
    async fn desired(
        &mut self,
        client: &Client,
        pod: &Pod,
        ns: &str,
        pod_ip: &str,
        v: &Volume,
    ) -> Result<Option<Files>, Error> {
        let mut files = Files::new();
        if let Some(s) = &v.secret {
            let mode = s.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            add_keys(client, ns, true, &name, s.items.as_deref(), mode, optional, &mut files).await?;
        } else if let Some(c) = &v.config_map {
            let mode = c.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
            let optional = c.optional.unwrap_or(false);
            add_keys(
                client,
                ns,
                false,
                &c.name,
                c.items.as_deref(),
                mode,
                optional,
                &mut files,
            )
            .await?;
        } else if let Some(d) = &v.downward_api {
            let mode = d.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
            for item in d.items.iter().flatten() {
                let value = downward_value(pod, pod_ip, item.field_ref.as_ref().map(|f| f.field_path.as_str()))?;
                files.insert(
                    item.path.clone(),
                    (value.into_bytes(), item.mode.map_or(mode, |m| m as u32)),
                );
            }
        } else if let Some(p) = &v.projected {
            let mode = p.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
            for src in p.sources.iter().flatten() {
                if let Some(s) = &src.secret {
                    let optional = s.optional.unwrap_or(false);
                    add_keys(
                        client,
                        ns,
                        true,
                        &s.name,
                        s.items.as_deref(),
                        mode,
                        optional,
                        &mut files,
                    )
                    .await?;
                }
                if let Some(c) = &src.config_map {
                    let optional = c.optional.unwrap_or(false);
                    add_keys(
                        client,
                        ns,
                        false,
                        &c.name,
                        c.items.as_deref(),
                        mode,
                        optional,
                        &mut files,
                    )
                    .await?;
                }
                if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        let path = item.field_ref.as_ref().map(|f| f.field_path.as_str());
                        let value = downward_value(pod, pod_ip, path)?;
                        files.insert(
                            item.path.clone(),
                            (value.into_bytes(), item.mode.map_or(mode, |m| m as u32)),
                        );
                    }
                }
                if let Some(t) = &src.service_account_token {
                    let key = format!("{}/{}", v.name, t.path);
                    let audiences = t.audience.iter().cloned().collect();
                    let seconds = t.expiration_seconds.unwrap_or(3600);
                    let token = self.token(client, pod, &key, audiences, seconds).await?;
                    files.insert(t.path.clone(), (token.into_bytes(), mode));
                }
            }
        } else {
            return Ok(None);
        }
        Ok(Some(files))
    }

    /// A token for the pod's ServiceAccount, bound to the pod (as kubelet requests it), reused
    /// until 80% of its lifetime has passed.
    async fn token(
        &mut self,
        client: &Client,
        pod: &Pod,
        key: &str,
        audiences: Vec<String>,
        seconds: i64,
    ) -> Result<String, Error> {
        if let Some(t) = self.tokens.get(key) {
            if t.fetched.elapsed() < t.lifetime.mul_f64(0.8) {
                return Ok(t.token.clone());
            }
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences,
                expiration_seconds: Some(seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let status = Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .create_token_request(&sa, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("TokenRequest for ServiceAccount {ns}/{sa}: {e}"))?
            .status
            .ok_or("TokenRequest answered without status")?;
        self.tokens.insert(
            key.to_string(),
            Token {
                token: status.token.clone(),
                fetched: Instant::now(),
                lifetime: Duration::from_secs(seconds.max(60) as u64),
            },
        );
        Ok(status.token)
    }
}

/// Adds the keys of a Secret or ConfigMap (all of them, or `items`) to `files`.
#[allow(clippy::too_many_arguments)]
async fn add_keys(
    client: &Client,
    ns: &str,
    secret: bool,
    name: &str,
    items: Option<&[KeyToPath]>,
    mode: u32,
    optional: bool,
    files: &mut Files,
) -> Result<(), Error> {
    let kind = if secret { "Secret" } else { "ConfigMap" };
    let Some(data) = object_data(client, ns, secret, name).await? else {
        if optional {
            return Ok(());
        }
        return Err(format!("{kind} {ns}/{name} does not exist (kubelet would wait)").into());
    };
    match items {
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        files.insert(item.path.clone(), (v.clone(), item.mode.map_or(mode, |m| m as u32)));
                    }
                    None if optional => {}
                    None => return Err(format!("{kind} {ns}/{name} has no key {}", item.key).into()),
                }
            }
        }
        None => {
            for (k, v) in data {
                files.insert(k, (v, mode));
            }
        }
    }
    Ok(())
}

fn downward_value(pod: &Pod, pod_ip: &str, path: Option<&str>) -> Result<String, Error> {
    let fields = super::pod_env::PodFields {
        pod_ip: pod_ip.to_string(),
        host_ip: String::new(),
    };
    let path = path.ok_or("downwardAPI item without fieldRef (resourceFieldRef is not supported)")?;
    super::pod_env::field_value(pod, &fields, path)
}

/// Writes `files` into `dir` in the atomic-writer layout and removes the previous generation.
pub fn write_atomic(dir: &Path, files: &Files) -> std::io::Result<()> {
    use std::os::unix::fs::symlink;
    let stamp = format!("..{}", jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f"));
    let generation = dir.join(&stamp);
    std::fs::create_dir_all(&generation)?;
    for (path, (content, mode)) in files {
        let file = generation.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, content)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))?;
    }
    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    // rename(2) replaces the old symlink atomically: readers see the old or the new generation.
    std::fs::rename(&tmp, &data)?;
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{top}"), &link)?;
        }
    }
    // Entries of the previous generation that are gone now.
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(prev) = previous {
        if prev != Path::new(&stamp) {
            let _ = std::fs::remove_dir_all(dir.join(prev));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_layout_and_update() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = Files::new();
        files.insert("tls.crt".into(), (b"one".to_vec(), 0o644));
        files.insert("sub/key".into(), (b"k".to_vec(), 0o600));
        write_atomic(dir.path(), &files).expect("first write");
        let data = std::fs::read_link(dir.path().join("..data")).expect("..data is a symlink");
        assert!(data.to_string_lossy().starts_with(".."), "{data:?}");
        assert_eq!(
            std::fs::read_link(dir.path().join("tls.crt")).expect("per-key symlink"),
            PathBuf::from("..data/tls.crt")
        );
        assert_eq!(std::fs::read(dir.path().join("sub/key")).expect("nested"), b"k");

        files.remove("sub/key");
        files.insert("tls.crt".into(), (b"two".to_vec(), 0o644));
        write_atomic(dir.path(), &files).expect("second write");
        assert_eq!(std::fs::read(dir.path().join("tls.crt")).expect("read"), b"two");
        assert!(!dir.path().join("sub").exists(), "removed key's link is gone");
        assert!(!dir.path().join(&data).exists(), "previous generation removed");
    }
}
