//! The operator on the real control plane, installed with the chart (so with the chart's RBAC)
//! and run by the stand-in kubelet, as in tests/install.rs.

use crate::cluster::{chart_dir, pod_options, text, Cluster, Harness, OPERATOR, OPERATOR_BINARY, OP_NS, RELEASE};
use eao::testing::controlplane::ControlPlane;
use eao::testing::pod::RunningPod;
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const NS: &str = "spec-test";

fn placement() -> Value {
    json!({
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "api", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "wardle"}}}],
        "priorityClassName": "eas-test",
        "imagePullSecrets": [{"name": "regcred"}],
        "labels": {"team": "api"},
        "annotations": {"example.com/owner": "team-api"},
        "env": [{"name": "EAS_TEST_MARKER", "value": "1"}],
    })
}

fn manifests() -> String {
    let flunder = json!({"kind": "Flunder", "plural": "flunders", "subresources": {"status": {}},
        "versions": [{"name": "v1alpha1", "openAPIV3Schema": {"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"reference": {"type": "string"}}}}}},
                     {"name": "v1beta1", "openAPIV3Schema": {"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"reference": {"type": "string"}}}}}}]});
    let fischer = json!({"kind": "Fischer", "plural": "fischers", "scope": "Cluster",
                         "versions": [{"name": "v1alpha1"}]});
    let docs = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
               "metadata": {"name": "eas-test"}, "value": 1000}),
        // The bundled server: default storage, every placement field, default user roles.
        json!({"apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
               "metadata": {"name": "wardle", "namespace": NS},
               "spec": {"group": "wardle.example.com",
                        "versions": [{"name": "v1alpha1"}, {"name": "v1beta1", "versionPriority": 20}],
                        "server": {"logFormat": "plain", "resources": [flunder, fischer]},
                        "pod": placement()}}),
        // Your own image (never run here): host network, extra volumes, env, listed user roles.
        json!({"apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
               "metadata": {"name": "widgets", "namespace": NS},
               "spec": {"group": "widgets.example.com", "versions": [{"name": "v1"}],
                        "image": {"image": "example/widgets:1", "port": 9443},
                        "userRoles": {"resources": ["widgets", "widgets/status"]},
                        "pod": {"hostNetwork": true,
                                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                                "volumes": [{"name": "plugins", "configMap": {"name": "plugins", "optional": true}},
                                            {"name": "scratch", "emptyDir": {}}],
                                "volumeMounts": [{"name": "plugins", "mountPath": "/plugins", "readOnly": true},
                                                 {"name": "scratch", "mountPath": "/tmp"}]}}}),
        // etcd storage, three replicas, its client Secret not created yet (never run here).
        json!({"apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
               "metadata": {"name": "quotes", "namespace": NS},
               "spec": {"group": "quotes.example.com", "versions": [{"name": "v1"}], "replicas": 3,
                        "server": {"storage": {"etcd": {"endpoints": ["https://etcd-0.etcd.db:2379", "https://etcd-1.etcd.db:2379"],
                                                        "secretRef": {"name": "etcd-client"}}},
                                   "resources": [{"kind": "Quote", "plural": "quotes", "versions": [{"name": "v1"}]}]}}}),
        // Ephemeral storage, on request only.
        json!({"apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
               "metadata": {"name": "scratch", "namespace": NS},
               "spec": {"group": "scratch.example.com", "versions": [{"name": "v1"}],
                        "server": {"storage": {"embedded": {"ephemeral": true}},
                                   "resources": [{"kind": "Note", "plural": "notes", "versions": [{"name": "v1"}]}]}}}),
    ];
    docs.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n---\n")
}

/// The `name` of every element of a JSON list (volumes, mounts, containers).
fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect()
}

fn deployment_json(c: &Cluster, name: &str) -> Option<Value> {
    c.try_json(&["get", "deployment", name, "-n", NS])
}

/// Name → (uid, resourceVersion, spec) of every object `kubectl get <what>` lists.
fn snapshot(c: &Cluster, args: &[&str]) -> BTreeMap<String, (Value, Value, Value)> {
    let list = c
        .try_json(args)
        .unwrap_or_else(|| panic!("list {args:?}\n{}", c.diagnostics()));
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let m = &o["metadata"];
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                (m["uid"].clone(), m["resourceVersion"].clone(), o["spec"].clone()),
            )
        })
        .collect()
}

