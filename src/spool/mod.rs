//! The spool: owns every path under the spool directory and the commit that makes a message durable.
//!
//! ```text
//! tmp/ID   being written (the writer holds an flock on it)
//! new/ID   accepted, never tried
//! cur/ID   tried, waiting for a retry (+ ID.log)
//! hold/ID  put aside by the operator
//! spare/ID a delivered message's file, kept to be written over by a new message
//! maildrop/ID  left by a local user without access to the spool, waiting for pickup
//! ```
//! doc/queue.md states every transition between these, its sync, and what a crash leaves.

mod crc;
pub mod envelope;
pub mod id;
pub mod log;
pub mod maildrop;
pub mod manage;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use envelope::Envelope;
pub use id::QueueId;

use crate::flush::GroupSync;
use crate::sys;
use crc::Crc32c;

/// Why the spool could not take or give a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolError {
    /// ENOSPC or EDQUOT: answered 452 4.3.1, nothing left behind.
    DiskFull,
    /// Any other I/O failure, with its text for the log.
    Io(String),
    /// The queue name is taken; never overwritten.
    Collision,
    /// A spool file that does not parse.
    Corrupt(String),
}

/// Why the spool could not be opened, and for a permission problem, the fix.
pub fn open_error(root: &Path, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => format!(
            "spool {}: {e}: this program runs as uid {}, which cannot write there; as root, \
             `postern-queue init` makes the spool the service user's (`user` in the configuration)",
            root.display(),
            sys::effective_uid()
        ),
        _ => format!("spool {}: {e}", root.display()),
    }
}

/// ENOSPC or EDQUOT: the filesystem (or the user's quota) has no room.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

impl From<io::Error> for SpoolError {
    fn from(e: io::Error) -> SpoolError {
        match e.raw_os_error() {
            _ if is_disk_full(&e) => SpoolError::DiskFull,
            _ if e.kind() == io::ErrorKind::AlreadyExists => SpoolError::Collision,
            _ => SpoolError::Io(e.to_string()),
        }
    }
}

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolError::DiskFull => f.write_str("disk full"),
            SpoolError::Io(e) => write!(f, "I/O error: {e}"),
            SpoolError::Collision => f.write_str("queue file name already taken"),
            SpoolError::Corrupt(e) => write!(f, "corrupt queue file: {e}"),
        }
    }
}

pub struct Spool {
    root: PathBuf,
    /// Where a committed draft goes.
    target: Target,
    /// The fsync of a file just named in `new/` makes its name durable too: shown for the
    /// filesystems `syncs_name_with_file` names; elsewhere `new/` is fsynced as well.
    name_with_file: bool,
    /// Makes names in `new/` durable before 250 is sent, where the file's fsync does not.
    dir_sync: GroupSync,
    /// Drafts are anonymous files (O_TMPFILE) made in `new/`, named only at their commit; off
    /// where the filesystem or /proc/self/fd is missing (drafts are then named in `tmp/`).
    anonymous: AtomicBool,
    /// Spare files (`spare/`): the names this process may take a draft's file from, and how
    /// many more delivered messages' files it may keep there.
    spares: Mutex<Spares>,
}

/// A delivered message's file is kept in `spare/` (at most `SPARE_MAX` of them, each of at
/// most `SPARE_MAX_LEN` octets) and a new message is written over it instead of into a new
/// file: no inode is freed and allocated again per message, no blocks are given back (a
/// discard, where the filesystem is mounted so) and taken again, and ext4 without a journal,
/// which passes over inodes freed in the last minute or more when it allocates one, has none
/// such to pass over (doc/queue.md, "Spare files").
const SPARE_MAX: usize = 128;
const SPARE_MAX_LEN: u64 = 64 * 1024;
/// How long an empty `spare/` is believed empty before it is listed again.
const SPARE_RELIST: Duration = Duration::from_millis(50);
/// How long a full `spare/` is believed full before it is counted again.
const SPARE_RECOUNT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Spares {
    /// Names listed in `spare/`, not yet tried.
    names: Vec<std::ffi::OsString>,
    /// When `spare/` was last listed and found empty.
    empty_at: Option<Instant>,
    /// How many more files this process may put there before it counts them again.
    room: usize,
    /// When `spare/` was last counted and found full.
    full_at: Option<Instant>,
}

/// Where a spool's drafts are committed.
enum Target {
    /// `new/`, opened for its fsync: the queue itself.
    Queue { new_dir: File },
    /// `maildrop/`, for a local user who cannot write the queue (`sendmail -bs`): each draft is
    /// `maildrop/ID.part`, renamed to `maildrop/ID` and made durable, for the pickup to queue
    /// (doc/queue.md, "S0"). `group`: the drop group, taken up only while a name is made,
    /// renamed or removed there.
    Maildrop { group: Option<u32> },
}

const SUBDIRS: [&str; 5] = ["tmp", "new", "cur", "hold", "spare"];

/// The lock the one instant delivery process holds (`Spool::take_instant_lock`).
pub const INSTANT_LOCK: &str = "instant.lock";

/// Whether fsync(2) of a file just named (linked or renamed) makes its name durable with it,
/// on a filesystem of statfs `magic` mounted as `mount_type`. POSIX asks for an fsync of the
/// directory; these do it within the file's: ext4 and ext3 (the ext4 driver) commit the
/// journal transaction that holds the new name, and without a journal write the directory
/// that gained it; XFS forces its log past it. Each is shown by a power cut
/// test (tests/powercut.rs) on this kernel. Everything else, ext2's own driver included,
/// gets the directory fsync too.
fn syncs_name_with_file(magic: Option<i64>, mount_type: Option<&str>) -> bool {
    match magic {
        Some(0xEF53) => matches!(mount_type, Some("ext4" | "ext3")),
        Some(0x5846_5342) => true,
        _ => false,
    }
}

/// A warning when the spool at `root` is on a filesystem not known to make fsync and rename
/// durable (also for `--check`, before the spool exists: `root` may be its nearest parent).
pub fn filesystem_warning(root: &Path) -> Option<String> {
    const TRUSTED: [(i64, &str); 7] = [
        (0xEF53, "ext4"),
        (0x5846_5342, "xfs"),
        (0x9123_683E, "btrfs"),
        (0xF2F5_2010, "f2fs"),
        (0x0102_1994, "tmpfs"),
        (0x2FC1_2FC1, "zfs"),
        (0x794C_7630, "overlayfs"),
    ];
    let magic = match sys::filesystem_magic(root) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot tell the spool's filesystem type: {e}")),
    };
    if TRUSTED.iter().any(|(m, _)| *m == magic) {
        return None;
    }
    let name = match magic {
        0x4D44 => "FAT",
        0x2011_BAB0 => "exFAT",
        0x6969 => "NFS",
        _ => "an unknown filesystem",
    };
    Some(format!(
        "spool {} is on {name} (type {magic:#x}), which is not known to make fsync and rename durable; \
         a power cut may lose accepted mail: use ext4, xfs, btrfs or f2fs",
        root.display()
    ))
}

