//! The local target: the kube-apiserver double (its SubjectAccessReviews allow every bench
//! user) and the real `extension-apiserver` binary next to this one, with a fresh data dir or
//! on an etcd started by [`crate::storage`].

use crate::client::{Endpoint, Identity};
use crate::storage::Etcd;
use crate::Error;
use eao::testing::testkit::{self as tk, KubeDouble};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Local {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub dir: PathBuf,
    /// The server's etcd, when it runs on one; stopped after the server.
    pub etcd: Option<Etcd>,
    _double: KubeDouble,
}

impl Local {
    /// Starts the double (knowing `namespaces`, so namespace lifecycle admits creates from its
    /// cache, as in a cluster) and the server, on `etcd` when given.
    pub async fn start(
        user: Option<String>,
        groups: Vec<String>,
        namespaces: &[String],
        etcd: Option<Etcd>,
    ) -> Result<(Local, Endpoint), Error> {
        let dir = std::env::temp_dir().join(format!("eas-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let front_ca = tk::ca("front-proxy-ca")?;
        let front = tk::client_cert(&front_ca, "front-proxy-client", None)?;
        let double = KubeDouble::start(tk::auth_configmap_data(&front_ca, &["front-proxy-client"], None)).await?;
        for ns in namespaces {
            double.set_namespace(ns, false);
        }
        let kubeconfig = double.write_kubeconfig(&dir)?;
        let serving = tk::write_serving_files(&dir)?;
        let config = dir.join("config.yaml");
        std::fs::write(&config, eao::apiserver::STANDALONE_CONFIG)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let exe = std::env::current_exe()?
            .parent()
            .ok_or("no exe dir")?
            .join("extension-apiserver");
        let mut cmd = tokio::process::Command::new(&exe);
        match &etcd {
            Some(etcd) => cmd.arg(format!("--etcd-servers={}", etcd.urls().join(","))),
            None => cmd.arg("--data-dir").arg(dir.join("data")),
        };
        let child = cmd
            .args(["--bind-address", "127.0.0.1", "--log-format", "plain"])
            .args(["--secure-port", &port.to_string()])
            .arg("--config")
            .arg(&config)
            .arg("--tls-cert-file")
            .arg(&serving.cert)
            .arg("--tls-private-key-file")
            .arg(&serving.key)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("no pid")?;
        let identity = Identity {
            cert_pem: front.cert_pem.into_bytes(),
            key_pem: front.key_pem.into_bytes(),
        };
        let addr = ([127, 0, 0, 1], port).into();
        let ep = Endpoint::new(
            addr,
            "127.0.0.1",
            serving.ca.cert_pem.as_bytes(),
            Some(&identity),
            user,
            groups,
        )?;
        // Ready once the front-proxy ConfigMap is loaded and /readyz answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        let ca = serving.ca.cert_pem.clone();
        loop {
            if let Ok(mut c) = tk::connect(addr, &ca, None, false).await {
                if let Ok((http::StatusCode::OK, _, _)) = c.conn.call(tk::get("/readyz", &[])?).await {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err("server not ready".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let store = match &etcd {
            Some(etcd) => format!("etcd {}", etcd.urls().join(",")),
            None => format!("data dir {}", dir.join("data").display()),
        };
        eprintln!("server: {} (pid {pid}), {store}", exe.display());
        Ok((
            Local {
                child,
                pid,
                dir,
                etcd,
                _double: double,
            },
            ep,
        ))
    }

    /// SIGTERM, wait; then etcd stops and the directories go (on drop).
    pub async fn stop(mut self) -> Result<(), Error> {
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        if kill.success() {
            let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await??;
            eprintln!("server exit after SIGTERM: {status}");
        }
        Ok(())
    }
}

/// Also when the bench fails or is interrupted: the server is killed (`kill_on_drop`), then
/// etcd's members (a field dropped after this), and the data dir is removed.
impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
