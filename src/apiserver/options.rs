//! Command-line flags of `extension-apiserver`, named like k8s.io/apiserver's where one exists,
//! each with an `EAS_*` environment fallback (handy in the pod spec and in tests).

use clap::Parser;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::telemetry::LogFormat;

/// Flags of the bundled aggregated API server.
#[derive(Parser, Clone, Debug)]
#[command(name = "extension-apiserver", version, about = "Kubernetes aggregated API server")]
pub struct Args {
    /// Address to listen on. Defaults to 0.0.0.0, or 127.0.0.1 with --standalone (a local
    /// quickstart should not be reachable from the network by accident).
    #[arg(long, env = "EAS_BIND_ADDRESS")]
    pub bind_address: Option<IpAddr>,

    /// HTTPS port; 0 picks a free port.
    #[arg(long, env = "EAS_SECURE_PORT", default_value_t = crate::serverconfig::SERVER_PORT as u16)]
    pub secure_port: u16,

    /// Server configuration (group, versions, resources).
    #[arg(long, env = "EAS_CONFIG", default_value = "/etc/extension-apiserver/config.yaml")]
    pub config: PathBuf,

    /// PEM serving certificate (chain). Reloaded when the file changes.
    #[arg(long, env = "EAS_TLS_CERT_FILE", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the serving certificate.
    #[arg(long, env = "EAS_TLS_PRIVATE_KEY_FILE", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,

    /// Where a generated self-signed CA and serving certificate are written when no
    /// --tls-cert-file is given (standalone mode only).
    #[arg(long, env = "EAS_CERT_DIR", default_value = "./extension-apiserver-certs")]
    pub cert_dir: PathBuf,

    /// Directory of the embedded store. Defaults to ./extension-apiserver-data with
    /// --standalone and /var/lib/extension-apiserver otherwise.
    #[arg(long, env = "EAS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// etcd client URLs, comma-separated (`https://etcd-0:2379,https://etcd-1:2379`). When set,
    /// objects are stored in etcd instead of the embedded store (--data-dir is then unused),
    /// so several server replicas can serve one consistent data set.
    #[arg(long, env = "EAS_ETCD_SERVERS", value_delimiter = ',')]
    pub etcd_servers: Vec<String>,

    /// Key prefix of every object in etcd. Defaults to `/registry/<group>` of the served API
    /// group, which is where kube-apiserver would keep that group's custom resources.
    #[arg(long, env = "EAS_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,

    /// CA bundle that etcd's serving certificate must chain to; required for https:// servers.
    #[arg(long, env = "EAS_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,

    /// PEM client certificate presented to etcd (for etcd's --client-cert-auth).
    #[arg(long, env = "EAS_ETCD_CERTFILE", requires = "etcd_keyfile")]
    pub etcd_certfile: Option<PathBuf>,

    /// PEM private key of --etcd-certfile.
    #[arg(long, env = "EAS_ETCD_KEYFILE", requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,

    /// Longest wait for one etcd request; a request that etcd does not answer in time fails
    /// with 504 (503 at once while etcd is known to be unreachable).
    #[arg(long, env = "EAS_ETCD_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub etcd_request_timeout: Duration,

    /// Run without a kube-apiserver: authentication from --client-ca-file / --token-auth-file
    /// (and --requestheader-* flags), authorization allow-all or --authorization-policy-file.
    #[arg(long, env = "EAS_STANDALONE")]
    pub standalone: bool,

    /// kubeconfig for reaching kube-apiserver; in-cluster configuration when unset.
    #[arg(long, env = "EAS_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Standalone: CA bundle for client certificates (user = CN, groups = O).
    #[arg(long, env = "EAS_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// Standalone: static tokens, CSV `token,user,uid,"group1,group2"` as kube-apiserver reads it.
    #[arg(long, env = "EAS_TOKEN_AUTH_FILE")]
    pub token_auth_file: Option<PathBuf>,

    /// Standalone: front-proxy CA bundle.
    #[arg(long, env = "EAS_REQUESTHEADER_CLIENT_CA_FILE")]
    pub requestheader_client_ca_file: Option<PathBuf>,

