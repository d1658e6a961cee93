//! `--fix`'s writes, with `cargo fix`'s care: every file is checked against the text the edits
//! were computed on before anything is written, each is replaced atomically (a temporary file
//! in the same directory, then a rename, its permissions kept, a symlink's target written
//! rather than the link replaced), and every byte can be put back when the verifying build
//! fails.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::XtaskError;

/// A file to replace: the bytes it must still hold, and the bytes to write.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// The file (a symlink is followed; its target is written).
    pub path: &'a Path,
    /// What the file held when the edits were computed.
    pub before: &'a [u8],
    /// Its new contents.
    pub after: &'a [u8],
}

/// One file's bytes (or absence) before `--fix` touched it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The file, symlinks resolved.
    path: PathBuf,
    /// Its bytes, or `None` if it did not exist.
    bytes: Option<Vec<u8>>,
}

impl Snapshot {
    /// Records `path` as it is now (a missing file is recorded as missing).
    ///
    /// # Errors
    /// [`XtaskError::Io`] if it exists but cannot be read.
    pub fn take(path: &Path) -> Result<Self, XtaskError> {
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Self {
                path,
                bytes: Some(bytes),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self { path, bytes: None }),
            Err(e) => Err(XtaskError::io(&path, e)),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts the recorded bytes back (atomically), or removes a file that did not exist.
    ///
    /// # Errors
    /// [`XtaskError::Io`] naming the file.
    pub fn restore(&self) -> Result<(), XtaskError> {
        match &self.bytes {
            Some(bytes) => {
                let unchanged = std::fs::read(&self.path).is_ok_and(|now| now == *bytes);
                if unchanged {
                    Ok(())
                } else {
                    write_atomic(&self.path, bytes)
                }
            }
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(XtaskError::io(&self.path, e))
                }
                _ => Ok(()),
            },
        }
    }
}

/// The files [`write_all`] replaced, as they were: [`Written::restore`] undoes the fix.
#[derive(Debug, Default)]
pub struct Written {
    snapshots: Vec<Snapshot>,
}

impl Written {
    /// How many files are recorded.
    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }

    /// Also restores `snapshot` (a file another command may change, such as `Cargo.lock`
    /// under the verifying `cargo check`).
    pub fn also(&mut self, snapshot: Snapshot) {
        self.snapshots.push(snapshot);
    }

    /// Puts every recorded file back, byte for byte, trying all of them even if one fails.
    ///
    /// # Errors
    /// [`XtaskError::Restore`] naming each file that could not be restored.
    pub fn restore(&self) -> Result<usize, XtaskError> {
        let failed: Vec<String> = self
            .snapshots
            .iter()
            .rev()
            .filter_map(|s| s.restore().err().map(|e| e.to_string()))
            .collect();
        if failed.is_empty() {
            Ok(self.snapshots.len())
        } else {
            Err(XtaskError::Restore { failed })
        }
    }
}

/// Writes every change, or none: each file must still hold its `before` bytes (checked for all
/// of them before the first write), then each is replaced atomically; if a write fails, the
/// files already written are restored.
///
/// # Errors
/// [`XtaskError::ChangedSinceScan`] for a file that changed since its edits were computed
/// (nothing is written), [`XtaskError::Io`] for a failed read or write.
pub fn write_all(changes: &[Change<'_>]) -> Result<Written, XtaskError> {
    let mut snapshots = Vec::with_capacity(changes.len());
    for c in changes {
        let snapshot = Snapshot::take(c.path)?;
        if snapshot.bytes.as_deref() != Some(c.before) {
            return Err(XtaskError::ChangedSinceScan {
                path: c.path.display().to_string(),
            });
        }
        snapshots.push(snapshot);
    }
    let mut written = Written::default();
    for (c, snapshot) in changes.iter().zip(snapshots) {
        if let Err(e) = write_atomic(snapshot.path(), c.after) {
            // Leave nothing half-done: the error is the write's; a failed restore is appended.
            return Err(match written.restore() {
                Ok(_) => e,
                Err(r) => XtaskError::Restore {
                    failed: std::iter::once(e.to_string())
                        .chain(match r {
                            XtaskError::Restore { failed } => failed,
                            other => vec![other.to_string()],
                        })
                        .collect(),
                },
            });
        }
        written.snapshots.push(snapshot);
    }
    Ok(written)
}

/// Replaces `path` (symlinks resolved) with `bytes`: a temporary file in the same directory,
/// flushed to disk, given the file's permissions, then renamed over it.
///
/// # Errors
/// [`XtaskError::Io`] naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), XtaskError> {
    let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let io = |e: std::io::Error| XtaskError::io(&real, e);
    let dir = real.parent().unwrap_or(Path::new("."));
    let permissions = std::fs::metadata(&real).ok().map(|m| m.permissions());
    let mut tmp = tempfile::Builder::new()
        .prefix(".ssot-fix-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    if let Some(p) = permissions {
        std::fs::set_permissions(tmp.path(), p).map_err(io)?;
    }
    tmp.persist(&real).map_err(|e| io(e.error))?;
    Ok(())
}
