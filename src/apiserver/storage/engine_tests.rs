//! Unit tests of `engine.rs`: versions, reopening, pagination, watch resumption, write races,
//! and acknowledged writes surviving `kill -9`.

use super::*;
use serde_json::json;

fn obj(name: &str) -> Value {
    json!({"apiVersion": "wardle.example.com/v1alpha1", "kind": "Flunder",
           "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")}})
}

fn key(name: &str) -> String {
    format!("/flunders/ns/{name}")
}

fn open(dir: &Path) -> Storage {
    Storage::open(dir, StorageOptions::default()).unwrap()
}

#[tokio::test]
async fn create_get_update_delete_with_monotonic_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = s.create(&key("a"), obj("a")).await.unwrap();
    assert_eq!(a.rv, 1);
    assert_eq!(a.value()["metadata"]["resourceVersion"], "1");
    assert!(matches!(
        s.create(&key("a"), obj("a")).await,
        Err(StorageError::AlreadyExists)
    ));
    let b = s.update(&key("a"), obj("a"), Preconditions::default()).await.unwrap();
    assert_eq!(b.rv, 2);
    let stale = Preconditions {
        resource_version: Some(1),
        uid: None,
    };
    assert!(matches!(
        s.update(&key("a"), obj("a"), stale).await,
        Err(StorageError::Conflict(_))
    ));
    let wrong_uid = Preconditions {
        resource_version: None,
        uid: Some("other".into()),
    };
    assert!(matches!(
        s.delete(&key("a"), wrong_uid).await,
        Err(StorageError::Conflict(_))
    ));
    let gone = s.delete(&key("a"), Preconditions::default()).await.unwrap();
    assert_eq!(gone.rv, 3);
    assert!(s.get(&key("a")).is_none());
    assert!(matches!(
        s.delete(&key("a"), Preconditions::default()).await,
        Err(StorageError::NotFound)
    ));
    assert_eq!(s.current_rv(), 3);
}

#[tokio::test]
async fn data_and_version_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        for i in 0..10 {
            s.create(&key(&format!("o{i}")), obj(&format!("o{i}"))).await.unwrap();
        }
        s.delete(&key("o3"), Preconditions::default()).await.unwrap();
    }
    // The writer thread ends when the last handle is dropped; wait for the file lock.
    let s = loop {
        match Storage::open(dir.path(), StorageOptions::default()) {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    assert_eq!(s.len(), 9);
    assert_eq!(s.current_rv(), 11);
    assert_eq!(s.get(&key("o5")).unwrap().rv, 6);
    let next = s.create(&key("new"), obj("new")).await.unwrap();
    assert_eq!(next.rv, 12, "versions keep increasing across restarts");
}

#[tokio::test]
async fn pagination_with_continue_tokens_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..7 {
        s.create(&key(&format!("o{i}")), obj(&format!("o{i}"))).await.unwrap();
    }
    s.create("/flunders/other/x", obj("x")).await.unwrap();
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s
            .list("/flunders/ns/", Some(3), token.as_deref(), |o| o.name != "o4")
            .unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|o| o.name.clone()));
        match page.continue_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(names, ["o0", "o1", "o2", "o3", "o5", "o6"]);
    assert_eq!(pages, 2);
    assert!(matches!(
        s.list("/flunders/ns/", None, Some("garbage!"), |_| true),
        Err(StorageError::BadContinue(_))
    ));
}

#[tokio::test]
async fn watch_resumes_from_a_version_and_expires_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(
        dir.path(),
        StorageOptions {
            history: 4,
            max_batch: 16,
        },
    )
    .unwrap();
    for i in 0..3 {
        s.create(&key(&format!("o{i}")), obj(&format!("o{i}"))).await.unwrap();
    }
    let mut w = s.watch("/flunders/ns/", Some(1)).unwrap();
    let e = w.next().await.unwrap().unwrap();
    assert_eq!((e.type_, e.rv()), (EventType::Added, 2));
    assert_eq!(w.next().await.unwrap().unwrap().rv(), 3);
    s.delete(&key("o0"), Preconditions::default()).await.unwrap();
    let e = w.next().await.unwrap().unwrap();
    assert_eq!((e.type_, e.rv()), (EventType::Deleted, 4));
    assert_eq!(e.object.value()["metadata"]["resourceVersion"], "4");
    for i in 3..8 {
        s.create(&key(&format!("o{i}")), obj(&format!("o{i}"))).await.unwrap();
    }
    assert!(matches!(
        s.watch("/flunders/ns/", Some(2)),
        Err(StorageError::Gone { .. })
    ));
    assert!(s.watch("/flunders/ns/", Some(s.oldest_rv())).is_ok());
    // Other prefixes are filtered out.
    let mut other = s.watch("/fischers/", None).unwrap();
    s.create(&key("o9"), obj("o9")).await.unwrap();
    s.create("/fischers/f", obj("f")).await.unwrap();
    assert_eq!(other.next().await.unwrap().unwrap().key, "/fischers/f");
}

