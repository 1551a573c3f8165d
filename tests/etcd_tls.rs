//! TLS to etcd for real: an etcd serving https that requires client certificates
//! (`--client-cert-auth`), and the etcd store connecting to it with the CA and client
//! certificate of `--etcd-cafile`/`--etcd-certfile`/`--etcd-keyfile`, without a client
//! certificate, and with one from another CA. Skipped without an etcd binary.

use eao::apiserver::storage::{EtcdOptions, EtcdStore, EtcdTls, Store};
use eao::testing::certs;
use eao::testing::etcd::Etcd;
use serde_json::json;
use std::time::Duration;

fn options(etcd: &Etcd, tls: Option<EtcdTls>) -> EtcdOptions {
    let mut opts = EtcdOptions::new(vec![etcd.url().to_string()], "/registry/tls.example.com");
    // Refused handshakes are not retried forever: the failure must show within this.
    opts.request_timeout = Duration::from_secs(5);
    opts.tls = tls;
    opts
}

fn message(r: Result<EtcdStore, eao::apiserver::storage::StorageError>) -> String {
    match r {
        Ok(_) => panic!("connected although etcd must refuse this client"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn etcd_over_tls_with_client_certificates() {
    let Some(etcd) = Etcd::start_tls_or_skip("etcd_over_tls_with_client_certificates").await else {
        return;
    };
    let etcd = etcd.expect("etcd starts");
    assert!(etcd.url().starts_with("https://"), "{}", etcd.url());
    let files = etcd.tls().expect("tls files");

    // The client certificate of etcd's CA: reads and writes work.
    let store = EtcdStore::connect(options(&etcd, Some(files.client_tls())))
        .await
        .expect("connects with the client certificate");
    let obj = json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {}});
    let created = store.create("/f/ns/a", obj).await.expect("create over TLS");
    assert_eq!(store.get("/f/ns/a").map(|o| o.rv), Some(created.rv));
    assert!(store.unhealthy().is_none());

    // No client certificate: etcd refuses the handshake.
    let no_cert = EtcdTls {
        ca_pem: files.ca.cert_pem.clone().into_bytes(),
        identity: None,
    };
    let why = message(EtcdStore::connect(options(&etcd, Some(no_cert))).await);
    // With TLS 1.3 the client may see etcd's `CertificateRequired` alert or only the closed
    // connection, whichever comes first; either way the connect fails.
    assert!(why.contains("etcd"), "an etcd error: {why}");

    // A client certificate of another CA: refused too.
    let other_ca = certs::ca("not-etcds-ca").expect("ca");
    let stranger = certs::client_cert(&other_ca, "stranger", None).expect("cert");
    let foreign = EtcdTls {
        ca_pem: files.ca.cert_pem.clone().into_bytes(),
        identity: Some((stranger.cert_pem.into_bytes(), stranger.key_pem.into_bytes())),
    };
    // Again the client learns of the refusal as an alert or as a closed connection.
    let why = message(EtcdStore::connect(options(&etcd, Some(foreign))).await);
    assert!(why.contains("etcd"), "an etcd error: {why}");

    // Not trusting etcd's CA: the client refuses etcd's certificate.
    let wrong_trust = EtcdTls {
        ca_pem: other_ca.cert_pem.clone().into_bytes(),
        identity: Some((
            files.client.cert_pem.clone().into_bytes(),
            files.client.key_pem.clone().into_bytes(),
        )),
    };
    let why = message(EtcdStore::connect(options(&etcd, Some(wrong_trust))).await);
    assert!(why.contains("UnknownIssuer"), "names the untrusted certificate: {why}");
}
