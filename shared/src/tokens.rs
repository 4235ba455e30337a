//! API tokens: random, shown once, stored as SHA-256 digests. Tokens carry 256 bits of
//! entropy, so a fast digest is enough; no password hashing is needed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

use crate::db::models::ApiToken;
use crate::db::schema::api_tokens;
use crate::domain::Role;

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

/// Stores a token's digest with a role; an existing token keeps its row but takes the role.
pub async fn store(
    conn: &mut AsyncPgConnection,
    token: &SecretString,
    role: Role,
    description: &str,
) -> QueryResult<()> {
    diesel::insert_into(api_tokens::table)
        .values((
            api_tokens::token_sha256.eq(digest_of(token.expose_secret())),
            api_tokens::role.eq(role),
            api_tokens::description.eq(description),
        ))
        .on_conflict(api_tokens::token_sha256)
        .do_update()
        .set(api_tokens::role.eq(role))
        .execute(conn)
        .await
        .map(drop)
}

/// The token's row, if the presented token is known.
pub async fn authenticate(
    conn: &mut AsyncPgConnection,
    presented: &str,
) -> QueryResult<Option<ApiToken>> {
    api_tokens::table
        .filter(api_tokens::token_sha256.eq(digest_of(presented)))
        .select(ApiToken::as_select())
        .first(conn)
        .await
        .optional()
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