impl Spool {
    /// Opens the spool, creating its directories (mode 0700) when missing.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for sub in SUBDIRS {
            let dir = root.join(sub);
            if dir.is_dir() {
                continue;
            }
            builder.create(&dir)?;
            // One made by root (sendmail run by root, say, the first to open a spool from
            // before the directory existed) is the spool's owner's, as the others are.
            if sys::is_root()
                && let Ok(owner) = fs::metadata(root)
            {
                std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid()))?;
            }
        }
        let new_dir = File::open(root.join("new"))?;
        let target = Target::Queue { new_dir };
        let name_with_file = syncs_name_with_file(sys::filesystem_magic(root).ok(), sys::mount_type(root).as_deref());
        let anonymous = AtomicBool::new(Path::new("/proc/self/fd").is_dir() && !crate::fault::named_drafts());
        let spares = Mutex::default();
        Ok(Spool {
            root: root.to_path_buf(),
            target,
            name_with_file,
            dir_sync: GroupSync::default(),
            anonymous,
            spares,
        })
    }

    /// The spool as a local user without access to it sees it: drafts are committed into
    /// `maildrop/`, with `group` (the drop group of a setgid program) taken up for each name
    /// made, renamed or removed there.
    pub fn maildrop(root: &Path, group: Option<u32>) -> Spool {
        let target = Target::Maildrop { group };
        let anonymous = AtomicBool::new(false);
        let spares = Mutex::default();
        Spool {
            root: root.to_path_buf(),
            target,
            name_with_file: false,
            dir_sync: GroupSync::default(),
            anonymous,
            spares,
        }
    }

    /// Drafts are committed into `maildrop/` (a local user without access to the queue).
    pub fn drops(&self) -> bool {
        matches!(self.target, Target::Maildrop { .. })
    }

    /// The same spool with its drafts named in `tmp/`, as where anonymous files cannot be made.
    #[cfg(test)]
    pub(crate) fn with_named_drafts(self) -> Spool {
        self.anonymous.store(false, Ordering::Relaxed);
        self
    }

    /// Runs `f` with the drop group taken up, when this spool is the maildrop of a setgid run.
    fn in_drop_group<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        match self.target {
            Target::Maildrop { group: Some(gid) } => sys::with_effective_group(gid, f),
            _ => f(),
        }
    }

    /// `open`, with an error that says what to do about it.
    pub fn open_or_explain(root: &Path) -> Result<Spool, String> {
        Spool::open(root).map_err(|e| open_error(root, &e))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, dir: &str, id: &QueueId) -> PathBuf {
        self.root.join(dir).join(id.as_str())
    }

    /// A warning when the spool's filesystem is not known to keep fsync and rename promises
    /// (FAT and exFAT on SD cards have no link() and unreliable directory fsync).
    pub fn filesystem_warning(&self) -> Option<String> {
        filesystem_warning(&self.root)
    }

    /// Starts a new message in `tmp/`, locked for as long as it is being written.
    pub fn draft(&self) -> Result<Draft<'_>, SpoolError> {
        // A sweep (`clean_tmp`) in another process may take a file between its creation and
        // its lock; the draft then starts again under a new name rather than write a file
        // that is no longer in tmp/.
        for _ in 0..3 {
            match self.draft_as(QueueId::generate()) {
                Err(SpoolError::Collision) => continue,
                other => return other,
            }
        }
        Err(SpoolError::Collision)
    }

    /// A file with no name in `new/`'s filesystem, locked, for a draft; `None` where anonymous
    /// files cannot be made (then never tried again by this spool).
    fn anonymous_file(&self) -> io::Result<Option<File>> {
        let Target::Queue { new_dir } = &self.target else { return Ok(None) };
        if !self.anonymous.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match sys::open_anonymous_in(new_dir) {
            Ok(file) => {
                sys::try_lock_exclusive(&file)?; // nobody else can reach it yet
                Ok(Some(file))
            }
            Err(e) if no_anonymous_files(&e) => {
                if self.anonymous.swap(false, Ordering::Relaxed) {
                    ::log::info!(
                        "spool {}: no anonymous files here ({e}): drafts are named in tmp/",
                        self.root.display()
                    );
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A draft under a given ID (a pickup keeps the ID its writer chose): an anonymous file,
    /// else `tmp/ID`; `Collision` when tmp/ID exists or is swept before it could be locked.
    pub fn draft_as(&self, id: QueueId) -> Result<Draft<'_>, SpoolError> {
        if let Some((path, file, len)) = self.spare_file() {
            let mut draft = Draft::new(self, id, Some(path), file);
            draft.spare_len = Some(len);
            return Ok(draft);
        }
        if let Some(file) = self.anonymous_file()? {
            return Ok(Draft::new(self, id, None, file));
        }
        let (path, mode) = match self.target {
            Target::Queue { .. } => (self.path("tmp", &id), 0o600),
            // Readable by the spool's owner, who picks it up, whatever the caller's umask.
            Target::Maildrop { .. } => (self.root.join(maildrop::DIR).join(format!("{id}{}", maildrop::PART)), 0o644),
        };
        // The name is looked up again to check the lock, which in maildrop/ takes the group too.
        let locked = self.in_drop_group(|| {
            // Read too: a draft that gains fields at its end is copied (`put_on_top`).
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            if matches!(self.target, Target::Maildrop { .. }) {
                file.set_permissions(fs::Permissions::from_mode(mode))?;
            }
            let locked = sys::try_lock_exclusive(&file)? && is_same_file(&file, &path);
            Ok(locked.then_some(file))
        })?;
        match locked {
            Some(file) => Ok(Draft::new(self, id, Some(path), file)),
            None => Err(SpoolError::Collision),
        }
    }

    /// Removes files in `tmp/` whose writer is gone (their lock is free); returns how many.
    /// A live writer in another process keeps its lock, so its file is left alone.
    pub fn clean_tmp(&self) -> usize {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return 0;
        };
        entries.flatten().filter(|entry| self.sweep_draft(&entry.path())).count()
    }

    /// Removes one draft (in `tmp/`, or a part in `maildrop/`) when its writer is gone (its
    /// lock is free); whether it did.
    pub(crate) fn sweep_draft(&self, path: &Path) -> bool {
        let unlocked = matches!(open_locked(path, false), Ok(Some(_)));
        if unlocked && fs::remove_file(path).is_ok() {
            ::log::info!("removed leftover {}", path.display());
            return true;
        }
        false
    }

    /// What a killed run or server can leave, put right before a delivery run: drafts whose
    /// writer is gone, logs without their message, and a message under two names (a crash
    /// inside a move made by link and unlink). See doc/queue.md.
    pub fn repair(&self) {
        self.clean_tmp();
        self.drop_second_names();
        self.sweep_orphan_logs();
        self.trim_spares();
    }

    /// A spare file to write a draft over, locked, with its length: taken from `spare/`'s
    /// names as listed, each checked under its lock to be still there, a regular file, and
    /// under that one name only (a power cut can undo the rename that took it, and leave it
    /// a second name beside the queued message it became: that name is removed). `None` when
    /// there is none, after a few tries at most.
    fn spare_file(&self) -> Option<(PathBuf, File, u64)> {
        if !matches!(self.target, Target::Queue { .. }) {
            return None;
        }
        let dir = self.root.join("spare");
        let mut listed = false;
        for _ in 0..8 {
            let name = {
                let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
                if spares.names.is_empty() {
                    // Listed once per draft at most; a listing with nothing to take in it (all
                    // still held) counts as empty.
                    if listed {
                        spares.empty_at = Some(Instant::now());
                        return None;
                    }
                    if spares.empty_at.is_some_and(|at| at.elapsed() < SPARE_RELIST) {
                        return None;
                    }
                    listed = true;
                    spares.names = fs::read_dir(&dir)
                        .map(|entries| entries.flatten().map(|e| e.file_name()).take(SPARE_MAX).collect())
                        .unwrap_or_default();
                    spares.empty_at = spares.names.is_empty().then(Instant::now);
                }
                spares.names.pop()?
            };
            let path = dir.join(&name);
            let (file, meta) = match open_locked(&path, true) {
                Ok(Some(locked)) => locked,
                // Still held by the run that delivered it, taken by another writer, or
                // committed by one since it was listed.
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(_) => {
                    // Not ours to write (made by root, say): one spare fewer.
                    let _ = fs::remove_file(&path);
                    continue;
                }
            };
            if !meta.file_type().is_file() || meta.nlink() != 1 {
                let _ = fs::remove_file(&path);
                continue;
            }
            // Its mode may still mark a copy begun (`mark_copy_begun`).
            if meta.permissions().mode() & 0o777 != 0o600
                && file.set_permissions(fs::Permissions::from_mode(0o600)).is_err()
            {
                continue;
            }
            return Some((path, file, meta.len()));
        }
        None
    }

    /// Whether a delivered message's file of `len` octets may be kept in `spare/`: it is not
    /// too large, and `spare/` holds fewer than `SPARE_MAX` (counted again when this
    /// process's count runs out, and not again for a while when it was full).
    fn room_for_spare(&self, len: u64) -> bool {
        if len > SPARE_MAX_LEN || !matches!(self.target, Target::Queue { .. }) {
            return false;
        }
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        if spares.room == 0 {
            if spares.full_at.is_some_and(|at| at.elapsed() < SPARE_RECOUNT) {
                return false;
            }
            let held = fs::read_dir(self.root.join("spare")).map_or(SPARE_MAX, |entries| entries.count());
            spares.room = SPARE_MAX.saturating_sub(held);
            spares.full_at = (spares.room == 0).then(Instant::now);
            if spares.room == 0 {
                return false;
            }
        }
        spares.room -= 1;
        true
    }

    /// Keeps `spare/` to what a writer may take: at most `SPARE_MAX` files, none too large,
    /// none that is also a queued message's (see `spare_file`). A spare whose lock is held
    /// (a draft being written over it, which may be larger, or the run that delivered it)
    /// is left alone.
    fn trim_spares(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("spare")) else { return };
        let mut kept = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = match open_locked(&path, false) {
                Ok(Some((_, meta))) => meta,
                Ok(None) => continue,
                Err(_) => {
                    let _ = fs::remove_file(&path); // not a file postern can use
                    continue;
                }
            };
            let usable = meta.file_type().is_file() && meta.nlink() == 1 && meta.len() <= SPARE_MAX_LEN;
            if usable && kept < SPARE_MAX {
                kept += 1;
            } else {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// A message seen in two of new/, cur/ and hold/ keeps the name furthest along
    /// (hold/ over cur/ over new/) when both are the same file; two different files under
    /// one ID (never made by postern) are left for the operator, the second moved to corrupt/.
    /// One look per name: linear in the queue.
    fn drop_second_names(&self) {
        let mut seen: std::collections::HashMap<QueueId, &str> = std::collections::HashMap::new();
        for dir in ["hold", "cur", "new"] {
            let Ok(entries) = fs::read_dir(self.root.join(dir)) else { continue };
            for entry in entries.flatten() {
                let Some(id) = entry.file_name().to_str().and_then(QueueId::parse) else { continue };
                let kept = *seen.entry(id.clone()).or_insert(dir);
                if kept == dir {
                    continue;
                }
                let (extra, keep) = (self.path(dir, &id), self.path(kept, &id));
                let same = match (fs::symlink_metadata(&extra), fs::symlink_metadata(&keep)) {
                    (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                    _ => continue,
                };
                if same {
                    if fs::remove_file(&extra).is_ok() {
                        ::log::info!("{id}: removed its second name {dir}/{id}; it is in {kept}/");
                    }
                } else {
                    let corrupt = self.root.join("corrupt");
                    let _ = fs::DirBuilder::new().recursive(true).mode(0o700).create(&corrupt);
                    if sys::rename_no_replace(&extra, &corrupt.join(id.as_str())).unwrap_or(false) {
                        ::log::error!("{id}: two different files under one ID; {dir}/{id} moved to corrupt/");
                    }
                }
            }
        }
    }
}

/// Opens a file of the spool's root that holds nothing but a lock, making it when `create`.
fn open_lock_file(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(create).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// A file with no name in `dir`, mode 0600, for `sys::link_anonymous` to name (O_TMPFILE).
fn open_anonymous(dir: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir)
}

/// Whether `open_anonymous` failed for want of anonymous files: none in this kernel (EISDIR)
/// or filesystem (EOPNOTSUPP).
fn no_anonymous_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL))
}

