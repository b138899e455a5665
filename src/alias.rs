//! Local addresses: who exists, what an alias expands to, and where each mailbox is.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::smtp::address::{ForwardPath, Host, Mailbox};
use crate::spool::log::Recipient;
use crate::sys;
use crate::table::{self, TableError};

/// Where one recipient's copy goes after alias expansion.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A local maildir; `address` is the folded `name@domain` for Delivered-To and the log.
    /// `owner`: the system account whose process writes it (`local_users = system`).
    Mailbox { name: String, address: String, maildir: PathBuf, owner: Option<String> },
    /// Forwarded off this host.
    Remote(Mailbox),
    /// An aliases `|command`: the message on its standard input, run as `alias_user`, or a
    /// `~/.forward` one, run as its `user`. `alias` is the folded `name@domain` it was
    /// reached through.
    Command { alias: String, command: String, user: Option<String> },
    /// An aliases `/path`: appended to that mbox file, as `alias_user`; or a `~/.forward`
    /// one, as its `user`.
    File { alias: String, path: PathBuf, user: Option<String> },
}

impl Target {
    /// A `|command` reached through `alias`, run as `user` (`None`: `alias_user`).
    fn command(alias: &str, command: &str, user: Option<&str>) -> Target {
        Target::Command { alias: alias.to_string(), command: command.to_string(), user: user.map(str::to_string) }
    }

    /// A `/file` reached through `alias`, written as `user` (`None`: `alias_user`).
    fn file(alias: &str, path: &str, user: Option<&str>) -> Target {
        Target::File { alias: alias.to_string(), path: PathBuf::from(path), user: user.map(str::to_string) }
    }

    /// The recipient as the delivery log and bounces name it: an address, or the command
    /// or file an alias leads to.
    pub fn key(&self) -> Recipient {
        match self {
            Target::Mailbox { address, .. } => Recipient::Address(address.clone()),
            Target::Remote(m) => Recipient::Address(m.to_string()),
            // Two users' `.forward`s may name the same command or file: each is a copy of its
            // own, which the log must tell apart.
            Target::Command { command, user: None, .. } => Recipient::Command(command.clone()),
            Target::Command { command, user: Some(u), .. } => Recipient::Command(format!("{command} (~{u}/.forward)")),
            Target::File { path, user: None, .. } => Recipient::File(path.display().to_string()),
            Target::File { path, user: Some(u), .. } => Recipient::File(format!("{} (~{u}/.forward)", path.display())),
        }
    }
}

/// What a system user's `~/.forward` says (`forward_files = on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// There is none: mail goes to the mailbox.
    Missing,
    /// There is one that is not safe to follow (why): it is ignored, and said in the log.
    Ignored(String),
    /// Its text.
    Text(String),
}

/// How the `.forward` of a user (by name) is read: straight from the home directory, or
/// through the helper that kept root (src/local.rs). `Err` is a file that cannot be read
/// now: the recipient waits.
pub type ReadForward<'a> = &'a dyn Fn(&str) -> Result<Forward, String>;

/// Reads `account`'s `~/.forward`, following it only when nobody but the user (and root)
/// can have written it: the home directory and the file owned by the user or root and not
/// writable by group or others, the file a regular file of at most 64 KiB, not a symlink.
pub fn read_forward(account: &sys::Account) -> Result<Forward, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = account.home.join(".forward");
    let shown = format!("~{}/.forward", account.name);
    let safe = |meta: &std::fs::Metadata| (meta.uid() == account.uid || meta.uid() == 0) && meta.mode() & 0o022 == 0;
    if !account.home.is_absolute() {
        return Ok(Forward::Missing);
    }
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Forward::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Forward::Ignored(format!("{shown} is a symbolic link")));
        }
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    let home = std::fs::metadata(&account.home).map_err(|e| format!("~{}: {e}", account.name))?;
    if !safe(&home) {
        return Ok(Forward::Ignored(format!("~{} is writable by others than {}", account.name, account.name)));
    }
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Ok(Forward::Ignored(format!("{shown} is not a regular file")));
    }
    if !safe(&meta) {
        return Ok(Forward::Ignored(format!(
            "{shown} is not {}'s own, or others may write it (chmod 644 it)",
            account.name
        )));
    }
    let mut text = String::new();
    let read = file.take(MAX_FORWARD + 1).read_to_string(&mut text);
    read.map_err(|e| format!("{shown}: {e}"))?;
    if text.len() as u64 > MAX_FORWARD {
        return Ok(Forward::Ignored(format!("{shown} is larger than {} KiB", MAX_FORWARD / 1024)));
    }
    Ok(Forward::Text(text))
}

/// Whether a `.forward`'s text names this `|command` or `/file`: the helper runs and writes
/// no other as its user.
pub fn forward_names(text: &str, wanted: &str) -> bool {
    entries(text).iter().any(|e| match kind(e) {
        Ok(Kind::Command(c)) => wanted.strip_prefix('|') == Some(c),
        Ok(Kind::File(f)) => wanted == f,
        _ => false,
    })
}

/// The largest `.forward` followed.
const MAX_FORWARD: u64 = 64 * 1024;

