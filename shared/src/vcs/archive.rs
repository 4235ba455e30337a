//! Repacking provider archives. GitHub and GitLab wrap the tree in one directory and
//! may contain anything a hostile repository puts there; the output is the tree alone,
//! as a deterministic gzip tarball of regular files, directories and in-tree symlinks.
//!
//! Memory stays small whatever the archive's size: the download is streamed to a
//! temporary file under `max_archive_bytes`, decompression is streamed from it and
//! stops at `max_unpacked_bytes`, and the output is streamed to another temporary file
//! (hashed on the way), so a 100 MB repository or a gzip bomb costs a few buffers.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::StreamExt;
use tar::{Archive, Builder, EntryType, Header};
use tokio::io::AsyncWriteExt;

use crate::archives::{HashingWriter, RepoSnapshot};
use crate::domain::Provider;
use crate::vcs::VcsError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveLimits {
    pub max_archive_bytes: u64,
    pub max_unpacked_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("the archive is larger than TERRAPOD_VCS__MAX_ARCHIVE_BYTES ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error(
        "the unpacked repository is larger than TERRAPOD_VCS__MAX_UNPACKED_BYTES ({limit} bytes)"
    )]
    UnpackedTooLarge { limit: u64 },
    #[error("entry `{0}` has an absolute path or a `..` component")]
    UnsafePath(String),
    #[error("the archive is not a valid gzip tarball: {0}")]
    Corrupt(String),
    /// A refusal remembered from an earlier poll (of this or another replica).
    #[error("{0}; not downloaded again until a TERRAPOD_VCS__MAX_* limit is raised")]
    RefusedBefore(String),
}

impl ArchiveError {
    /// True when the same archive under the same limits is refused again, every time:
    /// worth remembering instead of downloading it each interval. A corrupt stream may
    /// be a broken download and is tried again.
    pub fn is_deterministic(&self) -> bool {
        !matches!(self, ArchiveError::Corrupt(_))
    }
}

/// The repacked tree and what was left out of it.
#[derive(Debug)]
pub struct Repacked {
    pub snapshot: RepoSnapshot,
    pub files: usize,
    /// Entries dropped: hard links, devices, FIFOs, symlinks leaving the tree.
    pub dropped: Vec<String>,
}

fn transport(provider: Provider, err: reqwest::Error) -> VcsError {
    if err.is_timeout() {
        VcsError::Timeout { provider }
    } else {
        VcsError::Transport {
            provider,
            detail: err.without_url().to_string(),
        }
    }
}

fn local_io(err: io::Error) -> VcsError {
    VcsError::Archive(ArchiveError::Corrupt(format!(
        "cannot write a temporary file: {err}"
    )))
}

/// Streams a response body into an unnamed temporary file (freed by the kernel
/// whatever happens to the process), refusing more than `limit` bytes (checked
/// against `Content-Length` first, then while streaming).
pub async fn download_limited(
    provider: Provider,
    response: reqwest::Response,
    limit: u64,
) -> Result<std::fs::File, VcsError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(ArchiveError::TooLarge { limit }.into());
    }
    let temp = tempfile::tempfile().map_err(local_io)?;
    let mut file = tokio::fs::File::from_std(temp.try_clone().map_err(local_io)?);
    let mut written: u64 = 0;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| transport(provider, err))?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(ArchiveError::TooLarge { limit }.into());
        }
        file.write_all(&chunk).await.map_err(local_io)?;
    }
    file.flush().await.map_err(local_io)?;
    Ok(temp)
}

/// Counts decompressed bytes and fails once `limit` is passed.
struct LimitedReader<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(UnpackedLimit));
        }
        Ok(n)
    }
}

#[derive(Debug)]
struct UnpackedLimit;

impl std::fmt::Display for UnpackedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unpacked size limit reached")
    }
}

impl std::error::Error for UnpackedLimit {}

