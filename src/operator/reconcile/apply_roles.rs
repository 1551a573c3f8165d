//! Apply of the user roles (build_roles.rs), apart from [`super`] (apply.rs) so that the
//! children's apply stays one readable sequence.

use super::Applier;
use crate::operator::error::{Error, Result};
use crate::operator::reconcile::cleanup::delete_ignoring_missing;
use crate::operator::reconcile::names::{labelled_owner, Names};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::ListParams;
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
    ) -> Result<std::result::Result<(), String>> {
        // Roles become stale only through a spec change: without roles and without one, there
        // is nothing to do (and nothing to list).
        if roles.is_empty() && !self.spec_changed {
            return Ok(Ok(()));
        }
        let api: Api<ClusterRole> = Api::all(self.ctx.client.clone());
        let ours = api.list(&ListParams::default().labels(&names.owner_selector())).await?;
        let skip = match roles.is_empty() {
            true => None,
            false => self.not_exclusive(names, no_conflicts).await?,
        };
        let wanted = |n: &String| skip.is_none() && roles.iter().any(|r| r.metadata.name.as_ref() == Some(n));
        for stale in ours.items.iter().filter_map(|r| r.metadata.name.as_ref()) {
            if names.is_user_role(stale) && !wanted(stale) {
                delete_ignoring_missing(&api, stale).await?;
            }
        }
        if let Some(why) = skip {
            return Ok(Err(why));
        }
        let group = &self.eas.spec.group;
        for role in roles {
            let before = ours.items.iter().find(|r| r.metadata.name == role.metadata.name);
            match self.apply(&api, role, before.cloned()).await {
                Err(Error::Kube(kube::Error::Api(e))) if e.code == 403 => {
                    return Ok(Err(format!(
                        "no view/edit/admin roles for {group}: the operator may not create them ({}); install the chart with rbac.userRoles=true, or set spec.userRoles.enabled to false",
                        e.message
                    )));
                }
                other => other?,
            };
        }
        Ok(Ok(()))
    }

    /// Why `spec.group` is not served by this server alone, if it is not: a conflicting
    /// APIService, or any APIService of the group that is not ours (RBAC rules cover a whole
    /// group, every version).
    async fn not_exclusive(&self, names: &Names, no_conflicts: bool) -> Result<Option<String>> {
        let group = &self.eas.spec.group;
        let me = format!("{}/{}", names.namespace, names.owner);
        let all = Api::<APIService>::all(self.ctx.client.clone())
            .list(&ListParams::default())
            .await?;
        let foreign: Vec<String> = all
            .items
            .iter()
            .filter(|s| s.spec.as_ref().and_then(|s| s.group.as_ref()) == Some(group))
            .filter(|s| labelled_owner(s.labels()).as_deref() != Some(me.as_str()))
            .map(|s| s.name_any())
            .collect();
        if no_conflicts && foreign.is_empty() {
            return Ok(None);
        }
        let who = if foreign.is_empty() {
            "another ExtensionApiServer claims one of its APIServices".to_string()
        } else {
            format!(
                "it is also served by APIServices that are not this server's: {}",
                foreign.join(", ")
            )
        };
        Ok(Some(format!("no view/edit/admin roles for {group}: {who}")))
    }
}
