//! The operator's Event recorder: `events.k8s.io/v1` Events, a repeat within [`SERIES_WINDOW`]
//! sent as a `series` update of the first one, as kube-runtime's `Recorder` and client-go do.
//!
//! Why not kube-runtime's `Recorder`: it keeps a full copy of every Event it published for six
//! minutes (about 1.5 KiB each) and scans all of them on every publish. Creating 1,000
//! ExtensionApiServers publishes over 10,000 Events, so that cache alone held tens of MiB and
//! each publish cost a pass over 10,000 entries. This one keeps 40 bytes per recent Event (a
//! hash of what identifies it, its name, its count and when it was last seen), sweeps at most
//! once per window, and keys on the note too, so "created Secret a" and "created Secret b" stay
//! two Events instead of the second becoming a repeat of the first.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{EventType, Reporter};
use kube::{Api, Client};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A repeat within this window updates the first Event's series (client-go uses 6 minutes).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// What is remembered of an Event published recently.
struct Seen {
    /// `namespace/name` of the Event object.
    event: Box<str>,
    count: i32,
    last: Instant,
}

#[derive(Default)]
struct Recent {
    seen: HashMap<u64, Seen>,
    swept: Option<Instant>,
}

/// Publishes Events about objects; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Arc<Reporter>,
    recent: Arc<Mutex<Recent>>,
}

impl Recorder {
    /// A recorder writing as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter: Arc::new(reporter),
            recent: Arc::default(),
        }
    }

    /// Events remembered for series updates (for tests and the memory bench).
    pub fn remembered(&self) -> usize {
        self.recent.lock().map(|r| r.seen.len()).unwrap_or(0)
    }

    /// Publishes an Event about `regarding`: created the first time, a series update when the
    /// same type, reason and note about the same object repeats within [`SERIES_WINDOW`].
    pub async fn publish(
        &self,
        type_: EventType,
        reason: &str,
        note: &str,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = key(type_, reason, note, regarding);
        let now = Instant::now();
        let repeat = self.repeat(key, now);
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_string());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let stamp = MicroTime(jiff::Timestamp::now());
        if let Some((event, count)) = repeat {
            let name = event.split_once('/').map(|(_, n)| n).unwrap_or(&event);
            let series = EventSeries {
                count,
                last_observed_time: stamp.clone(),
            };
            let patch = serde_json::json!({ "series": series });
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                // Deleted meanwhile (Events expire after an hour by default): start anew.
                Err(kube::Error::Api(s)) if s.code == 404 => self.forget(key),
                Err(e) => return Err(e),
            }
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.reporter.controller),
            stamp.0.as_nanosecond()
        );
        let event = Event {
            action: Some("Reconcile".to_string()),
            reason: Some(reason.to_string()),
            note: Some(note.to_string()),
            event_time: Some(stamp),
            regarding: Some(regarding.clone()),
            metadata: ObjectMeta {
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                ..Default::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        if let Ok(mut recent) = self.recent.lock() {
            recent.seen.insert(
                key,
                Seen {
                    event: format!("{namespace}/{name}").into_boxed_str(),
                    count: 1,
                    last: now,
                },
            );
        }
        Ok(())
    }

    /// The Event to update and its new count, if this one repeats a recent one. Sweeps expired
    /// entries at most once per window.
    fn repeat(&self, key: u64, now: Instant) -> Option<(Box<str>, i32)> {
        let mut recent = self.recent.lock().ok()?;
        if recent.swept.is_none_or(|t| now.duration_since(t) >= SERIES_WINDOW) {
            recent.seen.retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
            recent.seen.shrink_to_fit();
            recent.swept = Some(now);
        }
        let seen = recent.seen.get_mut(&key)?;
        if now.duration_since(seen.last) >= SERIES_WINDOW {
            return None;
        }
        seen.count = seen.count.saturating_add(1);
        seen.last = now;
        Some((seen.event.clone(), seen.count))
    }

    fn forget(&self, key: u64) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.seen.remove(&key);
        }
    }
}

/// What makes two Events the same: type, reason, note and the object (by uid when known).
fn key(type_: EventType, reason: &str, note: &str, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    matches!(type_, EventType::Warning).hash(&mut h);
    reason.hash(&mut h);
    note.hash(&mut h);
    regarding.kind.hash(&mut h);
    regarding.namespace.hash(&mut h);
    regarding.name.hash(&mut h);
    regarding.uid.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fake_api::FakeApi;

    fn object() -> ObjectReference {
        ObjectReference {
            kind: Some("ExtensionApiServer".into()),
            namespace: Some("ns".into()),
            name: Some("s".into()),
            uid: Some("u1".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_repeat_updates_the_series_of_the_first_event_and_a_new_note_is_a_new_event() {
        let api = FakeApi::default();
        let rec = Recorder::new(
            api.client(),
            Reporter {
                controller: "eao".into(),
                instance: None,
            },
        );
        rec.publish(EventType::Normal, "Created", "created Secret ns/a", &object())
            .await
            .unwrap();
        rec.publish(EventType::Normal, "Created", "created Secret ns/a", &object())
            .await
            .unwrap();
        rec.publish(EventType::Normal, "Created", "created Secret ns/b", &object())
            .await
            .unwrap();
        let reqs = api.take_requests();
        let verbs: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
        assert_eq!(verbs, ["POST", "PATCH", "POST"], "{reqs:?}");
        assert!(reqs[0].path.starts_with("/apis/events.k8s.io/v1/namespaces/ns/events"));
        let name = reqs[1].path.rsplit('/').next().unwrap_or_default().to_string();
        assert!(
            name.starts_with("s."),
            "the series update goes to the first event: {name}"
        );
        let patch: serde_json::Value = serde_json::from_str(&reqs[1].body).unwrap();
        assert_eq!(patch["series"]["count"], 2);
        assert_eq!(rec.remembered(), 2);
    }
}