/// The lock file at `path`, as root: made already owned as the spool `root` is (an anonymous
/// file, chowned, then named), so that no kill between its making and its chown leaves a file
/// that the unprivileged daemon cannot open; a file left root-owned by an older version, or
/// made where there are no anonymous files, is given to the spool's owner.
fn open_owned_as_spool(root: &Path, path: &Path) -> io::Result<File> {
    let owner = fs::metadata(root)?;
    let give = |file: &File| std::os::unix::fs::fchown(file, Some(owner.uid()), Some(owner.gid()));
    let file = loop {
        match open_lock_file(path, false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            opened => break opened?,
        }
        let file = match open_anonymous(root) {
            Ok(file) => file,
            Err(e) if no_anonymous_files(&e) => break open_lock_file(path, true)?,
            Err(e) => return Err(e),
        };
        give(&file)?;
        match sys::link_anonymous(&file, path) {
            // The inode, whose link count the link raised, goes to the disk with it: on ext4
            // without a journal, a power cut could otherwise leave the name leading to an
            // inode the disk counts as unlinked, which does not open.
            Ok(()) => return file.sync_all().map(|()| file),
            // Another made it first: open theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let meta = file.metadata()?;
    if (meta.uid(), meta.gid()) != (owner.uid(), owner.gid()) {
        give(&file)?;
    }
    Ok(file)
}

/// Opens `path` (not through a symlink; for writing too when `write`) and takes its flock
/// without waiting: the file and its metadata, read under the lock, when the name still leads
/// to it; `None` when another holds the lock or the name has gone to another file since.
fn open_locked(path: &Path, write: bool) -> io::Result<Option<(File, fs::Metadata)>> {
    let file = OpenOptions::new().read(true).write(write).custom_flags(libc::O_NOFOLLOW).open(path)?;
    if !sys::try_lock_exclusive(&file).unwrap_or(false) {
        return Ok(None);
    }
    let meta = file.metadata()?;
    Ok(names(path, &meta).then_some((file, meta)))
}

/// Whether `path` still names the file open as `file` (it was not removed or replaced).
pub(crate) fn is_same_file(file: &File, path: &Path) -> bool {
    file.metadata().is_ok_and(|meta| names(path, &meta))
}

/// Whether `path` names the file whose metadata (from its descriptor) is `meta`.
fn names(path: &Path, meta: &fs::Metadata) -> bool {
    fs::symlink_metadata(path).is_ok_and(|at| at.ino() == meta.ino() && at.dev() == meta.dev())
}

/// Where a queued message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// Never tried.
    New,
    /// Tried, waiting for a retry.
    Cur,
}

impl Place {
    pub fn dir(self) -> &'static str {
        match self {
            Place::New => "new",
            Place::Cur => "cur",
        }
    }
}

/// A queued message opened for delivery: locked, checked whole, its envelope read.
pub struct Queued {
    pub place: Place,
    pub id: QueueId,
    pub envelope: Envelope,
    file: File,
    /// Where the message starts in the file (after the envelope block).
    offset: u64,
    /// The queue file's mode had u+x when it was locked (`copy_begun`).
    begun: bool,
    /// How many names the file had when it was locked.
    names: u64,
}

/// Why a queued message could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another delivery run holds it, or it moved since it was listed.
    Busy,
    /// Not a whole, well-formed spool file: moved aside to corrupt/.
    Corrupt(String),
    Io(io::Error),
}

