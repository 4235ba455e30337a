//! Configuration archives: repository snapshots as gzip tarballs, content-addressed by
//! SHA-256 and stored in chunks of [`CHUNK_BYTES`], so a 100 MB repository costs the
//! poller storing it and the API serving it one chunk of memory, not the whole archive.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ring::digest;

use crate::db::schema::{configuration_archive_chunks, configuration_archives};

/// The largest chunk stored in one row.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A repository tree packed as a gzip tarball in an unnamed temporary file (the
/// kernel frees it when the snapshot is dropped, or the process dies), with its
/// SHA-256 and size.
#[derive(Debug)]
pub struct RepoSnapshot {
    file: Arc<File>,
    sha256: String,
    size: u64,
}

/// Counts and hashes what passes through it on the way to `inner`.
pub struct HashingWriter<W> {
    inner: W,
    context: digest::Context,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            context: digest::Context::new(&digest::SHA256),
            written: 0,
        }
    }

    /// The inner writer, the hex SHA-256 and the number of bytes written.
    pub fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            hex::encode(self.context.finish().as_ref()),
            self.written,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.context.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl RepoSnapshot {
    /// A snapshot of a file already written, hashed and counted by [`HashingWriter`].
    pub fn new(file: File, sha256: String, size: u64) -> Self {
        RepoSnapshot {
            file: Arc::new(file),
            sha256,
            size,
        }
    }

    /// A snapshot holding `bytes` (tests and tiny archives).
    pub fn from_bytes(bytes: &[u8]) -> io::Result<Self> {
        let mut writer = HashingWriter::new(io::BufWriter::new(tempfile::tempfile()?));
        writer.write_all(bytes)?;
        let (buffered, sha256, size) = writer.finish();
        let file = buffered.into_inner().map_err(|err| err.into_error())?;
        Ok(RepoSnapshot::new(file, sha256, size))
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn size(&self) -> i64 {
        i64::try_from(self.size).unwrap_or(i64::MAX)
    }

    /// Chunk `seq` of the tarball, read off the async workers (positional reads: no
    /// shared file offset).
    async fn chunk(&self, seq: u64) -> io::Result<Vec<u8>> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || read_at(&file, CHUNK_BYTES, seq * CHUNK_BYTES as u64))
            .await
            .map_err(io::Error::other)?
    }

    /// The whole tarball in memory (tests and small archives only).
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        read_at(&self.file, self.size as usize, 0)
    }
}

/// Up to `len` bytes of `file` from `offset` (fewer only at its end).
fn read_at(file: &File, len: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buffer[filled..], offset + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    buffer.truncate(filled);
    Ok(buffer)
}

/// An archive stored in the database, which configuration versions point at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredArchive {
    pub sha256: String,
    pub size: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read the repacked archive: {0}")]
    Io(#[from] io::Error),
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
}

/// Stores the snapshot's row and chunks in one transaction (all or nothing); an archive
/// stored before, by this or another replica, is left as it is.
pub async fn store(
    conn: &mut AsyncPgConnection,
    snapshot: &RepoSnapshot,
) -> Result<StoredArchive, StoreError> {
    let stored = StoredArchive {
        sha256: snapshot.sha256.clone(),
        size: snapshot.size(),
    };
    if exists(conn, &stored.sha256).await? {
        return Ok(stored);
    }
    conn.transaction::<_, StoreError, _>(async |conn| {
        let inserted = diesel::insert_into(configuration_archives::table)
            .values((
                configuration_archives::sha256.eq(&stored.sha256),
                configuration_archives::size.eq(stored.size),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        if inserted == 0 {
            // Another replica stored it between our check and our insert.
            return Ok(());
        }
        // Chunk 0 always exists (an empty archive is one empty chunk).
        let chunks = snapshot.size.div_ceil(CHUNK_BYTES as u64).max(1);
        for seq in 0..chunks {
            let data = snapshot.chunk(seq).await?;
            diesel::insert_into(configuration_archive_chunks::table)
                .values((
                    configuration_archive_chunks::archive_sha256.eq(&stored.sha256),
                    configuration_archive_chunks::seq.eq(seq as i32),
                    configuration_archive_chunks::data.eq(&data),
                ))
                .execute(conn)
                .await?;
        }
        Ok(())
    })
    .await?;
    Ok(stored)
}

/// Stores `bytes` as an archive (tests and tiny archives).
pub async fn store_bytes(
    conn: &mut AsyncPgConnection,
    bytes: &[u8],
) -> Result<StoredArchive, StoreError> {
    store(conn, &RepoSnapshot::from_bytes(bytes)?).await
}

pub async fn exists(conn: &mut AsyncPgConnection, sha256: &str) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        configuration_archives::table.find(sha256),
    ))
    .get_result(conn)
    .await
}

/// Chunk `seq` of the archive, or `None` past its end.
pub async fn chunk(
    conn: &mut AsyncPgConnection,
    sha256: &str,
    seq: i32,
) -> QueryResult<Option<Vec<u8>>> {
    configuration_archive_chunks::table
        .find((sha256, seq))
        .select(configuration_archive_chunks::data)
        .first(conn)
        .await
        .optional()
}

/// The whole archive in memory (tests).
pub async fn read_all(conn: &mut AsyncPgConnection, sha256: &str) -> QueryResult<Vec<u8>> {
    let chunks: Vec<Vec<u8>> = configuration_archive_chunks::table
        .filter(configuration_archive_chunks::archive_sha256.eq(sha256))
        .order(configuration_archive_chunks::seq.asc())
        .select(configuration_archive_chunks::data)
        .load(conn)
        .await?;
    Ok(chunks.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_addressed_by_sha256() {
        let snapshot = RepoSnapshot::from_bytes(b"abc").unwrap();
        assert_eq!(
            snapshot.sha256(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(snapshot.size(), 3);
        assert_eq!(snapshot.read_all().unwrap(), b"abc");
    }

    #[tokio::test]
    async fn chunks_cover_the_snapshot_exactly() {
        let bytes: Vec<u8> = (0..(CHUNK_BYTES * 2 + 10)).map(|n| n as u8).collect();
        let snapshot = RepoSnapshot::from_bytes(&bytes).unwrap();
        let mut joined = Vec::new();
        for seq in 0..3 {
            joined.extend(snapshot.chunk(seq).await.unwrap());
        }
        assert_eq!(joined, bytes);
        assert!(snapshot.chunk(3).await.unwrap().is_empty());
    }
}
