//! One storage conformance suite, written once against `&dyn Store` and run on both backends:
//! the embedded store (redb, in a temporary directory) and the etcd store (against a real etcd
//! on free loopback ports from `KUBEBUILDER_ASSETS`; without one, the etcd tests print one line
//! and pass). It covers what the API verbs rely on: create and `AlreadyExists`, resourceVersion
//! and uid preconditions (`Conflict`), lists paginated as one snapshot, lists at a past version
//! and their expiry, and watches from a version, in order, with no gaps or duplicates.

use eao::apiserver::storage::{
    continue_at, EtcdOptions, EtcdStore, EventType, Preconditions, Storage, StorageError, StorageOptions, Store,
    WatchStream,
};
use eao::testing::etcd::Etcd;
use serde_json::{json, Value};
use std::time::Duration;

/// Events each store keeps: small, so a test can outrun it.
const HISTORY: usize = 64;

fn obj(name: &str, note: &str) -> Value {
    json!({"apiVersion": "wardle.example.com/v1alpha1", "kind": "Flunder",
           "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
           "spec": {"note": note}})
}

fn rv_pre(rv: u64) -> Preconditions {
    Preconditions {
        resource_version: Some(rv),
        uid: None,
    }
}

fn uid_pre(uid: &str) -> Preconditions {
    Preconditions {
        resource_version: None,
        uid: Some(uid.into()),
    }
}

fn names(items: &[std::sync::Arc<eao::apiserver::storage::Object>]) -> Vec<String> {
    items.iter().map(|o| o.name.clone()).collect()
}

async fn next(w: &mut WatchStream) -> std::sync::Arc<eao::apiserver::storage::WatchEvent> {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a watch event within 10s")
        .expect("the watch is open")
        .expect("no watch error")
}

async fn create_and_already_exists(s: &dyn Store, p: &str) {
    let before = s.current_rv();
    let a = s.create(&format!("{p}a"), obj("a", "1")).await.unwrap();
    assert!(a.rv > before, "create moves the version: {} > {before}", a.rv);
    assert_eq!(a.value()["metadata"]["resourceVersion"], a.rv.to_string());
    assert!(s.current_rv() >= a.rv);
    let got = s.get(&format!("{p}a")).expect("read your write");
    assert_eq!((got.rv, got.value()["spec"]["note"].clone()), (a.rv, json!("1")));
    assert!(matches!(
        s.create(&format!("{p}a"), obj("a", "2")).await,
        Err(StorageError::AlreadyExists)
    ));
    assert_eq!(
        s.get(&format!("{p}a")).unwrap().rv,
        a.rv,
        "a refused create changes nothing"
    );
    assert!(s.get(&format!("{p}missing")).is_none());
}

async fn preconditions(s: &dyn Store, p: &str) {
    let k = format!("{p}a");
    let a = s.create(&k, obj("a", "1")).await.unwrap();
    let b = s.update(&k, obj("a", "2"), rv_pre(a.rv)).await.unwrap();
    assert!(b.rv > a.rv);
    assert_eq!(s.get(&k).unwrap().rv, b.rv);
    assert!(matches!(
        s.update(&k, obj("a", "3"), rv_pre(a.rv)).await,
        Err(StorageError::Conflict(_))
    ));
    assert!(matches!(
        s.update(&k, obj("a", "3"), uid_pre("other")).await,
        Err(StorageError::Conflict(_))
    ));
    let c = s.update(&k, obj("a", "3"), uid_pre("uid-a")).await.unwrap();
    assert!(c.rv > b.rv);
    let c = s.update(&k, obj("a", "4"), Preconditions::default()).await.unwrap();
    assert!(matches!(
        s.delete(&k, rv_pre(b.rv)).await,
        Err(StorageError::Conflict(_))
    ));
    assert!(matches!(
        s.delete(&k, uid_pre("other")).await,
        Err(StorageError::Conflict(_))
    ));
    assert_eq!(s.get(&k).unwrap().rv, c.rv, "refused writes change nothing");
    let gone = s.delete(&k, rv_pre(c.rv)).await.unwrap();
    assert!(gone.rv > c.rv, "a delete has its own version");
    assert_eq!(gone.value()["spec"]["note"], "4", "a delete returns the last state");
    assert!(s.get(&k).is_none());
    assert!(matches!(
        s.update(&k, obj("a", "5"), Preconditions::default()).await,
        Err(StorageError::NotFound)
    ));
    assert!(matches!(
        s.delete(&k, Preconditions::default()).await,
        Err(StorageError::NotFound)
    ));
    // Created again, it is a new object.
    let again = s.create(&k, obj("a", "6")).await.unwrap();
    assert!(again.rv > gone.rv);
}

