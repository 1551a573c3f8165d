//! POST of a new object: decoded, pruned and defaulted, named (`generateName`), validated,
//! its fields owned by the manager, and admitted (namespace lifecycle, webhooks, policies)
//! before it is stored.

use super::{json_response, managed, object, value_response, Cx, StorageHandler};
use crate::apiserver::admission::Operation;
use crate::apiserver::apierrors::Status;
use crate::apiserver::body::Body;
use crate::apiserver::storage::StorageError;
use http::{Response, StatusCode};
use serde_json::{json, Value};
use std::future::Future;

/// Attempts in all for a create whose generated name collides: kube-apiserver generates a new
/// name and tries again (RetryGenerateName, GA in 1.32), so a collision never reaches clients.
const GENERATE_NAME_ATTEMPTS: usize = 8;

/// Runs `attempt` with `name`; when the name was generated from `prefix` and is taken, with a
/// fresh one, up to [`GENERATE_NAME_ATTEMPTS`] times.
async fn with_generated_names<T, F, Fut>(
    mut name: String,
    prefix: Option<&str>,
    mut attempt: F,
) -> Result<T, (String, StorageError)>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, StorageError>>,
{
    for n in 1..=GENERATE_NAME_ATTEMPTS {
        match attempt(name.clone()).await {
            Err(StorageError::AlreadyExists) if n < GENERATE_NAME_ATTEMPTS => match prefix {
                Some(p) => name = format!("{p}{}", object::name_suffix()),
                None => return Err((name, StorageError::AlreadyExists)),
            },
            Err(e) => return Err((name, e)),
            Ok(t) => return Ok(t),
        }
    }
    Err((name, StorageError::AlreadyExists))
}

impl StorageHandler {
    pub(super) async fn create(&self, cx: &Cx, body: &[u8]) -> Result<Response<Body>, Status> {
        if cx.status_sub {
            return Err(Status::method_not_supported(
                &cx.group,
                &format!("{}/status", cx.res.plural),
                "create",
            ));
        }
        managed::validate_options(cx, "CreateOptions", false)?;
        let mut v = object::decode_request(cx, body)?;
        let named = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let prefix = (!named)
            .then(|| {
                v.pointer("/metadata/generateName")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .flatten();
        cx.prune_request(&mut v)?;
        object::prepare_create(cx, &mut v)?;
        self.admit_mutate(cx, Operation::Create, &mut v, None).await?;
        cx.validate(&v, None)?;
        managed::track_update(cx, None, &mut v);
        let name = object::name_of(&v);
        self.namespaces
            .admit_create(&cx.namespace, &cx.group, &cx.res.plural, &name)
            .await?;
        self.admit_validate(cx, Operation::Create, &name, Some(&v), None)
            .await?;
        if cx.dry_run() {
            if self.storage.get(&cx.key(&name)).is_some() {
                return Err(Status::already_exists(&cx.group, &cx.res.plural, &name));
            }
            return Ok(value_response(StatusCode::CREATED, &v));
        }
        let obj = with_generated_names(name, prefix.as_deref(), |name| {
            let mut v = v.clone();
            v["metadata"]["name"] = json!(name);
            let key = cx.key(&name);
            async move { self.storage.create(&key, v).await }
        })
        .await
        .map_err(|(name, e)| cx.storage_err(&name, e))?;
        Ok(json_response(StatusCode::CREATED, obj.json.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn a_taken_generated_name_is_generated_again() {
        let tried = Mutex::new(Vec::new());
        let got = with_generated_names("gen-aaaaa".into(), Some("gen-"), |name| {
            let mut t = tried.lock().expect("lock");
            t.push(name.clone());
            let taken = t.len() < 3;
            async move {
                if taken {
                    Err(StorageError::AlreadyExists)
                } else {
                    Ok(name)
                }
            }
        })
        .await
        .expect("third name is free");
        let tried = tried.into_inner().expect("lock");
        assert_eq!(tried.len(), 3);
        assert_eq!(got, tried[2]);
        assert!(tried.iter().all(|n| n.starts_with("gen-") && n.len() == 9), "{tried:?}");
        assert_ne!(tried[0], tried[1]);
    }

    #[tokio::test]
    async fn a_chosen_name_is_never_changed_and_attempts_are_bounded() {
        let calls = Mutex::new(0);
        let err = with_generated_names("mine".into(), None, |_| {
            *calls.lock().expect("lock") += 1;
            async { Err::<(), _>(StorageError::AlreadyExists) }
        })
        .await
        .expect_err("taken");
        assert_eq!((err.0.as_str(), *calls.lock().expect("lock")), ("mine", 1));
        let calls = Mutex::new(0);
        with_generated_names("g-aaaaa".into(), Some("g-"), |_| {
            *calls.lock().expect("lock") += 1;
            async { Err::<(), _>(StorageError::AlreadyExists) }
        })
        .await
        .expect_err("every name taken");
        assert_eq!(*calls.lock().expect("lock"), GENERATE_NAME_ATTEMPTS);
    }
}
