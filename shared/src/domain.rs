//! Parsed domain values. Each type can only hold a valid value, so the rest of the
//! program never re-validates.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ParseError(pub String);

/// A git object id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CommitSha(String);

impl CommitSha {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let valid = matches!(raw.len(), 40 | 64) && raw.bytes().all(|b| b.is_ascii_hexdigit());
        if valid {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(ParseError(format!("`{raw}` is not a commit SHA")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 8 characters, as shown in run messages.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A directory inside the repository: relative, without `..`, normalised without
/// leading `./` or trailing `/`. Empty means the repository root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct WorkingDirectory(String);

impl WorkingDirectory {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.starts_with('/') || raw.starts_with('\\') {
            return Err(ParseError(format!(
                "working directory `{raw}` must be relative to the repository root"
            )));
        }
        if raw.chars().any(|c| c.is_control()) || raw.contains('\\') {
            return Err(ParseError(format!(
                "working directory `{}` contains a control character or a backslash",
                raw.escape_debug()
            )));
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    return Err(ParseError(format!(
                        "working directory `{raw}` must not contain `..`"
                    )))
                }
                part => parts.push(part),
            }
        }
        Ok(Self(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A workspace or organization name: `[A-Za-z0-9_-]{1,90}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ResourceName(String);

impl ResourceName {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let valid = (1..=90).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError(
                "name must be 1 to 90 characters of letters, digits, `_` and `-`".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A branch name as git accepts it (`git check-ref-format --branch`), or empty for
/// "the repository's default branch".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct BranchName(String);

impl BranchName {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let bad = |why: &str| ParseError(format!("branch `{}` {why}", raw.escape_debug()));
        if raw.is_empty() {
            return Ok(Self::default());
        }
        if raw.len() > 255 {
            return Err(bad("is longer than 255 characters"));
        }
        if raw.starts_with('-') || raw.starts_with('/') || raw.ends_with('/') {
            return Err(bad("must not start with `-` or `/`, nor end with `/`"));
        }
        if raw.ends_with('.') || raw.ends_with(".lock") || raw == "@" {
            return Err(bad("must not end with `.` or `.lock`, nor be `@`"));
        }
        if raw.contains("..") || raw.contains("//") || raw.contains("@{") || raw.contains("/.") {
            return Err(bad(
                "must not contain `..`, `//`, `@{` or a component starting with `.`",
            ));
        }
        if raw.starts_with('.') {
            return Err(bad("must not start with `.`"));
        }
        if raw
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
        {
            return Err(bad(
                "must not contain spaces, control characters or any of ~^:?*[\\",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0.is_empty()
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub enum $name { $($variant),+ }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
                    self.as_str(),
                    out,
                )
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let raw = <String as diesel::deserialize::FromSql<
                    diesel::sql_types::Text,
                    diesel::pg::Pg,
                >>::from_sql(bytes)?;
                Ok(raw.parse::<$name>()?)
            }
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(raw: &str) -> Result<Self, ParseError> {
                match raw {
                    $($text => Ok($name::$variant),)+
                    other => Err(ParseError(format!(
                        "`{}` is not one of: {}",
                        other,
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                raw.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_enum!(
    /// Which kind of VCS a connection talks to.
    Provider { GitHub => "github", GitLab => "gitlab" }
);
string_enum!(ConnectionStatus { Active => "active", Disabled => "disabled" });
string_enum!(ExecutionMode { Remote => "remote", Local => "local", Agent => "agent" });
string_enum!(Role { Admin => "admin", Member => "member", Executor => "executor" });
string_enum!(TriggerReason { Push => "push", PullRequest => "pull_request", Tag => "tag" });
string_enum!(
    /// The TFE run states this service moves runs through (see [`crate::lifecycle`]).
    RunStatus {
        Pending => "pending",
        PlanQueued => "plan_queued",
        Planning => "planning",
        Planned => "planned",
        Confirmed => "confirmed",
        ApplyQueued => "apply_queued",
        Applying => "applying",
        Applied => "applied",
        PlannedAndFinished => "planned_and_finished",
        Discarded => "discarded",
        Canceled => "canceled",
        Errored => "errored",
    }
);

impl Provider {
    pub fn default_server_url(self) -> &'static str {
        match self {
            Provider::GitHub => "https://api.github.com",
            Provider::GitLab => "https://gitlab.com",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_shas_are_hex_of_git_lengths() {
        let sha = CommitSha::parse("0123456789ABCDEF0123456789abcdef01234567").unwrap();
        assert_eq!(sha.as_str(), "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(sha.short(), "01234567");
        assert!(CommitSha::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "abc", &"g".repeat(40), &"a".repeat(41)] {
            assert!(CommitSha::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn working_directories_stay_inside_the_repository() {
        assert_eq!(WorkingDirectory::parse("").unwrap().as_str(), "");
        assert_eq!(
            WorkingDirectory::parse("./infra/prod/").unwrap().as_str(),
            "infra/prod"
        );
        assert_eq!(WorkingDirectory::parse("a//b").unwrap().as_str(), "a/b");
        for bad in ["/etc", "../x", "a/../../b", "a/..", "\\x", "a\0b"] {
            assert!(WorkingDirectory::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_follow_the_tfe_pattern() {
        assert!(ResourceName::parse("prod_network-1").is_ok());
        assert!(ResourceName::parse(&"a".repeat(90)).is_ok());
        for bad in ["", "has space", "dot.ted", &"a".repeat(91), "ünï"] {
            assert!(ResourceName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branches_follow_git_ref_rules() {
        for good in ["", "main", "feature/x-1", "release-1.2", "user/a_b"] {
            assert!(BranchName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "-x", "a..b", "a b", "a~1", "x.lock", "/a", "a/", ".hidden", "a/.b", "a:b", "a\nb", "@",
        ] {
            assert!(BranchName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn string_enums_round_trip() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>().unwrap(), *status);
        }
        assert!("GitHub".parse::<Provider>().is_err());
    }
}
