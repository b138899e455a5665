//! `--check`: what would stop a start or fail at run time, found before anything runs.
//!
//! Both programs parse the configuration, then ask for the problems here: the `user` exists,
//! the spool exists or can be made and the service user can write it, TLS files load and match,
//! the aliases, mailboxes and relayhost credentials files parse. Each problem names its file
//! (and line, where it has one). A spool on a filesystem not known to be durable is a warning,
//! as at start, not a problem; so is a Dovecot socket (auth_users, local_users,
//! mailbox_transport) that nothing answers now.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::alias::LocalUsers;
use crate::client::LmtpAddress;
use crate::config::Config;
use crate::sys::{self, UserIds};

/// What `--check` found: problems fail the check; warnings are only said.
#[derive(Debug, Default)]
pub struct Findings {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// Which program is asking: the server also needs its TLS files; delivery, its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Smtpd,
    Deliver,
}

pub fn check(config: &Config, program: Program) -> Findings {
    let mut f = Findings { warnings: config.warnings(), ..Findings::default() };
    let source = &config.source;
    let user = match config.user.as_deref() {
        None => None,
        Some(name) => match sys::lookup_user(name) {
            Ok(Some(ids)) => Some(ids),
            Ok(None) => {
                f.problems.push(format!("{source}: user: no user `{name}` on this system"));
                None
            }
            Err(e) => {
                f.problems.push(format!("{source}: user: cannot look up `{name}`: {e}"));
                None
            }
        },
    };
    check_spool(&config.spool, user, config.user.as_deref(), &mut f);
    match LocalUsers::load(config) {
        Err(e) => f.problems.push(e.to_string()),
        Ok(users) => {
            f.problems.extend(users.problems().iter().map(ToString::to_string));
            if users.runs_commands() {
                match sys::account_named(&config.alias_user) {
                    Ok(Some(a)) if a.uid != 0 => {}
                    _ => f.problems.push(format!(
                        "{source}: alias_user: no user `{}` to run the aliases' commands and write their files as",
                        config.alias_user
                    )),
                }
            }
            // Mail to root (cron's, most of all) needs somewhere to go that a person reads.
            if users.alias("root").is_none() {
                let aliases =
                    config.aliases.as_ref().map_or("an aliases file".to_string(), |p| p.display().to_string());
                let fate = if users.lookup_name("root").is_some() {
                    "is delivered to root's own mailbox, which nobody may read"
                } else {
                    "has nowhere to go and is refused"
                };
                f.warnings.push(format!("mail to root (cron's, for one) {fate}: add `root: you` to {aliases}"));
            }
        }
    }
    if let Some(path) = &config.dkim_keys {
        let keys = crate::dkim::Keys::load(path);
        f.problems.extend(keys.problems().iter().map(|p| format!("dkim_keys: {p}")));
        if let Some(ids) = user.filter(|_| sys::is_root()) {
            let name = config.user.as_deref().unwrap_or_default();
            for key in keys.paths() {
                if let Err(why) = readable_by(key, ids, name) {
                    f.problems.push(format!("dkim_keys: {why}"));
                }
            }
        }
    }
    // Run as root, the check itself could read what the service user cannot.
    if let Some(ids) = user.filter(|_| sys::is_root()) {
        let name = config.user.as_deref().unwrap_or_default();
        let files =
            [config.path(), config.aliases.as_deref(), config.mailboxes.as_deref(), config.dkim_keys.as_deref()];
        let delivery_files = [config.relayhost_auth_file.as_deref()];
        let files = files.into_iter().chain(delivery_files.into_iter().filter(|_| program == Program::Deliver));
        for path in files.flatten() {
            if let Err(why) = readable_by(path, ids, name) {
                f.problems.push(why);
            }
        }
    }
    // Dovecot's sockets: not there now is said, not a problem (Dovecot may start later); mail
    // waits and logins get 454 until they answer.
    // Each is reached as the LMTP client reaches a server: a Unix socket or host:port.
    let mut dovecot: Vec<(&str, LmtpAddress)> = Vec::new();
    if let (Program::Smtpd, Some(crate::config::UserSource::Dovecot(socket))) = (program, &config.auth_users) {
        dovecot.push(("auth_users", LmtpAddress::Unix(socket.clone())));
    }
    if let Some(socket) = &config.dovecot_userdb {
        dovecot.push(("local_users", LmtpAddress::Unix(socket.clone())));
    }
    if let (Program::Deliver, Some(to)) = (program, &config.mailbox_transport) {
        dovecot.push(("mailbox_transport", to.clone()));
    }
    for (key, at) in dovecot {
        if let Err(e) = at.probe(Duration::from_secs(2)) {
            let at = at.to_string();
            let at = at.trim_start_matches("lmtp:");
            f.warnings.push(format!("{source}: {key}: {at}: {e}: nothing answers there now"));
        }
    }
    match program {
        Program::Smtpd => {
            if let Err(e) = crate::server::load_tls(config) {
                f.problems.push(format!("{source}: tls_cert, tls_key: {e}"));
            }
            if let Err(e) = crate::server::load_auth(config) {
                f.problems.push(e);
            }
        }
        Program::Deliver => {
            if let Err(e) = crate::relay::Relay::new(config) {
                f.problems.push(format!("{source}: {e}"));
            }
            if config.system_users && !sys::is_root() {
                f.warnings.push(format!(
                    "{source}: local_users = system: copies for the system's users are written only by a run \
                     started as root (the shipped timer, or cron as root); this one is not"
                ));
            }
        }
    }
    f
}

