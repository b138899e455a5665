//! `maildrop/`: where a local user without access to the spool leaves a message, and the pickup
//! that checks it and queues it under the same ID (doc/queue.md, "S0").
//!
//! The directory is owned by the spool's owner, group the drop group, mode 1730: members of the
//! group (the setgid `postern-sendmail`) may create names in it but not list or read it, and the
//! sticky bit keeps one user from renaming or removing another's file. A writer makes
//! `ID.part`, writes it whole, syncs it and renames it to `ID`. Nothing in a dropped file is
//! trusted: the pickup reads it as the spool's owner, checks every field, and records the
//! file's owner (the kernel's word, not the writer's) in the `Received:` field.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{Draft, Envelope, QueueId, Spool, SpoolError, is_same_file};
use crate::sys;

pub const DIR: &str = "maildrop";
pub(crate) const PART: &str = ".part";

/// Writes a message into `root/maildrop/` under `id` (the ID it keeps in the queue, which
/// its `Message-ID:` may already name) and makes it durable. Used by a caller that cannot
/// write the spool itself.
pub fn drop_message(root: &Path, id: &QueueId, envelope: &Envelope, message: &[u8]) -> io::Result<()> {
    let dir = root.join(DIR);
    for _ in 0..3 {
        let part = dir.join(format!("{id}{PART}"));
        let file =
            OpenOptions::new().write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW).open(&part)?;
        // Readable by the spool's owner whatever the caller's umask; the directory keeps
        // everyone else out.
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        if !(sys::try_lock_exclusive(&file)? && is_same_file(&file, &part)) {
            continue; // swept by a pickup before the lock: start again
        }
        let written = write_whole(&file, envelope, message).and_then(|()| {
            let name = dir.join(id.as_str());
            if !sys::rename_no_replace(&part, &name)? {
                fs::hard_link(&part, &name)?;
                fs::remove_file(&part)?;
            }
            // Complete under its name: the pickup may take it from here (it may be waiting,
            // woken by the rename).
            sys::unlock(&file)?;
            // The directory cannot be opened (no read permission) to fsync it: syncfs makes
            // the new name durable with everything else on the filesystem.
            sys::sync_filesystem(&file)
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
        return Ok(());
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("maildrop: {id}.part is taken")))
}

fn write_whole(mut file: &File, envelope: &Envelope, message: &[u8]) -> io::Result<()> {
    let envelope = Envelope { size: message.len() as u64, ..envelope.clone() };
    file.write_all(envelope.to_text().0.as_bytes())?;
    file.write_all(message)?;
    file.sync_data()
}

/// A daemon's pickup: picks up whenever a writer renames a message into maildrop/, and every
/// `every` in any case (a watch that could not be set, a name moved in while picking up).
/// `settings` gives the host name and size limit of the configuration in use at each pickup
/// (a reload may change them); `queued` hears the IDs of each pickup. Runs for as long as
/// the process does.
pub fn watch(
    spool: &Spool,
    settings: impl Fn() -> (String, u64, Option<Box<dyn PickupFilter>>),
    every: std::time::Duration,
    mut queued: impl FnMut(Vec<QueueId>),
) {
    let mut watch = match sys::watch_moves_into(&spool.root.join(DIR)) {
        Ok(fd) => Some(fd),
        Err(e) => {
            ::log::warn!("{}/: cannot watch it ({e}); picking up every {}s", DIR, every.as_secs());
            None
        }
    };
    // A file whose writer has not finished is looked at again soon, then less and less often.
    let mut retry = RETRY_FIRST;
    loop {
        // maildrop/ made after the start (`postern-queue init` run later) is watched from then on.
        if watch.is_none() {
            watch = sys::watch_moves_into(&spool.root.join(DIR)).ok();
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (hostname, max_size, filter) = settings();
        let picked = spool.pickup(&PickupSettings { hostname: &hostname, max_size, now, filter: filter.as_deref() });
        if !picked.queued.is_empty() {
            queued(picked.queued);
        }
        let wait = if picked.busy > 0 {
            retry = (retry * 2).min(every);
            retry / 2
        } else {
            retry = RETRY_FIRST;
            every
        };
        match &watch {
            Some(fd) => {
                use std::os::fd::AsRawFd;
                if sys::wait_readable(fd.as_raw_fd(), Some(wait)).unwrap_or(false) {
                    sys::drain(fd);
                }
            }
            None => std::thread::sleep(wait),
        }
    }
}

const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(20);

/// What one pickup did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Picked {
    /// Queued now, under the IDs they were dropped with.
    pub queued: Vec<QueueId>,
    /// Left for later: a writer (or another pickup) still holds them.
    pub busy: usize,
}

