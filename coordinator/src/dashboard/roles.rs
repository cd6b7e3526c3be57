//! Members' roles and what each may do. Every tenant route of the dashboard declares one
//! [`Action`] (`routes::DASHBOARD_ROUTES`), and the [`super::tenant::TenantAuth`] extractor
//! checks the caller's role in the route's tenant against it before the handler runs.

/// Something a member may do in their tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// List the tenant's API keys (never their secrets).
    KeysRead,
    /// Create and revoke API keys.
    KeysWrite,
    /// List the members.
    MembersRead,
    /// Invite members and change their roles.
    MembersWrite,
    /// Read and export the tenant's audit chain.
    AuditRead,
}

/// Every action.
pub const ACTIONS: &[Action] = &[
    Action::KeysRead,
    Action::KeysWrite,
    Action::MembersRead,
    Action::MembersWrite,
    Action::AuditRead,
];

/// What `role` may do: a viewer lists the members; a member also lists the keys; an admin also
/// manages keys and reads the audit chain; an owner also manages members. Unknown roles may do
/// nothing.
pub fn allows(role: &str, action: Action) -> bool {
    use Action::*;
    let actions: &[Action] = match role {
        "viewer" => &[MembersRead],
        "member" => &[KeysRead, MembersRead],
        "admin" => &[KeysRead, KeysWrite, MembersRead, AuditRead],
        "owner" => &[KeysRead, KeysWrite, MembersRead, MembersWrite, AuditRead],
        _ => &[],
    };
    actions.contains(&action)
}