fn io_error(err: io::Error, limit: u64) -> ArchiveError {
    let limited = err
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<UnpackedLimit>().is_some());
    if limited {
        ArchiveError::UnpackedTooLarge { limit }
    } else {
        ArchiveError::Corrupt(err.to_string())
    }
}

/// The entry's path inside the repository: the wrapper directory removed, refused if
/// absolute or holding `..`. `None` for the wrapper directory itself.
fn tree_path(raw: &Path, wrapper: &mut Option<PathBuf>) -> Result<Option<PathBuf>, ArchiveError> {
    let shown = || raw.display().to_string();
    let mut components = Vec::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => components.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::UnsafePath(shown()))
            }
        }
    }
    let Some((first, rest)) = components.split_first() else {
        return Ok(None);
    };
    match wrapper {
        Some(existing) if existing.as_os_str() != *first => {
            return Err(ArchiveError::Corrupt(format!(
                "entry `{}` is outside the archive's top directory",
                shown()
            )))
        }
        Some(_) => {}
        None => *wrapper = Some(PathBuf::from(first)),
    }
    if rest.is_empty() {
        return Ok(None);
    }
    Ok(Some(rest.iter().collect()))
}

/// Symlinks followed at most while resolving one path (Linux's limit too): a loop or
/// a longer chain counts as leaving the tree.
const MAX_SYMLINK_HOPS: usize = 40;
/// The longest path or symlink target kept (Linux's PATH_MAX): longer ones cannot be
/// created by `tar -x` anyway, and they would make resolving costly.
const MAX_PATH_BYTES: usize = 4096;
/// Path bytes looked up, at most, while judging one archive's symlinks: a crafted
/// archive (long chains through long paths) is refused instead of burning CPU.
const MAX_RESOLVE_BYTES: usize = 64 << 20;

/// The work left for judging one archive's symlinks.
struct ResolveBudget(usize);

impl ResolveBudget {
    fn spend(&mut self, bytes: usize) -> Result<(), ArchiveError> {
        self.0 = self.0.checked_sub(bytes.max(1)).ok_or_else(|| {
            ArchiveError::Corrupt("its symlinks are too many or too deep to judge".into())
        })?;
        Ok(())
    }
}

/// Where the symlink at `link` points, resolved as a filesystem would: from its
/// directory, component by component, each component that is itself one of the
/// archive's `symlinks` replaced by where that one points before the next `..` is
/// applied. `Ok(None)` when the path leaves the tree (or loops).
fn resolve_symlink(
    link: &Path,
    symlinks: &HashMap<PathBuf, PathBuf>,
    budget: &mut ResolveBudget,
) -> Result<Option<Vec<OsString>>, ArchiveError> {
    let mut hops = 0;
    let start: Vec<OsString> = link
        .parent()
        .map(|parent| parent.iter().map(OsStr::to_owned).collect())
        .unwrap_or_default();
    let Some(target) = symlinks.get(link) else {
        return Ok(None);
    };
    resolve(start, target, symlinks, &mut hops, budget)
}

/// `target` followed from the directory `from` (both inside the tree).
fn resolve(
    mut from: Vec<OsString>,
    target: &Path,
    symlinks: &HashMap<PathBuf, PathBuf>,
    hops: &mut usize,
    budget: &mut ResolveBudget,
) -> Result<Option<Vec<OsString>>, ArchiveError> {
    if target.as_os_str().is_empty() {
        return Ok(None);
    }
    for component in target.components() {
        match component {
            Component::Normal(part) => {
                from.push(part.to_owned());
                let here: PathBuf = from.iter().collect();
                budget.spend(here.as_os_str().len())?;
                if let Some(next) = symlinks.get(&here) {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS {
                        return Ok(None);
                    }
                    from.pop();
                    match resolve(from, next, symlinks, hops, budget)? {
                        Some(resolved) => from = resolved,
                        None => return Ok(None),
                    }
                }
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if from.pop().is_none() {
                    return Ok(None);
                }
            }
            Component::RootDir | Component::Prefix(_) => return Ok(None),
        }
    }
    Ok(Some(from))
}

