//! Which changes deserve a run (SPEC section 8): the files a change touches, judged
//! against a workspace's working directory, trigger prefixes or trigger patterns.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::domain::{ParseError, WorkingDirectory};

/// The most prefixes or patterns one workspace may have.
pub const MAX_TRIGGERS: usize = 100;
/// The longest pattern accepted.
const MAX_PATTERN_BYTES: usize = 1024;

/// The files a change touches, as far as the provider could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangedFiles {
    /// Every changed path, relative to the repository root (a rename under both names).
    Known(Vec<String>),
    /// The provider listed only some of them (its own cap was reached).
    Truncated,
}

/// A workspace's file-trigger rules, parsed.
#[derive(Debug, Clone)]
pub struct TriggerRules {
    working_directory: String,
    prefixes: Vec<String>,
    patterns: Option<GlobSet>,
}

/// Normalises one trigger prefix like a working directory; the root is refused (it
/// would make every change trigger: leave file triggers off instead).
pub fn parse_prefix(raw: &str) -> Result<String, ParseError> {
    let directory = WorkingDirectory::parse(raw.trim()).map_err(|_| {
        ParseError(format!(
            "trigger-prefixes: `{}` must be a directory relative to the repository root, without `..`",
            raw.escape_debug()
        ))
    })?;
    if directory.as_str().is_empty() {
        return Err(ParseError(format!(
            "trigger-prefixes: `{raw}` is the repository root"
        )));
    }
    Ok(directory.as_str().to_owned())
}

/// Checks one trigger pattern: `*` within a segment, `**` across segments, `?`, `[...]`.
pub fn parse_pattern(raw: &str) -> Result<String, ParseError> {
    let pattern = raw.trim();
    let pattern = pattern
        .strip_prefix("./")
        .unwrap_or(pattern)
        .trim_start_matches('/');
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(ParseError(format!(
            "trigger-patterns: longer than {MAX_PATTERN_BYTES} bytes"
        )));
    }
    if pattern.is_empty() || pattern.chars().any(char::is_control) {
        return Err(ParseError(format!(
            "trigger-patterns: `{}` is not a pattern",
            raw.escape_debug()
        )));
    }
    glob(pattern).map_err(|err| ParseError(format!("trigger-patterns: `{raw}`: {err}")))?;
    Ok(pattern.to_owned())
}

/// The longest `vcs-tags-regex`, and the most memory its compiled form may take: a
/// user's pattern must not cost the poller more than a tag list does.
const MAX_TAGS_REGEX_CHARS: usize = 500;
const MAX_TAGS_REGEX_BYTES: usize = 1 << 20;

/// Compiles a workspace's `vcs-tags-regex` (Rust `regex` syntax, unanchored unless it
/// anchors itself, as TFE's).
pub fn parse_tags_regex(raw: &str) -> Result<regex::Regex, ParseError> {
    if raw.chars().count() > MAX_TAGS_REGEX_CHARS {
        return Err(ParseError(format!(
            "vcs-tags-regex: longer than {MAX_TAGS_REGEX_CHARS} characters"
        )));
    }
    regex::RegexBuilder::new(raw)
        .size_limit(MAX_TAGS_REGEX_BYTES)
        .build()
        .map_err(|err| ParseError(format!("vcs-tags-regex: {err}")))
}

fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

