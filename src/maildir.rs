//! Local delivery into a maildir: `tmp/` -> fsync -> `new/` -> fsync, with Return-Path and Delivered-To prepended.
//!
//! Names follow the maildir convention `time.MmicrosPpidQcount.host` (`/` and `:` in the host
//! written `\057` and `\072`). Lines end in LF, as qmail and Postfix write maildirs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::smtp::address::ReversePath;

static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// Why a maildir delivery did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaildirError {
    /// Disk or quota full: temporary (4.2.2 / 4.3.1).
    Full(String),
    /// The maildir is a symlink or not a directory: temporary, for the administrator to fix.
    Unsafe(String),
    /// The message already carries `Delivered-To:` for this address (5.4.6).
    Loop,
    Io(String),
    /// Refused for good: a command that exited with a permanent status (5.3.0).
    Refused(String),
    /// Permission denied. Written as a system user, that user cannot write its own mailbox
    /// (a home or maildir it does not own): permanent (5.2.1). Written as the service user,
    /// it is the administrator's to fix, and waits (`into_temporary`).
    Denied(String),
}

impl MaildirError {
    fn from_io(e: &io::Error, what: &Path) -> MaildirError {
        let text = format!("{}: {e}", what.display());
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => MaildirError::Full(text),
            Some(libc::EACCES | libc::EPERM) => MaildirError::Denied(text),
            _ => MaildirError::Io(text),
        }
    }

    /// The same failure as a temporary one: a maildir the service user writes.
    pub fn into_temporary(self) -> MaildirError {
        match self {
            MaildirError::Denied(text) => MaildirError::Io(text),
            other => other,
        }
    }
}

/// The headers one local delivery adds, and how careful to be about the path.
pub struct Stamp<'a> {
    pub return_path: &'a ReversePath,
    pub delivered_to: &'a str,
    pub hostname: &'a str,
    /// `follow_maildir_symlinks`: a symlinked maildir is used instead of refused.
    pub follow_symlinks: bool,
    /// A Maildir++ folder of the maildir to deliver into instead of its inbox (`junk_folder`
    /// for a quarantined message); made when missing.
    pub folder: Option<&'a str>,
    /// Where the fsync of `new/` is shared with the run's other deliveries into it; `None`:
    /// this copy's own.
    pub syncs: Option<&'a crate::flush::DirSyncs>,
}

/// Delivers the message read from `open()` (CRLF lines, as spooled) into `maildir`, under
/// `name` (from `new_name`, which the caller may have recorded first). `open` is called once
/// for the loop check and once for the copy.
pub fn deliver_to_maildir<R: Read>(
    maildir: &Path,
    stamp: &Stamp<'_>,
    name: &str,
    mut open: impl FnMut() -> io::Result<R>,
) -> Result<PathBuf, MaildirError> {
    if !is_plain_name(name) {
        return Err(MaildirError::Unsafe(format!("`{}`: not a maildir file name", name.escape_default())));
    }
    let io_err = |e: io::Error| MaildirError::from_io(&e, maildir);
    if has_delivered_to(open().map_err(io_err)?, stamp.delivered_to).map_err(io_err)? {
        return Err(MaildirError::Loop);
    }
    let (mut tmp, mut new) = prepare(maildir, stamp.follow_symlinks)?;
    if let Some(folder) = stamp.folder {
        (tmp, new) = prepare_folder(maildir, folder, stamp.follow_symlinks)?;
    }
    let tmp_path = tmp.join(name);
    let create =
        || OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&tmp_path);
    // A name is this delivery's alone (`new_name`, `message_name`): one already in tmp/ is
    // what a killed run of this same delivery left there, and is written again.
    let created = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => fs::remove_file(&tmp_path).and_then(|()| create()),
        other => other,
    };
    let mut file = created.map_err(|e| MaildirError::from_io(&e, &tmp_path))?;
    let written = write_message(&mut file, stamp, open().map_err(io_err)?).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp_path);
        return Err(MaildirError::from_io(&e, &tmp_path));
    }
    let new_path = new.join(name);
    let moved = fs::rename(&tmp_path, &new_path).and_then(|()| match stamp.syncs {
        Some(syncs) => syncs.sync(&new),
        None => File::open(&new)?.sync_all(),
    });
    moved.map_err(|e| {
        let _ = fs::remove_file(&tmp_path);
        MaildirError::from_io(&e, &new_path)
    })?;
    // About one delivery in SWEEP_EVERY also clears what killed writers left in tmp/, so
    // that the cost stays off nearly every delivery.
    let now = SystemTime::now();
    if now.duration_since(UNIX_EPOCH).is_ok_and(|d| d.subsec_nanos() % SWEEP_EVERY == 0) {
        sweep_tmp(&tmp, now);
    }
    Ok(new_path)
}

