//! `name: value, value` files in /etc/aliases syntax, shared by the aliases and mailboxes maps.

use std::path::Path;

/// One entry: a name (folded to lower case) and its values, with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub values: Vec<String>,
    pub line: usize,
}

/// Why a table file was refused: the file, the line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Reads a table file.
pub fn load(path: &Path) -> Result<Vec<Entry>, TableError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TableError {
        file: file.clone(),
        line: 0,
        message: e.to_string(),
    })?;
    parse(&text).map_err(|(line, message)| TableError { file, line, message })
}

/// Parses table text: `#` comments, blank lines, and continuation lines that start
/// with white space, as aliases(5) has them.
pub fn parse(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut entries: Vec<Entry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            let last = entries.last_mut().ok_or((n, "continuation line with nothing to continue".to_string()))?;
            last.values.extend(split_values(raw));
            continue;
        }
        let (name, rest) = raw.split_once(':').ok_or((n, "expected `name: value`".to_string()))?;
        let name = name.trim().to_lowercase();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err((n, format!("bad name `{name}`")));
        }
        if entries.iter().any(|e| e.name == name) {
            return Err((n, format!("`{name}` is listed twice")));
        }
        entries.push(Entry { name, values: split_values(rest).collect(), line: n });
    }
    if let Some(e) = entries.iter().find(|e| e.values.is_empty()) {
        return Err((e.line, format!("`{}` has no value", e.name)));
    }
    Ok(entries)
}

fn split_values(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(',').map(str::trim).filter(|v| !v.is_empty()).map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
