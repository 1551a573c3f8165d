//! Unit tests of `managed.rs` and of server-side apply's merge (`apply.rs`), which together
//! keep `metadata.managedFields`.

use super::super::apply::{apply_create, apply_update};
use super::*;
use crate::crd::ServedResource;
use http::StatusCode;
use std::collections::HashMap;

fn cx(manager: &str, status_sub: bool) -> Cx {
    let res: ServedResource = serde_json::from_value(json!({
        "kind": "Thing", "plural": "things", "versions": [{"name": "v1"}], "subresources": {"status": {}}
    }))
    .expect("resource");
    Cx {
        group: "g".into(),
        api_version: "g/v1".into(),
        version_prefix: r#"{"apiVersion":"g/v1""#.into(),
        res: std::sync::Arc::new(res),
        namespace: "n".into(),
        name: "a".into(),
        status_sub,
        query: HashMap::new(),
        form: super::super::output::Form::Object,
        manager: manager.into(),
        warnings: Default::default(),
        content_type: "application/json".into(),
        user: Default::default(),
        verb: "update".into(),
    }
}

fn obj(spec: Value) -> Value {
    json!({"apiVersion": "g/v1", "kind": "Thing", "metadata": {"name": "a", "namespace": "n"}, "spec": spec})
}

fn fields_of<'a>(v: &'a Value, manager: &str, op: &str) -> Option<&'a Value> {
    v["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == op)
        .map(|e| &e["fieldsV1"])
}

#[test]
fn updates_move_ownership_and_drop_empty_entries() {
    let old = obj(json!({"size": 1}));
    let mut created = old.clone();
    track_update(&cx("maker", false), None, &mut created);
    assert_eq!(
        fields_of(&created, "maker", "Update"),
        Some(&json!({"f:spec": {".": {}, "f:size": {}}}))
    );
    // Another manager sets the only field `maker` still owned (the map itself stays its).
    let mut next = created.clone();
    next["spec"]["size"] = json!(2);
    next["spec"]["other"] = json!("x");
    track_update(&cx("editor", false), Some(&created), &mut next);
    assert_eq!(
        fields_of(&next, "editor", "Update"),
        Some(&json!({"f:spec": {"f:other": {}, "f:size": {}}}))
    );
    assert_eq!(fields_of(&next, "maker", "Update"), Some(&json!({"f:spec": {}})));
    // Removing spec altogether leaves nobody owning anything: both entries go.
    let mut gone = next.clone();
    gone.as_object_mut().expect("object").remove("spec");
    track_update(&cx("cleaner", false), Some(&next), &mut gone);
    assert!(gone["metadata"].get("managedFields").is_none(), "{gone}");
    // A write that changes nothing keeps entries and their times.
    let mut same = next.clone();
    track_update(&cx("noop", false), Some(&next), &mut same);
    assert_eq!(same["metadata"]["managedFields"], next["metadata"]["managedFields"]);
}

#[test]
fn empty_list_resets_and_omission_keeps() {
    let mut created = obj(json!({"size": 1}));
    track_update(&cx("maker", false), None, &mut created);
    let mut omit = created.clone();
    omit["metadata"].as_object_mut().expect("meta").remove("managedFields");
    omit["spec"]["x"] = json!(1);
    track_update(&cx("editor", false), Some(&created), &mut omit);
    assert!(fields_of(&omit, "maker", "Update").is_some(), "{omit}");
    for reset in [json!([]), json!([{}])] {
        let mut r = created.clone();
        r["metadata"]["managedFields"] = reset;
        track_update(&cx("editor", false), Some(&created), &mut r);
        assert!(r["metadata"].get("managedFields").is_none(), "{r}");
    }
}

#[test]
fn apply_removes_omitted_fields_unless_shared() {
    let c = cx("ssa", false);
    let cfg1 = obj(json!({"size": 1, "mode": "a", "shared": "s"}));
    let live = apply_create(&c, &cfg1).expect("create");
    assert_eq!(
        fields_of(&live, "ssa", "Apply"),
        Some(&json!({"f:spec": {"f:mode": {}, "f:shared": {}, "f:size": {}}}))
    );
    // Someone else applies the same value of `shared`: no conflict, shared ownership.
    let live = apply_update(&cx("peer", false), &live, &obj(json!({"shared": "s"})), false).expect("peer");
    assert_eq!(
        fields_of(&live, "peer", "Apply"),
        Some(&json!({"f:spec": {"f:shared": {}}}))
    );
    // `ssa` stops applying mode and shared: mode goes, shared stays for `peer`.
    let next = apply_update(&c, &live, &obj(json!({"size": 1})), false).expect("reapply");
    assert_eq!(next["spec"], json!({"size": 1, "shared": "s"}));
    assert_eq!(
        fields_of(&next, "ssa", "Apply"),
        Some(&json!({"f:spec": {"f:size": {}}}))
    );
}

