//! Reconcile flows of etcd storage and several replicas against the in-memory API server:
//! the PodDisruptionBudget follows the replica count, and a missing etcd client Secret is
//! reported while everything is still applied.

use super::*;

const PDB: &str = "/apis/policy/v1/namespaces/wardle-system/poddisruptionbudgets/wardle";
const ETCD_SECRET: &str = "/api/v1/namespaces/wardle-system/secrets/etcd-client";

fn etcd_spec(replicas: i32) -> ExtensionApiServerSpec {
    let mut s = spec();
    s.server.as_mut().unwrap().storage = Some(
        serde_json::from_value(
            json!({"etcd": {"endpoints": ["https://etcd:2379"], "secretRef": {"name": "etcd-client"}}}),
        )
        .unwrap(),
    );
    s.replicas = Some(replicas);
    s
}

fn put_etcd_secret(h: &Harness, keys: &[&str]) {
    let data: serde_json::Map<String, Value> = keys.iter().map(|k| (k.to_string(), json!("eA=="))).collect();
    h.api.put(
        ETCD_SECRET,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "etcd-client", "namespace": NS}, "data": data}),
    );
}

fn set_replicas(h: &Harness, replicas: i32) {
    let mut eas = h.eas();
    eas.spec.replicas = Some(replicas);
    eas.metadata.generation = Some(eas.metadata.generation.unwrap_or(1) + 1);
    h.api.put(EAS_PATH, serde_json::to_value(&eas).unwrap());
}

#[tokio::test]
async fn the_disruption_budget_follows_the_replica_count() {
    let h = Harness::new();
    put_etcd_secret(&h, &["ca.crt", "tls.crt", "tls.key"]);
    h.put_eas(etcd_spec(3));
    h.converge().await;
    let pdb = h.api.get(PDB).expect("a budget for three replicas");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(
        h.api
            .get("/api/v1/namespaces/wardle-system/persistentvolumeclaims/wardle-data")
            .is_none(),
        "no claim with etcd"
    );
    assert_eq!(h.condition("StorageDurable").1, "Etcd");
    assert_ne!(h.condition("DeploymentAvailable").1, "EtcdSecretInvalid");

    // Unchanged: the cached fingerprint matches, so nothing is written again.
    h.api.take_requests();
    h.reconcile().await.unwrap();
    let calls = h.calls();
    assert!(!calls.iter().any(|c| c.contains("poddisruptionbudgets")), "{calls:?}");

    set_replicas(&h, 1);
    h.reconcile().await.unwrap();
    assert!(h.calls().contains(&format!("DELETE {PDB}")));
    assert!(h.api.get(PDB).is_none(), "one replica has no budget");
    assert!(h.event_reasons().contains(&"Deleted".to_string()));
    // Once gone from the cache, it is not deleted again.
    h.reconcile().await.unwrap();
    assert!(!h.calls().iter().any(|c| c.contains("poddisruptionbudgets")));

    set_replicas(&h, 2);
    h.reconcile().await.unwrap();
    assert!(h.api.get(PDB).is_some(), "scaled up again");
}

#[tokio::test]
async fn a_missing_etcd_secret_is_reported_and_everything_is_still_applied() {
    let h = Harness::new();
    h.put_eas(etcd_spec(2));
    h.converge().await;
    let (status, reason, message) = h.condition("DeploymentAvailable");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "EtcdSecretInvalid"));
    assert!(
        message.contains("spec.server.storage.etcd.secretRef: Secret etcd-client not found in namespace wardle-system"),
        "{message}"
    );
    assert_eq!(h.condition("Ready").1, "EtcdSecretInvalid");
    assert!(h.event_reasons().contains(&"EtcdSecretInvalid".to_string()));
    assert!(
        h.api.get(DEPLOYMENT).is_some(),
        "applied all the same: kubelet mounts the Secret once it exists"
    );

    put_etcd_secret(&h, &["ca.crt", "tls.crt"]);
    h.reconcile().await.unwrap();
    let (_, reason, message) = h.condition("DeploymentAvailable");
    assert_eq!(reason, "EtcdSecretInvalid");
    assert!(message.contains("has no tls.key"), "{message}");

    put_etcd_secret(&h, &["ca.crt", "tls.crt", "tls.key"]);
    h.reconcile().await.unwrap();
    assert_eq!(h.condition("DeploymentAvailable").0, "True");
}
