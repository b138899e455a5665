//! What every program does with `--help`, `--version` and a bad argument.

use std::process::ExitCode;

/// Why argument parsing ended without a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `--help` or `--version`: printed on stdout, exit 0.
    Say(String),
    /// A bad argument: printed on stderr with the usage, exit `usage_code`.
    Usage(String),
}

impl From<String> for Exit {
    fn from(text: String) -> Exit {
        Exit::Usage(text)
    }
}

impl From<&str> for Exit {
    fn from(text: &str) -> Exit {
        Exit::Usage(text.to_string())
    }
}

impl Exit {
    pub fn finish(self, usage_code: u8) -> ExitCode {
        match self {
            Exit::Say(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Exit::Usage(text) => {
                eprintln!("{text}");
                ExitCode::from(usage_code)
            }
        }
    }
}

/// `NAME VERSION`, what `--version` prints.
pub fn version(program: &str) -> Exit {
    Exit::Say(format!("{program} {}", env!("CARGO_PKG_VERSION")))
}