fn can_i(c: &Cluster, user: &str, verb: &str, resource: &str) -> bool {
    let mut args = vec!["auth", "can-i", verb, "-n", NS, "--as", user];
    match resource.split_once('/') {
        Some((r, sub)) => args.extend([r, "--subresource", sub]),
        None => args.push(resource),
    }
    let out = c.kubectl(&args);
    text(&out.stdout).trim() == "yes"
}

pub async fn scenario(cp: &'static ControlPlane) {
    let mut c = Cluster::new(cp);
    c.namespaces = vec![NS.to_string(), OP_NS.to_string()];
    let chart = chart_dir();
    let chart = chart.to_str().expect("UTF-8 path");

    // 1. The chart's operator, with the chart's RBAC (its own CRD is left to ensure_crd).
    c.install_chart(&["--set", "crds.enabled=false"]);
    let d: Deployment = serde_json::from_value(
        c.try_json(&["get", "deployment", OPERATOR, "-n", OP_NS])
            .expect("the chart made the operator Deployment"),
    )
    .expect("a Deployment");
    let op_binary = env!("CARGO_BIN_EXE_extension-apiserver-operator");
    c.operator =
        Some(RunningPod::start(cp, &d, pod_options(op_binary, &[], OPERATOR_BINARY)).expect("operator runner"));
    let rollout = format!("deployment/{OPERATOR}");
    c.kubectl_ok(&["rollout", "status", &rollout, "-n", OP_NS, "--timeout=150s"]);

    c.kubectl_ok_in(&["apply", "-f", "-"], Some(&manifests()));
    let server = c
        .eventually("the operator creates the wardle Deployment", || {
            deployment_json(&c, "wardle")
        })
        .await;

    // 2. What kube stored: the Deployment with every placement field, Recreate with the claim.
    let tpl = &server["spec"]["template"];
    let want = placement();
    assert_eq!(server["spec"]["strategy"], json!({"type": "Recreate"}), "a RWO claim");
    for field in [
        "nodeSelector",
        "tolerations",
        "affinity",
        "topologySpreadConstraints",
        "priorityClassName",
        "imagePullSecrets",
    ] {
        assert_eq!(tpl["spec"][field], want[field], "{field} as stored by kube");
    }
    assert_eq!(tpl["metadata"]["labels"]["team"], "api");
    assert_eq!(tpl["metadata"]["labels"]["app.kubernetes.io/instance"], "wardle");
    assert_eq!(tpl["metadata"]["annotations"]["example.com/owner"], "team-api");
    assert_eq!(tpl["spec"]["containers"][0]["env"], want["env"]);
    let data = tpl["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "data").cloned());
    assert_eq!(
        data,
        Some(json!({"name": "data", "persistentVolumeClaim": {"claimName": "wardle-data"}}))
    );
    let pvc = c
        .try_json(&["get", "pvc", "wardle-data", "-n", NS])
        .expect("the claim exists");
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(pvc["spec"]["resources"], json!({"requests": {"storage": "1Gi"}}));
    assert_eq!(pvc["metadata"]["ownerReferences"][0]["name"], "wardle");
    // The ReplicaSet's pod went through kube's admission: the PriorityClass was resolved.
    let pod = c
        .eventually("the ReplicaSet creates the server pod", || {
            let pods = c.try_json(&["get", "pods", "-n", NS, "-l", "app.kubernetes.io/instance=wardle"])?;
            pods["items"].as_array()?.first().cloned()
        })
        .await;
    assert_eq!(pod["spec"]["priority"], 1000, "{pod:#}");
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "dedicated");

    // 3. The user roles, and the built-in roles they are aggregated into.
    let prefix = format!("aggregation.dev:{NS}:wardle");
    for level in ["view", "edit", "admin"] {
        let role = c
            .eventually(&format!("the {level} role"), || {
                c.try_json(&["get", "clusterrole", &format!("{prefix}:{level}")])
            })
            .await;
        assert_eq!(
            role["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{level}")],
            "true"
        );
        assert_eq!(role["metadata"]["labels"]["aggregation.dev/owner-name"], "wardle");
        assert_eq!(
            role["rules"][0],
            json!({"apiGroups": ["wardle.example.com"], "resources": ["flunders", "flunders/status", "fischers"],
                   "verbs": ["get", "list", "watch"]})
        );
        let writes = (level != "view").then(|| {
            json!({"apiGroups": ["wardle.example.com"], "resources": ["flunders", "fischers"],
                   "verbs": ["create", "update", "patch", "delete", "deletecollection"]})
        });
        assert_eq!(role["rules"].get(1).cloned(), writes, "{level}");
    }
    c.eventually("kube-controller-manager aggregates the view role into view", || {
        let view = c.try_json(&["get", "clusterrole", "view"])?;
        view["rules"]
            .as_array()?
            .iter()
            .any(|r| r["apiGroups"] == json!(["wardle.example.com"]))
            .then_some(())
    })
    .await;

    // 4. The bundled server runs; Ready, with every version in the Versions column.
    let old_image = tpl["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let server: Deployment = serde_json::from_value(server.clone()).expect("a Deployment");
    let server_binary = env!("CARGO_BIN_EXE_extension-apiserver");
    let opts = pod_options(server_binary, &["EAS_KUBECONFIG"], eao::serverconfig::SERVER_BINARY);
    c.server = Some(RunningPod::start(cp, &server, opts).expect("server runner"));
    c.eventually("wardle is Ready", || {
        let ready = c.condition(NS, "wardle", "Ready")?;
        (ready.0 == "True").then_some(())
    })
    .await;
    let table = c.kubectl_ok(&["get", "eas", "wardle", "-n", NS]);
    assert!(table.contains("v1alpha1,v1beta1"), "{table}");
    assert_eq!(
        c.condition(NS, "wardle", "StorageDurable"),
        Some(("True".into(), "PersistentVolumeClaim".into()))
    );

    // 5. Users through the aggregator, with nothing but the built-in roles bound to them.
    c.kubectl_ok(&[
        "create",
        "rolebinding",
        "viewer",
        "--clusterrole=view",
        "--user=viewer",
        "-n",
        NS,
    ]);
    c.kubectl_ok(&[
        "create",
        "rolebinding",
        "editor",
        "--clusterrole=edit",
        "--user=editor",
        "-n",
        NS,
    ]);
    c.eventually("RBAC lets the viewer list flunders", || {
        can_i(&c, "viewer", "list", "flunders.wardle.example.com").then_some(())
    })
    .await;
    assert!(can_i(&c, "viewer", "watch", "flunders.wardle.example.com"));
    assert!(!can_i(&c, "viewer", "create", "flunders.wardle.example.com"));
    assert!(can_i(&c, "editor", "create", "flunders.wardle.example.com"));
    assert!(can_i(&c, "editor", "deletecollection", "flunders.wardle.example.com"));
    assert!(can_i(&c, "viewer", "get", "flunders.wardle.example.com/status"));
    assert!(!can_i(&c, "editor", "update", "flunders.wardle.example.com/status"));
    assert!(!can_i(&c, "nobody", "list", "flunders.wardle.example.com"));
    let flunder = |name: &str| {
        format!(
            r#"{{"apiVersion":"wardle.example.com/v1alpha1","kind":"Flunder","metadata":{{"name":"{name}","namespace":"{NS}"}},"spec":{{"reference":"{name}-ref"}}}}"#
        )
    };
    let denied = c.kubectl_in(&["create", "-f", "-", "--as", "viewer"], Some(&flunder("by-viewer")));
    assert!(!denied.status.success(), "a viewer created a Flunder");
    assert!(text(&denied.stderr).contains("forbidden"), "{}", text(&denied.stderr));
    for i in 0..20 {
        c.kubectl_ok_in(
            &["create", "-f", "-", "--as", "editor"],
            Some(&flunder(&format!("f{i:02}"))),
        );
    }
    let listed = c.kubectl_ok(&["get", "flunders", "-n", NS, "--as", "viewer", "-o", "name"]);
    assert_eq!(listed.lines().count(), 20, "{listed}");
    let nobody = c.kubectl(&["get", "flunders", "-n", NS, "--as", "nobody"]);
    assert!(
        !nobody.status.success() && text(&nobody.stderr).contains("forbidden"),
        "{}",
        text(&nobody.stderr)
    );
    for i in 0..3 {
        let fischer =
            format!(r#"{{"apiVersion":"wardle.example.com/v1alpha1","kind":"Fischer","metadata":{{"name":"fi{i}"}}}}"#);
        c.kubectl_ok_in(&["create", "-f", "-"], Some(&fischer));
    }

    // 6. An operator upgrade changes the server image: Recreate, same claim, every object back.
    let flunders_before = snapshot(&c, &["get", "flunders.v1beta1.wardle.example.com", "-n", NS]);
    let fischers_before = snapshot(&c, &["get", "fischers"]);
    assert_eq!((flunders_before.len(), fischers_before.len()), (20, 3));
    // A new tag moves the operator and its --server-image; the admin port moves because the
    // runner's pods share one network namespace (see tests/install.rs).
    c.helm_ok(&[
        "upgrade",
        RELEASE,
        chart,
        "-n",
        OP_NS,
        "--reuse-values",
        "--set",
        "image.tag=0.1.1-upgrade",
        "--set",
        "adminPort=8081",
    ]);
    c.kubectl_ok(&["rollout", "status", &rollout, "-n", OP_NS, "--timeout=150s"]);
    let new_image = c
        .eventually("the upgraded operator changes the server image", || {
            let d = deployment_json(&c, "wardle")?;
            let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()?
                .to_string();
            (image != old_image).then_some(image)
        })
        .await;
    assert!(new_image.ends_with(":0.1.1-upgrade"), "{new_image}");
    c.kubectl_ok(&["rollout", "status", "deployment/wardle", "-n", NS, "--timeout=150s"]);
    c.eventually("the new server pod is the only one", || {
        let pods = c.try_json(&["get", "pods", "-n", NS, "-l", "app.kubernetes.io/instance=wardle"])?;
        let items = pods["items"].as_array()?;
        (items.len() == 1 && items[0]["spec"]["containers"][0]["image"] == new_image.as_str()).then_some(())
    })
    .await;
    c.eventually("wardle is Ready", || {
        let ready = c.condition(NS, "wardle", "Ready")?;
        (ready.0 == "True").then_some(())
    })
    .await;
    let flunders_after = c
        .eventually("the upgraded server answers", || {
            let out = c.kubectl(&["get", "flunders.v1beta1.wardle.example.com", "-n", NS, "-o", "json"]);
            out.status
                .success()
                .then(|| snapshot(&c, &["get", "flunders.v1beta1.wardle.example.com", "-n", NS]))
        })
        .await;
    assert_eq!(
        flunders_after, flunders_before,
        "every Flunder, with its uid, resourceVersion and spec"
    );
    assert_eq!(snapshot(&c, &["get", "fischers"]), fischers_before);

    // 7. Own image and ephemeral storage as stored; where escalate must not reach.
    own_image_and_ephemeral(&c).await;
    etcd_storage(&c).await;
    crate::edges::a_crd_of_the_group_removes_the_user_roles(&c).await;
    crate::edges::spec_rules_stay_unbound(&c).await;

    // 8. Without rbac.userRoles the operator holds no escalate: Kubernetes refuses new user
    //    roles, and the operator says so in a Warning Event (existing, unchanged roles stay).
    c.helm_ok(&[
        "upgrade",
        RELEASE,
        chart,
        "-n",
        OP_NS,
        "--reuse-values",
        "--set",
        "rbac.userRoles=false",
    ]);
    let cr = c
        .try_json(&["get", "clusterrole", OPERATOR])
        .expect("the chart's ClusterRole");
    assert!(!cr.to_string().contains("escalate"), "{cr:#}");
    let late = json!({"apiVersion": "aggregation.dev/v1alpha1", "kind": "ExtensionApiServer",
        "metadata": {"name": "late", "namespace": NS},
        "spec": {"group": "late.example.com", "versions": [{"name": "v1"}],
                 "server": {"storage": {"embedded": {"ephemeral": true}},
                            "resources": [{"kind": "Memo", "plural": "memos", "versions": [{"name": "v1"}]}]}}});
    c.kubectl_ok_in(&["apply", "-f", "-"], Some(&late.to_string()));
    c.eventually("a Warning Event says why there are no user roles", || {
        let ev = c.try_json(&["get", "events", "-n", NS, "--field-selector", "reason=UserRolesSkipped"])?;
        ev["items"]
            .as_array()?
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.contains("may not create them")))
            .then_some(())
    })
    .await;
    assert!(c
        .try_json(&["get", "clusterrole", &format!("aggregation.dev:{NS}:late:view")])
        .is_none());
    // The rest is applied all the same (its APIService waits for a replica, which no pod
    // runner provides for this object).
    c.eventually("the rest of the server is applied all the same", || {
        c.try_json(&["get", "deployment", "late", "-n", NS]).map(|_| ())
    })
    .await;

    // 9. Opting out removes the roles, and with them the viewer's access.
    c.kubectl_ok(&[
        "patch",
        "eas",
        "wardle",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"userRoles":{"enabled":false}}}"#,
    ]);
    c.eventually("the roles are deleted and the viewer loses access", || {
        let gone = ["view", "edit", "admin"]
            .iter()
            .all(|l| c.try_json(&["get", "clusterrole", &format!("{prefix}:{l}")]).is_none());
        (gone && !can_i(&c, "viewer", "list", "flunders.wardle.example.com")).then_some(())
    })
    .await;

    // 10. Deleting the objects removes the cluster-scoped user roles (the finalizer).
    c.kubectl_ok(&["delete", "eas", "--all", "-n", NS, "--timeout=150s"]);
    let left = c.kubectl_ok(&[
        "get",
        "clusterroles",
        "-l",
        &format!("aggregation.dev/owner-namespace={NS}"),
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "left behind: {left}");
    c.server = None;
}