async fn list_pages_are_one_snapshot(s: &dyn Store, p: &str) {
    let mut first = Vec::new();
    for n in ["a", "b", "c", "d", "e"] {
        first.push(s.create(&format!("{p}{n}"), obj(n, "1")).await.unwrap().rv);
    }
    // Another prefix that shares the beginning is not listed.
    let other = format!("{}x/", p.trim_end_matches('/'));
    s.create(&format!("{other}z"), obj("z", "1")).await.unwrap();
    let page1 = s.list(p, Some(2), None, |_| true).unwrap();
    assert_eq!(names(&page1.items), ["a", "b"]);
    assert_eq!(page1.remaining, Some(3));
    let token = page1.continue_token.clone().expect("a continue token");
    // Changes after the first page are not in the later pages.
    s.update(&format!("{p}c"), obj("c", "2"), Preconditions::default())
        .await
        .unwrap();
    s.delete(&format!("{p}d"), Preconditions::default()).await.unwrap();
    s.create(&format!("{p}f"), obj("f", "1")).await.unwrap();
    let page2 = s.list(p, Some(2), Some(&token), |_| true).unwrap();
    assert_eq!(names(&page2.items), ["c", "d"]);
    assert_eq!(page2.rv, page1.rv, "every page at the first page's version");
    assert_eq!(page2.items[0].value()["spec"]["note"], "1");
    assert_eq!(page2.items[0].rv, first[2]);
    let page3 = s.list(p, Some(2), page2.continue_token.as_deref(), |_| true).unwrap();
    assert_eq!(names(&page3.items), ["e"]);
    assert!(page3.continue_token.is_none());
    assert_eq!(page3.remaining, None);
    // A new list sees the changes; a filter applies before the limit.
    let now = s.list(p, None, None, |_| true).unwrap();
    assert_eq!(names(&now.items), ["a", "b", "c", "e", "f"]);
    assert!(now.rv >= s.get(&format!("{p}f")).unwrap().rv);
    let some = s.list(p, Some(1), None, |o| o.name != "a").unwrap();
    assert_eq!(names(&some.items), ["b"]);
    assert!(matches!(
        s.list(p, Some(1), Some("not-a-token"), |_| true),
        Err(StorageError::BadContinue(_))
    ));
}

async fn list_at_a_past_version_and_its_expiry(s: &dyn Store, p: &str) {
    s.create(&format!("{p}a"), obj("a", "1")).await.unwrap();
    let b = s.create(&format!("{p}b"), obj("b", "1")).await.unwrap();
    let at = b.rv;
    s.update(&format!("{p}a"), obj("a", "2"), Preconditions::default())
        .await
        .unwrap();
    s.delete(&format!("{p}b"), Preconditions::default()).await.unwrap();
    s.create(&format!("{p}c"), obj("c", "1")).await.unwrap();
    let then = s.list_at(p, at, None, &|_| true).unwrap();
    assert_eq!(names(&then.items), ["a", "b"]);
    assert_eq!(then.items[0].value()["spec"]["note"], "1");
    assert_eq!(then.rv, at);
    // More writes than the history keeps: that version is gone for lists and watches.
    for i in 0..HISTORY + 4 {
        s.update(&format!("{p}a"), obj("a", &i.to_string()), Preconditions::default())
            .await
            .unwrap();
    }
    match s.list_at(p, at, None, &|_| true) {
        Err(StorageError::ContinueExpired(token)) => {
            // The token it gives continues at the latest version.
            let page = s.list(p, None, Some(&token), |_| true).unwrap();
            assert_eq!(names(&page.items), ["a", "c"]);
        }
        other => panic!("expected ContinueExpired, got {other:?}"),
    }
    assert!(matches!(s.watch(p, Some(at)), Err(StorageError::Gone { .. })));
}

