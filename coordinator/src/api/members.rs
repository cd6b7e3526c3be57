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

    /// [`Service::remove_member`] by a dashboard user (`actor`): the tenant's last owner cannot
    /// be removed (nobody could manage its members any more).
    pub fn remove_member_as(&self, actor: &str, tenant: &str, email: &str) -> Result<(), ApiError> {
        self.existing(tenant)?;
        let member = self.member(tenant, email)?;
        self.keep_an_owner(tenant, &member, None)?;
        Ok(self
            .store
            .remove_member(&Actor(actor.into()), tenant, &member.email)?)
    }

    /// Changes the role of `email`, already a member of `tenant`, to `role`, by a dashboard user;
    /// the tenant's last owner keeps that role.
    pub fn set_member_role_as(
        &self,
        actor: &str,
        tenant: &str,
        email: &str,
        role: &str,
    ) -> Result<Member, ApiError> {
        self.existing(tenant)?;
        check(email, Some(role))?;
        let member = self.member(tenant, email)?;
        self.keep_an_owner(tenant, &member, Some(role))?;
        Ok(self
            .store
            .add_member(&Actor(actor.into()), tenant, &member.email, role)?)
    }

    fn member(&self, tenant: &str, email: &str) -> Result<Member, ApiError> {
        let email = normalize_email(email).map_err(|e| ApiError::invalid(e.to_string()))?;
        self.store
            .members_of(tenant)?
            .into_iter()
            .find(|m| m.email == email)
            .ok_or_else(|| {
                ApiError::new(
                    crate::api::error::Code::NotFound,
                    format!("{email} is not a member of {tenant}"),
                )
            })
    }

    /// Refuses to take the owner role from `member` (to `role`, or by removal) when they are
    /// `tenant`'s only owner.
    fn keep_an_owner(
        &self,
        tenant: &str,
        member: &Member,
        role: Option<&str>,
    ) -> Result<(), ApiError> {
        if member.role != "owner" || role == Some("owner") {
            return Ok(());
        }
        let owners = self
            .store
            .members_of(tenant)?
            .iter()
            .filter(|m| m.role == "owner")
            .count();
        if owners <= 1 {
            return Err(ApiError::new(
                crate::api::error::Code::FailedPrecondition,
                format!(
                    "{} is the tenant's only owner; make another member owner first",
                    member.email
                ),
            ));
        }
        Ok(())
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
