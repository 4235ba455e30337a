//! The archive of a commit: downloaded once per (connection, repository, commit),
//! stored, and reused by every workspace on that repository and by every replica. A
//! refused archive (too large, unsafe) is remembered too, and not downloaded again
//! until a limit is raised.

use std::sync::Arc;

use diesel_async::AsyncPgConnection;
use terrapod_shared::archives::{self, StoreError, StoredArchive};
use terrapod_shared::domain::CommitSha;
use terrapod_shared::vcs::{ArchiveError, ArchiveLimits, VcsError, VcsProvider};
use tracing::Instrument;

use crate::cache::Freshness;
use crate::poll::Target;
use crate::store::{self, Remembered};

/// Why an archive could not be had.
enum Failure {
    /// The provider or the archive itself: a problem of this poll.
    Vcs(Arc<VcsError>),
    /// The database: the poll stops.
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for Failure {
    fn from(err: diesel::result::Error) -> Self {
        Failure::Database(err)
    }
}

impl From<VcsError> for Failure {
    fn from(err: VcsError) -> Self {
        Failure::Vcs(Arc::new(err))
    }
}

/// The stored archive of `sha`. The outer error is the database's (the poll stops);
/// the inner one is the provider's or the archive's (a problem of the poll).
pub(crate) async fn archive_for(
    target: &Target<'_>,
    conn: &mut AsyncPgConnection,
    sha: &CommitSha,
) -> Result<Result<StoredArchive, Arc<VcsError>>, diesel::result::Error> {
    let span = tracing::info_span!("archive", commit = %sha);
    let result = target
        .cache
        .archives
        .get_or_try_init(
            (target.key.clone(), sha.clone()),
            Freshness::TIMELESS,
            || fetch(target, conn, sha),
        )
        .instrument(span)
        .await;
    match result {
        Ok(archive) => Ok(Ok(archive)),
        Err(Failure::Vcs(err)) => Ok(Err(err)),
        Err(Failure::Database(err)) => Err(err),
    }
}

async fn fetch(
    target: &Target<'_>,
    conn: &mut AsyncPgConnection,
    sha: &CommitSha,
) -> Result<StoredArchive, Failure> {
    let limits = target.ctx.archive_limits();
    match store::remembered_archive(conn, &target.key, sha).await? {
        Some(Remembered::Stored(archive)) => return Ok(archive),
        Some(Remembered::Refused {
            reason,
            limits: then,
        }) if !raised(limits, then) => {
            return Err(VcsError::Archive(ArchiveError::RefusedBefore(reason)).into());
        }
        _ => {}
    }
    // Each download streams to temporary files; this bounds how many (and how much
    // disk) one replica uses at once.
    let _slot = target
        .ctx
        .downloads
        .acquire()
        .await
        .expect("the download semaphore is never closed");
    match target
        .client
        .download_archive(&target.repo, sha, limits)
        .await
    {
        Ok(repacked) => {
            let stored =
                archives::store(conn, &repacked.snapshot)
                    .await
                    .map_err(|err| match err {
                        StoreError::Database(err) => Failure::Database(err),
                        StoreError::Io(err) => VcsError::Archive(ArchiveError::Corrupt(format!(
                            "cannot read the repacked archive: {err}"
                        )))
                        .into(),
                    })?;
            store::remember_archive(conn, &target.key, sha, &stored).await?;
            if !repacked.dropped.is_empty() {
                tracing::info!(dropped = ?repacked.dropped, "archive entries dropped");
            }
            Ok(stored)
        }
        Err(VcsError::Archive(refusal)) if refusal.is_deterministic() => {
            store::remember_refusal(conn, &target.key, sha, &refusal.to_string(), limits).await?;
            Err(VcsError::Archive(refusal).into())
        }
        Err(err) => Err(err.into()),
    }
}

/// True when either limit is larger now than when the archive was refused.
fn raised(now: ArchiveLimits, then: ArchiveLimits) -> bool {
    now.max_archive_bytes > then.max_archive_bytes
        || now.max_unpacked_bytes > then.max_unpacked_bytes
}
