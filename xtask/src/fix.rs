//! Applying SSOT001 rewrites: splice edits into the original text, leaving every other byte
//! as it was; print a unified diff for `--dry-run`.

use std::path::Path;

use crate::model::Edit;
use crate::scan::{Scan, Workspace};
use crate::XtaskError;

/// Applies non-overlapping edits to `source`.
///
/// # Errors
/// [`XtaskError::OverlappingEdits`] if two edits overlap.
pub fn apply_edits(source: &str, edits: &[Edit]) -> Result<String, XtaskError> {
    let mut sorted: Vec<&Edit> = edits.iter().collect();
    sorted.sort_by_key(|e| (e.start, e.end));
    sorted.dedup_by(|a, b| a == b);
    let mut out = String::with_capacity(source.len());
    let mut at = 0;
    for e in sorted {
        if e.start < at {
            return Err(XtaskError::OverlappingEdits {
                path: String::new(),
                at: e.start,
            });
        }
        out.push_str(&source[at..e.start]);
        out.push_str(&e.text);
        at = e.end;
    }
    out.push_str(&source[at..]);
    Ok(out)
}

/// One rewritten file.
#[derive(Debug, Clone)]
pub struct Rewrite {
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

/// Computes the rewrites of a scan (files whose text would change).
///
/// # Errors
/// [`XtaskError::Io`] or [`XtaskError::OverlappingEdits`].
pub fn rewrites(ws: &Workspace, scan: &Scan) -> Result<Vec<Rewrite>, XtaskError> {
    let mut out = Vec::new();
    for (file, edits) in &scan.edits {
        let before = read(file)?;
        let after = apply_edits(&before, edits).map_err(|e| match e {
            XtaskError::OverlappingEdits { at, .. } => XtaskError::OverlappingEdits {
                path: ws.rel(file),
                at,
            },
            other => other,
        })?;
        if after != before {
            out.push(Rewrite {
                path: ws.rel(file),
                before,
                after,
            });
        }
    }
    Ok(out)
}

/// Writes rewrites to disk.
///
/// # Errors
/// [`XtaskError::Io`] naming the file.
pub fn write(ws: &Workspace, rewrites: &[Rewrite]) -> Result<(), XtaskError> {
    for r in rewrites {
        let path = ws.root.join(&r.path);
        std::fs::write(&path, &r.after).map_err(|e| XtaskError::io(&path, e))?;
    }
    Ok(())
}

fn read(file: &Path) -> Result<String, XtaskError> {
    std::fs::read_to_string(file).map_err(|e| XtaskError::io(file, e))
}
