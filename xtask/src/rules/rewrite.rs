//! Pass 3 of a module scope: the SSOT001 rewrite of its compat imports into canonical ones
//! (comments kept, public re-exports keeping their names, nothing emitted twice).

use std::collections::{BTreeMap, BTreeSet};

use super::imports::LeafKind;
use super::Analyzer;
use crate::legacy::Canonical;
use crate::model::Edit;

/// The comments in a `use` item's text (which holds no string literals), so a rewrite can keep
/// them; doc comments become plain comments since the item they documented may be gone.
fn comments_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('/') {
        let tail = &rest[i..];
        if tail.starts_with("//") {
            let end = tail.find('\n').unwrap_or(tail.len());
            let c = tail[..end].trim_end();
            out.push(format!(
                "// {}",
                c.trim_start_matches('/').trim_start_matches('!').trim()
            ));
            rest = &tail[end..];
        } else if tail.starts_with("/*") {
            let end = tail.find("*/").map_or(tail.len(), |e| e + 2);
            out.push(tail[..end].to_owned());
            rest = &tail[end..];
        } else {
            rest = &tail[1..];
        }
    }
    out
}

impl Analyzer<'_> {
    pub(super) fn rewrite_imports(&mut self) {
        let mut uses = std::mem::take(&mut self.scope.compat_uses);
        // Module-level imports first: they are visible in function bodies, not the reverse.
        uses.sort_by_key(|u| u.nested);
        let mut module_emitted: BTreeSet<(String, String)> = self.scope.existing.clone();
        for cu in &uses {
            if !cu.fixable {
                continue;
            }
            let mut local_emitted = module_emitted.clone();
            let emitted = if cu.nested {
                &mut local_emitted
            } else {
                &mut module_emitted
            };
            // crate -> item specs (`Name` or `Name as Alias`)
            let mut by_crate: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut want = |c: &Canonical, alias: Option<&str>| {
                let local = alias.unwrap_or(c.name()).to_owned();
                if emitted.insert((c.path.clone(), local)) {
                    let rest = c.path.split_once("::").map_or(c.name(), |x| x.1).to_owned();
                    let spec = match alias {
                        Some(a) if a != c.name() => format!("{rest} as {a}"),
                        _ => rest,
                    };
                    by_crate
                        .entry(c.krate().to_owned())
                        .or_default()
                        .insert(spec);
                }
            };
            for leaf in &cu.compat_leaves {
                let canonical = leaf.segs.last().and_then(|n| self.input.aliases.get(n));
                match (&leaf.kind, canonical) {
                    (LeafKind::Glob, _) => {
                        for name in &self.scope.used_via_glob {
                            let legacy = self.scope.chain_glob.get(name).unwrap_or(name);
                            if let Some(c) = self.input.aliases.get(legacy) {
                                want(c, None);
                            }
                        }
                    }
                    (LeafKind::Name, Some(c)) if leaf.segs.len() >= 2 => want(c, None),
                    (LeafKind::Rename(a), Some(c)) if leaf.segs.len() >= 2 => want(c, Some(a)),
                    _ => {}
                }
            }
            let mut lines: Vec<String> = by_crate
                .into_iter()
                .map(|(krate, specs)| {
                    let specs: Vec<String> = specs.into_iter().collect();
                    if specs.len() == 1 {
                        format!("{}use {krate}::{};", cu.vis, specs[0])
                    } else {
                        format!("{}use {krate}::{{{}}};", cu.vis, specs.join(", "))
                    }
                })
                .collect();
            match cu.kept.len() {
                0 => {}
                1 => lines.insert(0, format!("{}use {};", cu.vis, cu.kept[0])),
                _ => lines.insert(0, format!("{}use {{{}}};", cu.vis, cu.kept.join(", "))),
            }
            let src = self.input.source;
            let comments = comments_in(&src[cu.full.0..cu.full.1]);
            lines.splice(0..0, comments);
            let line_start = src[..cu.full.0].rfind('\n').map_or(0, |i| i + 1);
            let indent: String = src[line_start..cu.full.0]
                .chars()
                .take_while(|c| c.is_whitespace())
                .collect();
            if lines.is_empty() {
                // Remove the whole item with its attributes, and its line if nothing else is on it.
                let (mut s, mut e) = cu.full;
                let before_blank = src[line_start..s].trim().is_empty();
                let line_end = src[e..].find('\n').map_or(src.len(), |i| e + i + 1);
                if before_blank && src[e..line_end].trim().is_empty() {
                    s = line_start;
                    e = line_end;
                }
                self.edits.push(Edit {
                    start: s,
                    end: e,
                    text: String::new(),
                });
            } else {
                self.edits.push(Edit {
                    start: cu.body.0,
                    end: cu.body.1,
                    text: lines.join(&format!("\n{indent}")),
                });
            }
        }
    }
}