    /// Standalone: allowed front-proxy CNs (empty: any).
    #[arg(long, env = "EAS_REQUESTHEADER_ALLOWED_NAMES", value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,

    /// Standalone: username headers.
    #[arg(
        long,
        env = "EAS_REQUESTHEADER_USERNAME_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-User"
    )]
    pub requestheader_username_headers: Vec<String>,

    /// Standalone: group headers.
    #[arg(
        long,
        env = "EAS_REQUESTHEADER_GROUP_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-Group"
    )]
    pub requestheader_group_headers: Vec<String>,

    /// Standalone: extra header prefixes.
    #[arg(
        long,
        env = "EAS_REQUESTHEADER_EXTRA_HEADERS_PREFIX",
        value_delimiter = ',',
        default_value = "X-Remote-Extra-"
    )]
    pub requestheader_extra_headers_prefix: Vec<String>,

    /// Standalone: YAML policy file (list of rules). When unset, every authenticated user may do
    /// everything (and, with no authenticator configured at all, anonymous users too).
    #[arg(long, env = "EAS_AUTHORIZATION_POLICY_FILE")]
    pub authorization_policy_file: Option<PathBuf>,

    /// How long TokenReview answers are cached.
    #[arg(long, env = "EAS_AUTHENTICATION_CACHE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub authentication_cache_ttl: Duration,

    /// How long SubjectAccessReview answers (allow and deny) are cached.
    #[arg(long, env = "EAS_AUTHORIZATION_CACHE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub authorization_cache_ttl: Duration,

    /// How often the serving certificate files are checked for changes.
    #[arg(long, env = "EAS_CERT_RELOAD_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub cert_reload_interval: Duration,

    /// Most concurrent non-mutating requests (watches excluded); more get 429. 0: no limit.
    #[arg(long, env = "EAS_MAX_REQUESTS_INFLIGHT", default_value_t = 400)]
    pub max_requests_inflight: usize,

    /// Most concurrent mutating requests; more get 429. Each may buffer a body of up to 3 MiB,
    /// so this also bounds request memory. 0: no limit.
    #[arg(long, env = "EAS_MAX_MUTATING_REQUESTS_INFLIGHT", default_value_t = 200)]
    pub max_mutating_requests_inflight: usize,

    /// How often the --config file is checked for changes; resources, discovery and OpenAPI
    /// are then served from the new content without a restart.
    #[arg(long, env = "EAS_CONFIG_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub config_reload_interval: Duration,

    /// How long a client may take to send the request headers (slowloris guard, HTTP/1.1).
    #[arg(long, env = "EAS_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// After SIGTERM, keep serving this long with `/readyz` failing, so endpoints and the
    /// aggregator stop routing here before the listener closes (as kube-apiserver's flag).
    #[arg(long, env = "EAS_SHUTDOWN_DELAY_DURATION", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay_duration: Duration,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "EAS_SHUTDOWN_GRACE_PERIOD", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace_period: Duration,

    /// Log format.
    #[arg(long, env = "EAS_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl Args {
    /// The storage directory, after mode-dependent defaults.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            PathBuf::from(if self.standalone {
                "./extension-apiserver-data"
            } else {
                "/var/lib/extension-apiserver"
            })
        })
    }

    /// The address to listen on, after mode-dependent defaults.
    pub fn listen_ip(&self) -> IpAddr {
        self.bind_address.unwrap_or(if self.standalone {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from([0, 0, 0, 0])
        })
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::pki::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_depend_on_mode() {
        let cluster = Args::parse_from(["extension-apiserver"]);
        assert_eq!(cluster.listen_ip(), IpAddr::from([0, 0, 0, 0]));
        assert_eq!(cluster.secure_port, 8443);
        assert_eq!(cluster.authorization_cache_ttl, Duration::from_secs(10));
        assert_eq!(cluster.authentication_cache_ttl, Duration::from_secs(10));
        let standalone = Args::parse_from(["extension-apiserver", "--standalone"]);
        assert_eq!(standalone.listen_ip(), IpAddr::from([127, 0, 0, 1]));
        assert!(
            Args::try_parse_from(["extension-apiserver", "--tls-cert-file", "a"]).is_err(),
            "key required too"
        );
    }
}