/// How one dropped file went.
enum One {
    Queued,
    Busy,
    Nothing,
}

/// What a pickup needs to check and stamp a dropped message.
#[derive(Clone)]
pub struct PickupSettings<'a> {
    pub hostname: &'a str,
    pub max_size: u64,
    pub now: u64,
    /// The filters a message passes before its commit (`non_smtpd_milters`).
    pub filter: Option<&'a dyn PickupFilter>,
}

/// What judges and may change a picked-up message in its draft, before the commit.
pub trait PickupFilter {
    fn filter(&self, draft: &mut Draft<'_>, envelope: &Envelope) -> Result<Filtered, SpoolError>;
}

/// What a filter made of a picked-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    Queue,
    /// Into `hold/`, for the operator: why.
    Hold(String),
    /// Thrown away: why.
    Discard(String),
    /// Left in `maildrop/` for a later pickup: why.
    Defer(String),
}

/// A dropped message that is not well formed: why.
fn check(envelope: &Envelope, body_len: u64, max_size: u64) -> Result<(), String> {
    if envelope.protocol != "LOCAL" || envelope.client.is_some() {
        return Err("not a local submission".into());
    }
    if envelope.rcpts.is_empty() {
        return Err("no recipients".into());
    }
    if envelope.size != body_len {
        return Err(format!("{body_len} bytes, the envelope promises {}", envelope.size));
    }
    if body_len > max_size {
        return Err(format!("{body_len} bytes, over message_size_limit"));
    }
    Ok(())
}

impl Spool {
    /// Whether a pickup of this ID is unfinished (its maildrop name is still there): such a
    /// message is not delivered yet, so a pickup that crashed after queueing cannot make a
    /// second copy.
    pub fn in_maildrop(&self, id: &QueueId) -> bool {
        fs::symlink_metadata(self.root.join(DIR).join(id.as_str())).is_ok()
    }

    /// The names in maildrop/ now (`in_maildrop` for a whole listing at once).
    pub(crate) fn in_maildrop_now(&self) -> std::collections::HashSet<String> {
        let Ok(entries) = fs::read_dir(self.root.join(DIR)) else { return Default::default() };
        entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect()
    }

    /// Moves every complete dropped message into new/ (same ID), and removes drafts whose
    /// writer is gone. A spool without maildrop/ has nothing to do.
    pub fn pickup(&self, settings: &PickupSettings<'_>) -> Picked {
        let mut picked = Picked::default();
        let Ok(entries) = fs::read_dir(self.root.join(DIR)) else { return picked };
        let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort();
        for name in names {
            let path = self.root.join(DIR).join(&name);
            if let Some(stem) = name.strip_suffix(PART) {
                if QueueId::parse(stem).is_some() {
                    self.sweep_draft(&path);
                }
                continue;
            }
            let Some(id) = QueueId::parse(&name) else { continue };
            match self.pick_one(&id, &path, settings) {
                Ok(One::Queued) => picked.queued.push(id),
                Ok(One::Busy) => picked.busy += 1,
                Ok(One::Nothing) => {}
                Err(e) => ::log::error!("{id}: pickup from maildrop/ failed: {e}; it stays there"),
            }
        }
        picked
    }

