//! The operator's moves on one message: find it, read its envelope, hold it, release it,
//! delete it (doc/queue.md, "Hold"). Each takes the message's lock first, so it never
//! races a delivery run: a message being delivered is `Busy`, and a run that lists a
//! message just moved finds its name gone or leading elsewhere and leaves it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use super::{Envelope, QueueId, Spool, is_same_file, read_envelope};
use crate::sys;

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// `new/`: never tried.
    New,
    /// `cur/`: tried, waiting.
    Waiting,
    /// `hold/`: put aside.
    Held,
}

impl Found {
    pub fn dir(self) -> &'static str {
        match self {
            Found::New => "new",
            Found::Waiting => "cur",
            Found::Held => "hold",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Found::New => "new",
            Found::Waiting => "waiting",
            Found::Held => "held",
        }
    }
}

/// Why an action was not done.
#[derive(Debug)]
pub enum ActionError {
    /// No message with that ID in new/, cur/ or hold/.
    Unknown,
    /// A delivery run (or another action) holds it now.
    Busy,
    /// The action does not apply where it is (release of a message not held, ...).
    Wrong(Found),
    /// Requeue of a message no run has tried: it is due as it is.
    NeverTried,
    Io(io::Error),
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActionError::Unknown => f.write_str("no such message in the queue"),
            ActionError::Busy => f.write_str("being delivered right now; try again in a moment"),
            ActionError::Wrong(Found::Held) => f.write_str("held (release it first)"),
            ActionError::Wrong(found) => write!(f, "not held (it is {})", found.name()),
            ActionError::NeverTried => f.write_str("never tried yet: it is due as it is"),
            ActionError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for ActionError {
    fn from(e: io::Error) -> ActionError {
        ActionError::Io(e)
    }
}

impl Spool {
    /// Where `id` is; hold/ first, as `repair` keeps that name when a move left two.
    pub fn find(&self, id: &QueueId) -> Option<Found> {
        [Found::Held, Found::Waiting, Found::New]
            .into_iter()
            .find(|f| fs::symlink_metadata(self.path(f.dir(), id)).is_ok_and(|m| m.is_file()))
    }

