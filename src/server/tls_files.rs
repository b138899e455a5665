//! The TLS certificate and key, read as the server starts and again at each reload.
//!
//! A key is often readable by root alone (certbot's are), and the daemon gives root up once it
//! has bound its ports. So that a renewed certificate is taken up by a reload, a daemon started
//! as root keeps a small process that stays root and can do one thing: read the two files named
//! when it started and hand their contents back (`postern-smtpd --read-tls-files CERT KEY`).
//! It never learns another path, so the daemon cannot make it read anything else.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::sys;

/// Larger than any certificate chain or key; a file past it is refused, not read whole.
pub const MAX_FILE: u64 = 1024 * 1024;

/// How long a reload waits for the keeper's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The certificate chain and the key, as PEM text.
pub struct Pem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Reads a file of at most `MAX_FILE` octets; the error names it.
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.take(MAX_FILE + 1).read_to_end(&mut out).map_err(|e| format!("{}: {e}", path.display()))?;
    if out.len() as u64 > MAX_FILE {
        return Err(format!("{}: larger than {MAX_FILE} octets", path.display()));
    }
    Ok(out)
}

/// Both files, read by this process.
pub fn read_both(cert: &Path, key: &Path) -> Result<Pem, String> {
    Ok(Pem { cert: read_file(cert)?, key: read_file(key)? })
}

/// The daemon's side: the process that kept root, asked for the files at each reload.
pub struct Keeper {
    pub cert: PathBuf,
    pub key: PathBuf,
    pipes: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    _child: Child,
}

impl Keeper {
    /// Starts the keeper (`program --read-tls-files CERT KEY`); called as root, before root
    /// is given up. Its input closes when this process ends, and it ends too.
    pub fn start(program: &Path, cert: &Path, key: &Path) -> io::Result<Keeper> {
        let mut command = Command::new(program);
        command.arg("--read-tls-files").arg(cert).arg(key).stdin(Stdio::piped()).stdout(Stdio::piped());
        crate::logging::pass_to(&mut command);
        let mut child = command.spawn()?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("no pipes to the TLS file reader"));
        };
        let pipes = Mutex::new((input, BufReader::new(output)));
        Ok(Keeper { cert: cert.to_path_buf(), key: key.to_path_buf(), pipes, _child: child })
    }

    /// The two files as they are now; waits `ANSWER_TIMEOUT` at most.
    pub fn read(&self) -> Result<Pem, String> {
        let mut pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
        let (input, output) = &mut *pipes;
        input.write_all(b"read\n").map_err(|e| format!("the TLS file reader is gone ({e})"))?;
        let answered = |r: &BufReader<ChildStdout>| {
            !r.buffer().is_empty() || sys::wait_readable(r.get_ref().as_raw_fd(), Some(ANSWER_TIMEOUT)).unwrap_or(false)
        };
        if !answered(output) {
            return Err("the TLS file reader did not answer".into());
        }
        let mut line = String::new();
        output.by_ref().take(4096).read_line(&mut line).map_err(|e| e.to_string())?;
        let (cert_len, key_len) = parse_answer(&line)?;
        let mut take = |len: usize| {
            let mut buf = vec![0; len];
            output.read_exact(&mut buf).map(|()| buf).map_err(|e| format!("the TLS file reader: {e}"))
        };
        Ok(Pem { cert: take(cert_len)?, key: take(key_len)? })
    }
}

/// `ok CERT_LEN KEY_LEN`, or `error TEXT`.
pub fn parse_answer(line: &str) -> Result<(usize, usize), String> {
    let line = line.trim_end();
    if let Some(text) = line.strip_prefix("error ") {
        return Err(text.to_string());
    }
    let mut words = line.strip_prefix("ok ").ok_or("the TLS file reader said something else")?.split(' ');
    let mut len = || -> Result<usize, String> {
        let n: u64 = words.next().and_then(|w| w.parse().ok()).ok_or("the TLS file reader said something else")?;
        if n > MAX_FILE {
            return Err("the TLS file reader said something else".into());
        }
        usize::try_from(n).map_err(|e| e.to_string())
    };
    Ok((len()?, len()?))
}

/// `--read-tls-files CERT KEY`: reads both files for each `read` line on standard input and
/// writes `ok CERT_LEN KEY_LEN` and the two contents, or `error TEXT`; ends at end of input.
pub fn serve(cert: &Path, key: &Path) {
    let mut out = io::stdout().lock();
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() != "read" {
            continue;
        }
        let written = match read_both(cert, key) {
            Ok(pem) => writeln!(out, "ok {} {}", pem.cert.len(), pem.key.len())
                .and_then(|()| out.write_all(&pem.cert))
                .and_then(|()| out.write_all(&pem.key)),
            Err(e) => writeln!(out, "error {}", e.replace('\n', " ")),
        };
        if written.and_then(|()| out.flush()).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_or_are_refused() {
        assert_eq!(parse_answer("ok 12 34\n"), Ok((12, 34)));
        assert_eq!(parse_answer("error /k: Permission denied\n"), Err("/k: Permission denied".into()));
        for bad in ["", "ok", "ok 1", "ok x 2", "ok 99999999999 1", "hello"] {
            assert!(parse_answer(bad).is_err(), "{bad:?}");
        }
    }
}