const SWEEP_EVERY: u32 = 32;

/// How old a file in a maildir's `tmp/` is before it counts as a killed writer's (the maildir
/// convention: 36 hours).
pub const TMP_LEFTOVER_AGE: Duration = Duration::from_secs(36 * 3600);

/// Removes the files in `tmp/` older than `TMP_LEFTOVER_AGE` at `now`; returns how many.
pub fn sweep_tmp(tmp: &Path, now: SystemTime) -> usize {
    let Ok(entries) = fs::read_dir(tmp) else { return 0 };
    let old = |m: &fs::Metadata| m.is_file() && m.modified().is_ok_and(|t| t + TMP_LEFTOVER_AGE < now);
    entries
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| old(&m)))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

/// Makes the maildir and its `tmp/`, `new/`, `cur/` (mode 0700) when missing, and refuses a
/// maildir, `tmp/` or `new/` that is a symlink, unless following them was configured. The
/// check opens each directory with O_NOFOLLOW, so it holds however the path is spelt
/// (`bob`, `bob/`, `bob/.`): only the last component may not be a link.
fn prepare(maildir: &Path, follow_symlinks: bool) -> Result<(PathBuf, PathBuf), MaildirError> {
    // Components drop a trailing `/` and inner `.`, which would make the kernel follow a link.
    let maildir: PathBuf = maildir.components().collect();
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    if fs::symlink_metadata(&maildir).is_err() {
        builder.create(&maildir).map_err(|e| MaildirError::from_io(&e, &maildir))?;
    }
    open_directory(&maildir, follow_symlinks)?;
    for sub in ["tmp", "new", "cur"] {
        let dir = maildir.join(sub);
        if fs::symlink_metadata(&dir).is_err() {
            builder.create(&dir).map_err(|e| MaildirError::from_io(&e, &dir))?;
        }
    }
    for sub in ["tmp", "new"] {
        open_directory(&maildir.join(sub), follow_symlinks)?;
    }
    Ok((maildir.join("tmp"), maildir.join("new")))
}

/// A Maildir++ folder's name (`Junk`, `Junk.Old`): the maildir's subdirectory `.NAME`. Words
/// of letters, digits, `-` and `_`, with dots only between them, so it never names a path
/// outside the maildir.
pub fn is_folder_name(name: &str) -> bool {
    let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    name.len() <= 100 && name.split('.').all(word)
}

/// The folder `.NAME` of a maildir (Maildir++), made like a maildir when missing, with the
/// empty `maildirfolder` file that marks it as a folder for IMAP servers.
fn prepare_folder(maildir: &Path, folder: &str, follow_symlinks: bool) -> Result<(PathBuf, PathBuf), MaildirError> {
    if !is_folder_name(folder) {
        return Err(MaildirError::Unsafe(format!("`{}`: not a folder name", folder.escape_default())));
    }
    let maildir: PathBuf = maildir.components().collect();
    let path = maildir.join(format!(".{folder}"));
    let made = prepare(&path, follow_symlinks)?;
    let marker = path.join("maildirfolder");
    if fs::symlink_metadata(&marker).is_err() {
        OpenOptions::new()
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&marker)
            .map_err(|e| MaildirError::from_io(&e, &marker))?;
    }
    Ok(made)
}

/// Opens `dir` as a directory, not through a symlink unless `follow_symlinks`.
fn open_directory(dir: &Path, follow_symlinks: bool) -> Result<File, MaildirError> {
    let flags = if follow_symlinks { libc::O_DIRECTORY } else { libc::O_DIRECTORY | libc::O_NOFOLLOW };
    OpenOptions::new().read(true).custom_flags(flags).open(dir).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => MaildirError::Unsafe(format!(
            "{} is not a plain directory (symlinks are not followed unless follow_maildir_symlinks = on)",
            dir.display()
        )),
        _ => MaildirError::from_io(&e, dir),
    })
}

