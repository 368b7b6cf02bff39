//! BENCHMARKS.md is written by several benchmarks (`trellis-lab bench`, `cni-bench`, ...). Each owns one section
//! between a pair of markers `<!-- NAME -->` and replaces only that, so one benchmark's `--write` never disturbs
//! another's table or the prose around them.

use std::path::{Path, PathBuf};

/// The file every benchmark writes when `--write` is given, at the workspace root.
pub const FILE_NAME: &str = "BENCHMARKS.md";

/// Heading of a BENCHMARKS.md that did not exist yet.
const TITLE: &str = "# Benchmarks\n";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The marker line of section `name`: `<!-- NAME -->`.
pub fn marker(name: &str) -> String {
    format!("<!-- {name} -->")
}

/// Puts `section` between the two markers of `name` in `doc`, keeping everything outside them as it is. A lone
/// marker (its partner deleted by hand) is taken to run to the end of the document. Without a marker the section is
/// appended after a blank line; an empty document gets a title first.
pub fn splice(doc: &str, name: &str, section: &str) -> String {
    let m = marker(name);
    let block = format!("{m}\n{}\n{m}", section.trim_end());
    if let Some(start) = doc.find(&m) {
        let after = start + m.len();
        return match doc[after..].find(&m) {
            Some(rel_end) => format!("{}{block}{}", &doc[..start], &doc[after + rel_end + m.len()..]),
            None => format!("{}{block}\n", &doc[..start]),
        };
    }
    let (head, sep) = if doc.is_empty() {
        (TITLE, "\n")
    } else if doc.ends_with("\n\n") {
        ("", "")
    } else if doc.ends_with('\n') {
        ("", "\n")
    } else {
        ("", "\n\n")
    };
    format!("{head}{doc}{sep}{block}\n")
}

/// Reads `path` (a missing file counts as empty), splices section `name` into it and writes it back.
pub fn write_section(path: &Path, name: &str, section: &str) -> Result<(), Error> {
    let doc = match std::fs::read_to_string(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(Error::Read { path: path.into(), source }),
    };
    std::fs::write(path, splice(&doc, name, section)).map_err(|source| Error::Write { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "<!-- a -->";
    const B: &str = "<!-- b -->";

    #[test]
    fn marker_is_an_html_comment() {
        assert_eq!(marker("lab-bench"), "<!-- lab-bench -->");
    }

    #[test]
    fn replaces_an_existing_section_and_keeps_the_rest() {
        let doc = format!("# Benchmarks\nintro\n{A}\nold\n{A}\nafter\n");
        let out = splice(&doc, "a", "new table\n");
        assert_eq!(out, format!("# Benchmarks\nintro\n{A}\nnew table\n{A}\nafter\n"));
        assert_eq!(splice(&out, "a", "new table"), out, "splicing the same section again changes nothing");
    }

    #[test]
    fn leaves_other_sections_untouched() {
        let doc = format!("# B\n\n{A}\nold a\n{A}\n\n{B}\nold b\n{B}\n\ntail\n");
        let out = splice(&doc, "b", "new b");
        assert_eq!(out, format!("# B\n\n{A}\nold a\n{A}\n\n{B}\nnew b\n{B}\n\ntail\n"));
        let out = splice(&out, "a", "new a");
        assert_eq!(out, format!("# B\n\n{A}\nnew a\n{A}\n\n{B}\nnew b\n{B}\n\ntail\n"));
    }

    #[test]
    fn appends_a_new_section_after_a_blank_line() {
        assert_eq!(splice("", "a", "t\n"), format!("# Benchmarks\n\n{A}\nt\n{A}\n"));
        assert_eq!(splice("# B", "a", "t"), format!("# B\n\n{A}\nt\n{A}\n"));
        assert_eq!(splice("# B\n", "a", "t"), format!("# B\n\n{A}\nt\n{A}\n"));
        assert_eq!(splice("# B\n\n", "a", "t"), format!("# B\n\n{A}\nt\n{A}\n"));
        let with_b = format!("# B\n\n{B}\nb\n{B}\n");
        assert_eq!(splice(&with_b, "a", "t"), format!("{with_b}\n{A}\nt\n{A}\n"));
    }

    #[test]
    fn a_lone_marker_runs_to_the_end() {
        let out = splice(&format!("# B\n\n{A}\nhalf a table\nmore\n"), "a", "t");
        assert_eq!(out, format!("# B\n\n{A}\nt\n{A}\n"));
        assert_eq!(splice(&out, "a", "t"), out);
    }

    #[test]
    fn write_section_creates_then_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        write_section(&path, "a", "one").unwrap();
        write_section(&path, "b", "two").unwrap();
        write_section(&path, "a", "three").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("# Benchmarks\n\n{A}\nthree\n{A}\n\n{B}\ntwo\n{B}\n"));
        let err = write_section(dir.path(), "a", "x").unwrap_err();
        assert!(matches!(err, Error::Read { .. }), "{err}");
    }
}
