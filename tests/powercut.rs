//! A power cut at the moment the 250 is sent: what the disk had been given by then must hold
//! the message, whole, under its name in new/ (doc/queue.md, "S1 -> S2": one fsync of the
//! file just named in new/, and of new/ too where the filesystem needs it), whether the draft
//! was an anonymous file given its name or a named one renamed.
//!
//! The spool is a filesystem on a loop device. The loop device writes into its image file's
//! page cache, so a copy of the image taken right after the reply holds every write the
//! filesystem had sent to its disk, and none that it still kept back: what a power cut would
//! have left. The copy is mounted alone (journals replayed, as at boot) and the queue's own
//! reader opens the message there. A file written just before, and never synced, must be
//! missing from the copy, which shows that the copy tells the two apart.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Client, Server, TempDir, base_config, code};

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An image on a loop device, mounted; unmounted and detached when dropped.
struct Mounted {
    device: String,
    at: PathBuf,
}

impl Mounted {
    fn new(image: &Path, at: &Path, kind: &str) -> Mounted {
        let device = run("losetup", &["--find", "--show", image.to_str().unwrap()]);
        std::fs::create_dir_all(at).unwrap();
        let mounted = Mounted { device, at: at.to_path_buf() };
        run("mount", &["-t", kind, &mounted.device, at.to_str().unwrap()]);
        mounted
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// Makes a `kind` filesystem with `mkfs`, queues one message on it, cuts the power at the
/// reply, and reads the message back from what the disk held.
fn survives_a_power_cut_at_the_reply(kind: &str, mkfs: &[&str]) {
    power_cut_at_the_reply(kind, mkfs, &[]);
}

/// The same, the server started under `wrapper` (`env POSTERN_NAMED_DRAFTS=1`: drafts named
/// in tmp/ and renamed at their commit, as where there are no anonymous files).
fn power_cut_at_the_reply(kind: &str, mkfs: &[&str], wrapper: &[&str]) {
    let disk = TempDir::new("powercut-disk");
    let image = disk.path().join("disk.img");
    std::fs::File::create(&image).unwrap().set_len(320 << 20).unwrap();
    let (program, args) = mkfs.split_first().unwrap();
    run(program, &[args, &[image.to_str().unwrap()]].concat());
    let live = Mounted::new(&image, &disk.path().join("live"), kind);
    let spool = live.at.join("spool");

    let dir = TempDir::new("powercut");
    let config = base_config(dir.path())
        .replace(&format!("spool = {}/spool", dir.path().display()), &format!("spool = {}", spool.display()));
    let server = Server::start_wrapped(dir, &config, wrapper);
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.test");
    std::fs::write(live.at.join("control"), b"written, never synced").unwrap();
    let text = format!("Subject: power cut on {kind}\r\n\r\nthe body that must survive");
    let reply = c.mail("a@remote.test", &["alice@example.test"], text.as_bytes());
    assert_eq!(code(&reply), "250 2.0.0", "{reply}");
    // The power goes now.
    let copy = disk.path().join("copy.img");
    run("cp", &["--sparse=always", image.to_str().unwrap(), copy.to_str().unwrap()]);
    let id = reply.rsplit(' ').next().unwrap().to_string();
    drop(c);
    drop(server);
    drop(live);

    let after = Mounted::new(&copy, &disk.path().join("after"), kind);
    let control = std::fs::read(after.at.join("control")).unwrap_or_default();
    assert!(control.is_empty(), "the copy holds a write never synced: it cannot show what a power cut leaves");
    let spool = postern::spool::Spool::open(&after.at.join("spool")).unwrap();
    let id = postern::spool::QueueId::parse(&id).unwrap();
    let queued = match spool.open_queued(postern::spool::Place::New, &id) {
        Ok(q) => q,
        Err(e) => panic!("{kind}: the message acknowledged with 250 is not whole on the disk: {e:?}"),
    };
    assert!(queued.envelope.check.is_some(), "written with its check");
    let mut message = String::new();
    std::io::Read::read_to_string(&mut queued.message(), &mut message).unwrap();
    assert!(message.ends_with(&format!("{text}\r\n")), "{message}");
}

fn skip(kind: &str, mkfs: &str) -> bool {
    if support::skip_unless_root("make a filesystem on a loop device") {
        return true;
    }
    let found = Command::new("sh").arg("-c").arg(format!("command -v {mkfs}")).output().unwrap().status.success();
    let supported = std::fs::read_to_string("/proc/filesystems")
        .unwrap()
        .lines()
        .any(|l| l.trim_start_matches("nodev").trim() == kind);
    support::skip_unless(found && supported, &format!("{kind}: needs {mkfs} and the kernel's {kind}"))
}

#[test]
fn ext4_without_a_journal_one_fsync() {
    if !skip("ext4", "mkfs.ext4") {
        survives_a_power_cut_at_the_reply("ext4", &["mkfs.ext4", "-q", "-F", "-O", "^has_journal"]);
    }
}

#[test]
fn ext4_with_its_journal_one_fsync() {
    if !skip("ext4", "mkfs.ext4") {
        survives_a_power_cut_at_the_reply("ext4", &["mkfs.ext4", "-q", "-F"]);
    }
}

#[test]
fn xfs_one_fsync() {
    if !skip("xfs", "mkfs.xfs") {
        survives_a_power_cut_at_the_reply("xfs", &["mkfs.xfs", "-q", "-f"]);
    }
}

/// A filesystem not known to make a name durable with its file's fsync: new/ is fsynced too.
#[test]
fn ext2_with_the_directory_fsync_too() {
    if !skip("ext2", "mkfs.ext2") {
        survives_a_power_cut_at_the_reply("ext2", &["mkfs.ext2", "-q", "-F"]);
    }
}

#[test]
fn ext4_without_a_journal_named_drafts_one_fsync() {
    if !skip("ext4", "mkfs.ext4") {
        let mkfs = ["mkfs.ext4", "-q", "-F", "-O", "^has_journal"];
        power_cut_at_the_reply("ext4", &mkfs, &["env", "POSTERN_NAMED_DRAFTS=1"]);
    }
}

#[test]
fn xfs_named_drafts_one_fsync() {
    if !skip("xfs", "mkfs.xfs") {
        power_cut_at_the_reply("xfs", &["mkfs.xfs", "-q", "-f"], &["env", "POSTERN_NAMED_DRAFTS=1"]);
    }
}