/// The copy named `name` when it is in the maildir: in `new/`, or in `cur/` where a reader
/// moved it and added its info (`NAME:2,S`, or Dovecot's `NAME,S=1234,W=1250:2,S`). Only
/// after a run was killed between a copy and its record, so reading `cur/` is rare. With a
/// `folder`, in that folder of the maildir.
pub fn find_copy(maildir: &Path, folder: Option<&str>, name: &str) -> Option<PathBuf> {
    if !is_plain_name(name) || folder.is_some_and(|f| !is_folder_name(f)) {
        return None;
    }
    let mut maildir: PathBuf = maildir.components().collect();
    if let Some(folder) = folder {
        maildir = maildir.join(format!(".{folder}"));
    }
    let new = maildir.join("new").join(name);
    if fs::symlink_metadata(&new).is_ok() {
        return Some(new);
    }
    let cur = maildir.join("cur");
    fs::read_dir(&cur).ok()?.flatten().map(|e| e.file_name()).find_map(|file| {
        let rest = file.to_str()?.strip_prefix(name)?;
        (rest.is_empty() || rest.starts_with([':', ',', ';'])).then(|| cur.join(&file))
    })
}

/// A name a maildir file can have: no `/`, not hidden, printable, not too long.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// `1795431945.M123456P4242Q7.mail.example.test`, unique per host, process and delivery.
pub fn new_name(hostname: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let count = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    format!("{}.M{}P{}Q{count}.{}", now.as_secs(), now.subsec_micros(), std::process::id(), host_part(hostname))
}

/// The name a message's copy for one of its recipients always has, so that a run can find
/// the copy a killed run made without having noted its name: `ARRIVED.QID_Rn.HOST`
/// (`1795431945.Q66209183D50F2005C1D1B85_R0.mail.example.test`), unique per host, message and
/// recipient (`index`: the recipient's place among the message's own).
pub fn message_name(hostname: &str, arrived: u64, id: &str, index: usize) -> String {
    format!("{arrived}.Q{id}_R{index}.{}", host_part(hostname))
}

/// The host name as a maildir name's last part: `/` and `:` written as `\057` and `\072`.
fn host_part(hostname: &str) -> String {
    hostname.replace('/', "\\057").replace(':', "\\072")
}

/// True when the header section already has `Delivered-To: address` (a forwarding loop).
fn has_delivered_to(source: impl Read, address: &str) -> io::Result<bool> {
    let mut reader = BufReader::new(source.take(1 << 20));
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || line == b"\r\n" || line == b"\n" {
            return Ok(false);
        }
        let text = String::from_utf8_lossy(&line);
        if let Some((name, value)) = text.split_once(':')
            && name.eq_ignore_ascii_case("Delivered-To")
            && value.trim().eq_ignore_ascii_case(address)
        {
            return Ok(true);
        }
    }
}

/// The message as a local copy has it: `Return-Path:` and `Delivered-To:` first, LF line
/// ends. For a command's input and an mbox.
pub fn local_copy(stamp: &Stamp<'_>, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 256);
    let _ = write_stamped(&mut out, stamp, message);
    out
}

/// Whether the message already has `Delivered-To: address` (a forwarding loop).
pub fn delivered_to(message: &[u8], address: &str) -> bool {
    has_delivered_to(message, address).unwrap_or(false)
}

fn write_message(file: &mut File, stamp: &Stamp<'_>, source: impl Read) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(64 * 1024, file);
    write_stamped(&mut out, stamp, source)?;
    out.flush()
}

fn write_stamped(out: &mut impl Write, stamp: &Stamp<'_>, mut source: impl Read) -> io::Result<()> {
    write!(out, "Return-Path: {}\nDelivered-To: {}\n", stamp.return_path, stamp.delivered_to)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut held_cr = false;
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            break;
        }
        held_cr = crlf_to_lf(&buf[..n], held_cr, out)?;
    }
    if held_cr {
        out.write_all(b"\r")?;
    }
    Ok(())
}

