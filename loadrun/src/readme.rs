//! Generated blocks in the README's `## Performance` section: each `sfu bench --readme` run
//! replaces the text between its own markers, so the figures there are always measured.

use std::path::Path;

use anyhow::Context;

const SECTION: &str = "## Performance";

fn markers(key: &str) -> (String, String) {
    (
        format!(
            "<!-- bench:{key} begin (written by `sfu bench --readme`; edits are overwritten) -->"
        ),
        format!("<!-- bench:{key} end -->"),
    )
}

/// Replace block `key` in `text` with `body`; a new block goes at the end of the
/// Performance section (which is created before `## Status`, or at the end, when missing).
pub fn splice(text: &str, key: &str, body: &str) -> String {
    let (begin, end) = markers(key);
    let block = format!("{begin}\n{}\n{end}", body.trim_end());
    if let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) {
        if b < e {
            return format!("{}{block}{}", &text[..b], &text[e + end.len()..]);
        }
    }
    let mut text = text.to_string();
    if !text.lines().any(|l| l.trim_end() == SECTION) {
        let section = format!("{SECTION}\n\n");
        match text.find("\n## Status") {
            Some(at) => text.insert_str(at + 1, &section),
            None => {
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push('\n');
                text.push_str(&section);
            }
        }
    }
    // End of the Performance section: the next level-2 heading after it.
    let start = text.find(&format!("{SECTION}\n")).unwrap_or(0) + SECTION.len();
    let insert_at = text[start..]
        .find("\n## ")
        .map(|i| start + i + 1)
        .unwrap_or(text.len());
    let mut insertion = format!("{block}\n\n");
    if !text[..insert_at].ends_with("\n\n") {
        insertion.insert(0, '\n');
    }
    text.insert_str(insert_at, &insertion);
    text
}

/// Rewrite block `key` of the README at `path`.
pub fn update(path: &Path, key: &str, body: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    std::fs::write(path, splice(&text, key, body))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_added_then_replaced_in_place() {
        let readme = "# x\n\n## Tests\n\nt\n\n## Status\n\ns\n";
        let once = splice(readme, "a", "first");
        assert!(once.contains("## Performance\n\n<!-- bench:a begin"));
        assert!(once.find("## Performance").unwrap() < once.find("## Status").unwrap());
        let twice = splice(&once, "b", "second");
        assert!(twice.find("first").unwrap() < twice.find("second").unwrap());
        assert!(twice.find("second").unwrap() < twice.find("## Status").unwrap());
        let again = splice(&twice, "a", "third");
        assert!(!again.contains("first"));
        assert_eq!(again.matches("bench:a begin").count(), 1);
        assert!(again.find("third").unwrap() < again.find("second").unwrap());
        assert!(again.ends_with("## Status\n\ns\n"));
    }
}
