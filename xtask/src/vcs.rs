//! `--fix`'s version-control check, with `cargo fix`'s rules: outside a git repository it
//! refuses unless `--allow-no-vcs`; inside one it refuses uncommitted changes under the
//! workspace root (naming the files) unless `--allow-dirty`, or, when every change is staged,
//! `--allow-staged`. Untracked files count as changes; ignored files do not.

use std::path::Path;
use std::process::Command;

use crate::XtaskError;

/// What `--fix` accepts besides a clean tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allow {
    /// Uncommitted changes of any kind.
    pub dirty: bool,
    /// Changes that are staged (and not changed again in the working tree).
    pub staged: bool,
    /// No git repository around the workspace.
    pub no_vcs: bool,
}

/// A changed file, as `git status` reports it (path relative to the repository's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The path.
    pub path: String,
    /// Staged only (the working tree matches the index).
    pub staged: bool,
}

/// Refuses to go on when the workspace at `root` has changes `allow` does not accept.
///
/// # Errors
/// [`XtaskError::NoVcs`] outside a repository, [`XtaskError::Dirty`] with the files,
/// [`XtaskError::Git`] when git cannot be run or fails.
pub fn check(root: &Path, allow: Allow) -> Result<(), XtaskError> {
    if allow.dirty && allow.no_vcs {
        return Ok(());
    }
    let inside = match git(root, &["rev-parse", "--is-inside-work-tree"]) {
        Ok(out) => out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "true",
        // No git at all: nothing can be checked, which is what --allow-no-vcs accepts.
        Err(_) if allow.no_vcs => return Ok(()),
        Err(e) => {
            return Err(XtaskError::Git {
                message: format!(
                    "cannot run git to look for uncommitted changes ({e}); pass --allow-no-vcs \
                     if the workspace is not under version control, or --allow-dirty"
                ),
            })
        }
    };
    if !inside {
        return if allow.no_vcs {
            Ok(())
        } else {
            Err(XtaskError::NoVcs {
                root: root.display().to_string(),
            })
        };
    }
    if allow.dirty {
        return Ok(());
    }
    let changed: Vec<Changed> = changes(root)?
        .into_iter()
        .filter(|c| !(c.staged && allow.staged))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(XtaskError::Dirty {
        only_staged: changed.iter().all(|c| c.staged),
        files: changed
            .iter()
            .map(|c| format!("{} ({})", c.path, if c.staged { "staged" } else { "dirty" }))
            .collect(),
    })
}

/// The uncommitted changes under `root`: `git status --porcelain=v1 -z`, untracked files
/// included, ignored ones not.
///
/// # Errors
/// [`XtaskError::Git`] when git fails.
pub fn changes(root: &Path) -> Result<Vec<Changed>, XtaskError> {
    let out = git(
        root,
        &[
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--ignored=no",
            "--",
            ".",
        ],
    )
    .map_err(|e| XtaskError::Git {
        message: format!("cannot run git status: {e}"),
    })?;
    if !out.status.success() {
        return Err(XtaskError::Git {
            message: format!(
                "git status failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(parse_porcelain(&out.stdout))
}

/// Parses `git status --porcelain=v1 -z`: `XY path\0`, and for a rename or copy a second
/// `\0`-ended field (the old path). `X` is the index, `Y` the working tree.
pub fn parse_porcelain(out: &[u8]) -> Vec<Changed> {
    let mut fields = out.split(|b| *b == 0).filter(|f| !f.is_empty());
    let mut changed = Vec::new();
    while let Some(field) = fields.next() {
        let (Some(&x), Some(&y), Some(path)) = (field.first(), field.get(1), field.get(3..)) else {
            continue;
        };
        if matches!(x, b'R' | b'C') {
            fields.next();
        }
        changed.push(Changed {
            path: String::from_utf8_lossy(path).into_owned(),
            staged: x != b' ' && x != b'?' && x != b'!' && y == b' ',
        });
    }
    changed
}

fn git(root: &Path, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("git").args(args).current_dir(root).output()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porcelain_tells_staged_from_dirty() {
        let out =
            b"M  staged.rs\0 M dirty.rs\0MM both.rs\0?? new.rs\0R  to.rs\0from.rs\0A  added.rs\0";
        let c = parse_porcelain(out);
        let got: Vec<(&str, bool)> = c.iter().map(|c| (c.path.as_str(), c.staged)).collect();
        assert_eq!(
            got,
            [
                ("staged.rs", true),
                ("dirty.rs", false),
                ("both.rs", false),
                ("new.rs", false),
                ("to.rs", true),
                ("added.rs", true),
            ]
        );
    }
}
