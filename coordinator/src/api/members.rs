//! A tenant's dashboard members (`/admin/v1/tenants/{t}/members`): the operator invites the first
//! owner by email; each change is audited on the tenant's chain (`member.add`, `member.remove`).

use super::Service;
use super::error::ApiError;
use crate::store::Actor;
use crate::store::dashboard::{Member, ROLES, normalize_email};

impl Service {
    /// Adds `email` to `tenant` with `role` (or changes their role).
    pub fn add_member(&self, tenant: &str, email: &str, role: &str) -> Result<Member, ApiError> {
        self.add_member_as("admin", tenant, email, role)
    }

    /// [`Service::add_member`] recorded as done by `actor` (a dashboard user).
    pub fn add_member_as(
        &self,
        actor: &str,
        tenant: &str,
        email: &str,
        role: &str,
    ) -> Result<Member, ApiError> {
        self.existing(tenant)?;
        check(email, Some(role))?;
        Ok(self
            .store
            .add_member(&Actor(actor.into()), tenant, email, role)?)
    }

    /// The members of `tenant`.
    pub fn list_members(&self, tenant: &str) -> Result<Vec<Member>, ApiError> {
        self.existing(tenant)?;
        Ok(self.store.members_of(tenant)?)
    }

    /// Removes `email` from `tenant` (their sessions end if they are a member of no tenant).
    pub fn remove_member(&self, tenant: &str, email: &str) -> Result<(), ApiError> {
        self.existing(tenant)?;
        check(email, None)?;
        Ok(self
            .store
            .remove_member(&Actor("admin".into()), tenant, email)?)
    }
}

/// A client's mistake is a 400, before the store is asked.
fn check(email: &str, role: Option<&str>) -> Result<(), ApiError> {
    normalize_email(email).map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Some(role) = role
        && !ROLES.contains(&role)
    {
        return Err(ApiError::invalid(format!(
            "{role:?} is not a role; roles are {ROLES:?}"
        )));
    }
    Ok(())
}
