//! Storage errors: what failed, on which file, and why.

use std::path::{Path, PathBuf};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system call failed.
    #[error("cannot {operation} {}: {source}", path.display())]
    Io {
        /// What was being done (open, write, sync...).
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A record failed its checksum when read back.
    #[error("record at segment {segment} offset {offset} is damaged")]
    Corrupt {
        /// Segment number.
        segment: u32,
        /// Offset of the record.
        offset: u32,
    },
    /// A record too large for a segment.
    #[error("record of {0} bytes is too large")]
    TooLarge(usize),
    /// The data directory is used by another process.
    #[error("data directory {} is in use by another Warren node (lock file {} is held)", dir.display(), lock.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// The writer has stopped (node shutting down).
    #[error("the write-ahead log has stopped")]
    Stopped,
}

impl StorageError {
    pub(crate) fn io(operation: &'static str, path: &Path, source: std::io::Error) -> StorageError {
        StorageError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the failure is a full disk.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if crate::segment::is_no_space(source))
    }
}