/// Writes `chunk` with each CRLF as LF; a CR at the end is held back until the next chunk.
fn crlf_to_lf(chunk: &[u8], held_cr: bool, out: &mut impl Write) -> io::Result<bool> {
    let mut rest = chunk;
    if held_cr && rest.first() != Some(&b'\n') {
        out.write_all(b"\r")?;
    }
    while let Some(cr) = rest.iter().position(|&b| b == b'\r') {
        out.write_all(&rest[..cr])?;
        match rest.get(cr + 1) {
            Some(b'\n') => {}
            Some(_) => out.write_all(b"\r")?,
            None => return Ok(true),
        }
        rest = &rest[cr + 1..];
    }
    out.write_all(rest)?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("postern-maildir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn what_killed_writers_left_in_tmp_is_swept_after_36_hours() {
        let tmp = temp("sweep").join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let now = SystemTime::now();
        for (name, age) in [("old", 37 * 3600), ("young", 35 * 3600), ("new", 0)] {
            let file = File::create(tmp.join(name)).unwrap();
            file.set_modified(now - Duration::from_secs(age)).unwrap();
        }
        assert_eq!(sweep_tmp(&tmp, now), 1);
        let mut left: Vec<String> =
            fs::read_dir(&tmp).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["new", "young"]);
        fs::remove_dir_all(tmp.parent().unwrap()).unwrap();
    }

    fn stamp<'a>(from: &'a ReversePath) -> Stamp<'a> {
        Stamp {
            return_path: from,
            delivered_to: "alice@example.test",
            hostname: "a:b/c",
            follow_symlinks: false,
            folder: None,
            syncs: None,
        }
    }

    #[test]
    fn delivers_with_headers_and_lf_line_ends() {
        let dir = temp("ok");
        let from = ReversePath::parse(b"sender@remote.test").unwrap();
        let message = b"Received: x\r\nSubject: hi\r\n\r\nbody\r\n".to_vec();
        let name = new_name("a:b/c");
        let path = deliver_to_maildir(&dir.join("alice"), &stamp(&from), &name, || Ok(&message[..])).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "Return-Path: <sender@remote.test>\nDelivered-To: alice@example.test\nReceived: x\nSubject: hi\n\nbody\n"
        );
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(".a\\072b\\057c") && !name.starts_with('.'), "{name}");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.join("alice/new")).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::read_dir(dir.join("alice/tmp")).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn two_deliveries_make_two_files() {
        let dir = temp("two");
        let from = ReversePath::Null;
        let a = deliver_to_maildir(&dir, &stamp(&from), &new_name("h.test"), || Ok(&b"x\r\n"[..])).unwrap();
        let b = deliver_to_maildir(&dir, &stamp(&from), &new_name("h.test"), || Ok(&b"x\r\n"[..])).unwrap();
        assert_ne!(a, b);
        assert!(fs::read_to_string(a).unwrap().starts_with("Return-Path: <>\n"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_folder_is_made_as_maildir_plus_plus_has_it_and_only_inside_the_maildir() {
        let dir = temp("folder");
        let from = ReversePath::Null;
        let name = new_name("h.test");
        let junk = Stamp { folder: Some("Junk"), ..stamp(&from) };
        let made = deliver_to_maildir(&dir, &junk, &name, || Ok(&b"x\r\n"[..])).unwrap();
        assert_eq!(made, dir.join(".Junk").join("new").join(&name));
        for sub in ["tmp", "new", "cur", ".Junk/tmp", ".Junk/cur"] {
            assert!(dir.join(sub).is_dir(), "{sub}");
        }
        assert_eq!(fs::read(dir.join(".Junk").join("maildirfolder")).unwrap(), b"");
        assert_eq!(fs::read_dir(dir.join("new")).unwrap().count(), 0, "nothing in the inbox");
        assert_eq!(find_copy(&dir, Some("Junk"), &name), Some(made));
        assert_eq!(find_copy(&dir, None, &name), None);
        for bad in ["../../etc", "a/b", ".", "", "Junk..x"] {
            let odd = Stamp { folder: Some(bad), ..stamp(&from) };
            let e = deliver_to_maildir(&dir, &odd, &new_name("h.test"), || Ok(&b"x\r\n"[..]));
            assert!(matches!(e, Err(MaildirError::Unsafe(_))), "{bad}: {e:?}");
            assert_eq!(find_copy(&dir, Some(bad), &name), None);
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_copy_is_found_by_its_name_in_new_or_where_a_reader_moved_it() {
        let dir = temp("find");
        let from = ReversePath::Null;
        let name = new_name("h.test");
        assert_eq!(find_copy(&dir, None, &name), None, "no maildir yet");
        let made = deliver_to_maildir(&dir, &stamp(&from), &name, || Ok(&b"x\r\n"[..])).unwrap();
        assert_eq!(find_copy(&dir, None, &name), Some(made.clone()));
        assert_eq!(find_copy(&dir, None, &new_name("h.test")), None, "another name");
        let mut at = made;
        for moved in [format!("{name}:2,S"), format!("{name},S=1234,W=1250:2,RS"), name.clone()] {
            let to = dir.join("cur").join(&moved);
            fs::rename(&at, &to).unwrap();
            assert_eq!(find_copy(&dir, None, &name), Some(to.clone()), "{moved}");
            at = to;
        }
        // A longer name that begins with this one is another message.
        fs::rename(&at, dir.join("cur").join(format!("{name}x"))).unwrap();
        assert_eq!(find_copy(&dir, None, &name), None);
        for bad in ["", "../x", ".hidden", "a/b", "a b"] {
            assert_eq!(find_copy(&dir, None, bad), None, "{bad}");
            assert!(matches!(
                deliver_to_maildir(&dir, &stamp(&from), bad, || Ok(&b"x\r\n"[..])),
                Err(MaildirError::Unsafe(_))
            ));
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_delivered_to_loop_is_refused() {
        let dir = temp("loop");
        let from = ReversePath::Null;
        let looping = b"Delivered-To: Alice@Example.Test\r\n\r\nx\r\n";
        assert_eq!(
            deliver_to_maildir(&dir, &stamp(&from), &new_name("h.test"), || Ok(&looping[..])),
            Err(MaildirError::Loop)
        );
        let in_body = b"Subject: x\r\n\r\nDelivered-To: alice@example.test\r\n";
        assert!(deliver_to_maildir(&dir, &stamp(&from), &new_name("h.test"), || Ok(&in_body[..])).is_ok());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn symlinked_maildirs_are_not_followed() {
        let dir = temp("symlink");
        fs::create_dir_all(dir.join("elsewhere")).unwrap();
        fs::create_dir_all(dir.join("alice")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("alice/new")).unwrap();
        let from = ReversePath::Null;
        let result = deliver_to_maildir(&dir.join("alice"), &stamp(&from), &new_name("h.test"), || Ok(&b"x\r\n"[..]));
        assert!(matches!(result, Err(MaildirError::Unsafe(_))), "{result:?}");
        assert_eq!(fs::read_dir(dir.join("elsewhere")).unwrap().count(), 0);
        let allowed = Stamp { follow_symlinks: true, ..stamp(&from) };
        assert!(deliver_to_maildir(&dir.join("alice"), &allowed, &new_name("h.test"), || Ok(&b"x\r\n"[..])).is_ok());
        assert_eq!(fs::read_dir(dir.join("elsewhere")).unwrap().count(), 1, "configured: followed");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_symlinked_maildir_is_refused_however_it_is_spelt() {
        let dir = temp("spelling");
        fs::create_dir_all(dir.join("target")).unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("bob")).unwrap();
        let from = ReversePath::Null;
        let base = dir.join("bob").display().to_string();
        for spelling in [base.clone(), format!("{base}/"), format!("{base}//"), format!("{base}/.")] {
            let result =
                deliver_to_maildir(Path::new(&spelling), &stamp(&from), &new_name("h.test"), || Ok(&b"x\r\n"[..]));
            assert!(matches!(result, Err(MaildirError::Unsafe(_))), "{spelling}: {result:?}");
        }
        assert_eq!(fs::read_dir(dir.join("target")).unwrap().count(), 0, "nothing made through the link");
        let allowed = Stamp { follow_symlinks: true, ..stamp(&from) };
        assert!(
            deliver_to_maildir(Path::new(&format!("{base}/")), &allowed, &new_name("h.test"), || Ok(&b"x\r\n"[..]))
                .is_ok()
        );
        assert_eq!(fs::read_dir(dir.join("target/new")).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn crlf_conversion_survives_any_split() {
        let input = b"a\r\nb\r\r\nc\r\n";
        for split in 0..input.len() {
            let mut out = Vec::new();
            let held = crlf_to_lf(&input[..split], false, &mut out).unwrap();
            let held = crlf_to_lf(&input[split..], held, &mut out).unwrap();
            assert!(!held);
            assert_eq!(out, b"a\nb\r\nc\n", "split at {split}");
        }
    }
}
