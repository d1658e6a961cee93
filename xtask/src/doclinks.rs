//! `cargo xtask doc`: builds the workspace's docs so cross-crate links resolve on the first
//! build, then fails on any link rustdoc left unresolved in the generated HTML.
//!
//! rustdoc renders a link to another crate only if that crate's output folder
//! (`target/doc/<crate>/`) already exists when it starts on the linking crate; `cargo doc` runs
//! the crates in parallel, so on a fresh target directory some cross-crate links come out as
//! literal text, and rustdoc prints no warning for them. Documenting the crates one by one,
//! dependencies first, makes them resolve; scanning the HTML catches whatever still does not.

use std::path::Path;

/// Text that rustdoc leaves behind for a link it could not resolve: a bracketed code span or a
/// bracketed `crate::` or `engine_...::` path, outside code blocks. The trait-implementation
/// sections are skipped: they repeat other crates' docs (clap's `FromArgMatches`, tracing's
/// `Instrument`), whose links are theirs and resolve only in a build with their docs.
pub fn unresolved_links(html: &str) -> Vec<String> {
    let html = [
        "id=\"trait-implementations\"",
        "id=\"blanket-implementations\"",
    ]
    .iter()
    .filter_map(|marker| html.find(marker))
    .min()
    .map_or(html, |i| &html[..i]);
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('[') {
        let after = &rest[start + 1..];
        if let Some(pre) = rest[..start].rfind("<pre") {
            // Inside a code block: skip to its end.
            if rest[pre..start].find("</pre>").is_none() {
                let Some(end) = rest[start..].find("</pre>") else {
                    break;
                };
                rest = &rest[start + end..];
                continue;
            }
        }
        let link = after.find(']').map(|end| &after[..end]);
        if let Some(link) = link {
            let bare = link
                .strip_prefix("<code>")
                .and_then(|l| l.strip_suffix("</code>"));
            let path_like = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '!')
            };
            match bare {
                Some(code) if path_like(code) => found.push(format!("[{code}]")),
                None if path_like(link)
                    && ["crate::", "self::", "super::", "engine_"]
                        .iter()
                        .any(|p| link.starts_with(p)) =>
                {
                    found.push(format!("[{link}]"));
                }
                _ => {}
            }
        }
        rest = after;
    }
    found
}

/// Every unresolved link in the HTML under `doc_dir/<crate>/` for each of `crates`, as
/// `path: [link]` lines.
///
/// # Errors
/// An I/O error reading the folder.
pub fn check(doc_dir: &Path, crates: &[String]) -> std::io::Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in crates {
        let mut stack = vec![doc_dir.join(krate)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "html") {
                    let html = std::fs::read_to_string(&path)?;
                    let shown = path.strip_prefix(doc_dir).unwrap_or(&path).display();
                    for link in unresolved_links(&html) {
                        problems.push(format!("{shown}: unresolved link {link}"));
                    }
                }
            }
        }
    }
    problems.sort();
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rustdoc_leftovers_and_nothing_else() {
        let html = r#"<p>Dereferences to [<code>UserExecutionEngine</code>].</p>
            <td>[<code>engine_core::ToolDispatcher</code>]</td> see [crate::Foo] and
            <a href="x">[resolved]</a> a list [1, 2] <code>v[0]</code>
            <pre class="rust">let x = [<code>not_a_link</code>];</pre> [<code>a b</code>]
            <h2 id="trait-implementations">x</h2> [<code>ArgMatches</code>]
            <h2 id="blanket-implementations">x</h2> [<code>Span</code>]"#;
        assert_eq!(
            unresolved_links(html),
            [
                "[UserExecutionEngine]",
                "[engine_core::ToolDispatcher]",
                "[crate::Foo]"
            ]
        );
        assert!(unresolved_links("<p>all <a href=\"a.html\"><code>fine</code></a></p>").is_empty());
    }
}