/// A system user's `.forward` read where this process stands: by name, from the password
/// database (what `expand` uses).
pub fn read_forward_of(user: &str) -> Result<Forward, String> {
    match sys::account_named(user) {
        Ok(Some(account)) => read_forward(&account),
        Ok(None) => Ok(Forward::Missing),
        Err(e) => Err(format!("{user}: {e}")),
    }
}

/// The entries of an `:include:` list or a `.forward`: separated by commas and line ends,
/// a comma inside double quotes kept (`"|/usr/bin/procmail -a a,b"`), `#` comment lines.
pub fn entries(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let (mut quoted, mut start) = (false, 0);
        for (at, c) in line.char_indices() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    out.push(line[start..at].trim().to_string());
                    start = at + 1;
                }
                _ => {}
            }
        }
        out.push(line[start..].trim().to_string());
    }
    out.retain(|e| !e.is_empty());
    out
}

/// What an aliases target is, as aliases(5) writes them (a target may be in double quotes).
enum Kind<'a> {
    Address(&'a str),
    Command(&'a str),
    File(&'a str),
    Include(&'a str),
}

fn kind(target: &str) -> Result<Kind<'_>, String> {
    let t = target.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(target).trim();
    if let Some(command) = t.strip_prefix('|') {
        let command = command.trim();
        return if command.is_empty() { Err("`|` with no command".into()) } else { Ok(Kind::Command(command)) };
    }
    if let Some(path) = t.strip_prefix(":include:") {
        let path = path.trim();
        return if path.starts_with('/') {
            Ok(Kind::Include(path))
        } else {
            Err(format!("`{t}`: the path must be absolute"))
        };
    }
    if t.starts_with('/') {
        return if t.ends_with('/') { Err(format!("`{t}`: a file, not a directory")) } else { Ok(Kind::File(t)) };
    }
    if Mailbox::parse(t).is_ok() || is_safe_mailbox_name(&t.to_lowercase()) {
        return Ok(Kind::Address(t));
    }
    Err(format!("`{t}`: not a local name, an address, a |command, a /file or an :include:"))
}

/// Why a local address has nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// No such user (the tables changed since the message was accepted).
    UnknownUser(String),
    /// Aliases that lead back to themselves and nowhere else.
    Loop(String),
    /// An alias whose line cannot be used (a target of a kind not delivered to): the
    /// recipient waits while the administrator fixes the line.
    Broken(String, String),
}

const MAX_DEPTH: usize = 20;

/// How long Dovecot's userdb may take to answer.
const DOVECOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The local users of one configuration: local domains, the mailboxes map, the aliases.
pub struct LocalUsers {
    local_domains: Vec<String>,
    delimiter: String,
    template: String,
    /// The local users are the system's accounts.
    system: bool,
    /// Follow their `~/.forward` files.
    forward_files: bool,
    /// Ask Dovecot's userdb at this socket whether a full address exists.
    dovecot: Option<PathBuf>,
    /// Name -> maildir; `None` when every safe name has a mailbox from the template.
    mailboxes: Option<HashMap<String, PathBuf>>,
    aliases: HashMap<String, Vec<String>>,
    /// Aliases that cannot be used, with why (file:line: what).
    broken: HashMap<String, String>,
    /// Every problem in the aliases file, for `--check` and `newaliases`.
    problems: Vec<TableError>,
}

impl LocalUsers {
    /// Loads the `mailboxes` and `aliases` files the configuration names.
    pub fn load(config: &Config) -> Result<LocalUsers, TableError> {
        // A key's domain must be one of ours: another's would never be looked up.
        let foreign = |file: &Path, e: &table::Entry| {
            let domain = e.name.split_once('@')?.1;
            (!config.local_domains.iter().any(|d| d == domain)).then(|| TableError {
                file: file.display().to_string(),
                line: e.line,
                message: format!("`{}`: {domain} is not one of local_domains", e.name),
            })
        };
        let mailboxes = match &config.mailboxes {
            Some(path) => {
                let entries = table::load(path)?;
                if let Some(problem) = entries.iter().find_map(|e| foreign(path, e)) {
                    return Err(problem);
                }
                Some(entries.into_iter().map(|e| (e.name, PathBuf::from(&e.values[0]))).collect())
            }
            None => None,
        };
        // One bad line in the aliases file costs that alias alone, never all delivery.
        let mut aliases = HashMap::new();
        let mut broken = HashMap::new();
        let mut problems = Vec::new();
        if let Some(path) = &config.aliases {
            let (entries, bad_lines) = table::load_lenient(path)?;
            problems = bad_lines;
            for entry in entries {
                if let Some(problem) = foreign(path, &entry) {
                    problems.push(problem);
                    continue;
                }
                if let Some(message) = entry.values.iter().find_map(|v| kind(v).err()) {
                    let problem = TableError { file: path.display().to_string(), line: entry.line, message };
                    broken.insert(entry.name, problem.to_string());
                    problems.push(problem);
                    continue;
                }
                aliases.insert(entry.name, entry.values);
            }
        }
        Ok(LocalUsers {
            local_domains: config.local_domains.clone(),
            delimiter: config.recipient_delimiter.clone(),
            template: config.mailbox_template.clone(),
            system: config.system_users,
            forward_files: config.forward_files,
            dovecot: config.dovecot_userdb.clone(),
            mailboxes,
            aliases,
            broken,
            problems,
        })
    }

    /// What is wrong in the aliases file, line by line; delivery goes on around it.
    pub fn problems(&self) -> &[TableError] {
        &self.problems
    }

    pub fn is_local_domain(&self, host: &Host) -> bool {
        match host {
            Host::Domain(d) => self.local_domains.iter().any(|l| *l == d.folded()),
            Host::Literal(_) => false,
        }
    }

    /// The name a local part is found under in every local domain: folded to lower case (RFC
    /// 5321 §2.4 allows this for local delivery only), else without its extension
    /// (`alice+tag` -> `alice`).
    pub fn lookup_name(&self, local_part: &str) -> Option<String> {
        let folded = local_part.to_lowercase();
        if self.exists(&folded) {
            return Some(folded);
        }
        let base = self.base(&folded)?;
        self.exists(base).then(|| base.to_string())
    }

    /// A folded local part without its extension, when it has one.
    fn base<'a>(&self, folded: &'a str) -> Option<&'a str> {
        let base = folded.split(|c| self.delimiter.contains(c)).next()?;
        (!self.delimiter.is_empty() && !base.is_empty() && base.len() < folded.len()).then_some(base)
    }

    /// The key a recipient at a local domain is found under: its full address
    /// (`info@a.example`), else its local name in every local domain (`lookup_name`), else
    /// its domain's catch-all (`@a.example`); an address and a name first as given, then
    /// without the extension.
    pub fn resolve(&self, local_part: &str, domain: &str) -> Option<String> {
        self.resolve_checked(local_part, domain).ok().flatten()
    }

    /// `resolve`, asking Dovecot's userdb (`local_users = dovecot:...`) for the full address
    /// after the tables' own full addresses; `Err` when it cannot say now.
    pub fn resolve_checked(&self, local_part: &str, domain: &str) -> Result<Option<String>, String> {
        let (folded, domain) = (local_part.to_lowercase(), domain.to_lowercase());
        let addresses: Vec<String> = [Some(folded.as_str()), self.base(&folded)]
            .into_iter()
            .flatten()
            .map(|l| format!("{l}@{domain}"))
            .collect();
        if let Some(key) = addresses.iter().find(|key| self.has_key(key)) {
            return Ok(Some(key.clone()));
        }
        if let Some(socket) = &self.dovecot {
            for key in addresses {
                if crate::dovecot::user_exists(socket, &key, DOVECOT_TIMEOUT)
                    .map_err(|e| format!("Dovecot's userdb: {e}"))?
                {
                    return Ok(Some(key));
                }
            }
        }
        if let Some(name) = self.lookup_name(&folded) {
            return Ok(Some(name));
        }
        let catch_all = format!("@{domain}");
        Ok(self.has_key(&catch_all).then_some(catch_all))
    }

    /// Whether an aliases or mailboxes entry has this key.
    fn has_key(&self, key: &str) -> bool {
        self.aliases.contains_key(key)
            || self.broken.contains_key(key)
            || self.mailboxes.as_ref().is_some_and(|m| m.contains_key(key))
    }

    fn exists(&self, name: &str) -> bool {
        if name == "postmaster" || self.aliases.contains_key(name) || self.broken.contains_key(name) {
            return true;
        }
        match &self.mailboxes {
            Some(map) if map.contains_key(name) => true,
            _ if self.system => {
                is_safe_mailbox_name(name) && sys::account_named(name).ok().flatten().is_some_and(|a| receives_mail(&a))
            }
            Some(_) => false,
            // Dovecot says who exists: a bare name is no one's unless the tables name it.
            None if self.dovecot.is_some() => false,
            None => is_safe_mailbox_name(name),
        }
    }

    /// How many aliases the aliases file holds.
    pub fn alias_count(&self) -> usize {
        self.aliases.len()
    }

    pub fn alias(&self, name: &str) -> Option<&[String]> {
        self.aliases.get(name).map(Vec::as_slice)
    }

    pub fn first_local_domain(&self) -> &str {
        self.local_domains.first().map_or("localhost", String::as_str)
    }

    /// Where a mailbox name's maildir is: its mailboxes entry, else the template.
    pub fn maildir(&self, name: &str) -> Option<PathBuf> {
        if let Some(path) = self.mailboxes.as_ref().and_then(|m| m.get(name)) {
            return Some(path.clone());
        }
        if self.dovecot.is_some() && name.contains('@') {
            // A user of Dovecot's userdb: its mailbox is Dovecot's, reached over LMTP.
            return Some(PathBuf::new());
        }
        let templated = self.mailboxes.is_none() || self.system || name == "postmaster";
        if !(templated && is_safe_mailbox_name(name)) {
            return None;
        }
        let path = self.template.replace("%u", name);
        match path.strip_prefix("~/") {
            // The account's home; an account without one (or none at all) has no mailbox.
            Some(rest) => {
                let home = sys::account_named(name).ok().flatten()?.home;
                home.is_absolute().then(|| home.join(rest))
            }
            None => Some(PathBuf::from(path)),
        }
    }

    /// Expands one envelope recipient into the places its copies go, reading `.forward`
    /// files straight from the users' homes.
    pub fn expand(&self, rcpt: &ForwardPath) -> Result<Vec<Target>, ExpandError> {
        self.expand_with(rcpt, &read_forward_of)
    }

    /// `expand`, with the `.forward` files read by `forward`.
    pub fn expand_with(&self, rcpt: &ForwardPath, forward: ReadForward<'_>) -> Result<Vec<Target>, ExpandError> {
        let (local, domain) = match rcpt {
            ForwardPath::Postmaster => ("postmaster".to_string(), self.first_local_domain().to_string()),
            ForwardPath::Mailbox(m) if !self.is_local_domain(m.host()) => return Ok(vec![Target::Remote(m.clone())]),
            ForwardPath::Mailbox(m) => (m.local_part_text(), m.host().to_string().to_lowercase()),
        };
        let mut walk = Walk { forward, seen: HashSet::new(), out: Vec::new() };
        self.expand_local(&local, &domain, 0, &mut walk)?;
        if walk.out.is_empty() {
            return Err(ExpandError::Loop(rcpt.to_string()));
        }
        Ok(walk.out)
    }

    fn expand_local(&self, local: &str, domain: &str, depth: usize, walk: &mut Walk<'_>) -> Result<(), ExpandError> {
        let address = format!("<{local}@{domain}>");
        let name = match self.resolve_checked(local, domain) {
            Ok(Some(name)) => name,
            Ok(None) => return Err(ExpandError::UnknownUser(address)),
            // Not known now: the recipient waits (4.3.5), as for a broken alias.
            Err(why) => return Err(ExpandError::Broken(address, why)),
        };
        if depth > MAX_DEPTH {
            return Err(ExpandError::Loop(format!("<{}>", address_of(&name, domain))));
        }
        if let Some(why) = self.broken.get(&name) {
            return Err(ExpandError::Broken(format!("<{}>", address_of(&name, domain)), why.clone()));
        }
        match self.aliases.get(&name) {
            Some(targets) if walk.seen.insert(name.clone()) => {
                for target in targets {
                    self.expand_target(&name, target, domain, depth, walk)?;
                }
                Ok(())
            }
            Some(_) => Ok(()), // met again on a cycle: nothing new
            None if name.starts_with('@') => {
                // A catch-all mailbox: the copy is delivered to the address it came for.
                let address = format!("{}@{domain}", local.to_lowercase());
                let maildir = self.maildir(&name).ok_or_else(|| ExpandError::UnknownUser(format!("<{address}>")))?;
                push_unique(&mut walk.out, Target::Mailbox { name, address, maildir, owner: None });
                Ok(())
            }
            None => self.push_user(&name, domain, depth, walk),
        }
    }

    fn expand_target(
        &self,
        alias: &str,
        target: &str,
        domain: &str,
        depth: usize,
        walk: &mut Walk<'_>,
    ) -> Result<(), ExpandError> {
        if target.eq_ignore_ascii_case(alias) {
            return self.push_mailbox(alias, domain, &mut walk.out); // `alice: alice, bob@x` keeps a copy
        }
        let at = address_of(alias, domain);
        let broken = |why: String| ExpandError::Broken(format!("<{at}>"), why);
        match kind(target).map_err(broken)? {
            Kind::Address(t) => self.expand_address(t, domain, depth, walk),
            Kind::Command(command) => {
                push_unique(&mut walk.out, Target::command(&at, command, None));
                Ok(())
            }
            Kind::File(path) => {
                push_unique(&mut walk.out, Target::file(&at, path, None));
                Ok(())
            }
            Kind::Include(path) => {
                // Read at each use, so editing the list needs no reload; a list that cannot be
                // read holds its alias's mail until it can.
                for value in read_include(Path::new(path)).map_err(broken)? {
                    self.expand_target(alias, &value, domain, depth + 1, walk)?;
                }
                Ok(())
            }
        }
    }

    /// An address an alias or a `.forward` leads to: off this host, or expanded again here.
    fn expand_address(&self, target: &str, domain: &str, depth: usize, walk: &mut Walk<'_>) -> Result<(), ExpandError> {
        match Mailbox::parse(target) {
            Ok(m) if !self.is_local_domain(m.host()) => {
                push_unique(&mut walk.out, Target::Remote(m));
                Ok(())
            }
            Ok(m) => self.expand_local(&m.local_part_text(), &m.host().to_string().to_lowercase(), depth + 1, walk),
            Err(_) => self.expand_local(target, domain, depth + 1, walk),
        }
    }

    /// A user with no alias: where its `~/.forward` leads (`forward_files = on`), else its
    /// mailbox. A `.forward` met again on a cycle, or one that names its own user (`alice`,
    /// or `\alice` as sendmail writes it), leads to the mailbox.
    fn push_user(&self, name: &str, domain: &str, depth: usize, walk: &mut Walk<'_>) -> Result<(), ExpandError> {
        let address = address_of(name, domain);
        let follows =
            self.system && self.forward_files && is_account_name(name) && !["root", "postmaster"].contains(&name);
        if !follows || !walk.seen.insert(format!("~{name}")) {
            return self.push_mailbox(name, domain, &mut walk.out);
        }
        let broken = |why: String| ExpandError::Broken(format!("<{address}>"), why);
        let text = match (walk.forward)(name).map_err(broken)? {
            Forward::Missing => return self.push_mailbox(name, domain, &mut walk.out),
            Forward::Ignored(why) => {
                log::warn!("<{address}>: {why}: not followed, the mail goes to the mailbox");
                return self.push_mailbox(name, domain, &mut walk.out);
            }
            Forward::Text(text) => text,
        };
        let targets = entries(&text);
        if targets.is_empty() {
            return self.push_mailbox(name, domain, &mut walk.out);
        }
        let shown = |why: String| broken(format!("~{name}/.forward: {why}"));
        for entry in targets {
            let own = entry.strip_prefix('\\').unwrap_or(&entry);
            if own.eq_ignore_ascii_case(name) || own.eq_ignore_ascii_case(&address) {
                self.push_mailbox(name, domain, &mut walk.out)?;
                continue;
            }
            match kind(&entry).map_err(shown)? {
                Kind::Address(t) => self.expand_address(t, domain, depth, walk)?,
                Kind::Command(command) => push_unique(&mut walk.out, Target::command(&address, command, Some(name))),
                Kind::File(path) => push_unique(&mut walk.out, Target::file(&address, path, Some(name))),
                Kind::Include(_) => return Err(shown(":include: lists belong in the aliases file".into())),
            }
        }
        Ok(())
    }

    fn push_mailbox(&self, name: &str, domain: &str, out: &mut Vec<Target>) -> Result<(), ExpandError> {
        let address = address_of(name, domain);
        // A full address's entry is no account's: its copy is written as for a table.
        let owner = (self.system && is_account_name(name)).then(|| name.to_string());
        if owner.is_some() && ["root", "postmaster"].contains(&name) {
            // Never a copy written as root; the postmaster is a person's alias.
            let why =
                format!("mail for {name} is not delivered to an account of its own: add `{name}: you` to the aliases");
            return Err(ExpandError::Broken(format!("<{address}>"), why));
        }
        let maildir = self.maildir(name).ok_or_else(|| ExpandError::UnknownUser(format!("<{address}>")))?;
        push_unique(out, Target::Mailbox { name: name.to_string(), address, maildir, owner });
        Ok(())
    }
}

