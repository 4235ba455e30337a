//! Opaque, prefixed resource ids (`ws-…`, `run-…`): random, URL-safe, and parsed at the
//! edge so that a malformed id is an unknown resource, never a database error.

use std::fmt;

use diesel::deserialize::{self, FromSql};
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;
use ring::rand::{SecureRandom, SystemRandom};

const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const RANDOM_LEN: usize = 16;

/// `IN_ALPHABET[b]`: whether byte `b` is in [`ALPHABET`] (ids are parsed for every row
/// read, so this is a table lookup rather than a search of the alphabet).
const IN_ALPHABET: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = true;
        i += 1;
    }
    table
};

/// `len` random characters from the base58 alphabet.
pub fn random_base58(len: usize) -> String {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill(&mut buf).expect("the system random source failed");
        // Rejection sampling keeps every character equally likely (58 * 4 = 232).
        for byte in buf.iter().filter(|b| **b < 232) {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[usize::from(*byte % 58)] as char);
        }
    }
    out
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a valid id")]
pub struct InvalidId(pub String);

macro_rules! prefixed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
        #[diesel(sql_type = Text)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, random_base58(RANDOM_LEN)))
            }

            pub fn parse(raw: &str) -> Result<Self, InvalidId> {
                let valid = raw.strip_prefix($prefix).is_some_and(|rest| {
                    rest.len() == RANDOM_LEN && rest.bytes().all(|b| IN_ALPHABET[usize::from(b)])
                });
                if valid {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(InvalidId(raw.to_owned()))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(self.0.as_str(), out)
            }
        }

        impl FromSql<Text, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                let raw = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
                Ok(Self::parse(&raw)?)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// A VCS connection (`vcs-…`).
    VcsConnectionId,
    "vcs-"
);
prefixed_id!(
    /// A workspace (`ws-…`).
    WorkspaceId,
    "ws-"
);
prefixed_id!(
    /// A run (`run-…`).
    RunId,
    "run-"
);
prefixed_id!(
    /// A configuration version (`cv-…`).
    ConfigurationVersionId,
    "cv-"
);
prefixed_id!(
    /// An API token (`at-…`): how `token list` names it and `token revoke` takes it.
    ApiTokenId,
    "at-"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_differ() {
        let a = WorkspaceId::generate();
        let b = WorkspaceId::generate();
        assert_ne!(a, b);
        assert_eq!(WorkspaceId::parse(a.as_str()).unwrap(), a);
        assert!(a.as_str().starts_with("ws-"));
        assert_eq!(a.as_str().len(), 3 + RANDOM_LEN);
    }

    #[test]
    fn foreign_or_malformed_ids_are_refused() {
        let run = RunId::generate();
        assert!(WorkspaceId::parse(run.as_str()).is_err());
        for bad in [
            "",
            "ws-",
            "ws-short",
            "ws-0000000000000000",
            "ws-abc/../../etc",
            "WS-abcdefghijkmnopq",
        ] {
            assert!(WorkspaceId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_lookup_table_is_the_alphabet() {
        for byte in 0..=255u8 {
            assert_eq!(
                super::IN_ALPHABET[usize::from(byte)],
                super::ALPHABET.contains(&byte),
                "{byte}"
            );
        }
    }
}
