//! The greylist's file, `spool/greylist`: one line per event, appended, so a restart or a kill
//! -9 finds what was decided (a torn last line is skipped); rewritten short, through a new
//! file synced and renamed over it, once it holds many more lines than triples.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::policy::greylist::Greylist;

pub const FILE: &str = "greylist";

pub struct GreylistFile {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    list: Greylist,
    file: File,
    lines: usize,
    /// A write failed and was logged; said once.
    warned: bool,
}

impl GreylistFile {
    pub fn open(spool: &Path) -> io::Result<GreylistFile> {
        let path = spool.join(FILE);
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let (list, lines) = Greylist::load(&text);
        let file = append(&path)?;
        Ok(GreylistFile { path, state: Mutex::new(State { list, file, lines, warned: false }) })
    }

    /// Whether the triple `key` may pass now; the decision is recorded.
    pub fn attempt(&self, key: &str, now: u64, delay: u64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let decision = state.list.attempt(key, now, delay);
        if let Some(line) = decision.record {
            let written = state.file.write_all(line.as_bytes());
            state.lines += 1;
            let long = state.lines > 2 * state.list.len() + 1000;
            let kept = written.and_then(|()| if long { self.rewrite(&mut state, now) } else { Ok(()) });
            if let Err(e) = kept
                && !state.warned
            {
                state.warned = true;
                log::warn!("{}: {e}; greylisting goes on from memory", self.path.display());
            }
        }
        decision.pass
    }

    /// The file rewritten with what is worth keeping: a new file, synced, renamed over it.
    fn rewrite(&self, state: &mut State, now: u64) -> io::Result<()> {
        let text = state.list.snapshot(now);
        let new = self.path.with_extension("new");
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&new)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&new, &self.path)?;
        state.file = append(&self.path)?;
        state.lines = text.lines().count();
        Ok(())
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}