/// `local_users = system`: whether an account receives mail of its own. A person's account
/// has a login shell (one of /etc/shells, or not nologin/false where that file is missing) and
/// a home directory that exists and is its own; `www-data`, `nobody` and `daemon` have not, so
/// mail for them is refused at RCPT (or bounced at once) instead of waiting days for a
/// maildir nobody can write. They, root and postmaster still receive through aliases.
pub fn receives_mail(account: &sys::Account) -> bool {
    let shell = account.shell.as_os_str();
    let login_shell = shell.is_empty() || is_login_shell(&account.shell, std::fs::read_to_string("/etc/shells").ok());
    let own_home = std::fs::metadata(&account.home).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.is_dir() && m.uid() == account.uid
    });
    login_shell && own_home
}

/// getusershell(3): the shells /etc/shells lists; without that file, anything but the usual
/// no-login stand-ins.
fn is_login_shell(shell: &Path, shells: Option<String>) -> bool {
    match shells {
        Some(list) => list.lines().map(str::trim).any(|l| !l.starts_with('#') && Path::new(l) == shell),
        None => !matches!(shell.file_name().and_then(|n| n.to_str()), Some("nologin" | "false")),
    }
}

/// The address a key stands for at `domain`: a full address is its own.
fn address_of(name: &str, domain: &str) -> String {
    if name.contains('@') { name.to_string() } else { format!("{name}@{domain}") }
}

