//! A network namespace joined to this one by a veth pair, for a client that is not on
//! loopback (made by the test, removed when dropped; root only).
#![allow(dead_code)]

use std::process::Command;

use super::Server;

/// A namespace joined to this one by a veth pair: this side `host`, the other `peer`.
pub struct Netns {
    pub name: String,
    pub host: String,
    pub peer: String,
}

impl Netns {
    /// A namespace for `tag` (each test its own); `None`, said as a skip, when not root.
    pub fn new(tag: u8) -> Option<Netns> {
        if super::skip_unless_root("make a network namespace for a client that is not on loopback")
            || super::skip_unless(super::have("ip"), "iproute2 is missing")
        {
            return None;
        }
        let n = std::process::id() % 250;
        let name = format!("pn{n}-{tag}");
        let (host, peer) = (format!("10.{}.{n}.1", 200 + tag), format!("10.{}.{n}.2", 200 + tag));
        let (vh, vp) = (format!("vh{n}x{tag}"), format!("vp{n}x{tag}"));
        let quiet = |args: &[&str]| Command::new("ip").args(args).stderr(std::process::Stdio::null()).status();
        let _ = quiet(&["netns", "del", &name]);
        let _ = quiet(&["link", "del", &vh]);
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), name.clone()],
            vec![
                "link".into(),
                "add".into(),
                vh.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                vp.clone(),
            ],
            vec!["link".into(), "set".into(), vp.clone(), "netns".into(), name.clone()],
            vec!["addr".into(), "add".into(), format!("{host}/30"), "dev".into(), vh.clone()],
            vec!["link".into(), "set".into(), vh.clone(), "up".into()],
            vec![
                "-n".into(),
                name.clone(),
                "addr".into(),
                "add".into(),
                format!("{peer}/30"),
                "dev".into(),
                vp.clone(),
            ],
            vec!["-n".into(), name.clone(), "link".into(), "set".into(), vp, "up".into()],
            vec!["-n".into(), name.clone(), "link".into(), "set".into(), "lo".into(), "up".into()],
        ];
        let netns = Netns { name, host, peer };
        for step in steps {
            let ok = Command::new("ip").args(&step).status().is_ok_and(|s| s.success());
            assert!(ok, "ip {}", step.join(" "));
        }
        Some(netns)
    }

    /// Sends one message from inside the namespace with Python's smtplib; returns its output.
    pub fn send(&self, server: &Server) -> String {
        let script = format!(
            "import smtplib\ns = smtplib.SMTP('{}', {}, timeout=20)\ns.ehlo('client.test')\n\
             s.sendmail('someone@remote.test', ['alice@example.test'], 'From: someone@remote.test\\r\\nSubject: names\\r\\n\\r\\nhi\\r\\n')\n\
             s.quit()\nprint('sent')\n",
            self.host,
            server.addr.port()
        );
        self.python(&script)
    }

    /// Runs a Python script inside the namespace; returns what it printed, and its errors.
    pub fn python(&self, script: &str) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.name, "python3", "-c", script]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
