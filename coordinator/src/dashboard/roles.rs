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
    /// See the overview: state, tier, limits, anomalies, usage charts.
    Overview,
    /// List the collections with their sizes.
    CollectionsRead,
    /// Create and delete collections.
    CollectionsWrite,
    /// Read the tenant's settings (notification addresses, anomaly thresholds).
    SettingsRead,
    /// Change the tenant's settings.
    SettingsWrite,
    /// List the tenant's snapshots.
    SnapshotsRead,
    /// Take a snapshot.
    SnapshotsWrite,
}

/// Every action.
pub const ACTIONS: &[Action] = &[
    Action::KeysRead,
    Action::KeysWrite,
    Action::MembersRead,
    Action::MembersWrite,
    Action::AuditRead,
    Action::Overview,
    Action::CollectionsRead,
    Action::CollectionsWrite,
    Action::SettingsRead,
    Action::SettingsWrite,
    Action::SnapshotsRead,
    Action::SnapshotsWrite,
];

/// The role an operator (`[dashboard] operators`) holds in every tenant.
pub const OPERATOR: &str = "operator";

/// What `role` may do: a viewer sees the overview, the collections and the members; a member
/// also lists the keys; an admin also manages keys and collections and reads the audit chain, the
/// settings and the snapshots; an owner also manages members, changes the settings and takes
/// snapshots; an operator may do everything. Unknown roles may do nothing.
pub fn allows(role: &str, action: Action) -> bool {
    use Action::*;
    let actions: &[Action] = match role {
        "viewer" => &[Overview, CollectionsRead, MembersRead],
        "member" => &[Overview, CollectionsRead, MembersRead, KeysRead],
        "admin" => &[
            Overview,
            CollectionsRead,
            MembersRead,
            KeysRead,
            KeysWrite,
            CollectionsWrite,
            AuditRead,
            SettingsRead,
            SnapshotsRead,
        ],
        "owner" | OPERATOR => ACTIONS,
        _ => &[],
    };
    actions.contains(&action)
}