/// Whether a key is a local name (an account's, with `local_users = system`), not a full
/// address or a catch-all.
fn is_account_name(name: &str) -> bool {
    !name.contains('@')
}

/// One expansion under way: how `.forward` files are read, the aliases and `.forward`s met
/// (`~NAME`) so far, and the targets found.
struct Walk<'a> {
    forward: ReadForward<'a>,
    seen: HashSet<String>,
    out: Vec<Target>,
}

fn push_unique(out: &mut Vec<Target>, target: Target) {
    if !out.contains(&target) {
        out.push(target);
    }
}

/// The targets in an `:include:` file (`entries`).
fn read_include(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!(":include:{}: {e}", path.display()))?;
    Ok(entries(&text))
}

impl LocalUsers {
    /// Whether any copy must be written by another user than the service: system users, or
    /// aliases to commands, files or include lists (which may hold either).
    pub fn needs_root_helper(&self) -> bool {
        self.system || self.runs_commands()
    }

    /// Whether an alias leads to a command or a file (an include list may hold either).
    pub fn runs_commands(&self) -> bool {
        self.aliases
            .values()
            .flatten()
            .any(|t| matches!(kind(t), Ok(Kind::Command(_) | Kind::File(_) | Kind::Include(_))))
    }

    /// Whether `command` is one an alias leads to (the root helper runs no other).
    pub fn allows_command(&self, command: &str) -> bool {
        self.alias_targets().iter().any(|t| matches!(kind(t), Ok(Kind::Command(c)) if c == command))
    }

