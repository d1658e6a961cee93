//! Computing SSOT001 rewrites: splice edits into the text the scan read, leaving every other
//! byte as it was; print a unified diff for `--dry-run`. `transaction.rs` writes them.

use std::path::PathBuf;

use crate::model::Edit;
use crate::scan::{Scan, Workspace};
use crate::XtaskError;

/// Applies non-overlapping edits to `source`. Identical edits count once; an insertion
/// (`start == end`) may sit where another edit starts.
///
/// # Errors
/// [`XtaskError::OverlappingEdits`] if two edits overlap, [`XtaskError::EditOutOfRange`] if an
/// edit ends past the text, ends before it starts, or cuts a character. Never panics.
pub fn apply_edits(source: &str, edits: &[Edit]) -> Result<String, XtaskError> {
    let mut sorted: Vec<&Edit> = edits.iter().collect();
    sorted.sort_by_key(|e| (e.start, e.end));
    sorted.dedup_by(|a, b| a == b);
    let mut out = String::with_capacity(source.len());
    let mut at = 0;
    for e in sorted {
        if e.start > e.end || !source.is_char_boundary(e.start) || !source.is_char_boundary(e.end) {
            return Err(XtaskError::EditOutOfRange {
                path: String::new(),
                start: e.start,
                end: e.end,
                len: source.len(),
            });
        }
        let Some(kept) = source.get(at..e.start).filter(|_| e.start >= at) else {
            return Err(XtaskError::OverlappingEdits {
                path: String::new(),
                at: e.start,
            });
        };
        out.push_str(kept);
        out.push_str(&e.text);
        at = e.end;
    }
    out.push_str(source.get(at..).unwrap_or_default());
    Ok(out)
}

/// One rewritten file.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The file as scanned (absolute; a symlink's own path, whose target is written).
    pub file: PathBuf,
    /// Path relative to the workspace root.
    pub path: String,
    /// Text before.
    pub before: String,
    /// Text after.
    pub after: String,
}

impl Rewrite {
    /// A unified diff with `a/` and `b/` headers.
    pub fn diff(&self) -> String {
        similar::TextDiff::from_lines(&self.before, &self.after)
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{}", self.path), &format!("b/{}", self.path))
            .to_string()
    }
}

/// Computes the rewrites of a scan (files whose text would change), on exactly the text the
/// scan read: [`crate::transaction::write_all`] then refuses a file that changed since.
///
/// # Errors
/// [`XtaskError::OverlappingEdits`] or [`XtaskError::EditOutOfRange`] naming the file.
pub fn rewrites(ws: &Workspace, scan: &Scan) -> Result<Vec<Rewrite>, XtaskError> {
    let mut out = Vec::new();
    for (file, edits) in &scan.edits {
        let path = ws.rel(file);
        let Some(before) = scan.sources.get(file) else {
            return Err(XtaskError::ChangedSinceScan { path });
        };
        let after = apply_edits(before, edits).map_err(|e| match e {
            XtaskError::OverlappingEdits { at, .. } => XtaskError::OverlappingEdits {
                path: path.clone(),
                at,
            },
            XtaskError::EditOutOfRange {
                start, end, len, ..
            } => XtaskError::EditOutOfRange {
                path: path.clone(),
                start,
                end,
                len,
            },
            other => other,
        })?;
        if after != *before {
            out.push(Rewrite {
                file: file.clone(),
                path,
                before: before.clone(),
                after,
            });
        }
    }
    Ok(out)
}