#[tokio::test]
async fn concurrent_writers_race_on_one_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let base = s.create(&key("c"), obj("c")).await.unwrap().rv;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let pre = Preconditions {
                resource_version: Some(base),
                uid: None,
            };
            s.update(&key("c"), obj("c"), pre).await
        }));
    }
    let mut ok = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StorageError::Conflict(_)) => conflicts += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, conflicts), (1, 19), "exactly one writer wins");
}

const CRASH_DIR_ENV: &str = "EAO_STORAGE_CRASH_CHILD_DIR";

/// Child side of `acknowledged_writes_survive_kill_9`: writes forever with 8 concurrent
/// writers, printing each key once its create is acknowledged.
#[tokio::test]
async fn crash_child_helper() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let s = open(Path::new(&dir));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for w in 0..8 {
        let s = s.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                if s.create(&key(&name), obj(&name)).await.is_ok() {
                    let _ = tx.send(name);
                }
            }
        });
    }
    use std::io::Write;
    while let Some(name) = rx.recv().await {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ACK {name}");
        let _ = out.flush();
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // The test's name is its module path without the crate, so a moved module still
    // finds its helper.
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, m)| m);
    let helper = format!("{module}::crash_child_helper");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &helper, "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(name) = line.strip_prefix("ACK ") {
            acked.push(name.to_string());
            if acked.len() == 2000 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructors, no flush
    child.wait().unwrap();
    assert_eq!(acked.len(), 2000, "the child acknowledged writes");
    let s = open(dir.path());
    let missing: Vec<_> = acked.iter().filter(|n| s.get(&key(n)).is_none()).collect();
    assert!(missing.is_empty(), "acknowledged but lost after kill -9: {missing:?}");
    assert!(s.current_rv() >= 2000);
}

fn names(page: &ListPage) -> Vec<String> {
    page.items.iter().map(|o| o.name.clone()).collect()
}

#[tokio::test]
async fn continued_pages_read_the_first_page_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(
        dir.path(),
        StorageOptions {
            history: 6,
            max_batch: 16,
        },
    )
    .unwrap();
    for n in ["a", "b", "c", "d"] {
        s.create(&key(n), obj(n)).await.unwrap();
    }
    let first = s.list("/flunders/ns/", Some(2), None, |_| true).unwrap();
    assert_eq!(names(&first), ["a", "b"]);
    let token = first.continue_token.clone().unwrap();
    // After the first page: c changes, d goes, e and bb appear.
    let mut changed = obj("c");
    changed["spec"] = json!({"size": 9});
    s.update(&key("c"), changed, Preconditions::default()).await.unwrap();
    s.delete(&key("d"), Preconditions::default()).await.unwrap();
    s.create(&key("e"), obj("e")).await.unwrap();
    s.create(&key("bb"), obj("bb")).await.unwrap();
    let next = s.list("/flunders/ns/", Some(5), Some(&token), |_| true).unwrap();
    assert_eq!(names(&next), ["c", "d"], "as of the first page");
    assert_eq!(next.rv, first.rv);
    assert_eq!(next.items[0].value()["spec"], json!(null), "c before its change");
    assert!(next.continue_token.is_none());

    // More writes than the history holds: the token expires with one to go on at the latest.
    for i in 0..8 {
        s.create(&key(&format!("z{i}")), obj(&format!("z{i}"))).await.unwrap();
    }
    let fresh = match s.list("/flunders/ns/", Some(2), Some(&token), |_| true) {
        Err(StorageError::ContinueExpired(t)) => t,
        other => panic!("{other:?}"),
    };
    let latest = s.list("/flunders/ns/", Some(2), Some(&fresh), |_| true).unwrap();
    assert_eq!(names(&latest), ["c", "e"], "the remainder, now");
    assert_eq!(latest.rv, s.current_rv());
    let rest = s
        .list("/flunders/ns/", Some(100), latest.continue_token.as_deref(), |_| true)
        .unwrap();
    assert_eq!(rest.items.len(), 8);
    assert!(matches!(
        s.list(
            "/flunders/ns/",
            None,
            Some(&encode_continue(0, "/flunders/ns/c")),
            |_| true
        ),
        Err(StorageError::BadContinue(_))
    ));
}