impl TriggerRules {
    /// Rules from stored (already validated) settings. Patterns, when present, replace
    /// the working-directory and prefix rule.
    pub fn new(
        working_directory: &str,
        prefixes: &[String],
        patterns: &[String],
    ) -> Result<Self, ParseError> {
        let patterns = if patterns.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for pattern in patterns {
                set.add(glob(pattern).map_err(|err| ParseError(err.to_string()))?);
            }
            Some(set.build().map_err(|err| ParseError(err.to_string()))?)
        };
        Ok(TriggerRules {
            working_directory: working_directory.trim_matches('/').to_owned(),
            prefixes: prefixes
                .iter()
                .map(|p| p.trim_matches('/').to_owned())
                .collect(),
            patterns,
        })
    }

    /// Whether any of `files` calls for a run.
    pub fn matches_any(&self, files: &[String]) -> bool {
        files.iter().any(|file| self.matches(file))
    }

    fn matches(&self, file: &str) -> bool {
        let file = file.trim_start_matches('/');
        if let Some(patterns) = &self.patterns {
            return patterns.is_match(file);
        }
        under(file, &self.working_directory) || self.prefixes.iter().any(|p| under(file, p))
    }
}

/// `file` is `directory` itself or inside it; everything is inside the root.
fn under(file: &str, directory: &str) -> bool {
    directory.is_empty()
        || file
            .strip_prefix(directory)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(paths: &[&str]) -> Vec<String> {
        paths.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn the_working_directory_and_prefixes_decide() {
        let rules = TriggerRules::new("envs/prod", &files(&["modules"]), &[]).unwrap();
        assert!(rules.matches_any(&files(&["envs/prod/main.tf"])));
        assert!(rules.matches_any(&files(&["modules/vpc/main.tf"])));
        assert!(!rules.matches_any(&files(&["README.md", "envs/production/x.tf"])));
        assert!(!rules.matches_any(&files(&["envs/staging/main.tf"])));
        let root = TriggerRules::new("", &[], &[]).unwrap();
        assert!(root.matches_any(&files(&["README.md"])));
        assert!(!root.matches_any(&[]));
    }

    #[test]
    fn patterns_replace_the_directory_rule() {
        let rules =
            TriggerRules::new("envs/prod", &[], &files(&["**/*.tf", "modules/**"])).unwrap();
        assert!(rules.matches_any(&files(&["main.tf"])));
        assert!(rules.matches_any(&files(&["a/b/c.tf"])));
        assert!(rules.matches_any(&files(&["modules/vpc/README.md"])));
        assert!(!rules.matches_any(&files(&["envs/prod/notes.md"])));
        let single = TriggerRules::new("", &[], &files(&["*.tf"])).unwrap();
        assert!(single.matches_any(&files(&["main.tf"])));
        assert!(
            !single.matches_any(&files(&["dir/main.tf"])),
            "* stays in its segment"
        );
        let class = TriggerRules::new("", &[], &files(&["env-?/[ab]*.tf"])).unwrap();
        assert!(class.matches_any(&files(&["env-1/a.tf"])));
        assert!(!class.matches_any(&files(&["env-1/c.tf"])));
    }

    #[test]
    fn tag_regexes_are_checked_and_bounded() {
        let regex = parse_tags_regex(r"^v\d+\.\d+\.\d+$").unwrap();
        assert!(regex.is_match("v1.2.3") && !regex.is_match("v1.2") && !regex.is_match("nightly"));
        assert!(parse_tags_regex("(unclosed")
            .unwrap_err()
            .to_string()
            .contains("vcs-tags-regex"));
        assert!(parse_tags_regex(&"a".repeat(501)).is_err());
        assert!(
            parse_tags_regex(r"\w{1000}\w{1000}").is_err(),
            "too large once compiled"
        );
    }

    #[test]
    fn bad_prefixes_and_patterns_are_refused_with_their_value() {
        for bad in ["/", "", "../up", "a/../../b"] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_prefix("./envs/prod/").unwrap(), "envs/prod");
        let err = parse_pattern("envs/[prod").unwrap_err();
        assert!(err.to_string().contains("envs/[prod"), "{err}");
        assert!(parse_pattern("").is_err());
        assert_eq!(parse_pattern("/modules/**").unwrap(), "modules/**");
        assert_eq!(parse_pattern("./envs/*.tf").unwrap(), "envs/*.tf");
        assert!(parse_pattern(&"a".repeat(1025)).is_err());
    }
}
