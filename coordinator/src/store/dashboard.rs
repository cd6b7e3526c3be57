//! The dashboard's people (`crate::dashboard`): tenants' members by verified email and role,
//! users and their provider identities, login flows in progress and sessions. Session ids and
//! OAuth `state` values are stored only as SHA-256 digests.

use rusqlite::{OptionalExtension, params};
use serde_json::json;

use super::{Actor, Error, Result, Store, from_sql_int, tenant, to_sql_int};

/// The platform's audit chain.
const PLATFORM: &str = "platform";

/// A member's role in a tenant.
pub const ROLES: &[&str] = &["owner", "admin", "member", "viewer"];

/// One member of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// The tenant.
    pub tenant: String,
    /// Their email address (lowercased).
    pub email: String,
    /// `owner`, `admin`, `member` or `viewer`.
    pub role: String,
    /// Who invited them (`admin`, or `user:<email>`).
    pub invited_by: String,
    /// When, Unix ms.
    pub created_ms: u64,
}

/// A login flow between its redirect to the provider and its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginFlow {
    /// SHA-256 of the `state` sent to the provider.
    pub state_hash: [u8; 32],
    /// SHA-256 of the cookie that binds the flow to its browser.
    pub browser_hash: [u8; 32],
    /// The provider's name.
    pub provider: String,
    /// The PKCE verifier.
    pub pkce_verifier: String,
    /// The OpenID Connect nonce (empty for a provider without ID tokens).
    pub nonce: String,
    /// When it started, Unix ms.
    pub created_ms: u64,
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// The user's email address.
    pub email: String,
    /// The provider they logged in with.
    pub provider: String,
    /// When the session began, Unix ms.
    pub created_ms: u64,
    /// Its CSRF token (sent back with every state-changing request).
    pub csrf: String,
}

/// How long a session may be idle, and how long it may last at all.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Idle timeout.
    pub idle_ms: u64,
    /// Absolute timeout.
    pub absolute_ms: u64,
}

/// A new session, as a login creates it.
pub struct NewSession<'a> {
    /// SHA-256 of the id its cookie holds.
    pub id_hash: [u8; 32],
    /// The verified email address.
    pub email: &'a str,
    /// The provider.
    pub provider: &'a str,
    /// The provider's subject for the user.
    pub subject: &'a str,
    /// Its CSRF token.
    pub csrf: &'a str,
    /// Now, Unix ms.
    pub now_ms: u64,
}

/// `email` trimmed and lowercased, if it is a plausible address (no characters that could
/// break out of a header or a page).
pub fn normalize_email(email: &str) -> Result<String> {
    let email = email.trim().to_ascii_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && email
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | '\\' | ',' | ';'));
    if !valid {
        return Err(Error::Invalid(format!("{email:?} is not an email address")));
    }
    Ok(email)
}

impl Store {
    /// Adds `email` to `tenant` with `role` (or changes their role), audited `member.add` on the
    /// tenant's chain.
    pub fn add_member(
        &self,
        actor: &Actor,
        tenant_id: &str,
        email: &str,
        role: &str,
    ) -> Result<Member> {
        let email = normalize_email(email)?;
        if !ROLES.contains(&role) {
            return Err(Error::Invalid(format!(
                "{role:?} is not a role; roles are {ROLES:?}"
            )));
        }
        let now = self.now();
        self.write(|tx| {
            tenant::live(tx, tenant_id)?;
            tx.execute(
                "INSERT INTO members (tenant, email, role, invited_by, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, email) DO UPDATE SET role = excluded.role",
                params![tenant_id, email, role, actor.0, to_sql_int("time", now)?],
            )?;
            let details = json!({ "email": email, "role": role });
            self.append_in(
                tx,
                tenant_id,
                self.draft(actor, "member.add", tenant_id, details),
            )?;
            Ok(())
        })?;
        self.members_of(tenant_id)?
            .into_iter()
            .find(|m| m.email == email)
            .ok_or_else(|| Error::Corrupt("a member just added is missing".into()))
    }

