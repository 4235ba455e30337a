//! Real git repositories, driven through the `git` command (plumbing only: no work
//! trees), so archives and SHAs are exactly what git produces.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
#[error("git {command} failed: {stderr}")]
pub struct GitError {
    command: String,
    stderr: String,
}

impl GitError {
    pub fn new(command: &str, stderr: String) -> Self {
        GitError {
            command: command.to_owned(),
            stderr,
        }
    }
}

/// A file to write in a commit: content and git mode (`100644`, `100755`, `120000`).
#[derive(Clone, Debug)]
pub struct FileChange {
    pub path: String,
    /// `None` deletes the file.
    pub content: Option<Vec<u8>>,
    pub mode: String,
}

#[derive(Clone)]
pub struct GitRepo {
    dir: PathBuf,
}

fn run(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> Result<String, GitError> {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Terrapod Simulator")
        .env("GIT_AUTHOR_EMAIL", "sim@terrapod.invalid")
        .env("GIT_COMMITTER_NAME", "Terrapod Simulator")
        .env("GIT_COMMITTER_EMAIL", "sim@terrapod.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let failed = |stderr: String| GitError {
        command: args.first().copied().unwrap_or_default().to_owned(),
        stderr,
    };
    let mut child = command.spawn().map_err(|err| failed(err.to_string()))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input)
            .map_err(|err| failed(err.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|err| failed(err.to_string()))?;
    if !output.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl GitRepo {
    pub fn init(dir: PathBuf) -> Result<Self, GitError> {
        std::fs::create_dir_all(&dir).map_err(|err| GitError {
            command: "init".into(),
            stderr: err.to_string(),
        })?;
        run(&dir, &["init", "--quiet", "--bare"], &[], None)?;
        Ok(GitRepo { dir })
    }

    /// Writes `changes` on top of `parent` (or an empty tree) and returns the commit SHA.
    /// Does not move any branch.
    pub fn commit(
        &self,
        parent: Option<&str>,
        message: &str,
        changes: &[FileChange],
    ) -> Result<String, GitError> {
        let index = self.dir.join(format!("index-{}", std::process::id()));
        let index_path = index.to_string_lossy().into_owned();
        // An empty work tree: index commands refuse to run without one, and never
        // touch it since every change goes through --cacheinfo.
        let work_tree = self.dir.join("empty-work-tree");
        let _ = std::fs::create_dir_all(&work_tree);
        let work_tree = work_tree.to_string_lossy().into_owned();
        let env = [
            ("GIT_INDEX_FILE", index_path.as_str()),
            ("GIT_WORK_TREE", work_tree.as_str()),
        ];
        let _ = std::fs::remove_file(&index);
        match parent {
            Some(parent) => run(&self.dir, &["read-tree", parent], &env, None)?,
            None => run(&self.dir, &["read-tree", "--empty"], &env, None)?,
        };
        for change in changes {
            match &change.content {
                Some(content) => {
                    let blob = run(
                        &self.dir,
                        &["hash-object", "-w", "--stdin"],
                        &[],
                        Some(content),
                    )?;
                    let info = format!("{},{},{}", change.mode, blob, change.path);
                    run(
                        &self.dir,
                        &["update-index", "--add", "--cacheinfo", &info],
                        &env,
                        None,
                    )?;
                }
                None => {
                    run(
                        &self.dir,
                        &["update-index", "--force-remove", &change.path],
                        &env,
                        None,
                    )?;
                }
            }
        }
        let tree = run(&self.dir, &["write-tree"], &env, None)?;
        let _ = std::fs::remove_file(&index);
        let mut args = vec!["commit-tree", tree.as_str(), "-m", message];
        if let Some(parent) = parent {
            args.extend(["-p", parent]);
        }
        run(&self.dir, &args, &[], None)
    }

    pub fn set_branch(&self, branch: &str, sha: &str) -> Result<(), GitError> {
        run(
            &self.dir,
            &["update-ref", &format!("refs/heads/{branch}"), sha],
            &[],
            None,
        )
        .map(drop)
    }

    /// `git archive` of `sha` as a gzip tarball under `prefix/`.
    pub fn archive(&self, sha: &str, prefix: &str) -> Result<Vec<u8>, GitError> {
        let output = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args([
                "archive",
                "--format=tar.gz",
                &format!("--prefix={prefix}/"),
                sha,
            ])
            .output()
            .map_err(|err| GitError {
                command: "archive".into(),
                stderr: err.to_string(),
            })?;
        if !output.status.success() {
            return Err(GitError {
                command: "archive".into(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(output.stdout)
    }

    /// Every file of the commit's tree with its content (for checking archives).
    pub fn tree_files(&self, sha: &str) -> Result<Vec<(String, String, Vec<u8>)>, GitError> {
        let listing = run(
            &self.dir,
            &["ls-tree", "-r", "-z", "--full-tree", sha],
            &[],
            None,
        )?;
        listing
            .split('\0')
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (meta, path) = line.split_once('\t').unwrap_or_default();
                let mut parts = meta.split_whitespace();
                let mode = parts.next().unwrap_or_default().to_owned();
                let _kind = parts.next();
                let object = parts.next().unwrap_or_default();
                let content = Command::new("git")
                    .arg("-C")
                    .arg(&self.dir)
                    .args(["cat-file", "blob", object])
                    .output()
                    .map(|o| o.stdout)
                    .map_err(|err| GitError {
                        command: "cat-file".into(),
                        stderr: err.to_string(),
                    })?;
                Ok((path.to_owned(), mode, content))
            })
            .collect()
    }

    /// What changed from the merge base of `base` and `head` to `head` — what GitHub's
    /// `base...head` compare and a pull request's files list — renames detected.
    pub fn changed_files(&self, base: &str, head: &str) -> Result<Vec<ChangedPath>, GitError> {
        self.diff(&format!("{base}...{head}"))
    }

    /// What differs between the trees of `base` and `head` (GitLab's `straight`).
    pub fn tree_changes(&self, base: &str, head: &str) -> Result<Vec<ChangedPath>, GitError> {
        self.diff(&format!("{base}..{head}"))
    }

    /// The best common ancestor of two commits.
    pub fn merge_base(&self, a: &str, b: &str) -> Result<String, GitError> {
        run(&self.dir, &["merge-base", a, b], &[], None)
    }

    fn diff(&self, range: &str) -> Result<Vec<ChangedPath>, GitError> {
        let listing = run(
            &self.dir,
            &["diff", "--name-status", "-z", "-M", range],
            &[],
            None,
        )?;
        let mut fields = listing.split('\0').filter(|f| !f.is_empty());
        let mut changes = Vec::new();
        while let Some(status) = fields.next() {
            let kind = status.chars().next().unwrap_or('M');
            let first = fields.next().unwrap_or_default().to_owned();
            let change = if matches!(kind, 'R' | 'C') {
                ChangedPath {
                    kind,
                    path: fields.next().unwrap_or_default().to_owned(),
                    previous: Some(first),
                }
            } else {
                ChangedPath {
                    kind,
                    path: first,
                    previous: None,
                }
            };
            changes.push(change);
        }
        Ok(changes)
    }
}

/// One changed file: git's status letter (`A`, `M`, `D`, `R`, ...), its path, and for
/// a rename or copy the path it had before.
#[derive(Debug, Clone)]
pub struct ChangedPath {
    pub kind: char,
    pub path: String,
    pub previous: Option<String>,
}
