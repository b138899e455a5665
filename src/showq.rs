//! `mailq` for every local user: the queue is the service's alone, so a running postern-smtpd
//! answers a socket in the spool (`showq`, mode 0666) with the listing `mailq` prints, and
//! nothing else. Postfix shows its queue to every local user the same way (its showq service);
//! the messages themselves stay unreadable.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::schedule::RetryPolicy;
use crate::spool::Spool;

/// The socket's name in the spool.
pub const SOCKET: &str = "showq";

/// How long a reader may take over the listing, and a client over waiting for it.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A listing larger than this is cut (about 100,000 messages).
const MAX_LISTING: u64 = 64 * 1024 * 1024;

pub fn socket_path(spool: &Path) -> PathBuf {
    spool.join(SOCKET)
}

/// Binds the socket, replacing one a stopped daemon left; everyone may connect.
pub fn bind(spool: &Path) -> io::Result<UnixListener> {
    let path = socket_path(spool);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Answers each connection with the listing, one at a time, for as long as the process runs.
pub fn serve(listener: &UnixListener, spool: &Spool, retry: &RetryPolicy) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let text = crate::queue::mailq(&crate::queue::list(spool, retry, now));
        // A reader that stops reading is cut off; the next one is served.
        if stream.set_write_timeout(Some(TIMEOUT)).is_ok() {
            let _ = stream.write_all(text.as_bytes());
        }
    }
}

/// The listing, from the running server; the error says why there is none.
pub fn fetch(spool: &Path) -> Result<String, String> {
    let path = socket_path(spool);
    let stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "{}: {e}: the queue is listed for local users by a running postern-smtpd; \
             root can list it at any time",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream.take(MAX_LISTING).read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text)
}