    /// Whether `path` is a file an alias leads to (the root helper writes no other).
    pub fn allows_file(&self, path: &Path) -> bool {
        self.alias_targets().iter().any(|t| matches!(kind(t), Ok(Kind::File(f)) if Path::new(f) == path))
    }

    /// Every target in the aliases, those of include lists too.
    fn alias_targets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut pending: Vec<String> = self.aliases.values().flatten().cloned().collect();
        let mut read = 0;
        while let Some(t) = pending.pop() {
            if let Ok(Kind::Include(path)) = kind(&t) {
                read += 1;
                if read <= MAX_DEPTH * 10 {
                    pending.extend(read_include(Path::new(path)).unwrap_or_default());
                }
            }
            out.push(t);
        }
        out
    }
}

/// A name that may become a directory through `mailbox_template`: ASCII letters,
/// digits and `. - _ +`, no leading dot, no `..`, at most 64 octets. Anything else
/// (a `/`, a quote, a `|`) has no mailbox, so it can never reach a path.
pub fn is_safe_mailbox_name(name: &str) -> bool {
    let chars_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
    chars_ok && !name.is_empty() && name.len() <= 64 && !name.starts_with('.') && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_shells_are_those_etc_shells_lists() {
        let shells = Some("# /etc/shells\n/bin/sh\n/bin/bash\n/usr/bin/zsh\n".to_string());
        assert!(is_login_shell(Path::new("/bin/bash"), shells.clone()));
        for service in ["/usr/sbin/nologin", "/bin/false", "/bin/sync"] {
            assert!(!is_login_shell(Path::new(service), shells.clone()), "{service}");
        }
        assert!(is_login_shell(Path::new("/bin/sync"), None), "without /etc/shells only nologin and false are out");
        assert!(!is_login_shell(Path::new("/sbin/nologin"), None));
    }

    #[test]
    fn system_accounts_without_a_home_of_their_own_receive_nothing() {
        let account = |home: &str, shell: &str| sys::Account {
            name: "x".into(),
            uid: if home == "/" { sys::effective_uid() + 1 } else { sys::effective_uid() },
            gid: 0,
            full_name: None,
            home: home.into(),
            shell: shell.into(),
        };
        let own = std::env::temp_dir().join(format!("postern-home-{}", std::process::id()));
        std::fs::create_dir_all(&own).unwrap();
        assert!(receives_mail(&account(own.to_str().unwrap(), "")));
        assert!(!receives_mail(&account("/nonexistent", "")), "no such home");
        assert!(!receives_mail(&account(own.to_str().unwrap(), "/usr/sbin/nologin")));
        assert!(!receives_mail(&account("/", "")), "a home that is not its own");
        std::fs::remove_dir(&own).unwrap();
    }

    fn users(mailboxes: Option<&[&str]>, aliases: &[(&str, &[&str])]) -> LocalUsers {
        LocalUsers {
            local_domains: vec!["example.test".into(), "localhost".into()],
            delimiter: "+".into(),
            template: "/var/mail/%u/".into(),
            mailboxes: mailboxes
                .map(|m| m.iter().map(|n| (n.to_string(), PathBuf::from(format!("/home/{n}/Maildir/")))).collect()),
            aliases: aliases.iter().map(|(n, v)| (n.to_string(), v.iter().map(|s| s.to_string()).collect())).collect(),
            system: false,
            forward_files: false,
            dovecot: None,
            broken: HashMap::new(),
            problems: Vec::new(),
        }
    }

    fn rcpt(text: &str) -> ForwardPath {
        ForwardPath::parse(text.as_bytes()).unwrap()
    }

    fn keys(targets: &[Target]) -> Vec<String> {
        targets.iter().map(|t| t.key().to_string()).collect()
    }

    #[test]
    fn a_plain_user_goes_to_its_maildir() {
        let u = users(Some(&["alice"]), &[]);
        let t = u.expand(&rcpt("Alice+tag@EXAMPLE.TEST")).unwrap();
        assert_eq!(
            t,
            vec![Target::Mailbox {
                name: "alice".into(),
                address: "alice@example.test".into(),
                maildir: "/home/alice/Maildir/".into(),
                owner: None,
            }]
        );
        let templated = users(None, &[]);
        let Target::Mailbox { maildir, .. } = &templated.expand(&rcpt("bob@localhost")).unwrap()[0] else { panic!() };
        assert_eq!(maildir, &PathBuf::from("/var/mail/bob/"));
    }

    #[test]
    fn system_users_are_the_accounts_with_mail_in_their_homes() {
        let mut u = users(None, &[("team", &["root"])]);
        (u.system, u.template) = (true, "~/Maildir/".into());
        let root = sys::account_named("root").unwrap().unwrap();
        // root exists, but no copy is ever written as root: it needs an alias.
        assert!(matches!(u.expand(&rcpt("root@example.test")), Err(ExpandError::Broken(..))));
        assert!(matches!(u.expand(&rcpt("team@example.test")), Err(ExpandError::Broken(..))));
        assert_eq!(u.maildir("root"), Some(root.home.join("Maildir/")));
        assert!(matches!(u.expand(&rcpt("no-such-account-here@example.test")), Err(ExpandError::UnknownUser(_))));
        assert_eq!(u.lookup_name("no-such-account-here"), None);
    }

    #[test]
    fn aliases_expand_to_local_and_remote_targets() {
        let u = users(
            Some(&["alice", "carol"]),
            &[("team", &["alice", "bob@remote.test", "staff"]), ("staff", &["carol@example.test", "alice"])],
        );
        let t = u.expand(&rcpt("team@example.test")).unwrap();
        assert_eq!(keys(&t), ["<alice@example.test>", "<bob@remote.test>", "<carol@example.test>"]);
    }

    #[test]
    fn postmaster_always_has_somewhere_to_go() {
        let u = users(Some(&["alice"]), &[]);
        let t = u.expand(&ForwardPath::Postmaster).unwrap();
        assert_eq!(keys(&t), ["<postmaster@example.test>"]);
        let aliased = users(Some(&["alice"]), &[("postmaster", &["alice"])]);
        assert_eq!(keys(&aliased.expand(&rcpt("POSTMASTER@example.test")).unwrap()), ["<alice@example.test>"]);
    }

    #[test]
    fn loops_and_self_references() {
        let cycle = users(Some(&["alice"]), &[("a", &["b"]), ("b", &["a"])]);
        assert!(matches!(cycle.expand(&rcpt("a@example.test")), Err(ExpandError::Loop(_))));
        let keep = users(Some(&["alice"]), &[("alice", &["alice", "bob@remote.test"])]);
        assert_eq!(
            keys(&keep.expand(&rcpt("alice@example.test")).unwrap()),
            ["<alice@example.test>", "<bob@remote.test>"]
        );
    }

    #[test]
    fn remote_recipients_pass_through_with_case_kept() {
        let u = users(None, &[]);
        assert_eq!(keys(&u.expand(&rcpt("Bob@Remote.Test")).unwrap()), ["<Bob@Remote.Test>"]);
    }

    #[test]
    fn unknown_users_and_unsafe_names_have_no_maildir() {
        let u = users(Some(&["alice"]), &[]);
        assert!(matches!(u.expand(&rcpt("mallory@example.test")), Err(ExpandError::UnknownUser(_))));
        let t = users(None, &[]);
        assert!(t.expand(&rcpt("\"../x\"@localhost")).is_err());
        assert!(t.maildir("a/b").is_none() && t.maildir(".hidden").is_none());
    }

    #[test]
    fn several_domains_a_full_address_then_a_local_name_then_the_catch_all() {
        let mut u = users(Some(&["alice", "bob"]), &[("info", &["bob"]), ("@b.test", &["alice"])]);
        u.local_domains = ["a.test", "b.test", "c.test"].map(String::from).to_vec();
        let boxes = u.mailboxes.as_mut().unwrap();
        boxes.insert("info@a.test".into(), "/var/mail/info-a/".into());
        boxes.insert("@c.test".into(), "/var/mail/c/".into());
        let expand = |text: &str| u.expand(&rcpt(text)).map(|t| keys(&t));
        assert_eq!(expand("Info+news@A.test").unwrap(), ["<info@a.test>"], "the full address wins");
        let Target::Mailbox { maildir, .. } = &u.expand(&rcpt("info@a.test")).unwrap()[0] else { panic!() };
        assert_eq!(maildir, &PathBuf::from("/var/mail/info-a/"));
        assert_eq!(expand("info@b.test").unwrap(), ["<bob@b.test>"], "a local name wins over the catch-all");
        assert_eq!(expand("info@c.test").unwrap(), ["<bob@c.test>"], "a local name is in every domain");
        assert_eq!(expand("anyone@b.test").unwrap(), ["<alice@b.test>"], "the catch-all alias");
        assert_eq!(expand("anyone@c.test").unwrap(), ["<anyone@c.test>"], "the catch-all mailbox");
        let Target::Mailbox { maildir, .. } = &u.expand(&rcpt("anyone@c.test")).unwrap()[0] else { panic!() };
        assert_eq!(maildir, &PathBuf::from("/var/mail/c/"));
        assert!(matches!(u.expand(&rcpt("anyone@a.test")), Err(ExpandError::UnknownUser(_))));
        assert_eq!(u.resolve("ANYONE", "B.test").as_deref(), Some("@b.test"));
        assert_eq!(u.resolve("anyone", "a.test"), None);
        // A full address's broken alias is named once, not with its domain again.
        u.broken.insert("info@a.test".into(), "aliases:3: bad".into());
        let Err(ExpandError::Broken(who, _)) = u.expand(&rcpt("info@a.test")) else { panic!() };
        assert_eq!(who, "<info@a.test>");
    }

    #[test]
    fn a_forward_file_is_expanded_like_an_alias_as_its_user() {
        let mut u = users(Some(&["alice", "carol", "dave"]), &[("team", &["alice"])]);
        (u.system, u.forward_files) = (true, true);
        let read = |user: &str| -> Result<Forward, String> {
            match user {
                "alice" => Ok(Forward::Text(
                    "# kept, sent on, and filed\n\\alice, bob@remote.test\n\"|/usr/bin/procmail -a x,y\"\n\
                     /home/alice/all.mbox, carol\n"
                        .into(),
                )),
                "carol" => Ok(Forward::Text("alice@example.test\n".into())),
                "dave" => Ok(Forward::Ignored("~dave/.forward is writable by others".into())),
                _ => Err("~erin/.forward: Input/output error".into()),
            }
        };
        let t = u.expand_with(&rcpt("team@example.test"), &read).unwrap();
        // carol's file leads back to alice, whose own was followed already: alice's mailbox.
        assert_eq!(
            keys(&t),
            [
                "<alice@example.test>",
                "<bob@remote.test>",
                "|/usr/bin/procmail -a x,y (~alice/.forward)",
                "/home/alice/all.mbox (~alice/.forward)",
            ]
        );
        let Target::Command { user, alias, .. } = &t[2] else { panic!("{t:?}") };
        assert_eq!((user.as_deref(), alias.as_str()), (Some("alice"), "alice@example.test"));
        // From carol, alice's file leads back to carol, whose own was followed already.
        let t = u.expand_with(&rcpt("carol@example.test"), &read).unwrap();
        assert_eq!(keys(&t)[..2], ["<alice@example.test>", "<bob@remote.test>"]);
        assert_eq!(keys(&t)[4], "<carol@example.test>");
        assert_eq!(keys(&u.expand_with(&rcpt("dave@example.test"), &read).unwrap()), ["<dave@example.test>"]);
        u.mailboxes.as_mut().unwrap().insert("erin".into(), "/var/mail/erin/".into());
        assert!(matches!(u.expand_with(&rcpt("erin@example.test"), &read), Err(ExpandError::Broken(..))));
        let include = |_: &str| Ok(Forward::Text(":include:/etc/list\n".into()));
        assert!(matches!(u.expand_with(&rcpt("dave@example.test"), &include), Err(ExpandError::Broken(..))));
        let empty = |_: &str| Ok(Forward::Text("# nothing\n\n".into()));
        assert_eq!(keys(&u.expand_with(&rcpt("dave@example.test"), &empty).unwrap()), ["<dave@example.test>"]);
        // Off, the files are not read at all.
        u.forward_files = false;
        assert_eq!(keys(&u.expand_with(&rcpt("carol@example.test"), &read).unwrap()), ["<carol@example.test>"]);
        assert!(forward_names("\"|/bin/a b,c\", /tmp/f\n", "|/bin/a b,c") && forward_names("/tmp/f", "/tmp/f"));
        assert!(!forward_names("|/bin/a\n", "|/bin/b") && !forward_names("bob@x.test\n", "bob@x.test"));
    }

    #[test]
    fn a_forward_file_is_followed_only_when_its_user_alone_can_write_it() {
        use std::os::unix::fs::PermissionsExt;
        let home = std::env::temp_dir().join(format!("postern-forward-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let mode =
            |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        mode(&home, 0o755);
        let account = sys::Account {
            name: "x".into(),
            uid: sys::effective_uid(),
            gid: 0,
            full_name: None,
            home: home.clone(),
            shell: "".into(),
        };
        let file = home.join(".forward");
        assert_eq!(read_forward(&account), Ok(Forward::Missing));
        std::fs::write(&file, "bob@remote.test\n").unwrap();
        mode(&file, 0o644);
        assert_eq!(read_forward(&account), Ok(Forward::Text("bob@remote.test\n".into())));
        for unsafe_mode in [0o664, 0o646] {
            mode(&file, unsafe_mode);
            assert!(matches!(read_forward(&account), Ok(Forward::Ignored(_))), "{unsafe_mode:o}");
        }
        mode(&file, 0o644);
        mode(&home, 0o777);
        assert!(matches!(read_forward(&account), Ok(Forward::Ignored(_))), "a home others may write");
        mode(&home, 0o755);
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &file).unwrap();
        assert!(matches!(read_forward(&account), Ok(Forward::Ignored(_))), "a symlink");
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        assert!(matches!(read_forward(&account), Ok(Forward::Ignored(_))), "a directory");
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn alias_targets_of_every_kind() {
        let dir = std::env::temp_dir().join(format!("postern-include-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let list = dir.join("list");
        std::fs::write(&list, "# the team\nalice, bob@remote.test\n|/usr/bin/archive\n").unwrap();
        let include = format!(":include:{}", list.display());
        let u = users(
            Some(&["alice"]),
            &[
                ("bot", &["|/usr/bin/procmail -a x"]),
                ("log", &["/var/log/mail.mbox"]),
                ("team", &[include.as_str()]),
                ("quoted", &["\"|/bin/true\""]),
            ],
        );
        assert_eq!(keys(&u.expand(&rcpt("bot@example.test")).unwrap()), ["|/usr/bin/procmail -a x"]);
        assert_eq!(keys(&u.expand(&rcpt("log@example.test")).unwrap()), ["/var/log/mail.mbox"]);
        assert_eq!(
            keys(&u.expand(&rcpt("team@example.test")).unwrap()),
            ["<alice@example.test>", "<bob@remote.test>", "|/usr/bin/archive"]
        );
        assert_eq!(keys(&u.expand(&rcpt("quoted@example.test")).unwrap()), ["|/bin/true"]);
        assert!(u.needs_root_helper());
        assert!(u.allows_command("/usr/bin/procmail -a x") && u.allows_command("/usr/bin/archive"));
        assert!(!u.allows_command("/bin/sh") && !u.allows_file(Path::new("/etc/passwd")));
        assert!(u.allows_file(Path::new("/var/log/mail.mbox")));
        for bad in ["|", "relative/file", ":include:relative", "/a/dir/", "a b"] {
            assert!(kind(bad).is_err(), "{bad}");
        }
        std::fs::remove_file(&list).unwrap();
        assert!(
            matches!(u.expand(&rcpt("team@example.test")), Err(ExpandError::Broken(..))),
            "an unreadable list holds the mail"
        );
        assert!(!users(Some(&["alice"]), &[("a", &["alice"])]).needs_root_helper());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
