//! The server's storage: the embedded store in --data-dir (the default), or etcd when
//! --etcd-servers is set. The etcd flags are kube-apiserver's; they are checked before
//! anything connects, so a wrong combination fails the start with a message naming the flag.

use super::options::Args;
use super::storage::{EtcdOptions, EtcdProbe, EtcdStore, EtcdTls, Storage, StorageError, Store};
use super::ServeError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the server waits for etcd at start before giving up (exit 1). Long enough to ride
/// out etcd starting beside it; short enough that a wrong address fails the pod visibly.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// First and longest pause between two connection attempts at start.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));

/// The opened storage.
pub struct Backend {
    /// The store every resource lives in.
    pub store: Arc<dyn Store>,
    /// Whether etcd answers, when the store is etcd.
    pub etcd: Option<Arc<EtcdProbe>>,
}

/// Opens the storage: etcd with `etcd` (from [`etcd_options`]), else the embedded store.
pub async fn open(args: &Args, etcd: Option<EtcdOptions>) -> Result<Backend, ServeError> {
    let Some(opts) = etcd else {
        let data_dir = args.data_dir();
        let storage = Storage::open(&data_dir, Default::default())
            .map_err(|e| ServeError::Storage(data_dir.display().to_string(), e))?;
        tracing::info!(dir = %data_dir.display(), objects = storage.len(), rv = storage.current_rv(), "storage open");
        return Ok(Backend {
            store: Arc::new(storage),
            etcd: None,
        });
    };
    if args.data_dir.is_some() {
        tracing::warn!("--data-dir is not used with --etcd-servers");
    }
    let store = connect_with_retry(&opts).await?;
    let probe = EtcdProbe::start(&opts).await.map_err(etcd_err)?;
    tracing::info!(servers = ?opts.endpoints, prefix = %opts.prefix, tls = opts.tls.is_some(), rv = store.current_rv(), "storage: etcd");
    Ok(Backend {
        store: Arc::new(store),
        etcd: Some(Arc::new(probe)),
    })
}

fn etcd_err(e: StorageError) -> ServeError {
    ServeError::Etcd(e.to_string())
}

/// Connects, retrying with backoff while etcd does not answer (it may be starting too).
async fn connect_with_retry(opts: &EtcdOptions) -> Result<EtcdStore, ServeError> {
    let started = Instant::now();
    let mut pause = BACKOFF.0;
    loop {
        match EtcdStore::connect(opts.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) if started.elapsed() + pause < STARTUP_TIMEOUT => {
                tracing::warn!(error = %e, servers = ?opts.endpoints, retry_in = ?pause, "etcd not reachable yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF.1);
            }
            Err(e) => {
                // With TLS 1.3 a refused client certificate shows only as a closed connection.
                let hint = if opts.tls.is_some() {
                    " (if etcd is up: does --etcd-cafile hold the CA of etcd's certificate, and does etcd accept --etcd-certfile?)"
                } else {
                    ""
                };
                return Err(ServeError::Etcd(format!(
                    "no answer from {} within {STARTUP_TIMEOUT:?}: {e}{hint}",
                    opts.endpoints.join(",")
                )));
            }
        }
    }
}

/// The etcd options the flags ask for, `None` without --etcd-servers; `group` is the served
/// API group (the default prefix). Every file is read and parsed here, so a wrong flag, path
/// or PEM fails the start at once instead of the first request.
pub fn etcd_options(args: &Args, group: &str) -> Result<Option<EtcdOptions>, ServeError> {
    let usage = |m: String| Err(ServeError::Usage(m));
    let endpoints: Vec<String> = args
        .etcd_servers
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let tls_flags = args.etcd_cafile.is_some() || args.etcd_certfile.is_some();
    if endpoints.is_empty() {
        if tls_flags || args.etcd_prefix.is_some() {
            return usage(
                "--etcd-prefix, --etcd-cafile, --etcd-certfile and --etcd-keyfile need --etcd-servers".into(),
            );
        }
        return Ok(None);
    }
    let https = endpoints.iter().filter(|e| e.starts_with("https://")).count();
    let http = endpoints.iter().filter(|e| e.starts_with("http://")).count();
    if https + http != endpoints.len() {
        return usage(format!(
            "--etcd-servers: every server must be an http:// or https:// URL, got {}",
            endpoints.join(",")
        ));
    }
    if https > 0 && http > 0 {
        return usage("--etcd-servers: all servers must use the same scheme, http:// or https://".into());
    }
    let tls = if https > 0 {
        let Some(ca) = &args.etcd_cafile else {
            return usage(
                "--etcd-servers uses https://: --etcd-cafile (the CA of etcd's serving certificate) is required".into(),
            );
        };
        let ca_pem = read(ca, "--etcd-cafile")?;
        super::tls::parse_certs(&ca_pem)
            .map_err(|e| ServeError::Usage(format!("--etcd-cafile {}: {e}", ca.display())))?;
        let identity = match (&args.etcd_certfile, &args.etcd_keyfile) {
            (Some(cert), Some(key)) => Some(identity(cert, key)?),
            (None, None) => None,
            _ => return usage("--etcd-certfile and --etcd-keyfile go together".into()),
        };
        Some(EtcdTls { ca_pem, identity })
    } else if tls_flags {
        // Refused rather than ignored: TLS files next to a plain-text URL are almost always a
        // mistyped scheme, and sending data in clear text by accident is the worse outcome.
        return usage("--etcd-cafile, --etcd-certfile and --etcd-keyfile need https:// --etcd-servers".into());
    } else {
        None
    };
    let prefix = match &args.etcd_prefix {
        Some(p) => p.trim_end_matches('/').to_string(),
        None => format!("/registry/{group}"),
    };
    let mut opts = EtcdOptions::new(endpoints, prefix);
    opts.request_timeout = args.etcd_request_timeout;
    opts.tls = tls;
    Ok(Some(opts))
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|e| ServeError::Usage(format!("{flag} {}: {e}", path.display())))
}

