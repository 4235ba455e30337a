//! Configuration archives: repository snapshots as gzip tarballs, content-addressed by
//! SHA-256 and stored in chunks of [`CHUNK_BYTES`], so a 100 MB repository costs the
//! poller storing it and the API serving it one chunk of memory, not the whole archive.

use std::io::{self, Read, Write};
use std::path::Path;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ring::digest;
use tokio::io::AsyncReadExt;

use crate::db::schema::{configuration_archive_chunks, configuration_archives};

/// The largest chunk stored in one row.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A repository tree packed as a gzip tarball in a temporary file (deleted when the
/// snapshot is dropped), with its SHA-256 and size.
#[derive(Debug)]
pub struct RepoSnapshot {
    path: tempfile::TempPath,
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
    pub fn new(path: tempfile::TempPath, sha256: String, size: u64) -> Self {
        RepoSnapshot { path, sha256, size }
    }

    /// A snapshot holding `bytes` (tests and tiny archives).
    pub fn from_bytes(bytes: &[u8]) -> io::Result<Self> {
        let file = tempfile::NamedTempFile::new()?;
        let mut writer = HashingWriter::new(io::BufWriter::new(file));
        writer.write_all(bytes)?;
        let (buffered, sha256, size) = writer.finish();
        let file = buffered.into_inner().map_err(|err| err.into_error())?;
        Ok(RepoSnapshot::new(file.into_temp_path(), sha256, size))
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn size(&self) -> i64 {
        i64::try_from(self.size).unwrap_or(i64::MAX)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole tarball in memory (tests and small archives only).
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(&self.path)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
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
    let mut file = tokio::fs::File::open(snapshot.path()).await?;
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
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let mut seq = 0;
        loop {
            let filled = read_full(&mut file, &mut buffer).await?;
            if filled == 0 && seq > 0 {
                break;
            }
            diesel::insert_into(configuration_archive_chunks::table)
                .values((
                    configuration_archive_chunks::archive_sha256.eq(&stored.sha256),
                    configuration_archive_chunks::seq.eq(seq),
                    configuration_archive_chunks::data.eq(&buffer[..filled]),
                ))
                .execute(conn)
                .await?;
            if filled < CHUNK_BYTES {
                break;
            }
            seq += 1;
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

/// Fills `buffer` as far as the file allows; returns how much was read.
async fn read_full(file: &mut tokio::fs::File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
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
        let path = snapshot.path().to_owned();
        drop(snapshot);
        assert!(!path.exists(), "the temporary file goes with the snapshot");
    }
}