/// One entry of the provider's archive, as the planning pass saw it.
struct Listed {
    /// Inside the tree (`None`: the wrapper, or a header without a path of its own).
    path: Option<PathBuf>,
    kind: EntryType,
}

/// Which entries to keep, decided from the whole archive before anything is written:
/// the last entry of a path wins (as `tar -x` would leave it); an entry whose parent
/// path runs through a symlink is dropped; a symlink is kept only if it resolves
/// inside the tree following the archive's other symlinks — those that survive as
/// symlinks, i.e. are the last entry of their path (a symlink later replaced by a
/// directory is a directory on disk); hard links, devices, FIFOs and paths or targets
/// longer than PATH_MAX are dropped.
fn plan(
    entries: &[Listed],
    all_symlinks: &HashMap<PathBuf, PathBuf>,
) -> Result<Vec<bool>, ArchiveError> {
    let mut last: HashMap<&Path, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        if let Some(path) = &entry.path {
            last.insert(path, index);
        }
    }
    let symlinks: HashMap<PathBuf, PathBuf> = entries
        .iter()
        .enumerate()
        .filter(|(index, entry)| {
            entry.kind == EntryType::Symlink
                && entry
                    .path
                    .as_deref()
                    .is_some_and(|path| last.get(path) == Some(index))
        })
        .filter_map(|(_, entry)| {
            let path = entry.path.as_ref()?;
            let target = all_symlinks.get(path)?;
            (target.as_os_str().len() <= MAX_PATH_BYTES).then(|| (path.clone(), target.clone()))
        })
        .collect();
    let mut budget = ResolveBudget(MAX_RESOLVE_BYTES);
    let mut keep = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let Some(path) = &entry.path else {
            keep.push(false);
            continue;
        };
        if last.get(path.as_path()) != Some(&index) || path.as_os_str().len() > MAX_PATH_BYTES {
            keep.push(false);
            continue;
        }
        let mut through_symlink = false;
        if !symlinks.is_empty() {
            for ancestor in path.ancestors().skip(1) {
                budget.spend(ancestor.as_os_str().len())?;
                if symlinks.contains_key(ancestor) {
                    through_symlink = true;
                    break;
                }
            }
        }
        keep.push(
            !through_symlink
                && match entry.kind {
                    EntryType::Regular | EntryType::Continuous | EntryType::Directory => true,
                    EntryType::Symlink => resolve_symlink(path, &symlinks, &mut budget)?.is_some(),
                    _ => false,
                },
        );
    }
    Ok(keep)
}

/// Repacks the provider's gzip tarball in `compressed` into a new temporary file.
/// CPU-bound: call it from a blocking thread.
pub fn repack_file(
    compressed: std::fs::File,
    limits: ArchiveLimits,
) -> Result<Repacked, ArchiveError> {
    let unreadable =
        |err: io::Error| ArchiveError::Corrupt(format!("cannot read the download: {err}"));
    let length = compressed.metadata().map_err(unreadable)?.len();
    repack(BufReader::new(compressed), length, limits)
}

/// The entries of a gzip tarball, decompressed within the unpacked limit.
fn entries_of<R: Read>(compressed: R, limit: u64) -> Archive<LimitedReader<GzDecoder<R>>> {
    Archive::new(LimitedReader {
        inner: GzDecoder::new(compressed),
        read: 0,
        limit,
    })
}

