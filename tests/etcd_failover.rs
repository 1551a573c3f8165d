//! The etcd store under failures, against real etcd (from `KUBEBUILDER_ASSETS`; without it the
//! tests print one line and pass):
//! - cut off from etcd, a store's watch cache resumes from its revision when etcd is back (no
//!   event lost or repeated); cut off while etcd compacts past its revision, it re-lists, ends
//!   its open watches with 410 Gone, refuses older versions and continue tokens (410 with a
//!   fresh token), and serves reads and writes again without a restart;
//! - on a three-member cluster that loses a follower and then its leader under a stream of
//!   writes, every acknowledged write is kept, and every store's watch sees etcd's history of
//!   the prefix exactly: in revision order, without gaps or duplicates.

use eao::apiserver::storage::{EtcdOptions, EtcdStore, EventType, Preconditions, StorageError, Store, WatchStream};
use eao::testing::etcd::Etcd;
use eao::testing::etcd_cluster::EtcdCluster;
use eao::testing::tcp_proxy::TcpProxy;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn obj(name: &str, note: &str) -> Value {
    json!({"apiVersion": "wardle.example.com/v1alpha1", "kind": "Flunder",
           "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
           "spec": {"note": note}})
}

fn note(o: &eao::apiserver::storage::Object) -> String {
    o.value()["spec"]["note"].as_str().unwrap_or_default().to_string()
}

async fn store(endpoints: Vec<String>, prefix: &str) -> EtcdStore {
    let mut opts = EtcdOptions::new(endpoints, prefix);
    // Failures surface in seconds, so a test that provokes them stays short.
    opts.request_timeout = Duration::from_secs(3);
    EtcdStore::connect(opts).await.unwrap()
}

async fn next(w: &mut WatchStream) -> Result<Arc<eao::apiserver::storage::WatchEvent>, StorageError> {
    tokio::time::timeout(Duration::from_secs(20), w.next())
        .await
        .expect("a watch event within 20s")
        .expect("the watch is open")
}

/// Waits (up to 20 s) until `cond` holds; what for names it in the panic.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_cut_off_cache_resumes_or_relists_after_a_compaction() {
    let Some(etcd) = Etcd::start_or_skip("a_cut_off_cache_resumes_or_relists_after_a_compaction").await else {
        return;
    };
    let etcd = etcd.unwrap();
    let proxy = TcpProxy::start(etcd.url().trim_start_matches("http://")).await.unwrap();
    let prefix = "/registry/recovery";
    // `a` reaches etcd only through the proxy; `b` directly.
    let a = store(vec![proxy.url()], prefix).await;
    let b = store(vec![etcd.url().to_string()], prefix).await;
    for i in 0..4 {
        b.create(&format!("/f/ns/o{i}"), obj(&format!("o{i}"), "1"))
            .await
            .unwrap();
    }
    let mut open = a.watch("/f/ns/", Some(a.consistent_rv().await.unwrap())).unwrap();

    // Cut off while others write: the watch resumes from its revision.
    proxy.cut();
    eventually("a notices it is cut off", || a.unhealthy().is_some()).await;
    let mut want = Vec::new();
    for i in 0..4 {
        let o = b
            .update(
                &format!("/f/ns/o{i}"),
                obj(&format!("o{i}"), "2"),
                Preconditions::default(),
            )
            .await
            .unwrap();
        want.push(o.rv);
    }
    proxy.heal();
    let mut got = Vec::new();
    for _ in 0..want.len() {
        got.push(next(&mut open).await.expect("no error").rv());
    }
    assert_eq!(got, want, "every write made while cut off, once, in order");
    assert_eq!(a.relists(), 0);

    // Cut off while etcd compacts past its revision: it cannot resume, so it re-lists.
    let before = a.current_rv();
    let a_dyn: &dyn Store = &a;
    let page = a_dyn.list("/f/ns/", Some(2), None, |_| true).unwrap();
    let token = page.continue_token.expect("a second page");
    proxy.cut();
    eventually("a notices it is cut off", || a.unhealthy().is_some()).await;
    for i in 0..4 {
        b.update(
            &format!("/f/ns/o{i}"),
            obj(&format!("o{i}"), "3"),
            Preconditions::default(),
        )
        .await
        .unwrap();
    }
    let o9 = b.create("/f/ns/o9", obj("o9", "1")).await.unwrap();
    let mut raw = etcd_client::Client::connect([etcd.url()], None).await.unwrap();
    raw.compact(
        o9.rv as i64,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    proxy.heal();
    match next(&mut open).await {
        Err(StorageError::Gone { .. }) => {}
        other => panic!("the open watch ends with Gone, got {other:?}"),
    }
    assert_eq!(a.relists(), 1);
    assert!(a.current_rv() >= o9.rv);
    assert!(matches!(
        a.watch("/f/ns/", Some(before)),
        Err(StorageError::Gone { .. })
    ));
    // The earlier list's continue token is expired; the token given instead goes on after
    // the same key at the latest version (kube-apiserver's 410 with a fresh `continue`).
    assert!(matches!(
        a_dyn.list("/f/ns/", Some(2), Some(&token), |_| true),
        Err(StorageError::ContinueExpired(_))
    ));
    // etcd no longer has that revision either.
    match a.list_expired("/f/ns/", Some(2), &token, &|_| true).await {
        Err(StorageError::ContinueExpired(fresh)) => {
            let rest = a_dyn.list("/f/ns/", None, Some(&fresh), |_| true).unwrap();
            let rest: Vec<_> = rest.items.iter().map(|o| (o.name.clone(), note(o))).collect();
            assert_eq!(
                rest,
                [("o2", "3"), ("o3", "3"), ("o9", "1")].map(|(n, v)| (n.to_string(), v.to_string()))
            );
        }
        other => panic!("expected ContinueExpired, got {other:?}"),
    }
    // Healthy again: reads see every write, watches from the new version work, writes work.
    let mut fresh = a.watch("/f/ns/", Some(a.current_rv())).unwrap();
    assert_eq!(a.get("/f/ns/o0").map(|o| note(&o)), Some("3".into()));
    let o10 = a.create("/f/ns/o10", obj("o10", "1")).await.unwrap();
    assert_eq!(next(&mut fresh).await.expect("no error").rv(), o10.rv);
    b.consistent_rv().await.unwrap();
    assert_eq!(b.get("/f/ns/o10").map(|o| o.rv), Some(o10.rv));
    assert!(a.unhealthy().is_none());
}

