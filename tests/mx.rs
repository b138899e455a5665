//! MX routing end to end (RFC 5321 §5.1, RFC 7505): a DNS server we control, sinks on 127.0.0.3 and 127.0.0.4.

mod support;

use std::path::PathBuf;
use std::process::Command;

use hickory_proto::rr::RecordType::{self, A, AAAA, CNAME, MX};
use postern::smtp::command::BodyType;
use support::dns::{Answer, FakeDns};
use support::{FakeMx, TempDir, dns_config};

struct World {
    dir: TempDir,
    conf: PathBuf,
    dns: FakeDns,
    /// The sink on 127.0.0.4; 127.0.0.3 has nothing listening on that port.
    sink: FakeMx,
}

fn world(zone: &[(&'static str, RecordType, Answer)]) -> World {
    world_at("127.0.0.4:0", None, zone)
}

/// A world whose sink listens at `sink`; `listen` replaces the configuration's own
/// `listen` port (which postern-deliver never binds, but compares with each MX).
fn world_at(sink: &str, listen: Option<u16>, zone: &[(&'static str, RecordType, Answer)]) -> World {
    let sink = FakeMx::start(sink, |_| None);
    let dns = FakeDns::start(zone);
    let extra = format!("{}smtp_port = {}\n", dns_config(Some(dns.addr)), sink.addr.port());
    let (dir, conf) = support::configured("mx", &extra);
    if let Some(port) = listen {
        let text = std::fs::read_to_string(&conf).unwrap();
        assert!(text.contains("listen = 127.0.0.1:0\n"));
        std::fs::write(&conf, text.replace("listen = 127.0.0.1:0\n", &format!("listen = 127.0.0.1:{port}\n"))).unwrap();
    }
    World { dir, conf, dns, sink }
}

impl World {
    fn send(&self, to: &[&str]) -> String {
        let spool = self.dir.path().join("spool");
        support::inject(
            &spool,
            "alice@example.test",
            to,
            support::now(),
            BodyType::SevenBit,
            b"Subject: mx\r\n\r\nhi\r\n",
        );
        support::deliver(&self.conf, None, &[])
    }

    fn queued(&self) -> usize {
        support::waiting(&self.dir.path().join("spool")).len()
    }

    fn reports(&self) -> Vec<String> {
        support::maildir(&self.dir.path().join("maildirs/alice"))
    }
}

#[test]
fn the_best_reachable_mx_gets_the_mail() {
    // MX 10 refuses connections, MX 20 is the sink.
    let w = world(&[
        ("remote.test", MX, Answer::Mx(vec![(10, "mx1.remote.test"), (20, "mx2.remote.test")])),
        ("mx1.remote.test", A, Answer::Ip(vec!["127.0.0.3"])),
        ("mx2.remote.test", A, Answer::Ip(vec!["127.0.0.4"])),
    ]);
    // §3.10 rule 12: the local part's case is kept when relaying.
    let log = w.send(&["Bob@remote.test", "carol@REMOTE.test"]);
    assert!(log.contains("relay=mx2.remote.test[127.0.0.4]:") && log.matches("status=sent").count() == 2, "{log}");
    let commands = w.sink.commands();
    assert!(commands.contains(&"RCPT TO:<Bob@remote.test>".to_string()), "{commands:?}");
    assert_eq!(commands.iter().filter(|c| c.starts_with("MAIL")).count(), 1, "one transaction for the domain");
    assert_eq!(w.queued(), 0);
    assert!(w.dns.queried().iter().all(|q| !q.contains("corp")), "no search list");
}

#[test]
fn no_mx_means_the_domain_itself_and_cnames_are_followed() {
    // An implicit MX, and an MX target that is a CNAME.
    let w = world(&[
        ("plain.test", A, Answer::Ip(vec!["127.0.0.4"])),
        ("aliased.test", MX, Answer::Mx(vec![(10, "mail.aliased.test")])),
        ("mail.aliased.test", CNAME, Answer::Cname("real.aliased.test")),
        ("real.aliased.test", A, Answer::Ip(vec!["127.0.0.4"])),
    ]);
    let log = w.send(&["bob@plain.test", "carol@aliased.test"]);
    assert_eq!(log.matches("status=sent").count(), 2, "{log}");
    assert!(w.dns.queried().contains(&"plain.test. MX".to_string()));
}

#[test]
fn permanent_dns_answers_bounce_at_once() {
    let w = world(&[
        ("nullmx.test", MX, Answer::Mx(vec![(0, "")])),
        ("gone.test", MX, Answer::NxDomain),
        ("empty.test", AAAA, Answer::Ip(vec![])),
        ("deadmx.test", MX, Answer::Mx(vec![(10, "nowhere.deadmx.test")])),
        ("deadmx.test", A, Answer::Ip(vec!["127.0.0.4"])),
        ("numeric.test", MX, Answer::Mx(vec![(10, "127.0.0.4")])),
    ]);
    let log = w.send(&["a@nullmx.test", "b@gone.test", "c@empty.test", "d@deadmx.test", "e@numeric.test"]);
    for (rcpt, status) in [
        ("a@nullmx.test", "5.1.10"),
        ("b@gone.test", "5.1.2"),
        ("c@empty.test", "5.4.4"),
        ("d@deadmx.test", "5.4.4"),
        ("e@numeric.test", "5.4.4"),
    ] {
        assert!(log.contains(&format!("to=<{rcpt}>, relay=-, delay=0, dsn={status}, status=bounced")), "{rcpt}: {log}");
    }
    assert_eq!(w.sink.connections(), 0, "no connection, never the domain's own A record");
    let reports = w.reports();
    assert_eq!(reports.len(), 1, "one report for all five");
    assert!(reports[0].contains("Recipient address has null MX"));
    assert_eq!(w.queued(), 0);
}

#[test]
fn temporary_dns_failures_defer() {
    let w = world(&[
        ("servfail.test", MX, Answer::ServFail),
        ("silent.test", MX, Answer::Silence),
        ("slowmx.test", MX, Answer::Mx(vec![(10, "mx.slowmx.test")])),
        ("mx.slowmx.test", A, Answer::ServFail),
    ]);
    let log = w.send(&["a@servfail.test", "b@silent.test", "c@slowmx.test"]);
    assert_eq!(log.matches("dsn=4.4.3, status=deferred").count(), 3, "{log}");
    assert_eq!(w.queued(), 1);
    assert!(w.reports().is_empty());
}

#[test]
fn an_mx_that_is_this_host_is_a_loop() {
    // The MX resolves to 127.0.0.1 and smtp_port is a port this configuration listens on.
    let zone = [
        ("loop.test", MX, Answer::Mx(vec![(10, "me.loop.test")])),
        ("me.loop.test", A, Answer::Ip(vec!["127.0.0.1"])),
        ("named.test", MX, Answer::Mx(vec![(10, "mail.example.test")])),
        ("mail.example.test", A, Answer::Ip(vec!["127.0.0.4"])),
    ];
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let w = world_at(&format!("127.0.0.1:{port}"), Some(port), &zone);
    let log = w.send(&["a@loop.test", "b@named.test", "c@[127.0.0.1]"]);
    assert_eq!(log.matches("dsn=5.4.6, status=bounced").count(), 3, "{log}");
    assert_eq!(w.sink.connections(), 0);
    assert!(w.reports()[0].contains("loops back to myself"));
}

#[test]
fn the_same_address_on_another_port_is_another_server() {
    // Listening on 127.0.0.1:P does not make a server at 127.0.0.1:smtp_port this host.
    let zone =
        [("loop.test", MX, Answer::Mx(vec![(10, "me.loop.test")])), ("me.loop.test", A, Answer::Ip(vec!["127.0.0.1"]))];
    let w = world_at("127.0.0.1:0", Some(1), &zone);
    let log = w.send(&["a@loop.test", "b@[127.0.0.1]"]);
    assert_eq!(log.matches("status=sent").count(), 2, "{log}");
    assert_eq!(w.sink.connections(), 1, "{log}");
    assert!(w.reports().is_empty());
}

#[test]
fn single_label_domains_are_not_completed() {
    // `bob@mx` is looked up as `mx.`, never with a search domain appended.
    let w = world(&[("mx.corp.test", A, Answer::Ip(vec!["127.0.0.4"]))]);
    let log = w.send(&["bob@mx"]);
    assert!(log.contains("dsn=5.1.2, status=bounced"), "{log}");
    assert_eq!(w.dns.queried(), ["mx. MX"]);
    assert_eq!(w.sink.connections(), 0);
}

#[test]
fn done_when_local_and_remote_mail_and_a_bounce_for_an_unknown_remote_user() {
    // The issue's own scenario, end to end through postern-smtpd and postern-deliver.
    let sink = FakeMx::start("127.0.0.4:0", |cmd| {
        cmd.contains("nobody").then(|| "550 5.1.1 <nobody@remote.test>: no such user".into())
    });
    let dns = FakeDns::start(&[
        ("remote.test", MX, Answer::Mx(vec![(10, "mx.remote.test")])),
        ("mx.remote.test", A, Answer::Ip(vec!["127.0.0.4"])),
    ]);
    let extra =
        format!("{}smtp_port = {}\ntrusted_networks = 127.0.0.0/8\n", dns_config(Some(dns.addr)), sink.addr.port());
    let server = support::Server::start(&extra);
    let mut c = support::Client::greeted(server.addr);
    c.cmd("EHLO client.test");
    let reply = c.mail(
        "alice@example.test",
        &["alice@example.test", "bob@remote.test", "nobody@remote.test"],
        b"Subject: hello all\r\n\r\nhi\r\n",
    );
    assert_eq!(support::code(&reply), "250 2.0.0");
    let conf = server.dir.path().join("postern.conf");
    let out = Command::new(support::program("postern-deliver")).arg("-c").arg(&conf).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let alice = server.dir.path().join("maildirs/alice/new");
    let mail: Vec<String> = support::list(&alice).iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    assert_eq!(mail.len(), 2, "the message and the report: {log}");
    assert!(
        mail.iter().any(|m| m.contains("Subject: hello all") && m.starts_with("Return-Path: <alice@example.test>"))
    );
    let report = mail.iter().find(|m| m.contains("multipart/report")).unwrap();
    assert!(
        report.contains("Final-Recipient: rfc822; nobody@remote.test")
            && report.contains("Remote-MTA: dns; mx.remote.test")
    );
    assert!(report.contains("Diagnostic-Code: smtp; 550 5.1.1 <nobody@remote.test>: no such user"), "{report}");
    assert_eq!(sink.messages().len(), 1);
    assert!(sink.commands().contains(&"RCPT TO:<bob@remote.test>".to_string()));
    assert!(server.queued().is_empty() && support::list(&server.spool().join("cur")).is_empty());
}

#[test]
fn domains_served_by_one_host_share_one_transaction() {
    let w = world(&[
        ("one.test", MX, Answer::Mx(vec![(10, "mx.shared.test")])),
        ("two.test", MX, Answer::Mx(vec![(10, "mx.shared.test")])),
        ("three.test", A, Answer::Ip(vec!["127.0.0.4"])),
        ("mx.shared.test", A, Answer::Ip(vec!["127.0.0.4"])),
    ]);
    let log = w.send(&["a@one.test", "b@two.test", "c@three.test"]);
    assert_eq!(log.matches("status=sent").count(), 3, "{log}");
    let commands = w.sink.commands();
    assert_eq!(
        commands.iter().filter(|c| c.starts_with("MAIL")).count(),
        2,
        "one.test and two.test together: {commands:?}"
    );
    assert_eq!(w.sink.messages().len(), 2);
    let first_rcpts: Vec<&String> =
        commands.iter().skip_while(|c| !c.starts_with("MAIL")).skip(1).take_while(|c| c.starts_with("RCPT")).collect();
    assert_eq!(first_rcpts, ["RCPT TO:<a@one.test>", "RCPT TO:<b@two.test>"]);
}