    /// Removes `email` from `tenant`, audited `member.remove`; ends their sessions if they are a
    /// member of no tenant any more. [`Error::NotFound`] if they were not a member.
    pub fn remove_member(&self, actor: &Actor, tenant_id: &str, email: &str) -> Result<()> {
        let email = normalize_email(email)?;
        self.write(|tx| {
            let removed = tx.execute(
                "DELETE FROM members WHERE tenant = ?1 AND email = ?2",
                params![tenant_id, email],
            )?;
            if removed == 0 {
                return Err(Error::NotFound(format!(
                    "{email} is not a member of {tenant_id}"
                )));
            }
            let left: i64 = tx.query_row(
                "SELECT COUNT(*) FROM members WHERE email = ?1",
                params![email],
                |r| r.get(0),
            )?;
            if left == 0 {
                tx.execute(
                    "DELETE FROM sessions WHERE user_id IN (SELECT id FROM users WHERE email = ?1)",
                    params![email],
                )?;
            }
            let details = json!({ "email": email });
            self.append_in(
                tx,
                tenant_id,
                self.draft(actor, "member.remove", tenant_id, details),
            )?;
            Ok(())
        })
    }

    /// The members of `tenant`, by email.
    pub fn members_of(&self, tenant_id: &str) -> Result<Vec<Member>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT tenant, email, role, invited_by, created_ms FROM members
                 WHERE tenant = ?1 ORDER BY email",
            )?;
            let rows = stmt.query_map(params![tenant_id], member_row)?;
            rows.map(|r| r.map_err(Error::from).and_then(|r| r))
                .collect()
        })
    }

    /// The tenants `email` is a member of, with its role in each.
    pub fn memberships(&self, email: &str) -> Result<Vec<Member>> {
        let email = normalize_email(email)?;
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT m.tenant, m.email, m.role, m.invited_by, m.created_ms FROM members m
                 JOIN tenants t ON t.id = m.tenant
                 WHERE m.email = ?1 AND t.deleted_ms IS NULL ORDER BY m.tenant",
            )?;
            let rows = stmt.query_map(params![email], member_row)?;
            rows.map(|r| r.map_err(Error::from).and_then(|r| r))
                .collect()
        })
    }

    /// Records a login flow; flows older than `max_age_ms` are dropped on the way.
    pub fn begin_login(&self, flow: &LoginFlow, max_age_ms: u64) -> Result<()> {
        self.write(|tx| {
            let oldest = flow.created_ms.saturating_sub(max_age_ms);
            tx.execute(
                "DELETE FROM login_flows WHERE created_ms < ?1",
                params![to_sql_int("time", oldest)?],
            )?;
            tx.execute(
                "INSERT INTO login_flows (state_hash, browser_hash, provider, pkce_verifier, nonce, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    flow.state_hash.as_slice(),
                    flow.browser_hash.as_slice(),
                    flow.provider,
                    flow.pkce_verifier,
                    flow.nonce,
                    to_sql_int("time", flow.created_ms)?
                ],
            )?;
            Ok(())
        })
    }

    /// Takes (and deletes: a `state` is used once) the login flow of `state_hash`.
    pub fn take_login(&self, state_hash: &[u8; 32]) -> Result<Option<LoginFlow>> {
        self.write(|tx| {
            let flow = tx
                .query_row(
                    "SELECT state_hash, browser_hash, provider, pkce_verifier, nonce, created_ms
                     FROM login_flows WHERE state_hash = ?1",
                    params![state_hash.as_slice()],
                    |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    },
                )
                .optional()?;
            let Some((state, browser, provider, pkce_verifier, nonce, created)) = flow else {
                return Ok(None);
            };
            tx.execute(
                "DELETE FROM login_flows WHERE state_hash = ?1",
                params![state_hash.as_slice()],
            )?;
            let digest = |v: Vec<u8>| -> Result<[u8; 32]> {
                v.try_into()
                    .map_err(|_| Error::Corrupt("a login flow's digest is not 32 bytes".into()))
            };
            Ok(Some(LoginFlow {
                state_hash: digest(state)?,
                browser_hash: digest(browser)?,
                provider,
                pkce_verifier,
                nonce,
                created_ms: from_sql_int("time", created)?,
            }))
        })
    }

    /// Starts a session for a verified email address (the user and identity are recorded on
    /// first login), audited `dashboard.login` on the platform's chain and on the chain of every
    /// tenant the user is a member of.
    pub fn create_session(&self, new: &NewSession<'_>) -> Result<()> {
        let email = normalize_email(new.email)?;
        let now = to_sql_int("time", new.now_ms)?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO users (email, created_ms) VALUES (?1, ?2) ON CONFLICT (email) DO NOTHING",
                params![email, now],
            )?;
            let user: i64 = tx.query_row(
                "SELECT id FROM users WHERE email = ?1",
                params![email],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO user_identities (provider, subject, user_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT (provider, subject) DO UPDATE SET user_id = excluded.user_id",
                params![new.provider, new.subject, user],
            )?;
            tx.execute(
                "INSERT INTO sessions (id_hash, user_id, provider, created_ms, last_seen_ms, csrf)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                params![new.id_hash.as_slice(), user, new.provider, now, new.csrf],
            )?;
            let actor = Actor(format!("user:{email}"));
            let details = json!({ "provider": new.provider });
            let mut chains = vec![PLATFORM.to_owned()];
            let mut stmt = tx.prepare("SELECT tenant FROM members WHERE email = ?1")?;
            for tenant in stmt.query_map(params![email], |r| r.get::<_, String>(0))? {
                chains.push(tenant?);
            }
            for chain in chains {
                let mut draft = self.draft(&actor, "dashboard.login", &email, details.clone());
                draft.time_ms = new.now_ms;
                self.append_in(tx, &chain, draft)?;
            }
            Ok(())
        })
    }

    /// Records a refused login on the platform's chain (`dashboard.login`, outcome `denied`).
    pub fn audit_failed_login(
        &self,
        provider: &str,
        who: Option<&str>,
        reason: &str,
        now_ms: u64,
    ) -> Result<()> {
        self.write(|tx| {
            let actor = Actor(who.map_or_else(|| "anonymous".to_owned(), |e| format!("user:{e}")));
            let mut draft = self.draft(
                &actor,
                "dashboard.login",
                who.unwrap_or(""),
                json!({ "provider": provider, "reason": reason }),
            );
            draft.outcome = "denied".into();
            draft.time_ms = now_ms;
            self.append_in(tx, PLATFORM, draft)?;
            Ok(())
        })
    }

    /// The session whose id hashes to `id_hash`, if it is within `limits` at `now_ms` (its last
    /// use is moved to now). An expired one is deleted and answered `None`.
    pub fn session(
        &self,
        id_hash: &[u8; 32],
        now_ms: u64,
        limits: SessionLimits,
    ) -> Result<Option<SessionRow>> {
        self.write(|tx| {
            let row = tx
                .query_row(
                    "SELECT u.email, s.provider, s.created_ms, s.last_seen_ms, s.csrf
                     FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ?1",
                    params![id_hash.as_slice()],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, String>(4)?,
                        ))
                    },
                )
                .optional()?;
            let Some((email, provider, created, last_seen, csrf)) = row else {
                return Ok(None);
            };
            let created_ms = from_sql_int("time", created)?;
            let last_seen_ms = from_sql_int("time", last_seen)?;
            let expired = now_ms.saturating_sub(last_seen_ms) > limits.idle_ms
                || now_ms.saturating_sub(created_ms) > limits.absolute_ms;
            if expired {
                tx.execute(
                    "DELETE FROM sessions WHERE id_hash = ?1",
                    params![id_hash.as_slice()],
                )?;
                return Ok(None);
            }
            tx.execute(
                "UPDATE sessions SET last_seen_ms = ?2 WHERE id_hash = ?1",
                params![id_hash.as_slice(), to_sql_int("time", now_ms)?],
            )?;
            Ok(Some(SessionRow {
                email,
                provider,
                created_ms,
                csrf,
            }))
        })
    }

    /// Ends the session whose id hashes to `id_hash` (its row is deleted), audited
    /// `dashboard.logout` on the platform's chain. False if there was none.
    pub fn end_session(&self, id_hash: &[u8; 32], now_ms: u64) -> Result<bool> {
        self.write(|tx| {
            let email: Option<String> = tx
                .query_row(
                    "SELECT u.email FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ?1",
                    params![id_hash.as_slice()],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(email) = email else {
                return Ok(false);
            };
            tx.execute("DELETE FROM sessions WHERE id_hash = ?1", params![id_hash.as_slice()])?;
            let actor = Actor(format!("user:{email}"));
            let mut draft = self.draft(&actor, "dashboard.logout", &email, json!({}));
            draft.time_ms = now_ms;
            self.append_in(tx, PLATFORM, draft)?;
            Ok(true)
        })
    }
}

fn member_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Member>> {
    let created: i64 = r.get(4)?;
    Ok(Ok(Member {
        tenant: r.get(0)?,
        email: r.get(1)?,
        role: r.get(2)?,
        invited_by: r.get(3)?,
        created_ms: match from_sql_int("time", created) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        },
    }))
}
