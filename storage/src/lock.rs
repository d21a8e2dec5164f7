//! The data directory lock: one node per directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::StorageError;

/// Holds `<dir>/warren.lock` locked for as long as it lives.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates the directory if needed and takes its lock, or fails naming the directory.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, StorageError> {
        std::fs::create_dir_all(dir).map_err(|error| StorageError::io("create", dir, error))?;
        let path = dir.join("warren.lock");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| StorageError::io("open", &path, error))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StorageError::Locked {
                    dir: dir.to_path_buf(),
                    lock: path,
                });
            }
            Err(TryLockError::Error(error)) => return Err(StorageError::io("lock", &path, error)),
        }
        // The holder's pid, for operators (the lock itself is what counts).
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("warren-lock-{}", std::process::id()));
        let first = DataDirLock::acquire(&dir).unwrap();
        let error = DataDirLock::acquire(&dir).unwrap_err();
        assert!(
            error.to_string().contains("in use by another Warren node"),
            "{error}"
        );
        drop(first);
        DataDirLock::acquire(&dir).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