/// The client certificate and key, checked to parse.
fn identity(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), ServeError> {
    let cert_pem = read(cert, "--etcd-certfile")?;
    super::tls::parse_certs(&cert_pem)
        .map_err(|e| ServeError::Usage(format!("--etcd-certfile {}: {e}", cert.display())))?;
    let key_pem = read(key, "--etcd-keyfile")?;
    PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| ServeError::Usage(format!("--etcd-keyfile {}: no private key: {e}", key.display())))?;
    Ok((cert_pem, key_pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(flags: &[&str]) -> Args {
        Args::parse_from(std::iter::once("extension-apiserver").chain(flags.iter().copied()))
    }

    fn problem(flags: &[&str]) -> String {
        match etcd_options(&args(flags), "wardle.example.com") {
            Err(e) => e.to_string(),
            Ok(o) => panic!("{flags:?} accepted: {o:?}"),
        }
    }

    #[test]
    fn embedded_store_without_etcd_servers() {
        assert!(etcd_options(&args(&[]), "g").expect("valid").is_none());
        assert!(problem(&["--etcd-prefix", "/x"]).contains("need --etcd-servers"));
    }

    #[test]
    fn prefix_defaults_to_the_group() {
        let o = etcd_options(
            &args(&["--etcd-servers", "http://a:2379, http://b:2379"]),
            "wardle.example.com",
        )
        .expect("valid")
        .expect("etcd");
        assert_eq!(o.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(o.prefix, "/registry/wardle.example.com");
        assert_eq!(o.request_timeout, Duration::from_secs(5));
        assert!(o.tls.is_none());
        let o = etcd_options(
            &args(&["--etcd-servers", "http://a:2379", "--etcd-prefix", "/mine/"]),
            "g",
        )
        .expect("valid")
        .expect("etcd");
        assert_eq!(o.prefix, "/mine");
    }

    #[test]
    fn tls_flags_are_checked() {
        assert!(problem(&["--etcd-servers", "https://a:2379"]).contains("--etcd-cafile"));
        assert!(problem(&["--etcd-servers", "http://a:2379", "--etcd-cafile", "/ca.pem"]).contains("need https://"));
        assert!(problem(&["--etcd-servers", "http://a:2379,https://b:2379"]).contains("same scheme"));
        assert!(problem(&["--etcd-servers", "a:2379"]).contains("http:// or https://"));
        assert!(problem(&[
            "--etcd-servers",
            "https://a:2379",
            "--etcd-cafile",
            "/nonexistent/ca.pem"
        ])
        .contains("/nonexistent/ca.pem"));
        assert!(
            Args::try_parse_from(["extension-apiserver", "--etcd-certfile", "c.pem"]).is_err(),
            "the key is required too"
        );
    }

    #[test]
    fn tls_files_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::testing::certs::ca("etcd-ca").expect("ca");
        let client = crate::testing::certs::client_cert(&ca, "eas", None).expect("client");
        let path = |name: &str, pem: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).expect("write");
            p.display().to_string()
        };
        let (ca_file, cert, key) = (
            path("ca.pem", &ca.cert_pem),
            path("c.pem", &client.cert_pem),
            path("k.pem", &client.key_pem),
        );
        let o = etcd_options(
            &args(&[
                "--etcd-servers",
                "https://127.0.0.1:2379",
                "--etcd-cafile",
                &ca_file,
                "--etcd-certfile",
                &cert,
                "--etcd-keyfile",
                &key,
            ]),
            "g",
        )
        .expect("valid")
        .expect("etcd");
        let tls = o.tls.expect("tls");
        assert_eq!(tls.ca_pem, ca.cert_pem.as_bytes());
        assert!(tls.identity.is_some());
        // A key file that holds a certificate instead.
        assert!(problem(&[
            "--etcd-servers",
            "https://a:2379",
            "--etcd-cafile",
            &ca_file,
            "--etcd-certfile",
            &cert,
            "--etcd-keyfile",
            &cert
        ])
        .contains("--etcd-keyfile"));
        assert!(problem(&["--etcd-servers", "https://a:2379", "--etcd-cafile", &key]).contains("--etcd-cafile"));
    }
}