#[test]
fn appliers_share_a_set_list_item_by_item() {
    let with_finalizers = |f: Value| {
        let mut o = obj(json!({"size": 1}));
        o["metadata"]["finalizers"] = f;
        o
    };
    let live = apply_create(&cx("one", false), &with_finalizers(json!(["one/f"]))).expect("create");
    // A second controller adds its own finalizer: no conflict, both stay.
    let live = apply_update(&cx("two", false), &live, &with_finalizers(json!(["two/f"])), false).expect("second");
    assert_eq!(live["metadata"]["finalizers"], json!(["one/f", "two/f"]));
    assert_eq!(
        fields_of(&live, "two", "Apply"),
        Some(&json!({"f:metadata": {"f:finalizers": {"v:\"two/f\"": {}}}, "f:spec": {"f:size": {}}}))
    );
    // The first drops its finalizer: only that one goes.
    let live = apply_update(&cx("one", false), &live, &obj(json!({"size": 1})), false).expect("drop");
    assert_eq!(live["metadata"]["finalizers"], json!(["two/f"]));
}

#[test]
fn apply_conflicts_unless_forced() {
    let c = cx("ssa", false);
    let live = apply_create(&c, &obj(json!({"size": 1}))).expect("create");
    let mut edited = live.clone();
    edited["spec"]["size"] = json!(2);
    track_update(&cx("other", false), Some(&live), &mut edited);
    let err = apply_update(&c, &edited, &obj(json!({"size": 3})), false).expect_err("conflict");
    assert_eq!(err.code, StatusCode::CONFLICT);
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"other\" using g/v1: .spec.size"
    );
    let causes = &err.details.as_ref().expect("details")["causes"];
    assert_eq!(causes[0]["reason"], "FieldManagerConflict");
    assert_eq!(causes[0]["field"], ".spec.size");
    // Applying the value that is there already is no conflict.
    assert!(apply_update(&c, &edited, &obj(json!({"size": 2})), false).is_ok());
    let forced = apply_update(&c, &edited, &obj(json!({"size": 3})), true).expect("force");
    assert_eq!(forced["spec"]["size"], 3);
    assert_eq!(
        fields_of(&forced, "ssa", "Apply"),
        Some(&json!({"f:spec": {"f:size": {}}}))
    );
    assert!(fields_of(&forced, "other", "Update").is_none(), "{forced}");
}

#[test]
fn apply_respects_the_status_subresource() {
    let live = apply_create(&cx("ssa", false), &obj(json!({"size": 1}))).expect("create");
    let mut cfg = obj(json!({"size": 1}));
    cfg["status"] = json!({"phase": "x"});
    let main = apply_update(&cx("ssa", false), &live, &cfg, false).expect("main");
    assert!(main.get("status").is_none());
    assert!(fields_of(&main, "ssa", "Apply").is_some_and(|f| f.get("f:status").is_none()));
    let st = apply_update(&cx("ctl", true), &main, &cfg, false).expect("status");
    assert_eq!(st["status"]["phase"], "x");
    let e = st["metadata"]["managedFields"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["manager"] == "ctl"))
        .expect("ctl entry");
    assert_eq!(e["subresource"], "status");
    assert_eq!(e["fieldsV1"], json!({"f:status": {"f:phase": {}}}));
}

#[test]
fn status_writes_are_their_own_subresource_entries() {
    let mut live = obj(json!({"size": 1}));
    track_update(&cx("maker", false), None, &mut live);
    let mut next = live.clone();
    next["status"] = json!({"phase": "Ready"});
    track_update(&cx("ctl", true), Some(&live), &mut next);
    let e = next["metadata"]["managedFields"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["manager"] == "ctl"))
        .expect("ctl entry");
    assert_eq!(e["subresource"], "status");
    assert_eq!(e["operation"], "Update");
    assert_eq!(e["fieldsV1"], json!({"f:status": {".": {}, "f:phase": {}}}));
    // The same manager writing the main resource is a different entry.
    let mut main = next.clone();
    main["spec"]["size"] = json!(2);
    track_update(&cx("ctl", false), Some(&next), &mut main);
    let n = main["metadata"]["managedFields"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["manager"] == "ctl").count());
    assert_eq!(n, Some(2), "{main}");
}

