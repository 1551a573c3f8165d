//! Apply of the user roles (build_roles.rs), apart from [`super`] (apply.rs) so that the
//! children's apply stays one readable sequence. Like every apply, it reads the caches, not the
//! API: an unchanged role is not written.

use super::{Applier, ApplyFailure};
use crate::operator::reconcile::cleanup::delete_ignoring_missing;
use crate::operator::reconcile::names::{labelled_owner, Names};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::{Api, ResourceExt};

impl Applier<'_> {
    /// Applies the user roles and removes those the spec no longer wants. They extend
    /// everyone's view/edit/admin to `spec.group`, so they exist only while every APIService of
    /// that group is ours: otherwise (say a CRD of the group appeared) they are removed, and
    /// `Ok(Err(why))` says so, as it does when RBAC refuses them.
    pub(super) async fn apply_user_roles(
        &self,
        names: &Names,
        roles: &[ClusterRole],
        no_conflicts: bool,
    ) -> Result<Result<(), String>, ApplyFailure> {
        let api: Api<ClusterRole> = Api::all(self.ctx.client.clone());
        let me = format!("{}/{}", names.namespace, names.owner);
        let ours: Vec<String> = self
            .ctx
            .caches
            .cluster_roles
            .state()
            .iter()
            .filter(|r| labelled_owner(r.labels()).as_deref() == Some(me.as_str()))
            .map(|r| r.name_any())
            .filter(|n| names.is_user_role(n))
            .collect();
        let skip = match roles.is_empty() {
            true => None,
            false => self.not_exclusive(names, no_conflicts),
        };
        let wanted = |n: &String| skip.is_none() && roles.iter().any(|r| r.metadata.name.as_ref() == Some(n));
        for stale in ours.iter().filter(|n| !wanted(n)) {
            delete_ignoring_missing(&api, stale)
                .await
                .map_err(|e| ApplyFailure::new(format!("ClusterRole {stale}"), &e))?;
        }
        if let Some(why) = skip {
            return Ok(Err(why));
        }
        let group = &self.eas.spec.group;
        for role in roles {
            match self.apply(&api, role).await {
                Err(f) if f.reason == "Forbidden" => {
                    return Ok(Err(format!(
                        "no view/edit/admin roles for {group}: the operator may not create them ({}); install the chart with rbac.userRoles=true, or set spec.userRoles.enabled to false",
                        f.message
                    )));
                }
                other => {
                    other?;
                }
            }
        }
        Ok(Ok(()))
    }

    /// Why `spec.group` is not served by this server alone, if it is not: a conflicting
    /// APIService, or any APIService of the group that is not ours (RBAC rules cover a whole
    /// group, every version). Read from the cache of every APIService.
    fn not_exclusive(&self, names: &Names, no_conflicts: bool) -> Option<String> {
        let group = &self.eas.spec.group;
        let me = format!("{}/{}", names.namespace, names.owner);
        let foreign: Vec<String> = self
            .ctx
            .caches
            .api_services
            .state()
            .iter()
            .filter(|s| s.spec.as_ref().and_then(|s| s.group.as_ref()) == Some(group))
            .filter(|s| labelled_owner(s.labels()).as_deref() != Some(me.as_str()))
            .map(|s| s.name_any())
            .collect();
        if no_conflicts && foreign.is_empty() {
            return None;
        }
        let who = if foreign.is_empty() {
            "another ExtensionApiServer claims one of its APIServices".to_string()
        } else {
            format!(
                "it is also served by APIServices that are not this server's: {}",
                foreign.join(", ")
            )
        };
        Some(format!("no view/edit/admin roles for {group}: {who}"))
    }
}