async fn own_image_and_ephemeral(c: &Cluster) {
    let own = c
        .eventually("the widgets Deployment", || deployment_json(c, "widgets"))
        .await;
    let p = &own["spec"]["template"]["spec"];
    assert_eq!(
        (p["hostNetwork"].clone(), p["dnsPolicy"].clone()),
        (json!(true), json!("ClusterFirstWithHostNet"))
    );
    let volumes = names(&p["volumes"]);
    assert_eq!(volumes, ["serving-cert", "plugins", "scratch"]);
    let mounts: Vec<&str> = p["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["mountPath"].as_str())
        .collect();
    assert_eq!(
        mounts,
        ["/var/run/extension-apiserver/serving-cert", "/plugins", "/tmp"]
    );
    assert_eq!(
        p["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert!(
        c.try_json(&["get", "pvc", "widgets-data", "-n", NS]).is_none(),
        "own images keep their own storage"
    );
    let view = c
        .eventually("the widgets view role", || {
            c.try_json(&["get", "clusterrole", &format!("aggregation.dev:{NS}:widgets:view")])
        })
        .await;
    assert_eq!(view["rules"][0]["resources"], json!(["widgets", "widgets/status"]));
    let edit = c
        .try_json(&["get", "clusterrole", &format!("aggregation.dev:{NS}:widgets:edit")])
        .expect("edit role");
    assert_eq!(
        edit["rules"][1]["resources"],
        json!(["widgets"]),
        "subresources stay read-only"
    );

    let eph = c
        .eventually("the scratch Deployment", || deployment_json(c, "scratch"))
        .await;
    assert_eq!(eph["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(eph["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    assert!(c.try_json(&["get", "pvc", "scratch-data", "-n", NS]).is_none());
    let cond = c
        .eventually("StorageDurable warns about the emptyDir", || {
            c.condition(NS, "scratch", "StorageDurable")
        })
        .await;
    assert_eq!(cond, ("False".to_string(), "Ephemeral".to_string()));
    let ready = c.condition(NS, "scratch", "Ready").expect("Ready");
    assert_ne!(ready.1, "Ephemeral", "the warning is not why it is not Ready");
}

/// etcd storage with three replicas: the flags, the client Secret mounted into the server
/// container only, no claim, the default anti-affinity and a PodDisruptionBudget (applied with
/// the chart's RBAC); a missing Secret reported until it exists; scaling to one replica removes
/// the budget.
async fn etcd_storage(c: &Cluster) {
    let d = c
        .eventually("the quotes Deployment", || deployment_json(c, "quotes"))
        .await;
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
    );
    let p = &d["spec"]["template"]["spec"];
    let args: Vec<&str> = p["containers"][0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for flag in [
        "--etcd-servers=https://etcd-0.etcd.db:2379,https://etcd-1.etcd.db:2379",
        "--etcd-prefix=/registry/quotes.example.com",
        "--etcd-cafile=/var/run/extension-apiserver/etcd-client/ca.crt",
        "--etcd-certfile=/var/run/extension-apiserver/etcd-client/tls.crt",
        "--etcd-keyfile=/var/run/extension-apiserver/etcd-client/tls.key",
    ] {
        assert!(args.contains(&flag), "{flag} missing from {args:?}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--data-dir")), "{args:?}");
    let volumes = names(&p["volumes"]);
    assert_eq!(volumes, ["serving-cert", "config", "etcd-client"]);
    let containers = p["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let etcd_mount = containers[0]["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "etcd-client").cloned());
    assert_eq!(
        etcd_mount,
        Some(json!({"name": "etcd-client", "mountPath": "/var/run/extension-apiserver/etcd-client", "readOnly": true}))
    );
    assert_eq!(
        p["affinity"],
        json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "extension-apiserver",
                                                                  "app.kubernetes.io/instance": "quotes"}}}}]}})
    );
    assert!(
        c.try_json(&["get", "pvc", "quotes-data", "-n", NS]).is_none(),
        "no claim with etcd"
    );
    let pdb = c
        .eventually("the PodDisruptionBudget", || {
            c.try_json(&["get", "poddisruptionbudget", "quotes", "-n", NS])
        })
        .await;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    assert_eq!(
        pdb["spec"]["selector"],
        json!({"matchLabels": {"app.kubernetes.io/name": "extension-apiserver", "app.kubernetes.io/instance": "quotes"}})
    );
    assert_eq!(pdb["metadata"]["ownerReferences"][0]["name"], "quotes");
    assert_eq!(
        c.condition(NS, "quotes", "StorageDurable"),
        Some(("True".into(), "Etcd".into()))
    );

    // The client Secret is missing: said in DeploymentAvailable (and so in Ready).
    let cond = c
        .eventually("DeploymentAvailable names the missing Secret", || {
            let cond = c.condition(NS, "quotes", "DeploymentAvailable")?;
            (cond.1 == "EtcdSecretInvalid").then_some(cond)
        })
        .await;
    assert_eq!(cond.0, "False");
    let ready = c.condition(NS, "quotes", "Ready").expect("Ready");
    assert_eq!(ready, ("False".into(), "EtcdSecretInvalid".into()));
    // Creating it triggers a reconcile through the Secret watch, without waiting for a resync.
    c.kubectl_ok_in(
        &["apply", "-f", "-"],
        Some(
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "etcd-client", "namespace": NS},
                    "type": "kubernetes.io/tls",
                    "data": {"ca.crt": "Y2E=", "tls.crt": "Y3J0", "tls.key": "a2V5"}})
            .to_string(),
        ),
    );
    c.eventually("the Secret is no longer reported", || {
        let cond = c.condition(NS, "quotes", "DeploymentAvailable")?;
        (cond.1 != "EtcdSecretInvalid").then_some(())
    })
    .await;

    // One replica needs no budget (it would block every drain of its node).
    c.kubectl_ok(&[
        "patch",
        "eas",
        "quotes",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":1}}"#,
    ]);
    c.eventually("the budget is deleted", || {
        c.try_json(&["get", "poddisruptionbudget", "quotes", "-n", NS])
            .is_none()
            .then_some(())
    })
    .await;
    let d = deployment_json(c, "quotes").expect("the Deployment");
    assert_eq!(d["spec"]["replicas"], 1);
    assert!(d["spec"]["template"]["spec"].get("affinity").is_none(), "{d:#}");
}