    /// One dropped message.
    fn pick_one(&self, id: &QueueId, path: &Path, settings: &PickupSettings<'_>) -> Result<One, SpoolError> {
        let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return self.reject(id, path, "a symbolic link").map(|()| One::Nothing);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(One::Nothing),
            Err(e) => return Err(e.into()),
        };
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return self.reject(id, path, "not a plain file").map(|()| One::Nothing);
        }
        // A second name is the writer's link fallback, not yet undone (its `.part` name goes
        // next, or is swept); a lock is the writer finishing, or a concurrent pickup.
        if meta.nlink() != 1 || !sys::try_lock_exclusive(&file)? {
            return Ok(One::Busy);
        }
        // Finished by another pickup between our open and our lock.
        if !is_same_file(&file, path) {
            return Ok(One::Nothing);
        }
        // Not tmp/: a draft there is a pickup that died before its commit, and nothing of it
        // is queued (it is swept below).
        if ["new", "cur", "hold", "corrupt"].iter().any(|d| self.path(d, id).exists()) {
            // An earlier pickup queued it and stopped before removing this name.
            self.finish(path)?;
            return Ok(One::Nothing);
        }
        let cap = settings.max_size.saturating_add(super::envelope::MAX_HEAD as u64);
        if meta.len() > cap {
            return self.reject(id, path, "larger than message_size_limit").map(|()| One::Nothing);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        (&file).take(cap + 1).read_to_end(&mut bytes)?;
        let (dropped, offset) = match Envelope::parse(&bytes) {
            Ok(parsed) => parsed,
            Err(e) => return self.reject(id, path, &e.to_string()).map(|()| One::Nothing),
        };
        let body = &bytes[offset..];
        if let Err(why) = check(&dropped, body.len() as u64, settings.max_size) {
            return self.reject(id, path, &why).map(|()| One::Nothing);
        }
        let received = crate::trace::received_local(settings.hostname, meta.uid(), id.as_str(), settings.now);
        let envelope = Envelope {
            arrived: settings.now,
            client: None,
            helo: None,
            size: (received.len() + body.len()) as u64,
            ..dropped
        };
        let mut draft = match self.draft_as(id.clone()) {
            Ok(d) => d,
            // tmp/ID is the draft of a pickup that died (its lock is free: it goes, and this
            // pickup writes its own), or a run's sweep of tmp/ took the new name before it
            // was locked: look again soon, not after a whole minute.
            Err(SpoolError::Collision) if self.sweep_draft(&self.path("tmp", id)) => match self.draft_as(id.clone()) {
                Err(SpoolError::Collision) => return Ok(One::Busy),
                other => other?,
            },
            Err(SpoolError::Collision) => return Ok(One::Busy),
            Err(e) => return Err(e),
        };
        draft.begin(&envelope)?;
        draft.write(received.as_bytes())?;
        draft.write(body)?;
        crate::fault::crash_point("pickup-draft-written");
        let filtered = match settings.filter {
            Some(filter) => filter.filter(&mut draft, &envelope)?,
            None => Filtered::Queue,
        };
        let size = draft.message_len();
        let committed = match &filtered {
            Filtered::Queue => draft.commit(size),
            Filtered::Hold(why) => {
                ::log::warn!(target: "postern/pickup", "{id}: held: {why}");
                draft.commit_held(size)
            }
            Filtered::Discard(why) => {
                ::log::info!(target: "postern/pickup", "{id}: discarded: {why}; from={}", envelope.from);
                drop(draft);
                self.finish(path)?;
                return Ok(One::Nothing);
            }
            Filtered::Defer(why) => {
                ::log::warn!(target: "postern/pickup", "{id}: {why}; it stays in maildrop/");
                return Ok(One::Busy);
            }
        };
        match committed {
            Ok(_) => {}
            Err(SpoolError::Collision) => {
                self.finish(path)?;
                return Ok(One::Nothing);
            }
            Err(e) => return Err(e),
        }
        // Postfix's pickup shape, which log summarisers count as received; the size and the
        // recipients follow in the delivery run's `from=..., size=..., nrcpt=...` line.
        ::log::info!(target: "postern/pickup", "{id}: uid={} from={}", meta.uid(), envelope.from);
        crate::fault::crash_point("after-pickup-queued");
        self.finish(path)?;
        Ok(if filtered == Filtered::Queue { One::Queued } else { One::Nothing })
    }

    /// The pickup's last step: the maildrop name goes, durably.
    fn finish(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        File::open(self.root.join(DIR))?.sync_all()
    }

    /// A dropped file that is not a well-formed local submission goes to corrupt/, kept for
    /// the operator, never delivered.
    fn reject(&self, id: &QueueId, path: &Path, why: &str) -> Result<(), SpoolError> {
        let corrupt = self.root.join("corrupt");
        fs::DirBuilder::new().recursive(true).create(&corrupt)?;
        let to = corrupt.join(format!("maildrop-{id}"));
        if !sys::rename_no_replace(path, &to)? {
            fs::rename(path, &to)?;
        }
        ::log::error!("{id}: moved maildrop/{id} to corrupt/maildrop-{id}: {why}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::{ForwardPath, ReversePath};
    use crate::smtp::command::BodyType;

    fn envelope() -> Envelope {
        let (from, to) = (ReversePath::parse(b"alice@h.test").unwrap(), ForwardPath::parse(b"bob@h.test").unwrap());
        Envelope::local(1, from, vec![to], BodyType::SevenBit, false)
    }

    fn spool(tag: &str) -> (std::path::PathBuf, Spool) {
        let root = std::env::temp_dir().join(format!("postern-maildrop-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let spool = Spool::open(&root).unwrap();
        fs::create_dir(root.join(DIR)).unwrap();
        (root, spool)
    }

    fn settings() -> PickupSettings<'static> {
        PickupSettings { hostname: "h.test", max_size: 1000, now: 1_795_000_000, filter: None }
    }

    #[test]
    fn a_dropped_message_is_queued_under_its_id_with_a_trace_field() {
        let (root, spool) = spool("ok");
        let id = QueueId::generate();
        drop_message(&root, &id, &envelope(), b"Subject: x\r\n\r\nhi\r\n").unwrap();
        assert!(spool.in_maildrop(&id));
        assert_eq!(spool.pickup(&settings()).queued, vec![id.clone()]);
        assert!(!spool.in_maildrop(&id));
        let queued = fs::read(spool.path("new", &id)).unwrap();
        let (env, offset) = Envelope::parse(&queued).unwrap();
        let body = String::from_utf8(queued[offset..].to_vec()).unwrap();
        assert!(body.starts_with("Received: by h.test (postern, from userid 0)"), "{body}");
        assert!(body.ends_with("Subject: x\r\n\r\nhi\r\n"));
        assert_eq!(env.size as usize, body.len());
        assert_eq!(env.arrived, 1_795_000_000);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn bad_drops_go_to_corrupt_and_leftover_parts_are_swept() {
        let (root, spool) = spool("bad");
        let id = QueueId::generate();
        fs::write(root.join(DIR).join(id.as_str()), b"not an envelope").unwrap();
        let mut remote = envelope();
        remote.protocol = "ESMTP".into();
        let id2 = QueueId::generate();
        drop_message(&root, &id2, &remote, b"x\r\n").unwrap();
        let part = root.join(DIR).join(format!("{}{PART}", QueueId::generate()));
        fs::write(&part, b"half").unwrap();
        assert!(spool.pickup(&settings()).queued.is_empty());
        assert!(root.join("corrupt").join(format!("maildrop-{id}")).exists());
        assert!(root.join("corrupt").join(format!("maildrop-{id2}")).exists());
        assert!(!part.exists());
        assert_eq!(fs::read_dir(root.join("new")).unwrap().count(), 0);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_pickup_that_died_while_writing_leaves_a_draft_the_next_one_replaces() {
        let (root, spool) = spool("died");
        // What a pickup leaves and meets in tmp/ is a named draft's.
        let spool = spool.with_named_drafts();
        let id = QueueId::generate();
        drop_message(&root, &id, &envelope(), b"hi\r\n").unwrap();
        // As a pickup killed before its commit leaves it: a partial draft, its lock gone.
        fs::write(spool.path("tmp", &id), b"postern-envelope 1\n").unwrap();
        assert_eq!(spool.pickup(&settings()).queued, vec![id.clone()]);
        assert!(!spool.in_maildrop(&id));
        assert!(!spool.path("tmp", &id).exists());
        let queued = fs::read(spool.path("new", &id)).unwrap();
        assert!(queued.ends_with(b"hi\r\n"), "the whole message, not the dead draft");
        // A draft whose writer is alive is left to it, and the pickup tries again later.
        let id = QueueId::generate();
        drop_message(&root, &id, &envelope(), b"hi\r\n").unwrap();
        let live = File::create(spool.path("tmp", &id)).unwrap();
        assert!(sys::try_lock_exclusive(&live).unwrap());
        assert_eq!(spool.pickup(&settings()), Picked { queued: vec![], busy: 1 });
        assert!(spool.in_maildrop(&id), "its maildrop name stays until it is queued");
        drop(live);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_pickup_that_stopped_after_queueing_only_removes_the_name() {
        let (root, spool) = spool("again");
        let id = QueueId::generate();
        drop_message(&root, &id, &envelope(), b"hi\r\n").unwrap();
        let copy = fs::read(root.join(DIR).join(id.as_str())).unwrap();
        assert_eq!(spool.pickup(&settings()).queued.len(), 1);
        // As a crash between the commit and the removal leaves it.
        fs::write(root.join(DIR).join(id.as_str()), copy).unwrap();
        assert!(spool.queued().is_empty(), "not delivered while its pickup is unfinished");
        assert!(spool.pickup(&settings()).queued.is_empty());
        assert_eq!(spool.queued().len(), 1);
        assert!(!spool.in_maildrop(&id));
        assert_eq!(fs::read_dir(root.join("new")).unwrap().count(), 1);
        fs::remove_dir_all(root).unwrap();
    }
}
