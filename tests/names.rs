//! The client's name by forward-confirmed reverse DNS (FCrDNS): in the log as `client=name[ip]`
//! and in `Received:`, `unknown` when the name does not point back or DNS is silent, and never
//! a reason to refuse mail. A loopback peer is never looked up in DNS (RFC 6761 §6.3), so the
//! clients that are looked up connect from a network namespace each test makes (root only).

mod support;

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType::{A, PTR};
use support::dns::{Answer, FakeDns};
use support::netns::Netns;
use support::{Client, Server, TempDir, config_with};

/// A server on the namespace's host side whose DNS is the fake zone.
fn server(netns: &Netns, dns: &FakeDns, extra: &str) -> Server {
    let dir = TempDir::new("names");
    let config = config_with(dir.path(), &format!("dns_servers = {}\n{extra}", dns.addr))
        .replace("listen = 127.0.0.1:0\n", &format!("listen = {}:0\n", netns.host));
    Server::start_in(dir, &config)
}

fn queued(server: &Server) -> String {
    std::fs::read_to_string(server.queued().last().expect("a queued message")).unwrap()
}

fn ptr_name(ip: &str) -> &'static str {
    let mut parts: Vec<&str> = ip.split('.').collect();
    parts.reverse();
    Box::leak(format!("{}.in-addr.arpa", parts.join(".")).into_boxed_str())
}

#[test]
fn a_name_that_points_back_is_used() {
    let Some(ns) = Netns::new(1) else { return };
    let peer: &'static str = Box::leak(ns.peer.clone().into_boxed_str());
    let dns = FakeDns::start(&[
        (ptr_name(peer), PTR, Answer::Ptr(vec!["mx.client.test"])),
        ("mx.client.test", A, Answer::Ip(vec![peer])),
    ]);
    let server = server(&ns, &dns, "");
    let said = ns.send(&server);
    assert!(said.contains("sent"), "{said}");
    let text = queued(&server);
    assert!(text.contains(&format!("Received: from client.test (mx.client.test [{peer}])")), "{text}");
    let log = server.log();
    assert!(log.contains(&format!("connect from mx.client.test[{peer}]")), "{log}");
    assert!(log.contains(&format!(": client=mx.client.test[{peer}], from=<someone@remote.test>")), "{log}");
}

#[test]
fn a_name_that_does_not_point_back_is_unknown_and_refuses_nothing() {
    let Some(ns) = Netns::new(2) else { return };
    let peer: &'static str = Box::leak(ns.peer.clone().into_boxed_str());
    let dns = FakeDns::start(&[
        (ptr_name(peer), PTR, Answer::Ptr(vec!["forged.bank.test"])),
        ("forged.bank.test", A, Answer::Ip(vec!["192.0.2.66"])),
    ]);
    let server = server(&ns, &dns, "");
    assert!(ns.send(&server).contains("sent"));
    let text = queued(&server);
    assert!(text.contains(&format!("Received: from client.test (unknown [{peer}])")), "{text}");
    assert!(!text.contains("forged") && !server.log().contains("forged"), "{}", server.log());
    assert!(dns.queried().iter().any(|q| q == "forged.bank.test. A"), "{:?}", dns.queried());
}

#[test]
fn silent_dns_costs_at_most_the_timeout() {
    let Some(ns) = Netns::new(3) else { return };
    let peer: &'static str = Box::leak(ns.peer.clone().into_boxed_str());
    let dns = FakeDns::start(&[(ptr_name(peer), PTR, Answer::Silence)]);
    let server = server(&ns, &dns, "reverse_dns_timeout = 700ms\n");
    let started = Instant::now();
    assert!(ns.send(&server).contains("sent"));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(650), "the lookup ran, and waited: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(queued(&server).contains(&format!("(unknown [{peer}])")));
}

#[test]
fn the_lookup_can_be_switched_off() {
    let Some(ns) = Netns::new(4) else { return };
    let peer: &'static str = Box::leak(ns.peer.clone().into_boxed_str());
    let dns = FakeDns::start(&[
        (ptr_name(peer), PTR, Answer::Ptr(vec!["mx.client.test"])),
        ("mx.client.test", A, Answer::Ip(vec![peer])),
    ]);
    let server = server(&ns, &dns, "reverse_dns = off\nspf = off\ndkim_verify = off\ndmarc = off\n");
    assert!(ns.send(&server).contains("sent"));
    assert!(queued(&server).contains(&format!("(unknown [{peer}])")));
    assert!(dns.queried().is_empty(), "{:?}", dns.queried());
}

#[test]
fn a_loopback_client_is_not_looked_up() {
    let dns = FakeDns::start(&[("1.0.0.127.in-addr.arpa", PTR, Answer::Ptr(vec!["mx.client.test"]))]);
    let server = Server::start(&format!("dns_servers = {}\n", dns.addr));
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.test");
    assert!(c.mail("someone@remote.test", &["alice@example.test"], b"Subject: x\r\n\r\nhi").starts_with("250 "));
    assert!(queued(&server).contains("(unknown [127.0.0.1])"));
    assert!(dns.queried().is_empty(), "{:?}", dns.queried());
}