/// Repacks a gzip tarball read from `compressed` (`length` bytes). Two passes: one
/// to list the entries and decide what to keep ([`plan`]), one to write them.
pub fn repack<R: Read + Seek>(
    mut compressed: R,
    length: u64,
    limits: ArchiveLimits,
) -> Result<Repacked, ArchiveError> {
    if length > limits.max_archive_bytes {
        return Err(ArchiveError::TooLarge {
            limit: limits.max_archive_bytes,
        });
    }
    let limit = limits.max_unpacked_bytes;
    // The download was just written through this handle: read it from its start.
    compressed
        .seek(SeekFrom::Start(0))
        .map_err(|err| ArchiveError::Corrupt(format!("cannot read the download: {err}")))?;

    // 1. List: paths (refusing unsafe ones), kinds and symlink targets.
    let mut wrapper = None;
    let mut listed = Vec::new();
    let mut symlinks = HashMap::new();
    {
        let mut archive = entries_of(&mut compressed, limit);
        for entry in archive.entries().map_err(|err| io_error(err, limit))? {
            let entry = entry.map_err(|err| io_error(err, limit))?;
            let kind = entry.header().entry_type();
            let path = if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
                None
            } else {
                let raw = entry
                    .path()
                    .map_err(|err| io_error(err, limit))?
                    .into_owned();
                tree_path(&raw, &mut wrapper)?
            };
            if let (Some(path), EntryType::Symlink) = (&path, kind) {
                let target = entry
                    .link_name()
                    .map_err(|err| io_error(err, limit))?
                    .map(|target| target.into_owned())
                    .unwrap_or_default();
                symlinks.insert(path.clone(), target);
            }
            listed.push(Listed { path, kind });
        }
    }
    let keep = plan(&listed, &symlinks)?;
    let dropped: Vec<String> = listed
        .iter()
        .zip(&keep)
        .filter(|(entry, keep)| !**keep && entry.path.is_some())
        .filter_map(|(entry, _)| entry.path.as_ref().map(|p| p.display().to_string()))
        .collect();

    // 2. Write what is kept, in the archive's order.
    compressed
        .seek(SeekFrom::Start(0))
        .map_err(|err| ArchiveError::Corrupt(format!("cannot read the download again: {err}")))?;
    let output = tempfile::tempfile()
        .map_err(|err| ArchiveError::Corrupt(format!("cannot create a temporary file: {err}")))?;
    let hashed = HashingWriter::new(BufWriter::new(output));
    let mut builder = Builder::new(GzEncoder::new(hashed, Compression::default()));
    builder.mode(tar::HeaderMode::Deterministic);
    let mut files = 0;
    let mut archive = entries_of(&mut compressed, limit);
    let entries = archive.entries().map_err(|err| io_error(err, limit))?;
    for (index, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|err| io_error(err, limit))?;
        let (
            Some(true),
            Some(Listed {
                path: Some(path),
                kind,
            }),
        ) = (keep.get(index).copied(), listed.get(index))
        else {
            continue;
        };
        let mut header = Header::new_gnu();
        header.set_mtime(entry.header().mtime().unwrap_or(0));
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let executable = entry.header().mode().unwrap_or(0o644) & 0o111 != 0;
                header.set_entry_type(EntryType::Regular);
                header.set_mode(if executable { 0o755 } else { 0o644 });
                header.set_size(entry.size());
                builder
                    .append_data(&mut header, path, &mut entry)
                    .map_err(|err| io_error(err, limit))?;
                files += 1;
            }
            EntryType::Directory => {
                header.set_entry_type(EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, io::empty())
                    .map_err(|err| io_error(err, limit))?;
            }
            _ => {
                header.set_entry_type(EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder
                    .append_link(&mut header, path, &symlinks[path])
                    .map_err(|err| io_error(err, limit))?;
            }
        }
    }
    let encoder = builder.into_inner().map_err(|err| io_error(err, limit))?;
    let hashed = encoder.finish().map_err(|err| io_error(err, limit))?;
    let (buffered, sha256, size) = hashed.finish();
    let output = buffered
        .into_inner()
        .map_err(|err| io_error(err.into_error(), limit))?;
    Ok(Repacked {
        snapshot: RepoSnapshot::new(output, sha256, size),
        files,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn repack_bytes(input: &[u8], limits: ArchiveLimits) -> Result<Repacked, ArchiveError> {
        repack(std::io::Cursor::new(input), input.len() as u64, limits)
    }

    const LIMITS: ArchiveLimits = ArchiveLimits {
        max_archive_bytes: 10 << 20,
        max_unpacked_bytes: 10 << 20,
    };

    enum Item<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Fifo(&'a str),
    }

    /// Builds a gzip tarball with raw header names, so hostile paths survive.
    fn tarball(items: &[Item]) -> Vec<u8> {
        let mut out = Vec::new();
        for item in items {
            let mut header = Header::new_old();
            let (name, kind, data, link): (&str, EntryType, &[u8], Option<&str>) = match item {
                Item::File(name, data) => (name, EntryType::Regular, data, None),
                Item::Dir(name) => (name, EntryType::Directory, b"", None),
                Item::Symlink(name, target) => (name, EntryType::Symlink, b"", Some(target)),
                Item::HardLink(name, target) => (name, EntryType::Link, b"", Some(target)),
                Item::Fifo(name) => (name, EntryType::Fifo, b"", None),
            };
            let bytes = header.as_old_mut();
            bytes.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                bytes.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&out).unwrap();
        gz.finish().unwrap()
    }

    fn listing(snapshot_bytes: &[u8]) -> Vec<(String, EntryType, Option<String>)> {
        let mut archive = Archive::new(GzDecoder::new(snapshot_bytes));
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (
                    entry.path().unwrap().display().to_string(),
                    entry.header().entry_type(),
                    entry.link_name().unwrap().map(|l| l.display().to_string()),
                )
            })
            .collect()
    }

    #[test]
    fn the_wrapper_directory_is_removed_and_the_tree_kept() {
        let input = tarball(&[
            Item::Dir("acme-infra-abc1234/"),
            Item::File("acme-infra-abc1234/main.tf", b"resource {}"),
            Item::Dir("acme-infra-abc1234/modules/"),
            Item::File("acme-infra-abc1234/modules/vpc.tf", b"vpc"),
            Item::Symlink("acme-infra-abc1234/modules/link.tf", "../main.tf"),
        ]);
        let repacked = repack_bytes(&input, LIMITS).unwrap();
        assert_eq!(repacked.files, 2);
        assert!(repacked.dropped.is_empty());
        assert_eq!(
            listing(&repacked.snapshot.read_all().unwrap()),
            vec![
                ("main.tf".to_owned(), EntryType::Regular, None),
                ("modules".to_owned(), EntryType::Directory, None),
                ("modules/vpc.tf".to_owned(), EntryType::Regular, None),
                (
                    "modules/link.tf".to_owned(),
                    EntryType::Symlink,
                    Some("../main.tf".to_owned())
                ),
            ]
        );
    }

    #[test]
    fn repacking_is_deterministic() {
        let input = tarball(&[Item::File("w/a.tf", b"a"), Item::File("w/b.tf", b"b")]);
        let first = repack_bytes(&input, LIMITS).unwrap();
        let second = repack_bytes(&input, LIMITS).unwrap();
        assert_eq!(first.snapshot.sha256(), second.snapshot.sha256());
    }

    #[test]
    fn traversal_and_absolute_paths_refuse_the_whole_archive() {
        for name in ["w/../../etc/passwd", "/etc/passwd", "w/a/../../../x"] {
            let input = tarball(&[Item::File("w/ok.tf", b"ok"), Item::File(name, b"evil")]);
            assert!(
                matches!(
                    repack_bytes(&input, LIMITS),
                    Err(ArchiveError::UnsafePath(_))
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn escaping_symlinks_hard_links_and_devices_are_dropped() {
        let input = tarball(&[
            Item::File("w/main.tf", b"ok"),
            Item::Symlink("w/abs", "/etc/passwd"),
            Item::Symlink("w/up", "../../outside"),
            Item::Symlink("w/sub/up", "../../x"),
            Item::HardLink("w/hard", "w/main.tf"),
            Item::Fifo("w/fifo"),
            Item::Symlink("w/fine", "main.tf"),
        ]);
        let repacked = repack_bytes(&input, LIMITS).unwrap();
        let mut dropped = repacked.dropped.clone();
        dropped.sort();
        assert_eq!(dropped, vec!["abs", "fifo", "hard", "sub/up", "up"]);
        let names: Vec<String> = listing(&repacked.snapshot.read_all().unwrap())
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names, vec!["main.tf", "fine"]);
    }

    fn kept_and_dropped(items: &[Item]) -> (Vec<String>, Vec<String>) {
        let repacked = repack_bytes(&tarball(items), LIMITS).unwrap();
        let kept = listing(&repacked.snapshot.read_all().unwrap())
            .into_iter()
            .map(|e| e.0)
            .collect();
        let mut dropped = repacked.dropped;
        dropped.sort();
        (kept, dropped)
    }

    #[test]
    fn symlinks_are_judged_as_a_filesystem_resolves_them_through_other_symlinks() {
        // The example: each link reads as in-tree, but `esc3` resolves through
        // `up3` (the root) and then two levels above it.
        let (kept, dropped) = kept_and_dropped(&[
            Item::Dir("w/deep/b/c/"),
            Item::Symlink("w/deep/b/c/up3", "../../.."),
            Item::Symlink("w/esc3", "deep/b/c/up3/../../.."),
            Item::Symlink("w/a/up", ".."),
            Item::Symlink("w/esc", "a/up/../.."),
            Item::Symlink("w/ok", "a/up/deep"),
        ]);
        assert_eq!(dropped, vec!["esc", "esc3"]);
        assert!(kept.contains(&"deep/b/c/up3".to_owned()) && kept.contains(&"ok".to_owned()));
    }

    #[test]
    fn a_symlink_replaced_by_a_directory_is_judged_as_the_directory() {
        // `p` ends up a real directory: `q -> p/../..` then leads above the root.
        let (kept, dropped) = kept_and_dropped(&[
            Item::Dir("w/d/e/"),
            Item::Symlink("w/p", "d/e"),
            Item::Dir("w/p/"),
            Item::Symlink("w/q", "p/../.."),
        ]);
        assert!(dropped.contains(&"q".to_owned()), "{dropped:?}");
        assert!(kept.contains(&"p".to_owned()));
    }

    /// A tarball of symlinks with GNU long names and targets (past 100 bytes).
    fn long_links(links: &[(String, String)], file: Option<&str>) -> Vec<u8> {
        let mut builder = Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        if let Some(name) = file {
            let mut header = Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, &b"x"[..]).unwrap();
        }
        for (name, target) in links {
            let mut header = Header::new_gnu();
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, name, target).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn huge_symlink_targets_and_costly_chains_are_refused_quickly() {
        let long = long_links(
            &[("w/long".into(), "a/".repeat(300_000))],
            Some("w/main.tf"),
        );
        let repacked = repack_bytes(&long, LIMITS).unwrap();
        assert_eq!(repacked.dropped, vec!["long".to_owned()]);
        assert_eq!(repacked.files, 1);
        // Thousands of links, each walking a deep path and back: refused as a whole.
        let deep = "d/".repeat(600);
        let links: Vec<(String, String)> = (0..2_000)
            .map(|n| (format!("w/l{n}"), format!("{deep}{}", "../".repeat(600))))
            .collect();
        let roomy = ArchiveLimits {
            max_archive_bytes: 100 << 20,
            max_unpacked_bytes: 1 << 30,
        };
        let started = std::time::Instant::now();
        let outcome = repack_bytes(&long_links(&links, None), roomy);
        assert!(
            matches!(&outcome, Err(ArchiveError::Corrupt(m)) if m.contains("symlinks")),
            "{:?}",
            outcome.as_ref().map(|r| r.files)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn entries_through_a_symlink_and_symlink_loops_are_dropped() {
        let (kept, dropped) = kept_and_dropped(&[
            Item::Dir("w/real/"),
            Item::Symlink("w/link", "real"),
            Item::File("w/link/evil.tf", b"written through the link"),
            Item::Symlink("w/x", "y"),
            Item::Symlink("w/y", "x"),
            Item::File("w/main.tf", b"first"),
            Item::File("w/main.tf", b"second"),
        ]);
        assert_eq!(dropped, vec!["link/evil.tf", "main.tf", "x", "y"]);
        assert_eq!(kept, vec!["real", "link", "main.tf"]);
    }

    #[test]
    fn entries_outside_the_wrapper_are_refused() {
        let input = tarball(&[Item::File("w/a.tf", b"a"), Item::File("other/b.tf", b"b")]);
        assert!(matches!(
            repack_bytes(&input, LIMITS),
            Err(ArchiveError::Corrupt(_))
        ));
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_unpacked_limit() {
        // 64 MiB of zeros compresses to ~64 KiB.
        let zeros = vec![0u8; 64 << 20];
        let input = tarball(&[Item::File("w/bomb", &zeros)]);
        assert!(input.len() < 1 << 20);
        let limits = ArchiveLimits {
            max_archive_bytes: 10 << 20,
            max_unpacked_bytes: 8 << 20,
        };
        assert_eq!(
            repack_bytes(&input, limits).unwrap_err(),
            ArchiveError::UnpackedTooLarge { limit: 8 << 20 }
        );
    }

    #[test]
    fn oversized_and_corrupt_input_is_refused() {
        let input = tarball(&[Item::File("w/a", b"a")]);
        let tiny = ArchiveLimits {
            max_archive_bytes: 10,
            max_unpacked_bytes: 1 << 20,
        };
        assert_eq!(
            repack_bytes(&input, tiny).unwrap_err(),
            ArchiveError::TooLarge { limit: 10 }
        );
        assert!(matches!(
            repack_bytes(b"not gzip at all", LIMITS),
            Err(ArchiveError::Corrupt(_))
        ));
        assert!(matches!(
            repack_bytes(&input[..input.len() / 2], LIMITS),
            Err(ArchiveError::Corrupt(_))
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn segment() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("..".to_owned()),
                Just(".".to_owned()),
                Just("".to_owned()),
                "[a-z]{1,6}",
            ]
        }

        fn path() -> impl Strategy<Value = String> {
            (any::<bool>(), prop::collection::vec(segment(), 1..5)).prop_map(|(absolute, parts)| {
                format!("{}w/{}", if absolute { "/" } else { "" }, parts.join("/"))
            })
        }

        /// A short name from a small alphabet, so generated symlinks meet each other.
        fn near_segment() -> impl Strategy<Value = String> {
            prop_oneof![Just("..".to_owned()), Just(".".to_owned()), "[ab]"]
        }

        fn near_path() -> impl Strategy<Value = String> {
            prop::collection::vec(near_segment(), 1..5).prop_map(|parts| parts.join("/"))
        }

        /// An entry name the repacker accepts (no `..`), so most archives get extracted.
        fn name_path() -> impl Strategy<Value = String> {
            prop::collection::vec("[ab]", 1..4).prop_map(|parts| parts.join("/"))
        }

        /// Where `path` (absolute) leads on disk, following real symlinks component by
        /// component as the kernel does; `None` for a loop.
        fn resolve_on_disk(path: &Path, hops: &mut u32) -> Option<PathBuf> {
            let mut resolved = PathBuf::from("/");
            for component in path.components() {
                match component {
                    Component::ParentDir => {
                        resolved.pop();
                    }
                    Component::Normal(name) => {
                        let candidate = resolved.join(name);
                        match std::fs::read_link(&candidate) {
                            Ok(target) => {
                                *hops += 1;
                                if *hops > 40 {
                                    return None;
                                }
                                resolved = resolve_on_disk(&resolved.join(target), hops)?;
                            }
                            Err(_) => resolved = candidate,
                        }
                    }
                    _ => {}
                }
            }
            Some(resolved)
        }

        fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    walk(&path, found);
                }
                found.push(path);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]
            /// Extracted by a real `tar -x`, nothing of a repacked archive is written
            /// outside its directory and no symlink leads out of it.
            #[test]
            fn a_real_extraction_never_leaves_the_directory(
                entries in prop::collection::vec((name_path(), near_path(), 0u8..3), 1..10)
            ) {
                let names: Vec<String> = entries.iter().map(|(name, _, _)| format!("w/{name}")).collect();
                let items: Vec<Item> = entries
                    .iter()
                    .zip(&names)
                    .map(|((_, target, kind), name)| match kind {
                        0 => Item::File(name, b"x"),
                        1 => Item::Dir(name),
                        _ => Item::Symlink(name, target),
                    })
                    .collect();
                let Ok(repacked) = repack_bytes(&tarball(&items), LIMITS) else {
                    return Ok(()); // refused whole: nothing to extract
                };
                let outside = tempfile::tempdir().unwrap();
                let outside = std::fs::canonicalize(outside.path()).unwrap();
                let root = outside.join("a").join("b").join("root");
                std::fs::create_dir_all(&root).unwrap();
                let archive = outside.join("snapshot.tar.gz");
                std::fs::write(&archive, repacked.snapshot.read_all().unwrap()).unwrap();
                // Generated trees may conflict (a file `a`, then `a/b`): tar reports
                // those and goes on; what matters is where it wrote.
                std::process::Command::new("tar")
                    .arg("-xzf").arg(&archive).arg("-C").arg(&root)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap();
                let mut outer = Vec::new();
                walk(&outside, &mut outer);
                for path in &outer {
                    prop_assert!(
                        path.starts_with(&root) || root.starts_with(path) || path == &archive,
                        "written outside the directory: {}", path.display()
                    );
                }
                for path in outer.iter().filter(|p| p.starts_with(&root) && p != &&root) {
                    if std::fs::symlink_metadata(path).unwrap().file_type().is_symlink() {
                        if let Some(target) = resolve_on_disk(path, &mut 0) {
                            prop_assert!(
                                target.starts_with(&root),
                                "{} leads to {}", path.display(), target.display()
                            );
                        }
                    }
                }
            }

            #[test]
            fn repacked_trees_never_escape(entries in prop::collection::vec((path(), path(), 0u8..4), 0..12)) {
                let items: Vec<Item> = entries
                    .iter()
                    .map(|(name, target, kind)| match kind {
                        0 => Item::File(name, b"x"),
                        1 => Item::Dir(name),
                        2 => Item::Symlink(name, target.trim_start_matches("w/")),
                        _ => Item::HardLink(name, target),
                    })
                    .collect();
                if let Ok(repacked) = repack_bytes(&tarball(&items), LIMITS) {
                    for (name, kind, link) in listing(&repacked.snapshot.read_all().unwrap()) {
                        let path = Path::new(&name);
                        prop_assert!(path.components().all(|c| matches!(c, Component::Normal(_))), "{}", name);
                        prop_assert!(kind != EntryType::Link);
                        if link.is_some() {
                            let symlinks: HashMap<PathBuf, PathBuf> = listing(&repacked.snapshot.read_all().unwrap())
                                .into_iter()
                                .filter_map(|(n, _, l)| Some((PathBuf::from(n), PathBuf::from(l?))))
                                .collect();
                            prop_assert!(resolve_symlink(path, &symlinks, &mut ResolveBudget(MAX_RESOLVE_BYTES)).unwrap().is_some(), "{} -> {:?}", name, link);
                        }
                    }
                }
            }
        }
    }
}
