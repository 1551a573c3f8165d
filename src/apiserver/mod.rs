//! The bundled aggregated API server (`extension-apiserver`): HTTPS with rustls and hyper
//! (HTTP/2 and HTTP/1.1), authentication and authorization as k8s.io/apiserver does them,
//! discovery, OpenAPI, health and metrics. Storage-backed resource handlers plug in through
//! [`router::ResourceHandler`].

pub mod admission;
pub mod apierrors;
pub mod authn;
pub mod authz;
pub mod backend;
pub mod body;
pub mod cache;
pub mod concurrency;
pub mod discovery;
pub mod fieldselector;
pub mod filters;
pub mod health;
pub mod labels;
pub mod metrics;
pub mod names;
pub mod nonresource;
pub mod openapi;
pub mod options;
pub mod request;
pub mod resources;
pub mod router;
pub mod storage;
pub mod tls;

use crate::serverconfig::ServerConfig;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use options::Args;
use router::{App, ConnInfo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The configuration served by `--standalone` when the `--config` file does not exist.
pub const STANDALONE_CONFIG: &str = include_str!("standalone.yaml");

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per connection: kube-apiserver multiplexes every user over a few.
pub const MAX_CONCURRENT_STREAMS: u32 = 1000;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The server configuration file.
    #[error("server config {path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Serving certificate problems.
    #[error("serving certificate: {0}")]
    Tls(#[from] tls::TlsError),
    /// Missing flags.
    #[error("{0}")]
    Usage(String),
    /// Authentication setup.
    #[error("authentication: {0}")]
    AuthConfig(#[from] authn::source::AuthConfigError),
    /// Token file.
    #[error("authentication: {0}")]
    Auth(#[from] authn::AuthError),
    /// Policy file.
    #[error("authorization: {0}")]
    Authz(#[from] authz::AuthzError),
    /// kube client setup.
    #[error("kube-apiserver client: {0}")]
    Kube(String),
    /// The embedded store.
    #[error("storage in {0}: {1}")]
    Storage(String, crate::apiserver::storage::StorageError),
    /// The etcd store.
    #[error("etcd: {0}")]
    Etcd(String),
    /// Binding the port.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// A running server.
pub struct Server {
    /// The bound address.
    pub addr: SocketAddr,
    /// The CA file to trust when a self-signed certificate was generated.
    pub generated_ca: Option<std::path::PathBuf>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    app: Arc<App>,
}

impl Server {
    /// Makes `/readyz` fail while still serving everything, so load balancers stop sending new
    /// requests before the listener closes.
    pub fn drain(&self) {
        self.app.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts a graceful shutdown: stop accepting, let in-flight requests finish.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

fn load_server_config(args: &Args) -> Result<ServerConfig, ServeError> {
    let err = |message: String| ServeError::Config {
        path: args.config.display().to_string(),
        message,
    };
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) if args.standalone && e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(config = %args.config.display(), "config file not found; serving the embedded wardle.example.com example");
            STANDALONE_CONFIG.to_string()
        }
        Err(e) => return Err(err(e.to_string())),
    };
    let cfg = ServerConfig::from_yaml(&text).map_err(|e| err(e.to_string()))?;
    if cfg.group.is_empty() || cfg.versions.is_empty() {
        return Err(err("group and at least one version are required".into()));
    }
    for r in &cfg.resources {
        for v in r.versions.iter().filter(|v| !cfg.versions.contains(&v.name)) {
            // The CRD's validation should have refused this; serve the rest rather than fail.
            tracing::warn!(resource = %r.plural, version = %v.name, "version of a resource is not a served version; ignored");
        }
        for v in &r.versions {
            let Some(schema) = v.open_api_v3_schema.as_ref() else {
                continue;
            };
            for (rule, error) in resources::rule_problems(schema) {
                tracing::warn!(resource = %r.plural, version = %v.name, %rule, %error, "CEL rule does not compile; writes it judges fail with an internal error");
            }
        }
    }
    Ok(cfg)
}

/// Returns freed heap pages to the OS every few seconds. Request handling parses and
/// serializes many short-lived buffers; glibc keeps their pages mapped after a burst (a load of
/// 10,000 objects leaves several MiB resident that no object uses), which is what a memory
/// limit sees. Trimming is cheap when there is little to give back.
async fn trim_heap() {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory of the allocator; it takes no pointers
        // and is thread-safe in glibc.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// A digest of the config file's bytes (none when it cannot be read).
fn config_digest(args: &Args) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(&args.config).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Re-reads the config file when its content changes and serves the new resources, discovery
/// and OpenAPI without a restart. The kubelet swaps a mounted ConfigMap atomically (a symlink
/// flip), so polling the content is both simple and reliable; inotify would miss the flip.
/// A file that does not parse, or that changes the group, is reported and not served.
async fn watch_config(args: Args, app: Arc<App>, mut last: Option<u64>) {
    let mut tick = tokio::time::interval(args.config_reload_interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = config_digest(&args);
        if now.is_none() || now == last {
            continue;
        }
        last = now;
        match load_server_config(&args) {
            Ok(cfg) if cfg.group != app.served().config.group => {
                tracing::error!(config = %args.config.display(), from = %app.served().config.group, to = %cfg.group,
                    "config changes the API group, which needs a restart; keeping the current configuration");
            }
            Ok(cfg) => {
                tracing::info!(config = %args.config.display(), resources = cfg.resources.len(), versions = ?cfg.versions,
                    "configuration changed; serving the new resources, discovery and OpenAPI");
                app.replace(router::Served::new(cfg));
            }
            Err(e) => tracing::error!(error = %e, "configuration changed but is invalid; keeping the current one"),
        }
    }
}

async fn kube_client(args: &Args) -> Result<kube::Client, ServeError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| ServeError::Kube(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ServeError::Kube(e.to_string()))?
        }
        None => kube::Config::incluster().map_err(|e| ServeError::Kube(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| ServeError::Kube(e.to_string()))
}

/// Validates everything, binds, and starts serving in the background.
pub async fn start(args: Args) -> Result<Server, ServeError> {
    // kube and rustls may both look for a process-wide provider; ours is aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cfg = load_server_config(&args)?;
    let etcd = backend::etcd_options(&args, &cfg.group)?;

    let (cert, key, generated_ca) = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), None),
        _ if args.standalone => {
            let g = tls::ensure_self_signed(&args.cert_dir)?;
            tracing::info!(ca = %g.ca.display(), "using a self-signed serving certificate");
            (g.cert, g.key, Some(g.ca))
        }
        _ => {
            return Err(ServeError::Usage(
                "--tls-cert-file and --tls-private-key-file are required".into(),
            ))
        }
    };
    // Checked before binding, so a bad Secret fails the pod with a clear message.
    let (ck, digest) = tls::load_files(&cert, &key)?;
    let serving = tls::ServingCert::new(ck);
    let tls_config = tls::server_config(serving.clone())?;

    let (auth_state, tokens, authorizer, namespaces, admission) = if args.standalone {
        let state = authn::source::AuthState::loaded(authn::source::from_args(&args)?);
        let tokens = match &args.token_auth_file {
            Some(p) => authn::TokenAuthenticator::from_file(p)?,
            None => authn::TokenAuthenticator::None,
        };
        let any_authenticator = args.token_auth_file.is_some()
            || args.client_ca_file.is_some()
            || args.requestheader_client_ca_file.is_some();
        let authorizer = match &args.authorization_policy_file {
            Some(p) => authz::Authorizer::from_policy_file(p)?,
            None if any_authenticator => authz::Authorizer::AllowAuthenticated,
            None => {
                tracing::warn!("standalone without --token-auth-file, --client-ca-file or a policy: every request is allowed, anonymous ones too");
                authz::Authorizer::AllowAll
            }
        };
        (
            state,
            tokens,
            authorizer,
            Arc::new(admission::namespace_lifecycle::Namespaces::Any),
            // No cluster, so no cluster policy to apply.
            admission::Admission::none(),
        )
    } else {
        let client = kube_client(&args).await?;
        let state = Arc::new(authn::source::AuthState::default());
        tokio::spawn(authn::source::follow(client.clone(), state.clone()));
        let tokens =
            authn::TokenAuthenticator::Review(authn::TokenReviewer::new(client.clone(), args.authentication_cache_ttl));
        let namespaces = admission::namespace_lifecycle::Namespaces::follow(client.clone());
        // The cluster's admission policy applies to our resources as to kube-apiserver's:
        // policies first, then webhooks, in each phase (kube-apiserver's plugin order).
        let admission = admission::Admission::new(vec![
            admission::mutating::follow(client.clone(), namespaces.clone()),
            admission::policy::Policies::follow(client.clone(), namespaces.clone()),
            admission::webhook::Webhooks::follow(client.clone(), namespaces.clone()),
        ]);
        let authorizer = authz::Authorizer::Delegated(authz::SarAuthorizer::new(client, args.authorization_cache_ttl));
        (state, tokens, authorizer, namespaces, admission)
    };

    // Opened before binding: a server that cannot keep data must not become ready.
    let storage = backend::open(&args, etcd).await?;
    let resources = resources::StorageHandler::on_etcd(
        storage.store,
        cfg.group.clone(),
        namespaces.clone(),
        admission,
        storage.etcd,
    );
    let group = cfg.group.clone();
    let config_digest = config_digest(&args);

    let (tx, rx) = watch::channel(false);
    let app = Arc::new(App {
        metrics: metrics::Metrics::new(cfg.resources.iter().map(|r| r.plural.clone())),
        served: std::sync::RwLock::new(router::Served::new(cfg)),
        inflight: concurrency::InFlight::new(args.max_requests_inflight, args.max_mutating_requests_inflight),
        ready_log: Default::default(),
        namespaces,
        auth: auth_state,
        tokens,
        authz: authorizer,
        resources,
        shutdown: rx.clone(),
        draining: Default::default(),
    });

    let bind = SocketAddr::new(args.listen_ip(), args.secure_port);
    let listener = TcpListener::bind(bind).await.map_err(|e| ServeError::Bind(bind, e))?;
    let addr = listener.local_addr().map_err(|e| ServeError::Bind(bind, e))?;
    tracing::info!(%addr, group = %group, "serving");

    let reload = tokio::spawn(tls::watch_files(serving, cert, key, args.cert_reload_interval, digest));
    let config_reload = tokio::spawn(watch_config(args.clone(), app.clone(), config_digest));
    let trim = tokio::spawn(trim_heap());
    let header_timeout = args.header_read_timeout;
    let served = app.clone();
    let task = tokio::spawn(async move {
        accept_loop(
            listener,
            tokio_rustls::TlsAcceptor::from(tls_config),
            served,
            rx,
            http_builder(header_timeout),
            args.shutdown_grace_period,
        )
        .await;
        reload.abort();
        config_reload.abort();
        trim.abort();
    });
    Ok(Server {
        addr,
        generated_ca,
        shutdown: tx,
        task,
        app,
    })
}

fn http_builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Arc<App>,
    mut shutdown: watch::Receiver<bool>,
    builder: auto::Builder<TokioExecutor>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %remote, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| authn::PeerCerts::new(c.to_vec()));
            let conn = Arc::new(ConnInfo {
                peer,
                remote: Some(remote),
            });
            let svc = service_fn(move |req| {
                let app = app.clone();
                let conn = conn.clone();
                async move { Ok::<_, Infallible>(filters::serve(&app, req, &conn).await) }
            });
            let served = builder.serve_connection(TokioIo::new(tls), svc).into_owned();
            if let Err(e) = watcher.watch(served).await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(args: Args) -> Result<(), ServeError> {
    let delay = args.shutdown_delay_duration;
    let server = start(args).await?;
    if let Some(ca) = &server.generated_ca {
        tracing::info!(ca = %ca.display(), addr = %server.addr, "standalone: trust this CA to reach the server");
    }
    wait_for_signal().await;
    if !delay.is_zero() {
        tracing::info!(
            ?delay,
            "termination requested: readiness off, still serving during the shutdown delay"
        );
        server.drain();
        tokio::time::sleep(delay).await;
    }
    server.shutdown();
    server.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