    /// Every message in new/, cur/ and hold/, oldest first.
    pub fn all(&self) -> Vec<(Found, QueueId)> {
        let mut out = Vec::new();
        for found in [Found::New, Found::Waiting, Found::Held] {
            let Ok(entries) = fs::read_dir(self.root.join(found.dir())) else { continue };
            for entry in entries.flatten() {
                if let Some(id) = entry.file_name().to_str().and_then(QueueId::parse)
                    && !out.iter().any(|(_, i)| *i == id)
                {
                    out.push((found, id));
                }
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// The envelope and the message's first `head` octets, read without a lock (a queue
    /// file never changes once committed).
    pub fn peek(&self, found: Found, id: &QueueId, head: usize) -> io::Result<(Envelope, Vec<u8>)> {
        use std::os::unix::fs::FileExt;
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(self.path(found.dir(), id))?;
        let len = file.metadata()?.len();
        let (envelope, offset) =
            read_envelope(&file, len)?.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let want = usize::try_from(envelope.size).unwrap_or(usize::MAX).min(head);
        let mut bytes = vec![0u8; want];
        let n = file.read_at(&mut bytes, offset as u64)?;
        bytes.truncate(n);
        Ok((envelope, bytes))
    }

    /// Opens and locks `id` where it is, without waiting.
    fn lock(&self, id: &QueueId) -> Result<(Found, File, PathBuf), ActionError> {
        let found = self.find(id).ok_or(ActionError::Unknown)?;
        let path = self.path(found.dir(), id);
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path)?;
        if !sys::try_lock_exclusive(&file)? || !is_same_file(&file, &path) {
            return Err(ActionError::Busy);
        }
        Ok((found, file, path))
    }

    /// new/ or cur/ -> hold/: delivery runs leave it alone until it is released.
    pub fn hold(&self, id: &QueueId) -> Result<(), ActionError> {
        let (found, _lock, path) = self.lock(id)?;
        if found == Found::Held {
            return Err(ActionError::Wrong(found));
        }
        let _log = self.lock_log_for_move(id)?;
        self.move_locked(&path, Found::Held, id)
    }

    /// The log's lock for the length of a move (see `Spool::lock_log`); a sweep holds it for
    /// a moment at most.
    fn lock_log_for_move(&self, id: &QueueId) -> Result<Option<File>, ActionError> {
        let log = self.lock_log(id, std::time::Duration::from_secs(1))?;
        if log.is_none() && self.log_path(id).exists() {
            return Err(ActionError::Busy);
        }
        Ok(log)
    }

    /// hold/ -> cur/ (when it has a delivery log) or new/: it is delivered as before.
    pub fn release(&self, id: &QueueId) -> Result<Found, ActionError> {
        let (found, _lock, path) = self.lock(id)?;
        if found != Found::Held {
            return Err(ActionError::Wrong(found));
        }
        let log = self.lock_log_for_move(id)?;
        let to = if log.is_some() { Found::Waiting } else { Found::New };
        self.move_locked(&path, to, id)?;
        Ok(to)
    }

    /// Makes a tried message due now, as if it were new (`postern-queue requeue`): a
    /// `requeued` line in its log (`schedule::plan`), fdatasynced. Held, it stays held.
    pub fn requeue(&self, id: &QueueId, now: u64, by: &str) -> Result<Found, ActionError> {
        let (found, _lock, _) = self.lock(id)?;
        // No sweep takes the log meanwhile; none at all: no run has tried it.
        if self.lock_log_for_move(id)?.is_none() {
            return Err(ActionError::NeverTried);
        }
        let mut log = super::log::DeliveryLog::open(&self.log_path(id))?;
        let line = super::log::Attempt::about_message(now, super::log::Outcome::Requeued, None, by.to_string());
        log.append_unsynced(&line)?;
        crate::fault::crash_point("requeue-appended");
        log.sync()?;
        Ok(found)
    }

    /// Removes the message, then its delivery log: nothing is delivered or reported.
    pub fn delete(&self, id: &QueueId) -> Result<Found, ActionError> {
        let (found, _lock, path) = self.lock(id)?;
        fs::remove_file(&path)?;
        File::open(self.root.join(found.dir()))?.sync_all()?;
        match fs::remove_file(self.log_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        Ok(found)
    }

    /// Renames a locked message into `to`, never over a name there, and makes it durable.
    fn move_locked(&self, from: &std::path::Path, to: Found, id: &QueueId) -> Result<(), ActionError> {
        let dir = self.root.join(to.dir());
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let target = dir.join(id.as_str());
        if !sys::rename_no_replace(from, &target)? {
            fs::hard_link(from, &target)?;
            fs::remove_file(from)?;
        }
        File::open(&dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::{ForwardPath, ReversePath};
    use crate::smtp::command::BodyType;

    fn spool(tag: &str) -> (PathBuf, Spool) {
        let root = std::env::temp_dir().join(format!("postern-manage-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let spool = Spool::open(&root).unwrap();
        (root, spool)
    }

    fn queue_one(spool: &Spool) -> QueueId {
        let (from, to) =
            (ReversePath::parse(b"a@example.test").unwrap(), ForwardPath::parse(b"b@example.test").unwrap());
        let envelope = Envelope::local(1, from, vec![to], BodyType::SevenBit, false);
        spool.inject(&envelope, b"Subject: x\r\n\r\nbody\r\n").unwrap()
    }

    #[test]
    fn hold_release_and_delete_move_one_message() {
        let (root, spool) = spool("moves");
        let id = queue_one(&spool);
        assert_eq!(spool.find(&id), Some(Found::New));
        spool.hold(&id).unwrap();
        assert_eq!(spool.find(&id), Some(Found::Held));
        assert!(spool.queued().is_empty(), "a held message is not delivered");
        assert!(matches!(spool.hold(&id), Err(ActionError::Wrong(Found::Held))));
        assert_eq!(spool.release(&id).unwrap(), Found::New);
        assert!(matches!(spool.release(&id), Err(ActionError::Wrong(Found::New))));
        let (envelope, head) = spool.peek(Found::New, &id, 12).unwrap();
        assert_eq!((envelope.rcpts.len(), head.as_slice()), (1, &b"Subject: x\r\n"[..]));
        assert_eq!(spool.delete(&id).unwrap(), Found::New);
        assert_eq!(spool.find(&id), None);
        assert!(matches!(spool.delete(&id), Err(ActionError::Unknown)));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_sweep_never_takes_the_log_of_a_message_being_released() {
        let (root, spool) = spool("release-sweep");
        let id = queue_one(&spool);
        fs::write(spool.log_path(&id), "1 sent <b@example.test> 2.0.0 - ok\n").unwrap();
        spool.hold(&id).unwrap();
        let spool = std::sync::Arc::new(spool);
        let sweeper = std::sync::Arc::clone(&spool);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::sync::Arc::clone(&done);
        let sweeps = std::thread::spawn(move || {
            let mut removed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                removed += sweeper.sweep_orphan_logs();
            }
            removed
        });
        for _ in 0..10_000 {
            spool.release(&id).unwrap();
            spool.hold(&id).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(sweeps.join().unwrap(), 0, "a live delivery log was swept");
        assert!(spool.log_path(&id).exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_requeued_message_is_due_at_once() {
        let (root, spool) = spool("requeue");
        let id = queue_one(&spool);
        assert!(matches!(spool.requeue(&id, 5, "x"), Err(ActionError::NeverTried)));
        fs::write(spool.log_path(&id), "1 deferred <b@example.test> 4.4.1 - refused\n").unwrap();
        assert_eq!(spool.requeue(&id, 5, "by the operator").unwrap(), Found::New);
        spool.hold(&id).unwrap();
        assert_eq!(spool.requeue(&id, 6, "again").unwrap(), Found::Held, "held, it stays held");
        let log = fs::read_to_string(spool.log_path(&id)).unwrap();
        assert_eq!(
            log,
            "1 deferred <b@example.test> 4.4.1 - refused\n5 requeued - - - by%20the%20operator\n6 requeued - - - again\n"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_message_in_delivery_is_busy() {
        let (root, spool) = spool("busy");
        let id = queue_one(&spool);
        let (place, _) = spool.queued()[0].clone();
        let held_by_a_run = spool.open_queued(place, &id).unwrap();
        assert!(matches!(spool.hold(&id), Err(ActionError::Busy)));
        assert!(matches!(spool.delete(&id), Err(ActionError::Busy)));
        assert!(matches!(spool.requeue(&id, 1, "x"), Err(ActionError::Busy)));
        drop(held_by_a_run);
        spool.hold(&id).unwrap();
        fs::remove_dir_all(root).unwrap();
    }
}