async fn watch_in_order_without_gaps(s: &dyn Store, p: &str) {
    let from = s.current_rv();
    let mut now = s.watch(p, None).unwrap();
    let mut want = Vec::new();
    for n in ["a", "b", "c"] {
        want.push((
            EventType::Added,
            s.create(&format!("{p}{n}"), obj(n, "1")).await.unwrap().rv,
        ));
    }
    // Writes under another prefix are not seen.
    s.create(&format!("{}x/z", p.trim_end_matches('/')), obj("z", "1"))
        .await
        .unwrap();
    let u = s
        .update(&format!("{p}b"), obj("b", "2"), Preconditions::default())
        .await
        .unwrap();
    want.push((EventType::Modified, u.rv));
    let d = s.delete(&format!("{p}a"), Preconditions::default()).await.unwrap();
    want.push((EventType::Deleted, d.rv));
    // Concurrent writers: every acknowledged one is seen once, in version order.
    let writes: Vec<_> = (0..8)
        .map(|i| {
            let key = format!("{p}w{i}");
            async move { s.create(&key, obj(&format!("w{i}"), "1")).await.unwrap().rv }
        })
        .collect();
    let mut concurrent = futures::future::join_all(writes).await;
    concurrent.sort_unstable();
    want.extend(concurrent.into_iter().map(|rv| (EventType::Added, rv)));

    // From a version (a replay), and from "now" (live): the same events.
    let mut replay = s.watch(p, Some(from)).unwrap();
    for w in [&mut replay, &mut now] {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let ev = next(w).await;
            assert!(ev.key.starts_with(p), "{} is under {p}", ev.key);
            got.push((ev.type_, ev.rv()));
        }
        assert_eq!(got, want);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), w.next())
                .await
                .is_err(),
            "no event after the last write"
        );
    }
    // The delete carries the last state; a modification the state before it.
    let mut w = s.watch(p, Some(u.rv - 1)).unwrap();
    let ev = next(&mut w).await;
    assert_eq!(
        ev.prev.as_ref().map(|o| o.value()["spec"]["note"].clone()),
        Some(json!("1"))
    );
    assert_eq!(ev.object.value()["spec"]["note"], "2");
    let ev = next(&mut w).await;
    assert_eq!((ev.type_, ev.object.name.as_str()), (EventType::Deleted, "a"));
}

async fn a_quiet_watch_follows_the_version(s: &dyn Store, p: &str) {
    let mut quiet = s.watch(&format!("{p}quiet/"), None).unwrap();
    let mut last = quiet.seen_rv();
    for i in 0..3 {
        let o = s.create(&format!("{p}busy/o{i}"), obj("o", "1")).await.unwrap();
        // Nothing under its prefix: the stream only passes the change, and the version its
        // bookmarks carry moves to it.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), quiet.next())
                .await
                .is_err(),
            "no event for a change under another prefix"
        );
        assert!(quiet.seen_rv() >= o.rv, "{} >= {}", quiet.seen_rv(), o.rv);
        assert!(quiet.seen_rv() > last, "bookmark versions increase");
        assert!(quiet.seen_rv() <= s.current_rv());
        last = quiet.seen_rv();
    }
    // A consistent read reflects every acknowledged write.
    assert!(s.consistent_rv().await.unwrap() >= last);
}

/// Every case on `s`, each under its own key prefix.
async fn conformance(backend: &str, s: &dyn Store) {
    eprintln!("{backend}: create_and_already_exists");
    create_and_already_exists(s, "/t1/ns/").await;
    eprintln!("{backend}: preconditions");
    preconditions(s, "/t2/ns/").await;
    eprintln!("{backend}: list_pages_are_one_snapshot");
    list_pages_are_one_snapshot(s, "/t3/ns/").await;
    eprintln!("{backend}: watch_in_order_without_gaps");
    watch_in_order_without_gaps(s, "/t4/ns/").await;
    eprintln!("{backend}: list_at_a_past_version_and_its_expiry");
    list_at_a_past_version_and_its_expiry(s, "/t5/ns/").await;
    eprintln!("{backend}: a_quiet_watch_follows_the_version");
    a_quiet_watch_follows_the_version(s, "/t6/").await;
}

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions {
        history: HISTORY,
        ..StorageOptions::default()
    };
    let s = Storage::open(dir.path(), opts).unwrap();
    conformance("embedded", &s).await;
}

async fn etcd_store(etcd: &Etcd, prefix: &str) -> EtcdStore {
    let mut opts = EtcdOptions::new(vec![etcd.url().to_string()], prefix);
    opts.history = HISTORY;
    EtcdStore::connect(opts).await.unwrap()
}