/// The spool, or the nearest directory above it when it does not exist yet, must be a
/// directory the service user can write (the user the program runs as when none is set).
fn check_spool(spool: &Path, user: Option<UserIds>, name: Option<&str>, f: &mut Findings) {
    let existing = spool.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let meta = match std::fs::metadata(existing) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => {
            return f.problems.push(format!("spool {}: {} is not a directory", spool.display(), existing.display()));
        }
        Err(e) => return f.problems.push(format!("spool {}: {}: {e}", spool.display(), existing.display())),
    };
    let who = name.map_or_else(|| "this user".to_string(), |n| format!("user `{n}`"));
    let (uid, gid) = match user {
        Some(ids) => (ids.uid, ids.gid),
        None => (sys::effective_uid(), sys::effective_gid()),
    };
    let mode = meta.mode();
    let writable = uid == 0
        || (meta.uid() == uid && mode & 0o200 != 0)
        || (meta.gid() == gid && mode & 0o020 != 0)
        || mode & 0o002 != 0;
    if !writable {
        let what = if existing == spool {
            "the spool".to_string()
        } else {
            format!("{}, where it would be made,", existing.display())
        };
        f.problems.push(format!(
            "spool {}: {what} is not writable by {who} (owner uid {}, mode {:o}); as root, `postern-queue init` \
             makes it the service user's",
            spool.display(),
            meta.uid(),
            mode & 0o7777
        ));
    }
    if let Some(warning) = crate::spool::filesystem_warning(existing) {
        f.warnings.push(warning);
    }
}

/// Whether user `name` (`ids`) may read `path`: search permission on every directory above
/// it and read permission on the file, by the owner, group and other bits (the user's own
/// group and the groups the group database puts it in).
fn readable_by(path: &Path, ids: UserIds, name: &str) -> Result<(), String> {
    let groups = sys::groups_of(name, ids.gid).unwrap_or_else(|_| vec![ids.gid]);
    let allowed = |meta: &std::fs::Metadata, bit: u32| {
        let mode = meta.mode();
        if meta.uid() == ids.uid {
            mode & (bit << 6) != 0
        } else if groups.contains(&meta.gid()) {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        }
    };
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for dir in absolute.ancestors().skip(1) {
        if let Ok(meta) = std::fs::metadata(dir)
            && !allowed(&meta, 0o1)
        {
            return Err(format!(
                "{}: user `{name}` cannot reach it: {} is closed to it",
                path.display(),
                dir.display()
            ));
        }
    }
    match std::fs::metadata(path) {
        Ok(meta) if allowed(&meta, 0o4) => Ok(()),
        Ok(meta) => Err(format!(
            "{}: user `{name}` cannot read it (owner uid {}, group {}, mode {:o}); the delivery runs and the \
             server read it as that user",
            path.display(),
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        )),
        // A file that is missing is said by what loads it.
        Err(_) => Ok(()),
    }
}

/// Prints the findings for `--check` (problems and warnings on stderr, the verdict on stdout)
/// and says whether all is well.
pub fn report(program: &str, config: &Config, findings: &Findings) -> bool {
    for w in &findings.warnings {
        eprintln!("{program}: warning: {w}");
    }
    for p in &findings.problems {
        eprintln!("{program}: {p}");
    }
    if findings.problems.is_empty() {
        println!("configuration ok: {}", config.source);
        true
    } else {
        println!("configuration has {} problem(s): {}", findings.problems.len(), config.source);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn what_another_user_may_read_is_judged_by_the_bits_on_the_way() {
        let dir = std::env::temp_dir().join(format!("postern-readable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("key.pem");
        std::fs::write(&file, "x").unwrap();
        // Someone who owns neither the file nor its directory, in none of their groups.
        let other = UserIds { uid: sys::effective_uid() + 4321, gid: sys::effective_gid() + 4321 };
        let name = "postern-no-such-user";
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let said = readable_by(&file, other, name).unwrap_err();
        assert!(said.contains("cannot read it") && said.contains("mode 600"), "{said}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(readable_by(&file, other, name), Ok(()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let said = readable_by(&file, other, name).unwrap_err();
        assert!(said.contains("cannot reach it"), "{said}");
        let owner = UserIds { uid: sys::effective_uid(), gid: sys::effective_gid() };
        assert_eq!(readable_by(&file, owner, name), Ok(()), "the owner reads through its own directory");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
