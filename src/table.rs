//! `name: value, value` files in /etc/aliases syntax, shared by the aliases and mailboxes maps;
//! a name is a local name, a full address or `@domain`.

use std::path::Path;

/// One entry: a name (folded to lower case) and its values, with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub values: Vec<String>,
    pub line: usize,
}

/// Why a table file was refused: the file, the line (0: the file as a whole) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.message),
            n => write!(f, "{}:{n}: {}", self.file, self.message),
        }
    }
}

/// Reads a table file; its first bad line is an error.
pub fn load(path: &Path) -> Result<Vec<Entry>, TableError> {
    let (entries, mut problems) = load_lenient(path)?;
    if problems.is_empty() { Ok(entries) } else { Err(problems.remove(0)) }
}

/// Reads a table file, keeping every good entry: each bad line is left out and reported,
/// so one mistake costs only its own entry. Only a file that cannot be read is an error.
pub fn load_lenient(path: &Path) -> Result<(Vec<Entry>, Vec<TableError>), TableError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TableError {
        file: file.clone(),
        line: 0,
        message: e.to_string(),
    })?;
    let (entries, problems) = parse_lenient(&text);
    let problems =
        problems.into_iter().map(|(line, message)| TableError { file: file.clone(), line, message }).collect();
    Ok((entries, problems))
}

/// Parses table text: `#` comments, blank lines, and continuation lines that start
/// with white space, as aliases(5) has them. The first problem is an error.
pub fn parse(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let (entries, mut problems) = parse_lenient(text);
    if problems.is_empty() { Ok(entries) } else { Err(problems.remove(0)) }
}

/// The good entries, and each bad line with what is wrong with it. A name listed twice
/// keeps its first entry.
pub fn parse_lenient(text: &str) -> (Vec<Entry>, Vec<(usize, String)>) {
    let mut entries: Vec<Entry> = Vec::new();
    let mut problems = Vec::new();
    // Continuation lines belong to the entry above, or to the bad line above (dropped too).
    let mut continuing = false;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            match entries.last_mut() {
                Some(last) if continuing => last.values.extend(split_values(raw)),
                None if !continuing => problems.push((n, "continuation line with nothing to continue".to_string())),
                _ => {}
            }
            continue;
        }
        continuing = false;
        let Some((name, rest)) = raw.split_once(':') else {
            problems.push((n, "expected `name: value`".to_string()));
            continue;
        };
        let name = name.trim().to_lowercase();
        if name.is_empty() || name.contains(char::is_whitespace) {
            problems.push((n, format!("bad name `{name}`")));
            continue;
        }
        // A local name (`alice`), a full address (`info@a.example`) or a domain's catch-all
        // (`@b.example`); `alias::LocalUsers` checks that the domain is a local one.
        if let Some((_, domain)) = name.split_once('@')
            && (domain.is_empty() || domain.contains('@'))
        {
            problems.push((n, format!("`{name}`: expected name, name@domain or @domain")));
            continue;
        }
        if entries.iter().any(|e| e.name == name) {
            problems.push((n, format!("`{name}` is listed twice; the first entry counts")));
            continue;
        }
        entries.push(Entry { name, values: split_values(rest).collect(), line: n });
        continuing = true;
    }
    entries.retain(|e| {
        let empty = e.values.is_empty();
        if empty {
            problems.push((e.line, format!("`{}` has no value", e.name)));
        }
        !empty
    });
    problems.sort();
    (entries, problems)
}

fn split_values(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(',').map(str::trim).filter(|v| !v.is_empty()).map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_line_is_left_out_and_the_rest_kept() {
        let (entries, problems) = parse_lenient("a: x\nno colon here\n  y\nb: z\na: again\nc:\n");
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(entries[0].values, ["x"], "the bad line's continuation goes with it");
        let lines: Vec<usize> = problems.iter().map(|p| p.0).collect();
        assert_eq!(lines, [2, 5, 6]);
        assert!(parse("a: x\nno colon\n").is_err());
    }

    #[test]
    fn aliases_syntax() {
        let t = parse("# comment\nPostmaster: root\nteam: alice,\n  bob@remote.test\n\nroot: alice\n").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].name, "postmaster");
        assert_eq!(t[1].values, vec!["alice", "bob@remote.test"]);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("a: b\nnonsense\n").unwrap_err().0, 2);
        assert_eq!(parse("a: b\nA: c\n").unwrap_err().0, 2);
        assert_eq!(parse("a:\n").unwrap_err().0, 1);
        assert_eq!(parse("  x\n").unwrap_err().0, 1);
    }

    #[test]
    fn keys_are_names_full_addresses_or_domains() {
        let text = "a: x\nBob@Example.org: alice\n@example.org: alice\nc@: x\nd@e@f: x\n";
        let (entries, problems) = parse_lenient(text);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "bob@example.org", "@example.org"]);
        assert_eq!(problems.iter().map(|p| p.0).collect::<Vec<_>>(), [4, 5]);
        assert!(problems[0].1.contains("expected name, name@domain or @domain"), "{problems:?}");
    }

    #[test]
    fn a_file_level_problem_names_no_line() {
        let e = load(Path::new("/nonexistent/aliases")).unwrap_err();
        assert_eq!(e.to_string(), "/nonexistent/aliases: No such file or directory (os error 2)");
    }
}