#[tokio::test]
async fn etcd_store_conforms() {
    let Some(etcd) = Etcd::start_or_skip("etcd_store_conforms").await else {
        return;
    };
    let etcd = etcd.unwrap();
    let s = etcd_store(&etcd, "/registry/conformance").await;
    assert!(s.unhealthy().is_none());
    conformance("etcd", &s).await;
    assert!(s.unhealthy().is_none());
}

#[tokio::test]
async fn two_etcd_stores_share_one_view() {
    let Some(etcd) = Etcd::start_or_skip("two_etcd_stores_share_one_view").await else {
        return;
    };
    let etcd = etcd.unwrap();
    let a = etcd_store(&etcd, "/registry/shared").await;
    // Something written before the second store starts is in its cache.
    let first = a.create("/f/ns/first", obj("first", "1")).await.unwrap();
    let b = etcd_store(&etcd, "/registry/shared").await;
    assert_eq!(b.get("/f/ns/first").map(|o| o.rv), Some(first.rv));
    let mut watch_b = b.watch("/f/ns/", None).unwrap();

    let mut written = Vec::new();
    for i in 0..20 {
        let key = format!("/f/ns/o{}", i % 4);
        let o = match a.get(&key) {
            Some(cur) => a.update(&key, obj("o", &i.to_string()), rv_pre(cur.rv)).await.unwrap(),
            None => a.create(&key, obj("o", &i.to_string())).await.unwrap(),
        };
        written.push(o.rv);
    }
    let mut seen = Vec::new();
    for _ in 0..written.len() {
        seen.push(next(&mut watch_b).await.rv());
    }
    assert_eq!(
        seen, written,
        "B's watch sees A's writes, in order, no gaps, no duplicates"
    );
    assert!(b.current_rv() >= *written.last().unwrap());

    // B updates o0 over A's last version of it; A's stale version then conflicts, through
    // either store.
    let cur = b.get("/f/ns/o0").unwrap();
    let stale = cur.rv;
    let newer = b.update("/f/ns/o0", obj("o", "b"), rv_pre(stale)).await.unwrap();
    for s in [&a, &b] {
        assert!(matches!(
            s.update("/f/ns/o0", obj("o", "stale"), rv_pre(stale)).await,
            Err(StorageError::Conflict(_))
        ));
    }
    // A's cache catches up with B's write; a write on the new version succeeds through A.
    let ok = a.update("/f/ns/o0", obj("o", "a"), rv_pre(newer.rv)).await.unwrap();
    assert!(ok.rv > newer.rv);
    let b_dyn: &dyn Store = &b;
    assert_eq!(b_dyn.list("/f/ns/", None, None, |_| true).unwrap().items.len(), 5);

    // Racing creates of one key through both stores: exactly one wins.
    let (x, y) = tokio::join!(
        a.create("/f/ns/race", obj("race", "a")),
        b.create("/f/ns/race", obj("race", "b"))
    );
    assert_eq!(
        [x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "one create wins: {x:?} {y:?}"
    );
}

#[tokio::test]
async fn etcd_consistent_reads_see_writes_made_elsewhere() {
    let Some(etcd) = Etcd::start_or_skip("etcd_consistent_reads_see_writes_made_elsewhere").await else {
        return;
    };
    let etcd = etcd.unwrap();
    let prefix = "/registry/consistent";
    let a = etcd_store(&etcd, prefix).await;
    let b = etcd_store(&etcd, prefix).await;
    let mut raw = etcd_client::Client::connect([etcd.url()], None).await.unwrap();
    let mut quiet = a.watch("/quiet/", None).unwrap();
    for i in 0..5 {
        // Written straight to etcd: once acknowledged, a consistent read through `a` has it
        // (no waiting here but the read's own).
        let key = format!("/f/ns/raw{i}");
        let put = raw
            .put(
                format!("{prefix}{key}"),
                serde_json::to_vec(&obj("raw", "1")).unwrap(),
                None,
            )
            .await
            .unwrap();
        let rev = put.header().unwrap().revision() as u64;
        assert!(a.consistent_rv().await.unwrap() >= rev);
        assert_eq!(
            a.get(&key).map(|o| o.rv),
            Some(rev),
            "a consistent read sees the raw write"
        );
        // Written through the other store.
        let o = b.create(&format!("/f/ns/b{i}"), obj("b", "1")).await.unwrap();
        assert!(a.consistent_rv().await.unwrap() >= o.rv);
        assert_eq!(a.get(&format!("/f/ns/b{i}")).map(|g| g.rv), Some(o.rv));
        let a_dyn: &dyn Store = &a;
        let page = a_dyn.list("/f/ns/", None, None, |_| true).unwrap();
        assert_eq!(page.items.len(), 2 * (i + 1));
        assert!(page.rv >= o.rv);
        // Outside the store's prefix: only a progress notification brings the cache (and
        // the bookmarks of its watches) to that revision.
        let put = raw.put(format!("/elsewhere/x{i}"), "x", None).await.unwrap();
        let rev = put.header().unwrap().revision() as u64;
        // A version a client saw elsewhere (NotOlderThan): the store gets there.
        assert!(b.wait_for_rv(rev, Duration::from_secs(3)).await);
        assert!(b.current_rv() >= rev);
        assert!(a.consistent_rv().await.unwrap() >= rev);
        assert!(a.current_rv() >= rev);
        assert!(tokio::time::timeout(Duration::from_millis(100), quiet.next())
            .await
            .is_err());
        assert!(
            quiet.seen_rv() >= rev,
            "a bookmark would carry {} >= {rev}",
            quiet.seen_rv()
        );
    }
    // A version etcd has not reached: the wait ends, unanswered (the API's 504).
    assert!(!a.wait_for_rv(a.current_rv() + 1000, Duration::from_millis(300)).await);
    assert!(a.unhealthy().is_none());
}

#[tokio::test]
async fn etcd_continuations_older_than_the_cache_read_etcd_until_it_compacts() {
    let Some(etcd) = Etcd::start_or_skip("etcd_continuations_older_than_the_cache_read_etcd_until_it_compacts").await
    else {
        return;
    };
    let etcd = etcd.unwrap();
    let s = etcd_store(&etcd, "/registry/past").await;
    let p = "/f/ns/";
    for n in ["a", "b", "c", "d", "e"] {
        s.create(&format!("{p}{n}"), obj(n, "1")).await.unwrap();
    }
    let s_dyn: &dyn Store = &s;
    let page1 = s_dyn.list(p, Some(2), None, |_| true).unwrap();
    let token = page1.continue_token.clone().expect("a continue token");
    assert_eq!(page1.remaining, Some(3), "c, d and e follow the first page");
    // More changes than the cache's history keeps.
    for i in 0..HISTORY + 4 {
        s.update(&format!("{p}c"), obj("c", &format!("x{i}")), Preconditions::default())
            .await
            .unwrap();
    }
    s.delete(&format!("{p}d"), Preconditions::default()).await.unwrap();
    assert!(matches!(
        s_dyn.list(p, Some(2), Some(&token), |_| true),
        Err(StorageError::ContinueExpired(_))
    ));
    // etcd still has the first page's revision: the list goes on there, as one snapshot.
    let page2 = s.list_expired(p, Some(2), &token, &|_| true).await.unwrap();
    assert_eq!(names(&page2.items), ["c", "d"]);
    assert_eq!(page2.items[0].value()["spec"]["note"], "1");
    assert_eq!(page2.rv, page1.rv);
    // Counted at that revision too, where d still exists: e remains.
    assert_eq!(page2.remaining, Some(1));
    let page3 = s
        .list_expired(p, Some(2), page2.continue_token.as_deref().unwrap(), &|_| true)
        .await
        .unwrap();
    assert_eq!(names(&page3.items), ["e"]);
    assert!(page3.continue_token.is_none());
    assert_eq!(page3.remaining, None);
    // An `Exact` list at that revision, filtered.
    let exact = s
        .list_expired(p, None, &continue_at(p, page1.rv), &|o| o.name != "a")
        .await
        .unwrap();
    assert_eq!(names(&exact.items), ["b", "c", "d", "e"]);
    // Once etcd compacts it: 410 with a token that goes on after the same key, now.
    let mut raw = etcd_client::Client::connect([etcd.url()], None).await.unwrap();
    raw.compact(s.current_rv() as i64, None).await.unwrap();
    match s.list_expired(p, Some(2), &token, &|_| true).await {
        Err(StorageError::ContinueExpired(fresh)) => {
            let rest = s_dyn.list(p, None, Some(&fresh), |_| true).unwrap();
            assert_eq!(names(&rest.items), ["c", "e"]);
            assert_eq!(rest.items[0].value()["spec"]["note"], format!("x{}", HISTORY + 3));
        }
        other => panic!("expected ContinueExpired, got {other:?}"),
    }
}
