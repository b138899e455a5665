//! The wire layer stays below everything: no module of `src/smtp/` names a module outside it,
//! so its parsers and the client's state machine are tested, fuzzed and reused on their own.

use std::path::Path;

/// The `crate::` paths in a source text that do not lead into `crate::smtp`.
fn outside_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let ok = rest.starts_with("smtp::") || rest.starts_with("smtp;") || rest.starts_with("smtp}");
            if !ok {
                found.push(format!("line {}: {}", n + 1, line.trim()));
            }
        }
        if code.contains("super::super") {
            found.push(format!("line {}: {}", n + 1, line.trim()));
        }
    }
    found
}

#[test]
fn src_smtp_imports_nothing_from_the_layers_above() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/smtp");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let outside = outside_paths(&text);
            assert!(outside.is_empty(), "{} reaches above src/smtp/:\n{}", path.display(), outside.join("\n"));
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} modules found in {}", dir.display());
}

#[test]
fn the_check_sees_an_import_from_above() {
    assert_eq!(outside_paths("use crate::spool::SpoolError;\n").len(), 1);
    assert_eq!(outside_paths("    let x = crate::session::State::Greeted;\n").len(), 1);
    assert_eq!(outside_paths("use super::super::policy::Refusal;\n").len(), 1);
    assert!(outside_paths("use crate::smtp::reply::Reply;\n// crate::spool in a comment\n").is_empty());
}