impl Queued {
    /// A reader over the message (not the envelope); each call starts at the beginning.
    pub fn message(&self) -> MessageReader<'_> {
        MessageReader { file: &self.file, pos: self.offset, end: self.offset + self.envelope.size }
    }

    /// Whether a run began a copy of this message under its fixed name without a log: the
    /// queue file's mode had u+x (`mark_copy_begun`), which `ls -l` shows too, when this run
    /// took its lock.
    pub fn copy_begun(&self) -> bool {
        self.begun
    }

    /// How many names the queue file had when it was locked: more than one only while a move
    /// made by link and unlink is under way or was cut short, or another name was made by hand.
    pub fn names(&self) -> u64 {
        self.names
    }

    /// Marks the queue file (mode 0700) before a copy under the message's fixed name is made:
    /// a change of its inode, in memory until written back, so it outlives a killed run as
    /// the page cache does a log line, and costs no file of its own.
    pub fn mark_copy_begun(&self) -> io::Result<()> {
        self.file.set_permissions(fs::Permissions::from_mode(0o700))
    }
}

/// Reads a range of a file by position, so several readers can share one descriptor.
pub struct MessageReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl io::Read for MessageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Spool {
    /// Messages in new/ and cur/, oldest first. Names that are not queue IDs are ignored, and
    /// so is a message whose pickup from maildrop/ is not finished.
    pub fn queued(&self) -> Vec<(Place, QueueId)> {
        // One read of maildrop/ (empty nearly always), not a look per queued message.
        let dropped = self.in_maildrop_now();
        let mut out: Vec<(Place, QueueId)> = [Place::New, Place::Cur]
            .into_iter()
            .flat_map(|place| self.listed(place, &dropped).into_iter().map(move |id| (place, id)))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        out
    }

