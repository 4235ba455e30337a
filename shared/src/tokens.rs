//! API tokens: random, shown once, stored as SHA-256 digests. Tokens carry 256 bits of
//! entropy, so a fast digest is enough; no password hashing is needed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

use crate::db::models::ApiToken;
use crate::db::schema::api_tokens;
use crate::domain::Role;
use crate::ids::ApiTokenId;

const PREFIX: &str = "tpod.";

pub fn generate() -> SecretString {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source failed");
    SecretString::from(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

pub fn digest_of(token: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// Stores a new token's digest with a role; returns its public id. (A token seen
/// before keeps its row and id, and takes the role.)
pub async fn store(
    conn: &mut AsyncPgConnection,
    token: &SecretString,
    role: Role,
    description: &str,
) -> QueryResult<ApiTokenId> {
    diesel::insert_into(api_tokens::table)
        .values((
            api_tokens::token_sha256.eq(digest_of(token.expose_secret())),
            api_tokens::role.eq(role),
            api_tokens::description.eq(description),
            api_tokens::public_id.eq(ApiTokenId::generate()),
        ))
        .on_conflict(api_tokens::token_sha256)
        .do_update()
        .set(api_tokens::role.eq(role))
        .returning(api_tokens::public_id)
        .get_result(conn)
        .await
}

/// What became of the bootstrap token at start.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// It works as an admin token; `replaced` earlier bootstrap tokens were revoked.
    Active { replaced: usize },
    /// It was revoked (`token revoke`): it stays revoked; set a new one.
    Revoked,
}

/// Ensures the configured bootstrap token exists as an admin token, and revokes every
/// earlier bootstrap token (the variable changed). A bootstrap token that was revoked
/// stays revoked: a restart does not undo `token revoke`.
pub async fn ensure_bootstrap(
    conn: &mut AsyncPgConnection,
    token: &SecretString,
) -> QueryResult<Bootstrap> {
    let digest = digest_of(token.expose_secret());
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        diesel::insert_into(api_tokens::table)
            .values((
                api_tokens::token_sha256.eq(&digest),
                api_tokens::role.eq(Role::Admin),
                api_tokens::description.eq(BOOTSTRAP_DESCRIPTION),
                api_tokens::public_id.eq(ApiTokenId::generate()),
                api_tokens::bootstrap.eq(true),
            ))
            .on_conflict(api_tokens::token_sha256)
            .do_update()
            .set((
                api_tokens::role.eq(Role::Admin),
                api_tokens::bootstrap.eq(true),
            ))
            .execute(conn)
            .await?;
        let (own_id, revoked): (i64, Option<DateTime<Utc>>) = api_tokens::table
            .filter(api_tokens::token_sha256.eq(&digest))
            .select((api_tokens::id, api_tokens::revoked_at))
            .first(conn)
            .await?;
        if revoked.is_some() {
            return Ok(Bootstrap::Revoked);
        }
        // Only older bootstrap tokens: a replica still configured with an earlier
        // token (a rolling update, a rollback) must not revoke the newer one.
        let replaced = diesel::update(api_tokens::table)
            .filter(api_tokens::bootstrap)
            .filter(api_tokens::id.lt(own_id))
            .filter(api_tokens::revoked_at.is_null())
            .set(api_tokens::revoked_at.eq(diesel::dsl::now))
            .execute(conn)
            .await?;
        Ok(Bootstrap::Active { replaced })
    })
    .await
}

pub const BOOTSTRAP_DESCRIPTION: &str = "bootstrap token (TERRAPOD_AUTH__BOOTSTRAP_TOKEN)";

/// The token's row, if the presented token is known and not revoked. Records when it
/// was last used (at most once a minute, so a busy client costs no write per call).
pub async fn authenticate(
    conn: &mut AsyncPgConnection,
    presented: &str,
) -> QueryResult<Option<ApiToken>> {
    let digest = digest_of(presented);
    let found: Option<(ApiToken, Option<DateTime<Utc>>)> = api_tokens::table
        .filter(api_tokens::token_sha256.eq(&digest))
        .filter(api_tokens::revoked_at.is_null())
        .select((ApiToken::as_select(), api_tokens::last_used_at))
        .first(conn)
        .await
        .optional()?;
    let Some((token, last_used)) = found else {
        return Ok(None);
    };
    if last_used.is_none_or(|at| Utc::now() - at > chrono::Duration::minutes(1)) {
        diesel::update(api_tokens::table.find(token.id))
            .set(api_tokens::last_used_at.eq(diesel::dsl::now))
            .execute(conn)
            .await?;
    }
    Ok(Some(token))
}

/// A token as `token list` shows it (never the token itself).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_tokens, check_for_backend(diesel::pg::Pg))]
pub struct TokenListing {
    pub public_id: ApiTokenId,
    pub role: Role,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Tokens, oldest first; revoked ones only when asked.
pub async fn list(
    conn: &mut AsyncPgConnection,
    include_revoked: bool,
) -> QueryResult<Vec<TokenListing>> {
    let mut query = api_tokens::table
        .order((api_tokens::created_at.asc(), api_tokens::id.asc()))
        .select(TokenListing::as_select())
        .into_boxed();
    if !include_revoked {
        query = query.filter(api_tokens::revoked_at.is_null());
    }
    query.load(conn).await
}

#[derive(Debug, PartialEq, Eq)]
pub enum Revocation {
    Revoked,
    AlreadyRevoked,
    Unknown,
}

/// Revokes a token: it stops working at once (and on every API replica within the
/// verified-token cache's few seconds).
pub async fn revoke(conn: &mut AsyncPgConnection, id: &ApiTokenId) -> QueryResult<Revocation> {
    let revoked = diesel::update(api_tokens::table)
        .filter(api_tokens::public_id.eq(id))
        .filter(api_tokens::revoked_at.is_null())
        .set(api_tokens::revoked_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    if revoked == 1 {
        return Ok(Revocation::Revoked);
    }
    let exists: bool = diesel::select(diesel::dsl::exists(
        api_tokens::table.filter(api_tokens::public_id.eq(id)),
    ))
    .get_result(conn)
    .await?;
    Ok(if exists {
        Revocation::AlreadyRevoked
    } else {
        Revocation::Unknown
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_prefixed() {
        let a = generate();
        let b = generate();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(a.expose_secret().starts_with(PREFIX));
        assert_eq!(digest_of(a.expose_secret()).len(), 32);
    }
}
