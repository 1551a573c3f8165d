//! Reconcile flows of the user roles (apply_roles.rs) against the in-memory API server.

use super::*;

const ROLES: &str = "/apis/rbac.authorization.k8s.io/v1/clusterroles";

fn role(level: &str) -> String {
    format!("{ROLES}/aggregation.dev:wardle-system:wardle:{level}")
}

/// The wardle spec serving Flunders.
fn spec_with_flunders() -> ExtensionApiServerSpec {
    let mut s = spec();
    s.server.as_mut().unwrap().resources = vec![serde_json::from_value(json!({
        "kind": "Flunder", "plural": "flunders", "versions": [{"name": "v1alpha1"}]
    }))
    .unwrap()];
    s
}

fn bump_generation(h: &Harness, change: impl FnOnce(&mut ExtensionApiServer)) {
    let mut eas = h.eas();
    change(&mut eas);
    eas.metadata.generation = Some(eas.metadata.generation.unwrap_or(1) + 1);
    h.api.put(EAS_PATH, serde_json::to_value(&eas).unwrap());
}

#[tokio::test]
async fn user_roles_are_applied_once_and_removed_when_disabled() {
    let h = Harness::new();
    h.put_eas(spec_with_flunders());
    h.reconcile().await.unwrap();
    h.make_available();
    h.reconcile().await.unwrap();
    let calls = h.calls();
    for level in ["view", "edit", "admin"] {
        assert!(calls.contains(&format!("PATCH {}", role(level))), "{calls:?}");
        let r = h.api.get(&role(level)).expect("role stored");
        assert_eq!(
            r["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{level}")],
            "true"
        );
    }
    // Read from the caches: no list of ClusterRoles or APIServices, no GET of a role.
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("GET ") && (c.contains("clusterroles") || c.ends_with("/apiservices"))),
        "{calls:?}"
    );
    assert!(!h.event_reasons().contains(&"UserRolesSkipped".to_string()));

    // Steady state: the caches show the roles as wanted, so not one request about them.
    h.reconcile().await.unwrap();
    let again = h.calls();
    assert!(
        !again
            .iter()
            .any(|c| c.contains(":view") || c.contains(":edit") || c.contains(":admin")),
        "{again:?}"
    );

    bump_generation(&h, |e| {
        e.spec.user_roles = Some(crate::crd::UserRoles {
            enabled: false,
            resources: vec![],
        })
    });
    h.reconcile().await.unwrap();
    let calls = h.calls();
    for level in ["view", "edit", "admin"] {
        assert!(calls.contains(&format!("DELETE {}", role(level))), "{calls:?}");
        assert!(h.api.get(&role(level)).is_none());
    }
    // The server's own ClusterRole stays.
    assert!(h
        .api
        .get(&format!("{ROLES}/aggregation.dev:wardle-system:wardle"))
        .is_some());
}

#[tokio::test]
async fn a_foreign_api_service_of_the_group_removes_the_user_roles() {
    let h = Harness::new();
    h.put_eas(spec_with_flunders());
    h.reconcile().await.unwrap();
    h.make_available();
    h.reconcile().await.unwrap();
    assert!(h.api.get(&role("view")).is_some());
    // kube-apiserver's own (a CRD of the same group, say): no owner labels.
    h.api.put(
        "/apis/apiregistration.k8s.io/v1/apiservices/v2.wardle.example.com",
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
               "metadata": {"name": "v2.wardle.example.com"},
               "spec": {"group": "wardle.example.com", "version": "v2", "groupPriorityMinimum": 1000, "versionPriority": 15}}),
    );
    h.reconcile().await.unwrap();
    for level in ["view", "edit", "admin"] {
        assert!(h.api.get(&role(level)).is_none(), "{level} role removed");
    }
    assert!(h.event_reasons().contains(&"UserRolesSkipped".to_string()));
    // Everything else is applied and the status written.
    assert!(h.api.get(APISERVICE).is_some());
    assert_eq!(h.condition("CertificatesReady").0, "True");
    let st = h.api.state.lock().unwrap();
    let msg = st
        .objects
        .iter()
        .filter(|(k, _)| k.contains("/events/"))
        .find(|(_, v)| v["reason"] == "UserRolesSkipped")
        .map(|(_, v)| v["note"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    assert!(msg.contains("v2.wardle.example.com"), "{msg}");
}

#[tokio::test]
async fn status_lists_every_version_and_the_storage_condition() {
    let h = Harness::new();
    h.put_eas(spec_with_beta());
    h.reconcile().await.unwrap();
    assert_eq!(h.eas().status.unwrap().versions.as_deref(), Some("v1alpha1,v1beta1"));
    assert_eq!(
        h.condition("StorageDurable"),
        (
            "True".to_string(),
            "PersistentVolumeClaim".to_string(),
            "the data directory is a PersistentVolumeClaim and outlives the pod".to_string()
        )
    );
    assert!(h
        .api
        .get("/api/v1/namespaces/wardle-system/persistentvolumeclaims/wardle-data")
        .is_some());
}
