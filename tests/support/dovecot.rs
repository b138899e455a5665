//! A private Dovecot from Debian's packages for the tests: its own configuration, sockets,
//! ports on loopback and mail store in a temp directory; started in the foreground and
//! stopped when dropped. Never the system's service.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

pub struct Dovecot {
    child: Child,
    pub dir: TempDir,
    /// Its LMTP socket, and its IMAP port on 127.0.0.1.
    pub lmtp: PathBuf,
    pub imap_port: u16,
    pub lmtp_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Dovecot {
    /// `users`: `name password [extra userdb fields]` lines (`bob@b.test pw
    /// userdb_quota_rule=*:storage=1K`); `extra`: more configuration lines.
    pub fn start(users: &[&str], extra: &str) -> Dovecot {
        let dir = TempDir::new("dovecot");
        let d = dir.path();
        // Its login and mail processes run as dovenull and dovecot: they must reach it.
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        for sub in ["run", "state", "mail"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let chown = Command::new("chown").args(["dovecot:dovecot"]).arg(d.join("mail")).status().unwrap();
        assert!(chown.success());
        let passwd: String = users
            .iter()
            .map(|line| {
                let mut words = line.split_whitespace();
                let (name, password) = (words.next().unwrap(), words.next().unwrap());
                let fields: Vec<&str> = words.collect();
                format!("{name}:{{PLAIN}}{password}::::::{}\n", fields.join(" "))
            })
            .collect();
        std::fs::write(d.join("users"), passwd).unwrap();
        let (imap_port, lmtp_port) = (free_port(), free_port());
        let config = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/log\ninfo_log_path = {d}/log\n\
             protocols = imap lmtp\nlisten = 127.0.0.1\nssl = no\ndisable_plaintext_auth = no\n\
             auth_mechanisms = plain login\nmail_location = maildir:~/Maildir\n\
             mail_uid = dovecot\nmail_gid = dovecot\nfirst_valid_uid = 1\n\
             default_login_user = dovenull\ndefault_internal_user = dovecot\n\
             lda_mailbox_autocreate = yes\nlda_mailbox_autosubscribe = yes\n\
             mail_plugins = quota\nquota_full_tempfail = yes\n\
             plugin {{\n  quota = maildir:User quota\n  sieve = file:~/sieve;active=~/.dovecot.sieve\n}}\n\
             protocol lmtp {{\n  mail_plugins = $mail_plugins sieve\n}}\n\
             passdb {{\n  driver = passwd-file\n  args = {d}/users\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {d}/users\n  default_fields = uid=dovecot gid=dovecot home={d}/mail/%u\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    port = {imap_port}\n  }}\n}}\n\
             service lmtp {{\n  unix_listener lmtp {{\n    mode = 0666\n  }}\n  inet_listener lmtp {{\n    port = {lmtp_port}\n  }}\n}}\n\
             service auth {{\n  unix_listener auth-client {{\n    mode = 0666\n  }}\n  unix_listener auth-userdb {{\n    mode = 0666\n  }}\n}}\n\
             {extra}",
            d = d.display()
        );
        std::fs::write(d.join("dovecot.conf"), config).unwrap();
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(d.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lmtp = d.join("run/lmtp");
        let dovecot = Dovecot { child, lmtp, imap_port, lmtp_port, dir };
        let until = Instant::now() + Duration::from_secs(10);
        while !(dovecot.lmtp.exists() && TcpStream::connect(("127.0.0.1", imap_port)).is_ok()) {
            assert!(Instant::now() < until, "dovecot did not start: {}", dovecot.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        dovecot
    }

    /// A user's home (its maildir is `Maildir/` in it).
    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user)
    }

    /// Puts a Sieve script in place as the user's active one.
    pub fn sieve(&self, user: &str, script: &str) {
        let home = self.home(user);
        std::fs::create_dir_all(&home).unwrap();
        let path = home.join(".dovecot.sieve");
        std::fs::write(&path, script).unwrap();
        let status = Command::new("chown").args(["-R", "dovecot:dovecot"]).arg(&home).status().unwrap();
        assert!(status.success());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