#[test]
fn update_entries_are_capped_into_ancient_changes() {
    let mut v = obj(json!({}));
    track_update(&cx("maker", false), None, &mut v);
    for i in 0..12 {
        let old = v.clone();
        v["spec"][format!("f{i}")] = json!(i);
        // Distinct, increasing times without waiting: rewrite the entry's time afterwards.
        track_update(&cx(&format!("m{i:02}"), false), Some(&old), &mut v);
        for e in v["metadata"]["managedFields"].as_array_mut().expect("entries") {
            if e["manager"] == format!("m{i:02}") {
                e["time"] = json!(format!("2026-01-01T00:00:{i:02}Z"));
            }
        }
    }
    let entries = v["metadata"]["managedFields"].as_array().expect("entries");
    assert_eq!(entries.len(), 10, "{entries:?}");
    let ancient = entries
        .iter()
        .find(|e| e["manager"] == ANCIENT)
        .expect("ancient-changes");
    // 13 writers (maker, which wrote last of all by the clock, and m00..m11): the four
    // oldest, m00..m03, are folded into one entry.
    assert_eq!(
        ancient["fieldsV1"],
        json!({"f:spec": {"f:f0": {}, "f:f1": {}, "f:f2": {}, "f:f3": {}}})
    );
    assert!(entries.iter().all(|e| e["manager"] != "m00" && e["manager"] != "m03"));
    assert!(entries.iter().any(|e| e["manager"] == "m04"));
    assert!(entries.iter().any(|e| e["manager"] == "maker"));
}

#[test]
fn managers_and_options() {
    assert_eq!(
        default_manager("", "kubectl/v1.35.2 (linux/amd64) kubernetes/fdc9d74"),
        "kubectl"
    );
    assert_eq!(default_manager("mine", "kubectl/v1"), "mine");
    assert_eq!(default_manager("", ""), "unknown", "as kube-apiserver records it");
    assert_eq!(default_manager("", "a\tb/c"), "ab");
    assert_eq!(default_manager("", &"x".repeat(200)).len(), 128);
    let mut c = cx("", false);
    assert!(validate_options(&c, "PatchOptions", false).is_ok());
    let e = validate_options(&c, "PatchOptions", true).expect_err("required");
    assert_eq!(
        e.message,
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );
    assert_eq!(
        e.details.as_ref().map(|d| d["causes"].clone()),
        Some(
            json!([{"reason": "FieldValueRequired", "message": "Required value: is required for apply patch",
                     "field": "fieldManager"}])
        )
    );
    c.query.insert("force".into(), "true".into());
    assert!(validate_options(&c, "PatchOptions", false).is_err());
    c.query.insert("fieldManager".into(), "x".repeat(129));
    assert!(validate_options(&c, "UpdateOptions", false).is_err());
}

#[test]
fn kubectl_takes_over_what_client_side_apply_set() {
    let mut live = obj(json!({"size": 1, "mode": "a"}));
    live["metadata"]["annotations"] = json!({LAST_APPLIED: obj(json!({"size": 1})).to_string()});
    track_update(&cx("kubectl-client-side-apply", false), None, &mut live);
    // `mode` was set by client-side apply too, but the annotation does not describe it.
    let err = apply_update(
        &cx("kubectl", false),
        &live,
        &obj(json!({"size": 2, "mode": "b"})),
        false,
    )
    .expect_err("mode conflicts");
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using g/v1: .spec.mode"
    );
    let next = apply_update(&cx("kubectl", false), &live, &obj(json!({"size": 2})), false).expect("upgrade");
    assert_eq!(next["spec"]["size"], 2);
    // Only kubectl gets this; other managers conflict as usual.
    assert!(apply_update(&cx("other", false), &live, &obj(json!({"size": 2})), false).is_err());
}

#[test]
fn kubectl_apply_keeps_last_applied_in_step() {
    let mut live = obj(json!({}));
    live["metadata"]["annotations"] = json!({LAST_APPLIED: "old", "a": "b"});
    let live = {
        let mut v = live.clone();
        track_update(&cx("kubectl-client-side-apply", false), None, &mut v);
        v
    };
    let cfg = json!({"apiVersion": "g/v1", "kind": "Thing",
        "metadata": {"name": "a", "namespace": "n", "labels": {"app": "demo"}}, "spec": {}});
    let next = apply_update(&cx("kubectl", false), &live, &cfg, false).expect("apply");
    assert_eq!(
        next["metadata"]["annotations"][LAST_APPLIED],
        "{\"apiVersion\":\"g/v1\",\"kind\":\"Thing\",\"metadata\":{\"labels\":{\"app\":\"demo\"},\"name\":\"a\",\"namespace\":\"n\"},\"spec\":{}}\n"
    );
    assert_eq!(next["metadata"]["annotations"]["a"], "b");
}