    /// The queue IDs named in `place`, less those whose pickup from maildrop/ (`dropped`) is
    /// not finished; unsorted.
    fn listed(&self, place: Place, dropped: &std::collections::HashSet<String>) -> Vec<QueueId> {
        let Ok(entries) = fs::read_dir(self.root.join(place.dir())) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(QueueId::parse))
            .filter(|id| !dropped.contains(id.as_str()))
            .collect()
    }

    /// Messages in new/ (never tried), oldest first, as `queued` lists them: what instant
    /// delivery takes, without a look at cur/, however long it is.
    pub fn untried(&self) -> Vec<QueueId> {
        let mut out = self.listed(Place::New, &self.in_maildrop_now());
        out.sort();
        out
    }

    /// Whether a message in new/ also has a name in cur/ or hold/ (a move by link and
    /// unlink that a crash cut short): instant delivery leaves it to a whole run, whose
    /// repair keeps one name (`drop_second_names`).
    pub fn has_second_name(&self, id: &QueueId) -> bool {
        ["cur", "hold"].iter().any(|dir| fs::symlink_metadata(self.path(dir, id)).is_ok())
    }

    /// Whether `maildrop/ID` is there: its pickup has not finished, and no run may take it.
    pub fn in_pickup(&self, id: &QueueId) -> bool {
        fs::symlink_metadata(self.root.join(maildrop::DIR).join(id.as_str())).is_ok()
    }

    /// Takes the instant delivery lock (`spool/instant.lock`) without waiting: held by the one
    /// process that delivers new mail as it arrives (src/instant.rs). `Ok(None)` when another
    /// holds it. The file is mode 0600 and owned as the spool is, whoever makes it first.
    pub fn take_instant_lock(root: &Path) -> io::Result<Option<File>> {
        let path = root.join(INSTANT_LOCK);
        let file = if sys::is_root() { open_owned_as_spool(root, &path)? } else { open_lock_file(&path, true)? };
        Ok(sys::try_lock_exclusive(&file)?.then_some(file))
    }

    /// Whether `file` is the spool's instant delivery lock (a descriptor a child was passed).
    pub fn is_instant_lock(root: &Path, file: &File) -> bool {
        is_same_file(file, &root.join(INSTANT_LOCK))
    }

    /// The delivery log of a message; it lives in cur/ wherever the message is.
    pub fn log_path(&self, id: &QueueId) -> PathBuf {
        self.root.join("cur").join(format!("{id}.log"))
    }

    /// Takes the flock of a message's delivery log, waiting up to `wait`: held by whoever
    /// moves a message between hold/ and the queue, and by the sweep of logs left without
    /// their message, so that the sweep never finds a message in the middle of a move.
    /// `Ok(None)`: the message has no log, or the lock was not had in time.
    pub(crate) fn lock_log(&self, id: &QueueId, wait: Duration) -> io::Result<Option<File>> {
        let path = self.log_path(id);
        let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let deadline = std::time::Instant::now() + wait;
        while !sys::try_lock_exclusive(&file)? {
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(is_same_file(&file, &path).then_some(file))
    }

    /// Opens, locks (without waiting) and checks one queued message (two runs never share a message; a truncated file is never delivered).
    pub fn open_queued(&self, place: Place, id: &QueueId) -> Result<Queued, OpenError> {
        let path = self.path(place.dir(), id);
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).map_err(OpenError::Io)?;
        if !sys::try_lock_exclusive(&file).map_err(OpenError::Io)? {
            return Err(OpenError::Busy);
        }
        // Another run may have finished it and removed or moved it between our open and our
        // lock; what it marked on the file before it let the lock go is read with the check.
        let meta = file.metadata().map_err(OpenError::Io)?;
        if !meta.file_type().is_file() {
            return Err(self.quarantine(place, id, "not a regular file"));
        }
        if !names(&path, &meta) {
            return Err(OpenError::Busy);
        }
        let (envelope, offset) = match read_envelope(&file, meta.len()).map_err(OpenError::Io)? {
            Ok(parsed) => parsed,
            Err(e) => return Err(self.quarantine(place, id, &e.to_string())),
        };
        if meta.len() != offset as u64 + envelope.size {
            let why = format!("{} bytes, the envelope promises {}", meta.len(), offset as u64 + envelope.size);
            return Err(self.quarantine(place, id, &why));
        }
        // Only a message never tried can be a file a power cut tore: one in cur/ was read
        // whole here before, and made durable before it moved (`move_to_cur`).
        if let (Place::New, Some(check)) = (place, envelope.check)
            && !check_matches(&file, id, offset as u64, envelope.size, check).map_err(OpenError::Io)?
        {
            let why = "its check does not match: blocks a power cut left unwritten, or damage since";
            return Err(self.quarantine(place, id, why));
        }
        let begun = meta.permissions().mode() & 0o100 != 0;
        let names = meta.nlink();
        Ok(Queued { place, id: id.clone(), envelope, file, offset: offset as u64, begun, names })
    }

    /// Moves a bad file to corrupt/ so that it is never delivered and never lost.
    fn quarantine(&self, place: Place, id: &QueueId, why: &str) -> OpenError {
        let dir = self.root.join("corrupt");
        let _ = fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir);
        let _ = fs::rename(self.path(place.dir(), id), dir.join(id.as_str()));
        ::log::error!("{id}: moved to corrupt/: {why}");
        OpenError::Corrupt(why.to_string())
    }

    /// A tried message goes from new/ to cur/ to wait for its retry.
    pub fn move_to_cur(&self, queued: &Queued) -> io::Result<()> {
        if queued.place == Place::Cur {
            return Ok(());
        }
        // Its message was read whole and checked in new/; that what was read is on the disk
        // too comes first, as no check is made in cur/.
        queued.file.sync_data()?;
        let to = self.path("cur", &queued.id);
        if !sys::rename_no_replace(&self.path("new", &queued.id), &to)? {
            fs::hard_link(self.path("new", &queued.id), &to)?;
            fs::remove_file(self.path("new", &queued.id))?;
        }
        File::open(self.root.join("cur"))?.sync_all()
    }

    /// A finished message goes: first the file, then its log, when it has one (`log`; an
    /// orphan log is harmless, and swept). The file is renamed into `spare/`, still locked,
    /// where there is room, for a new message to be written over; otherwise removed.
    pub fn remove(&self, queued: &Queued, log: bool) -> io::Result<()> {
        let path = self.path(queued.place.dir(), &queued.id);
        let kept = self.room_for_spare(queued.offset + queued.envelope.size)
            && fs::rename(&path, self.path("spare", &queued.id)).is_ok();
        if !kept {
            fs::remove_file(&path)?;
        }
        crate::fault::crash_point("after-message-removed");
        if !log {
            return Ok(());
        }
        match fs::remove_file(self.log_path(&queued.id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes delivery logs whose message is gone (a crash between removing the message and
    /// its log). A message is only ever renamed between directories, so one that exists is
    /// seen in one of them whatever order the checks run in.
    pub fn sweep_orphan_logs(&self) -> usize {
        let Ok(entries) = fs::read_dir(self.root.join("cur")) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(QueueId::parse) else {
                continue;
            };
            let exists = || ["hold", "new", "cur"].iter().any(|dir| self.path(dir, &id).exists());
            // Most logs have their message: only a log that seems alone is looked at again,
            // under its lock, which keeps the operator's hold and release from moving the
            // message while it is looked for (a run's own move, new -> cur, goes the way it
            // is looked). Every run starts with this sweep: no lock is taken for the rest.
            if exists() {
                continue;
            }
            let Ok(Some(_log)) = self.lock_log(&id, Duration::ZERO) else { continue };
            if !exists() && fs::remove_file(entry.path()).is_ok() {
                ::log::info!("{id}: removed a delivery log left without its message");
                removed += 1;
            }
        }
        removed
    }

    /// Queues a message made here (a bounce): the same commit as mail from a client.
    pub fn inject(&self, envelope: &Envelope, message: &[u8]) -> Result<QueueId, SpoolError> {
        let mut draft = self.draft()?;
        draft.begin(envelope)?;
        draft.write(message)?;
        crate::fault::crash_point("report-draft-written");
        draft.commit(message.len() as u64)
    }
}

/// Reads the envelope block: the first 64 KiB hold it unless there are thousands of recipients.
fn read_envelope(file: &File, len: u64) -> io::Result<Result<(Envelope, usize), envelope::EnvelopeError>> {
    let mut parsed = Err(envelope::EnvelopeError::NoEnd);
    for size in [64 * 1024, envelope::MAX_HEAD] {
        let mut head = vec![0u8; size.min(usize::try_from(len).unwrap_or(usize::MAX))];
        let n = file.read_at(&mut head, 0)?;
        parsed = Envelope::parse(&head[..n]);
        if parsed != Err(envelope::EnvelopeError::NoEnd) || n as u64 >= len {
            break;
        }
    }
    Ok(parsed)
}

/// A piece of a message as `Draft::replace_message` writes it anew.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'b> {
    New(&'b [u8]),
    /// The octets `from..to` of the message as it was.
    Old(u64, u64),
}

/// What a draft holds in memory before it writes: a message that fits is written in one
/// piece at its commit, and fields decided at the end of data can still go on its top.
const DRAFT_BUFFER: usize = 64 * 1024;

/// A message being written: an anonymous file, or one in `tmp/`; dropped without `commit`,
/// it is gone.
pub struct Draft<'a> {
    spool: &'a Spool,
    id: QueueId,
    /// Its name in `tmp/` (or `maildrop/`); `None` for an anonymous file.
    path: Option<PathBuf>,
    file: File,
    /// Written, not yet in the file, which holds the `flushed` octets before these.
    buf: Vec<u8>,
    flushed: u64,
    /// The envelope block's length: the message starts there.
    head_len: usize,
    size_offset: u64,
    /// The queue ID and every octet of the message in the file so far (summed as they go
    /// there, so a draft rearranged in memory is summed once), for `check:`.
    crc: Crc32c,
    /// The tmp/ name is gone (renamed into new/).
    moved: bool,
    /// The file is a spare (`path` in `spare/`) of this length: what lies past the new
    /// message is cut off at the commit.
    spare_len: Option<u64>,
}

impl<'a> Draft<'a> {
    fn new(spool: &'a Spool, id: QueueId, path: Option<PathBuf>, file: File) -> Draft<'a> {
        let crc = id_crc(&id);
        let (buf, moved) = (Vec::with_capacity(DRAFT_BUFFER), false);
        Draft { spool, id, path, file, buf, flushed: 0, head_len: 0, size_offset: 0, crc, moved, spare_len: None }
    }
}

impl Draft<'_> {
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Writes the envelope block; its size is filled in by `commit`. Into `maildrop/`, the
    /// envelope is a local submission's, which is all the pickup takes.
    pub fn begin(&mut self, envelope: &Envelope) -> Result<(), SpoolError> {
        let dropped;
        let envelope = match self.spool.target {
            Target::Queue { .. } => envelope,
            Target::Maildrop { .. } => {
                let local = Envelope::local(
                    envelope.arrived,
                    envelope.from.clone(),
                    envelope.rcpts.clone(),
                    envelope.body,
                    envelope.smtputf8,
                );
                dropped = local;
                &dropped
            }
        };
        let (text, offset) = envelope.draft_text();
        self.size_offset = (self.flushed + self.buf.len() as u64) + offset as u64;
        self.head_len = text.len();
        self.write(text.as_bytes())
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        if self.buf.len() + bytes.len() > DRAFT_BUFFER {
            self.spill()?;
        }
        if bytes.len() >= DRAFT_BUFFER {
            sum_message(&mut self.crc, self.head_len, self.flushed, bytes);
            self.file.write_all(bytes)?;
            self.flushed += bytes.len() as u64;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// What is held in memory goes into the file.
    fn spill(&mut self) -> io::Result<()> {
        sum_message(&mut self.crc, self.head_len, self.flushed, &self.buf);
        self.file.write_all(&self.buf)?;
        self.flushed += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// The message written so far: its length (what follows the envelope block).
    pub fn message_len(&self) -> u64 {
        (self.flushed + self.buf.len() as u64).saturating_sub(self.head_len as u64)
    }

    /// Reads the message written so far, from its octet `at`, wherever it is (the file, or
    /// memory); 0 at its end.
    pub fn read_message_at(&self, at: u64, out: &mut [u8]) -> io::Result<usize> {
        let pos = self.head_len as u64 + at;
        if pos < self.flushed {
            let n = usize::try_from(self.flushed - pos).unwrap_or(usize::MAX).min(out.len());
            return self.file.read_at(&mut out[..n], pos);
        }
        let from = usize::try_from(pos - self.flushed).unwrap_or(usize::MAX);
        let rest = self.buf.get(from..).unwrap_or_default();
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }

    /// Replaces the envelope and puts `fields` on top of the message, for what is known only
    /// once the whole text is in (a check that reads the message).
    pub fn put_on_top(&mut self, envelope: &Envelope, fields: &[u8]) -> Result<(), SpoolError> {
        let len = self.message_len();
        self.replace_message(envelope, &[Piece::New(fields), Piece::Old(0, len)])
    }

    /// Replaces the envelope, and the message with `pieces` in order: new octets, or ranges of
    /// the message as it is (fields on top, a header section a milter changed, a body it
    /// replaced). A message still held in memory is rearranged there; one already in the file
    /// is copied into a second draft (anonymous, or `tmp/ID.1`), which takes the first one's
    /// place (doc/queue.md, "S1").
    pub fn replace_message(&mut self, envelope: &Envelope, pieces: &[Piece<'_>]) -> Result<(), SpoolError> {
        let (text, offset) = envelope.draft_text();
        let len = self.message_len();
        if pieces.iter().any(|p| matches!(*p, Piece::Old(from, to) if from > to || to > len)) {
            return Err(SpoolError::Io("a piece past the end of the message".into()));
        }
        if self.flushed == 0 {
            let old = &self.buf[self.head_len.min(self.buf.len())..];
            let mut next = Vec::with_capacity(DRAFT_BUFFER.max(text.len() + old.len()));
            next.extend_from_slice(text.as_bytes());
            for piece in pieces {
                match *piece {
                    Piece::New(bytes) => next.extend_from_slice(bytes),
                    Piece::Old(from, to) => next.extend_from_slice(&old[from as usize..to as usize]),
                }
            }
            self.buf = next;
        } else {
            if !matches!(self.spool.target, Target::Queue { .. }) {
                return Err(SpoolError::Io("a dropped message is not rewritten".into()));
            }
            self.spill()?;
            // Anonymous like the first where it can be, else `tmp/ID.1`.
            let (file, path) = match (&self.path, self.spool.anonymous_file()?) {
                (None, Some(file)) => (file, None),
                _ => {
                    let path = self.spool.root.join("tmp").join(format!("{}.1", self.id));
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&path)?;
                    if !(sys::try_lock_exclusive(&file)? && is_same_file(&file, &path)) {
                        return Err(SpoolError::Collision);
                    }
                    (file, Some(path))
                }
            };
            // From here, a named second draft goes with this one if anything fails.
            let second = SecondDraft(path.as_deref());
            let mut out = io::BufWriter::with_capacity(DRAFT_BUFFER, &file);
            out.write_all(text.as_bytes())?;
            let mut crc = id_crc(&self.id);
            let mut written = 0u64;
            let mut chunk = vec![0u8; DRAFT_BUFFER];
            for piece in pieces {
                match *piece {
                    Piece::New(bytes) => {
                        out.write_all(bytes)?;
                        crc.update(bytes);
                        written += bytes.len() as u64;
                    }
                    Piece::Old(from, to) => {
                        let mut at = from;
                        while at < to {
                            let want = usize::try_from(to - at).unwrap_or(usize::MAX).min(DRAFT_BUFFER);
                            let n = self.file.read_at(&mut chunk[..want], self.head_len as u64 + at)?;
                            if n == 0 {
                                return Err(SpoolError::Io("the draft is shorter than was written".into()));
                            }
                            out.write_all(&chunk[..n])?;
                            crc.update(&chunk[..n]);
                            at += n as u64;
                        }
                        written += to - from;
                    }
                }
            }
            out.flush()?;
            drop(out);
            crate::fault::crash_point("second-draft-written");
            if let Some(first) = &self.path {
                let _ = fs::remove_file(first);
            }
            std::mem::forget(second);
            self.spare_len = None;
            self.crc = crc;
            self.flushed = text.len() as u64 + written;
            self.file = file;
            self.path = path;
        }
        self.head_len = text.len();
        self.size_offset = offset as u64;
        Ok(())
    }

    /// The commit point: fill in the size and the check, name the file in `new/` (never over
    /// an existing name), then one fsync makes the file and its name durable (with
    /// an fsync of `new/` too, where the filesystem's file fsync is not known to cover the
    /// name). Only then may 250 be sent. The draft's lock is held throughout, so no delivery
    /// run takes the message before it is durable (doc/queue.md, "S1 -> S2").
    pub fn commit(self, size: u64) -> Result<QueueId, SpoolError> {
        self.commit_into(size, "new")
    }

    /// The same commit into `hold/`: a message a milter quarantined, for the operator to
    /// judge (`postern-queue release`); delivery runs leave it alone (doc/queue.md, S1 -> S5).
    pub fn commit_held(self, size: u64) -> Result<QueueId, SpoolError> {
        self.commit_into(size, "hold")
    }

    fn commit_into(mut self, size: u64, dir: &'static str) -> Result<QueueId, SpoolError> {
        self.spill()?;
        let digits = Envelope::size_and_check(size, self.crc.value());
        let file = &self.file;
        file.write_all_at(digits.as_bytes(), self.size_offset)?;
        // A spare held a delivered message: nothing of it may outlast the new one.
        if let Some(old) = self.spare_len {
            if old > self.flushed {
                file.set_len(self.flushed)?;
            }
            crate::fault::crash_point("spare-draft-written");
        }
        let new_dir = match &self.spool.target {
            Target::Queue { new_dir } => new_dir,
            Target::Maildrop { .. } => return self.commit_to_maildrop(),
        };
        let queued = self.spool.path(dir, &self.id);
        match &self.path {
            None if dir == "new" => {
                sys::link_anonymous_in(&self.file, new_dir, self.id.as_str())?;
                self.moved = true;
            }
            None => {
                sys::link_anonymous(&self.file, &queued)?;
                self.moved = true;
            }
            Some(path) => {
                self.moved = sys::rename_no_replace(path, &queued)?;
                if !self.moved {
                    fs::hard_link(path, &queued)?;
                }
            }
        }
        crate::fault::crash_point("after-commit-name");
        // A link leaves two names, and the file's fsync may write the other directory.
        let name_with_file = self.spool.name_with_file && self.moved;
        let synced = file.sync_all().and_then(|()| match (name_with_file, dir) {
            (true, _) => Ok(()),
            (false, "new") => self.spool.dir_sync.sync(|| new_dir.sync_all()),
            (false, _) => File::open(self.spool.root.join(dir)).and_then(|d| d.sync_all()),
        });
        if let Err(e) = synced {
            // Not durable, so not accepted: the client will hear 4xx and must not find it queued.
            let _ = fs::remove_file(&queued);
            return Err(e.into());
        }
        Ok(self.id.clone())
    }
}

/// The check's sum before the message: the queue ID's octets, so that a file holding another
/// message's blocks (freed, then given to this one, and never overwritten before a power cut)
/// does not pass for this one.
fn id_crc(id: &QueueId) -> Crc32c {
    let mut crc = Crc32c::default();
    crc.update(id.as_str().as_bytes());
    crc
}

/// Adds to `crc` the octets of the message among `bytes`, which go into a draft's file at
/// `at`: the envelope, its first `head_len` octets, is not summed.
fn sum_message(crc: &mut Crc32c, head_len: usize, at: u64, bytes: &[u8]) {
    let skip = usize::try_from((head_len as u64).saturating_sub(at)).unwrap_or(usize::MAX);
    crc.update(bytes.get(skip..).unwrap_or_default());
}

/// Whether the message of a queue file opened as `file` matches its envelope's check.
fn check_matches(file: &File, id: &QueueId, offset: u64, size: u64, check: u32) -> io::Result<bool> {
    let mut crc = id_crc(id);
    let mut chunk = vec![0u8; DRAFT_BUFFER];
    let (mut at, end) = (offset, offset + size);
    while at < end {
        let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(chunk.len());
        let n = file.read_at(&mut chunk[..want], at)?;
        if n == 0 {
            return Ok(false);
        }
        crc.update(&chunk[..n]);
        at += n as u64;
    }
    Ok(crc.value() == check)
}

/// A second draft being made: removed if its making fails (an anonymous one goes by itself).
struct SecondDraft<'p>(Option<&'p Path>);

impl Drop for SecondDraft<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

impl Draft<'_> {
    /// The commit into `maildrop/` (its data synced already): the complete name, then a
    /// syncfs, since maildrop/ cannot be opened to fsync it (its writers may not read it).
    fn commit_to_maildrop(mut self) -> Result<QueueId, SpoolError> {
        self.file.sync_data()?;
        let dropped = self.spool.root.join(maildrop::DIR).join(self.id.as_str());
        let Some(part) = self.path.clone() else { return Err(SpoolError::Io("a dropped draft has no name".into())) };
        let spool = self.spool;
        self.moved = spool.in_drop_group(|| sys::rename_no_replace(&part, &dropped))?;
        if !self.moved {
            spool.in_drop_group(|| fs::hard_link(&part, &dropped))?;
        }
        sys::sync_filesystem(&self.file)?;
        crate::fault::crash_point("after-drop-commit");
        Ok(self.id.clone())
    }
}

impl Drop for Draft<'_> {
    fn drop(&mut self) {
        // Before a commit the draft is abandoned; after one made by link, the tmp/ name goes.
        if let (false, Some(path)) = (self.moved, &self.path) {
            let _ = self.spool.in_drop_group(|| fs::remove_file(path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_this_user_cannot_write_points_at_init() {
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        let said = open_error(Path::new("/var/spool/postern"), &denied);
        assert!(said.starts_with("spool /var/spool/postern: Permission denied") && said.contains("postern-queue init"));
        let other = open_error(Path::new("/x"), &io::Error::from_raw_os_error(libc::EIO));
        assert!(!other.contains("init"), "{other}");
    }
    use crate::smtp::address::{ForwardPath, ReversePath};
    use crate::smtp::command::BodyType;
    use std::os::unix::fs::PermissionsExt;

    fn temp_spool(name: &str) -> (Spool, PathBuf) {
        let dir = std::env::temp_dir().join(format!("postern-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        (Spool::open(&dir).unwrap(), dir)
    }

    fn envelope() -> Envelope {
        Envelope {
            arrived: 1,
            client: None,
            helo: None,
            protocol: "ESMTP".into(),
            body: BodyType::SevenBit,
            smtputf8: false,
            auth: None,
            submitted: false,
            quarantine: false,
            from: ReversePath::Null,
            rcpts: vec![ForwardPath::Postmaster],
            size: 0,
            check: None,
        }
    }

    #[test]
    fn commit_moves_a_complete_file_into_new() {
        let (spool, dir) = temp_spool("commit");
        let mut draft = spool.draft().unwrap();
        draft.begin(&envelope()).unwrap();
        draft.write(b"Subject: hi\r\n\r\nbody\r\n").unwrap();
        let id = draft.commit(21).unwrap();
        let bytes = fs::read(dir.join("new").join(id.as_str())).unwrap();
        let (env, head) = Envelope::parse(&bytes).unwrap();
        assert_eq!(env.size, 21);
        assert_eq!(&bytes[head..], b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        let mode = fs::metadata(dir.join("new").join(id.as_str())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.join("new")).unwrap().permissions().mode() & 0o777, 0o700);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn fields_decided_at_the_end_go_on_top_whatever_the_size() {
        for named in [false, true] {
            fields_on_top(named);
        }
    }

    fn fields_on_top(named: bool) {
        let (spool, dir) = temp_spool(&format!("on-top-{named}"));
        let spool = if named { spool.with_named_drafts() } else { spool };
        // Held in memory, and spilled into the file (a second draft takes its place).
        for body_len in [100, 3 * DRAFT_BUFFER + 17] {
            let mut draft = spool.draft().unwrap();
            draft.begin(&envelope()).unwrap();
            let mut text = b"Received: by here\r\n\r\n".to_vec();
            text.extend((0..body_len).map(|i| b"abcdefghij\r\n"[i % 12]));
            for piece in text.chunks(1000) {
                draft.write(piece).unwrap();
            }
            let late = Envelope { quarantine: true, ..envelope() };
            let top = b"Authentication-Results: here; dmarc=fail\r\nX-Spam: Yes\r\n";
            draft.put_on_top(&late, top).unwrap();
            let size = (top.len() + text.len()) as u64;
            let id = draft.commit(size).unwrap();
            let bytes = fs::read(dir.join("new").join(id.as_str())).unwrap();
            let (env, head) = Envelope::parse(&bytes).unwrap();
            // The check covers the ID and what follows the envelope, as the reader sums it.
            let sum = crc::crc32c(&[id.as_str().as_bytes(), &bytes[head..]].concat());
            assert_eq!(env, Envelope { size, check: Some(sum), ..late }, "{body_len}");
            assert!(bytes[head..].starts_with(top), "{body_len}");
            assert_eq!(&bytes[head + top.len()..], &text[..], "{body_len}");
            let left: Vec<_> = fs::read_dir(dir.join("tmp")).unwrap().map(|e| e.unwrap().path()).collect();
            assert!(left.is_empty(), "{left:?}");
        }
        // A second draft dropped before its commit leaves nothing either.
        let mut draft = spool.draft().unwrap();
        draft.begin(&envelope()).unwrap();
        draft.write(&vec![b'x'; 2 * DRAFT_BUFFER]).unwrap();
        draft.put_on_top(&envelope(), b"X-Spam: Yes\r\n").unwrap();
        // An anonymous draft and its second have no name at all.
        assert_eq!(dir.join("tmp").join(format!("{}.1", draft.id())).exists(), named);
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), usize::from(named));
        drop(draft);
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_message_rewritten_from_pieces_is_read_back_summed_and_held_on_request() {
        for named in [false, true] {
            let (spool, dir) = temp_spool(&format!("pieces-{named}"));
            let spool = if named { spool.with_named_drafts() } else { spool };
            for body_len in [100, 3 * DRAFT_BUFFER + 17] {
                let mut draft = spool.draft().unwrap();
                draft.begin(&envelope()).unwrap();
                let head = b"Received: by here\r\nSubject: hi\r\n\r\n";
                let mut text = head.to_vec();
                text.extend((0..body_len).map(|i| b"abcdefghij\r\n"[i % 12]));
                for piece in text.chunks(1000) {
                    draft.write(piece).unwrap();
                }
                // What was written reads back, from memory or from the file.
                assert_eq!(draft.message_len(), text.len() as u64);
                let mut back = vec![0u8; text.len() + 10];
                let mut got = 0;
                loop {
                    let n = draft.read_message_at(got as u64, &mut back[got..]).unwrap();
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                assert_eq!(&back[..got], &text[..], "{body_len}");
                // A new header section over the old body, and a new envelope; held.
                let new_head = b"Subject: [SPAM] hi\r\nX-Spam: Yes\r\n\r\n";
                let held = Envelope { quarantine: true, ..envelope() };
                let len = draft.message_len();
                let pieces = [Piece::New(new_head), Piece::Old(head.len() as u64, len)];
                assert!(draft.replace_message(&held, &[Piece::Old(0, len + 1)]).is_err());
                draft.replace_message(&held, &pieces).unwrap();
                let size = draft.message_len();
                assert_eq!(size, (new_head.len() + body_len) as u64);
                let id = draft.commit_held(size).unwrap();
                assert!(!dir.join("new").join(id.as_str()).exists());
                let bytes = fs::read(dir.join("hold").join(id.as_str())).unwrap();
                let (env, at) = Envelope::parse(&bytes).unwrap();
                let sum = crc::crc32c(&[id.as_str().as_bytes(), &bytes[at..]].concat());
                assert_eq!(env, Envelope { size, check: Some(sum), ..held }, "{body_len}");
                assert_eq!(&bytes[at..at + new_head.len()], new_head);
                assert_eq!(&bytes[at + new_head.len()..], &text[head.len()..]);
            }
            assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
            fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn an_abandoned_draft_leaves_nothing() {
        let (spool, dir) = temp_spool("abandon");
        let mut draft = spool.draft().unwrap();
        draft.write(b"partial").unwrap();
        drop(draft);
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.join("new")).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_message_that_does_not_match_its_check_goes_to_corrupt() {
        let (spool, dir) = temp_spool("check");
        let mut draft = spool.draft().unwrap();
        draft.begin(&envelope()).unwrap();
        let text = b"Subject: hi\r\n\r\nbody\r\n";
        draft.write(text).unwrap();
        let id = draft.commit(text.len() as u64).unwrap();
        let path = dir.join("new").join(id.as_str());
        assert!(spool.open_queued(Place::New, &id).is_ok());
        // What a power cut can leave: the right length, a block never written (zeros).
        let good = fs::read(&path).unwrap();
        let mut torn = good.clone();
        let n = torn.len();
        torn[n - 6..n - 2].fill(0);
        fs::write(&path, &torn).unwrap();
        match spool.open_queued(Place::New, &id) {
            Err(OpenError::Corrupt(why)) => assert!(why.contains("check does not match"), "{why}"),
            _ => panic!("a torn file was taken"),
        }
        assert_eq!(fs::read(dir.join("corrupt").join(id.as_str())).unwrap(), torn);
        // A file written before the check existed has none, and is read as it was then.
        let text = String::from_utf8(good).unwrap();
        let at = text.find("check: ").unwrap();
        let old = format!("{}{}", &text[..at], &text[at + "check: 01234567\n".len()..]);
        let old_id = QueueId::generate();
        fs::write(dir.join("new").join(old_id.as_str()), old).unwrap();
        let queued = spool.open_queued(Place::New, &old_id).expect("a file without a check");
        assert_eq!(queued.envelope.check, None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn commit_never_overwrites() {
        let (spool, dir) = temp_spool("collide");
        let draft = spool.draft().unwrap();
        let target = dir.join("new").join(draft.id().as_str());
        fs::write(&target, b"already here").unwrap();
        assert_eq!(draft.commit(0), Err(SpoolError::Collision));
        assert_eq!(fs::read(&target).unwrap(), b"already here");
        fs::remove_dir_all(dir).unwrap();
    }

    /// Commits `text` as a message; its ID.
    fn queue(spool: &Spool, text: &[u8]) -> QueueId {
        let mut draft = spool.draft().unwrap();
        draft.begin(&envelope()).unwrap();
        draft.write(text).unwrap();
        draft.commit(text.len() as u64).unwrap()
    }

    fn spares(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir.join("spare")).unwrap().map(|e| e.unwrap().path()).collect()
    }

    #[test]
    fn a_delivered_file_is_kept_as_a_spare_and_a_new_message_is_written_over_it_and_cut() {
        let (spool, dir) = temp_spool("spare");
        let long = vec![b'x'; 20_000];
        let first = queue(&spool, &long);
        let queued = spool.open_queued(Place::New, &first).unwrap();
        queued.mark_copy_begun().unwrap();
        spool.remove(&queued, false).unwrap();
        // Still locked by the run that delivered it: no writer takes it meanwhile.
        assert_eq!(spares(&dir), vec![dir.join("spare").join(first.as_str())]);
        assert!(spool.spare_file().is_none(), "a spare its run still holds is not taken");
        let inode = fs::metadata(dir.join("spare").join(first.as_str())).unwrap().ino();
        drop(queued);
        *spool.spares.lock().unwrap() = Spares::default();

        let second = queue(&spool, b"short");
        assert!(spares(&dir).is_empty(), "the spare was taken");
        let path = dir.join("new").join(second.as_str());
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.ino(), inode, "written over the spare, not a new file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "the copy's mark is gone");
        let queued = spool.open_queued(Place::New, &second).unwrap();
        let mut text = Vec::new();
        io::Read::read_to_end(&mut queued.message(), &mut text).unwrap();
        assert_eq!(text, b"short", "nothing of the longer message is left after it");
        assert_eq!(meta.len(), queued.offset + 5);
        drop(queued);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_spare_with_a_second_name_or_too_large_is_never_written_over() {
        let (spool, dir) = temp_spool("spare-two");
        let spare = dir.join("spare");
        // A power cut can leave a spare's name beside the queued message it became.
        let queued = queue(&spool, b"queued");
        fs::hard_link(dir.join("new").join(queued.as_str()), spare.join("X")).unwrap();
        *spool.spares.lock().unwrap() = Spares::default();
        let fresh = queue(&spool, b"fresh");
        assert_ne!(fs::metadata(dir.join("new").join(fresh.as_str())).unwrap().ino(), {
            fs::metadata(dir.join("new").join(queued.as_str())).unwrap().ino()
        });
        assert!(spares(&dir).is_empty(), "the second name is removed");
        let opened = spool.open_queued(Place::New, &queued).unwrap();
        let mut text = Vec::new();
        io::Read::read_to_end(&mut opened.message(), &mut text).unwrap();
        assert_eq!(text, b"queued");
        drop(opened);

        // Repair keeps at most SPARE_MAX, none larger than SPARE_MAX_LEN, and leaves alone a
        // spare a draft is being written over, however large it has grown.
        fs::write(spare.join("big"), vec![0u8; SPARE_MAX_LEN as usize + 1]).unwrap();
        fs::write(spare.join("held"), vec![0u8; SPARE_MAX_LEN as usize + 1]).unwrap();
        let held = File::open(spare.join("held")).unwrap();
        assert!(sys::try_lock_exclusive(&held).unwrap());
        for n in 0..SPARE_MAX + 3 {
            fs::write(spare.join(format!("s{n}")), b"old").unwrap();
        }
        spool.repair();
        let left = spares(&dir);
        assert_eq!(left.len(), SPARE_MAX + 1);
        assert!(!left.contains(&spare.join("big")));
        assert!(left.contains(&spare.join("held")));
        drop(held);
        spool.repair();
        assert_eq!(spares(&dir).len(), SPARE_MAX);
        // And a full spare/ takes no more: a delivered file is removed.
        let id = queue(&spool, b"one more");
        let opened = spool.open_queued(Place::New, &id).unwrap();
        *spool.spares.lock().unwrap() = Spares::default();
        spool.remove(&opened, false).unwrap();
        assert_eq!(spares(&dir).len(), SPARE_MAX);
        assert!(!dir.join("new").join(id.as_str()).exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_commits_share_flushes_and_all_land() {
        let (spool, dir) = temp_spool("group");
        std::thread::scope(|scope| {
            for t in 0..16 {
                let spool = &spool;
                scope.spawn(move || {
                    for n in 0..25 {
                        let mut draft = spool.draft().unwrap();
                        draft.begin(&envelope()).unwrap();
                        draft.write(format!("{t}/{n}").as_bytes()).unwrap();
                        let size = format!("{t}/{n}").len() as u64;
                        draft.commit(size).unwrap();
                    }
                });
            }
        });
        let files: Vec<_> = fs::read_dir(dir.join("new")).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 400);
        for f in files {
            let bytes = fs::read(&f).unwrap();
            let (env, head) = Envelope::parse(&bytes).unwrap();
            assert_eq!(env.size as usize, bytes.len() - head);
        }
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn clean_tmp_spares_live_writers() {
        let (spool, dir) = temp_spool("clean");
        let spool = spool.with_named_drafts();
        let live = spool.draft().unwrap();
        fs::write(dir.join("tmp").join("dead"), b"x").unwrap();
        assert_eq!(spool.clean_tmp(), 1);
        assert!(dir.join("tmp").join(live.id().as_str()).exists());
        drop(live);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn repair_keeps_one_name_per_message() {
        let (spool, dir) = temp_spool("names");
        let mut draft = spool.draft().unwrap();
        draft.begin(&envelope()).unwrap();
        let id = draft.commit(0).unwrap();
        // A move to cur/ by link and unlink, killed between the two.
        fs::hard_link(dir.join("new").join(id.as_str()), dir.join("cur").join(id.as_str())).unwrap();
        // Two different files under one ID: neither is deleted.
        let odd = QueueId::generate();
        fs::write(dir.join("new").join(odd.as_str()), b"one").unwrap();
        fs::write(dir.join("hold").join(odd.as_str()), b"two").unwrap();
        spool.repair();
        assert!(!dir.join("new").join(id.as_str()).exists());
        assert!(dir.join("cur").join(id.as_str()).exists());
        assert_eq!(spool.queued(), vec![(Place::Cur, id)]);
        assert_eq!(fs::read(dir.join("hold").join(odd.as_str())).unwrap(), b"two");
        assert_eq!(fs::read(dir.join("corrupt").join(odd.as_str())).unwrap(), b"one");
        fs::remove_dir_all(dir).unwrap();
    }
}