/// An acknowledged write.
#[derive(Debug)]
struct Ack {
    key: String,
    rv: u64,
    note: String,
}

/// Creates, then updates, four keys of its own until `stop`, retrying failed writes (a failed
/// write may or may not have been applied; only acknowledged ones count).
async fn writer(
    s: EtcdStore,
    id: usize,
    acked: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<Ack>, usize) {
    let mut acks = Vec::new();
    let mut failures = 0;
    let mut created = [false; 4];
    let mut seq = 0;
    while !*stop.borrow() {
        let k = seq % 4;
        let key = format!("/f/ns/w{id}-{k}");
        let note = format!("{id}-{seq}");
        seq += 1;
        let value = obj(&format!("w{id}-{k}"), &note);
        let result = if created[k] {
            s.update(&key, value, Preconditions::default()).await
        } else {
            s.create(&key, value).await
        };
        match result {
            Ok(o) => {
                created[k] = true;
                acks.push(Ack { key, rv: o.rv, note });
                acked.fetch_add(1, Ordering::SeqCst);
            }
            // An earlier create that failed was applied after all.
            Err(StorageError::AlreadyExists) => created[k] = true,
            Err(e) => {
                eprintln!("writer {id}: {e}");
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    (acks, failures)
}

/// Records every event of `w` until it has seen revision `until` (once that is known).
async fn record(
    mut w: WatchStream,
    mut until: tokio::sync::watch::Receiver<Option<u64>>,
) -> Result<Vec<(String, u64, EventType)>, String> {
    let mut seen: Vec<(String, u64, EventType)> = Vec::new();
    let done = |seen: &Vec<(String, u64, EventType)>, until: Option<u64>| {
        until.is_some_and(|u| seen.last().is_some_and(|l| l.1 >= u))
    };
    loop {
        if done(&seen, *until.borrow()) {
            return Ok(seen);
        }
        tokio::select! {
            ev = w.next() => match ev {
                Some(Ok(ev)) => seen.push((ev.key.clone(), ev.rv(), ev.type_)),
                Some(Err(e)) => return Err(format!("watch failed after {} events: {e}", seen.len())),
                None => return Err("watch ended".into()),
            },
            _ = until.changed() => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_the_loss_of_a_follower_and_the_leader() {
    let started = Instant::now();
    let Some(cluster) =
        EtcdCluster::start_or_skip("acknowledged_writes_survive_the_loss_of_a_follower_and_the_leader", 3).await
    else {
        return;
    };
    let mut cluster = cluster.unwrap();
    eprintln!("cluster of 3 up after {:?}", started.elapsed());
    let prefix = "/registry/failover";
    let writes = store(cluster.urls(), prefix).await;
    let watchers = [store(cluster.urls(), prefix).await, store(cluster.urls(), prefix).await];
    let from = writes.consistent_rv().await.unwrap();
    let (until_tx, until_rx) = tokio::sync::watch::channel(None);
    let recorders: Vec<_> = watchers
        .iter()
        .map(|w| tokio::spawn(record(w.watch("/f/ns/", Some(from)).unwrap(), until_rx.clone())))
        .collect();
    let acked = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = (0..3)
        .map(|id| tokio::spawn(writer(writes.clone(), id, acked.clone(), stop_rx.clone())))
        .collect();
    // Each phase lasts until the writers got 40 more writes acknowledged.
    let phase = |what: &'static str| {
        let acked = acked.clone();
        async move {
            let target = acked.load(Ordering::SeqCst) + 40;
            let t = Instant::now();
            let deadline = t + Duration::from_secs(30);
            while acked.load(Ordering::SeqCst) < target {
                assert!(Instant::now() < deadline, "writes did not go on {what} within 30s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            eprintln!("{what}: 40 writes acknowledged in {:?}", t.elapsed());
        }
    };
    phase("with 3 members").await;
    let leader = cluster.leader().await.unwrap();
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    phase("without a follower").await;
    cluster.restart(follower).await.unwrap();
    phase("with the follower back").await;
    let leader = cluster.leader().await.unwrap();
    cluster.kill(leader);
    phase("after the leader was killed").await;
    let elected = cluster.leader().await.unwrap();
    assert_ne!(elected, leader, "a new leader was elected");
    eprintln!("killed follower m{follower}, then leader m{leader}; m{elected} was elected");
    cluster.restart(leader).await.unwrap();
    phase("with the old leader back").await;
    stop_tx.send_replace(true);
    let mut acks = Vec::new();
    let mut failures = 0;
    for w in writers {
        let (a, f) = w.await.unwrap();
        acks.extend(a);
        failures += f;
    }

    // etcd's own history of the prefix since `from`: the truth every store must agree with.
    let end = writes.consistent_rv().await.unwrap();
    let mut raw = etcd_client::Client::connect(cluster.urls(), None).await.unwrap();
    let mut history: Vec<(String, u64, String)> = Vec::new();
    let opts = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_start_revision(from as i64 + 1);
    let mut stream = raw.watch(format!("{prefix}/f/ns/"), Some(opts)).await.unwrap();
    while history.last().is_none_or(|h| h.1 < end) {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("etcd's history within 10s")
            .unwrap()
            .expect("an open watch");
        for ev in resp.events() {
            let kv = ev.kv().unwrap();
            let value: Value = serde_json::from_slice(kv.value()).unwrap();
            history.push((
                kv.key_str().unwrap().strip_prefix(prefix).unwrap().to_string(),
                kv.mod_revision() as u64,
                value["spec"]["note"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    assert_eq!(
        history.last().map(|h| h.1),
        Some(end),
        "nothing else writes to this etcd"
    );

    // Every acknowledged write is in etcd's history at its revision, with its value, and in
    // the store's own history (a list at that revision).
    let by_rv: BTreeMap<u64, (String, String)> =
        history.iter().map(|(k, rv, n)| (*rv, (k.clone(), n.clone()))).collect();
    let found = acks
        .iter()
        .filter(|a| by_rv.get(&a.rv) == Some(&(a.key.clone(), a.note.clone())))
        .count();
    let writes_dyn: &dyn Store = &writes;
    for a in &acks {
        let then = writes_dyn.list_at("/f/ns/", a.rv, None, &|o| o.rv == a.rv).unwrap();
        assert_eq!(
            then.items.iter().map(|o| note(o)).collect::<Vec<_>>(),
            [a.note.as_str()],
            "{a:?} at its version"
        );
    }
    // The end state has each key's last acknowledged value, or a later one (of a write whose
    // answer was lost).
    let now = writes_dyn.list("/f/ns/", None, None, |_| true).unwrap();
    let now: BTreeMap<String, (u64, String)> = now
        .items
        .iter()
        .map(|o| (format!("/f/ns/{}", o.name), (o.rv, note(o))))
        .collect();
    for a in &acks {
        let (rv, n) = now.get(&a.key).unwrap_or_else(|| panic!("{} is missing", a.key));
        assert!(*rv > a.rv || (*rv == a.rv && *n == a.note), "{a:?} lost: now {rv} {n}");
    }

    // Each watcher saw exactly etcd's history: strictly increasing revisions, no gaps.
    until_tx.send_replace(Some(end));
    let want: Vec<(String, u64)> = history.iter().map(|(k, rv, _)| (k.clone(), *rv)).collect();
    let mut seen_counts = Vec::new();
    for r in recorders {
        let seen = tokio::time::timeout(Duration::from_secs(20), r)
            .await
            .expect("watchers catch up within 20s")
            .unwrap()
            .unwrap();
        assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "revisions strictly increase");
        assert!(seen.iter().all(|s| s.2 != EventType::Deleted));
        let seen: Vec<(String, u64)> = seen.into_iter().map(|(k, rv, _)| (k, rv)).collect();
        assert_eq!(seen, want, "the watch saw etcd's history exactly");
        seen_counts.push(seen.len());
    }
    assert_eq!(found, acks.len(), "every acknowledged write is in etcd's history");
    assert!(writes.unhealthy().is_none() && watchers.iter().all(|w| w.unhealthy().is_none()));
    eprintln!(
        "failover: writes acknowledged {}, found {found}, failed (retried) {failures}; \
         etcd history {} events; watch events seen {seen_counts:?}; wall time {:?}",
        acks.len(),
        history.len(),
        started.elapsed()
    );
}
