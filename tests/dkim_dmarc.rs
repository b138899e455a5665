//! DKIM verification (RFC 6376 §6, RFC 8463, RFC 8301) against independent implementations,
//! and DMARC (RFC 7489) policies as `--test-sender` applies them.
//!
//! Messages are signed by Python's dkimpy (RSA and Ed25519) and Perl's Mail::DKIM (RSA); the
//! keys are served by a DNS server on loopback. `postern-smtpd --test-sender` with the message
//! gives one `dkim=` result per signature, and dkimpy, asking the same server, verifies each
//! signature too: the two must agree on which signatures pass. Where dkimpy departs from the
//! RFC, the case says what the RFC requires and why, and postern must give that.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use hickory_proto::rr::RecordType::TXT;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use support::dns::{Answer, FakeDns};
use support::netns::Netns;
use support::{Server, TempDir, config_with, instant, skip_unless};

const MESSAGE: &str = "From: Alice <alice@example.test>\r\nTo: bob@example.org\r\nSubject: a test\r\n\
                       Date: Sat, 5 Dec 2026 06:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n\
                       Hello  there \r\n\r\nBye\r\n";

use support::venv_python as python;

fn have_dkimpy() -> bool {
    support::venv_has("dkim, nacl, dns.resolver")
}

fn have_mail_dkim() -> bool {
    Command::new("perl")
        .args(["-MMail::DKIM::Signer", "-MMail::DKIM::TextWrap", "-e1"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// A signing key: what dkimpy takes (PKCS#1 PEM, or an Ed25519 seed in base64), the PEM
/// Mail::DKIM takes, and the record to publish.
struct Key {
    private: PathBuf,
    algorithm: &'static str,
    record: &'static str,
}

fn rsa_key(dir: &Path, bits: u32) -> Key {
    let rsa = Rsa::generate(bits).unwrap();
    let private = dir.join(format!("rsa{bits}.pem"));
    std::fs::write(&private, rsa.private_key_to_pem().unwrap()).unwrap();
    let public = PKey::from_rsa(rsa).unwrap().public_key_to_der().unwrap();
    let record = leak(format!("v=DKIM1; k=rsa; p={}", openssl::base64::encode_block(&public)));
    Key { private, algorithm: "rsa-sha256", record }
}

fn ed25519_key(dir: &Path) -> Key {
    let pkey = PKey::generate_ed25519().unwrap();
    let private = dir.join("ed25519.seed");
    std::fs::write(&private, openssl::base64::encode_block(&pkey.raw_private_key().unwrap())).unwrap();
    let record =
        leak(format!("v=DKIM1; k=ed25519; p={}", openssl::base64::encode_block(&pkey.raw_public_key().unwrap())));
    Key { private, algorithm: "ed25519-sha256", record }
}

/// `message` with a signature by dkimpy on top.
fn dkimpy_sign(message: &[u8], key: &Key, selector: &str, canon: &str, algorithm: &str, length: bool) -> Vec<u8> {
    dkimpy_sign_as(message, key, "example.test", selector, canon, algorithm, length)
}

/// `message` with a signature by dkimpy for `domain` on top.
fn dkimpy_sign_as(
    message: &[u8],
    key: &Key,
    domain: &str,
    selector: &str,
    canon: &str,
    algorithm: &str,
    length: bool,
) -> Vec<u8> {
    let (h, b) = canon.split_once('/').unwrap();
    let script = format!(
        "import sys, dkim\n\
         msg = sys.stdin.buffer.read()\n\
         key = open(sys.argv[1], 'rb').read().strip()\n\
         sig = dkim.sign(msg, b'{selector}', b'{domain}', key, canonicalize=(b'{h}', b'{b}'),\n\
         \x20   signature_algorithm=b'{algorithm}', length={length},\n\
         \x20   include_headers=[b'from', b'to', b'subject', b'date', b'message-id'])\n\
         sys.stdout.buffer.write(sig + msg)\n",
        length = if length { "True" } else { "False" }
    );
    run(Command::new(python()).arg("-c").arg(script).arg(&key.private), message)
}

/// `message` with a signature by Mail::DKIM on top.
fn mail_dkim_sign(message: &[u8], key: &Key, selector: &str, canon: &str) -> Vec<u8> {
    let script = "use Mail::DKIM::Signer; use Mail::DKIM::TextWrap;\n\
        my ($key, $selector, $canon) = @ARGV;\n\
        my $signer = Mail::DKIM::Signer->new(Algorithm => 'rsa-sha256', Method => $canon,\n\
          Domain => 'example.test', Selector => $selector, KeyFile => $key);\n\
        binmode STDIN; my $msg = do { local $/; <STDIN> };\n\
        $signer->PRINT($msg); $signer->CLOSE;\n\
        my $sig = $signer->signature->as_string; $sig =~ s/\\r?\\n/\\r\\n/g;\n\
        binmode STDOUT; print $sig, \"\\r\\n\", $msg;\n";
    run(Command::new("perl").arg("-e").arg(script).arg(&key.private).args([selector, canon]), message)
}

fn run(command: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// dkimpy's verdict on each signature of each message, asking `dns`: "pass", "fail" or
/// "temperror" (its DNS timeout).
fn dkimpy_verify(dns: &FakeDns, paths: &[PathBuf]) -> Vec<Vec<String>> {
    let script = format!(
        "import sys, json, dkim, dns.resolver\n\
         r = dns.resolver.Resolver(configure=False)\n\
         r.nameservers = ['{ip}']\nr.port = {port}\nr.timeout = 1\nr.lifetime = 2\n\
         dns.resolver.default_resolver = r\n\
         for path in sys.argv[1:]:\n\
         \x20   msg = open(path, 'rb').read()\n\
         \x20   d = dkim.DKIM(msg, minkey=1024, timeout=2)\n\
         \x20   n = sum(1 for h in d.headers if h[0].lower() == b'dkim-signature')\n\
         \x20   out = []\n\
         \x20   for i in range(n):\n\
         \x20       try:\n\
         \x20           out.append('pass' if d.verify(idx=i) else 'fail')\n\
         \x20       except dkim.DnsTimeoutError:\n\
         \x20           out.append('temperror')\n\
         \x20       except dkim.DKIMException:\n\
         \x20           out.append('fail')\n\
         \x20   print(json.dumps(out), flush=True)\n",
        ip = dns.addr.ip(),
        port = dns.addr.port()
    );
    let out = Command::new(python()).arg("-c").arg(script).args(paths).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    text.lines()
        .map(|l| {
            l.trim_matches(['[', ']'])
                .split(", ")
                .filter(|s| !s.is_empty())
                .map(|s| s.trim_matches('"').to_string())
                .collect()
        })
        .collect()
}

/// postern-smtpd --test-sender's `dkim=` results for the message in `path`, in order, and
/// its verdict line.
fn postern(conf: &Path, path: &Path) -> (Vec<String>, String) {
    let out = Command::new(support::smtpd_binary())
        .arg("-c")
        .arg(conf)
        .args(["--test-sender", "192.0.2.1", "mx.remote.test", "sender@remote.test"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let results =
        text.split("dkim=").skip(1).map(|r| r.split([' ', ';', '\n']).next().unwrap_or("").to_string()).collect();
    (results, text.lines().last().unwrap_or("").to_string())
}

/// Everything postern-smtpd --test-sender prints for a client at 192.0.2.1 sending `path`.
fn test_sender(conf: &Path, sender: &str, path: &Path) -> String {
    let out = Command::new(support::smtpd_binary())
        .arg("-c")
        .arg(conf)
        .args(["--test-sender", "192.0.2.1", "mx.remote.test", sender])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

struct Case {
    name: &'static str,
    message: Vec<u8>,
    /// postern's results, one per signature from the top.
    want: Vec<&'static str>,
    /// Where dkimpy departs from the RFC: its result and why the RFC's is right.
    departs: Option<(&'static str, &'static str)>,
}

#[test]
fn signatures_by_dkimpy_and_mail_dkim_verify_as_dkimpy_and_the_rfc_say() {
    if skip_unless(have_dkimpy(), "dkimpy is not in target/venv (make test-deps installs it)") {
        return;
    }
    let dir = TempDir::new("dkim-verify");
    let (rsa, ed, short, k1024) =
        (rsa_key(dir.path(), 2048), ed25519_key(dir.path()), rsa_key(dir.path(), 512), rsa_key(dir.path(), 1024));
    let name = |s: &str| leak(format!("{s}._domainkey.example.test"));
    let dns = FakeDns::start(&[
        (name("rsa"), TXT, Answer::Txt(vec![rsa.record])),
        (name("ed"), TXT, Answer::Txt(vec![ed.record])),
        (name("short"), TXT, Answer::Txt(vec![short.record])),
        (name("k1024"), TXT, Answer::Txt(vec![k1024.record])),
        (name("revoked"), TXT, Answer::Txt(vec!["v=DKIM1; k=rsa; p="])),
        (name("slow"), TXT, Answer::Silence),
    ]);
    let conf = dir.path().join("postern.conf");
    std::fs::write(&conf, config_with(dir.path(), &format!("dns_servers = {}\nspf_timeout = 3s\n", dns.addr))).unwrap();

    let m = MESSAGE.as_bytes();
    let edit = |signed: &[u8], from: &str, to: &str| {
        let text = String::from_utf8(signed.to_vec()).unwrap();
        assert!(text.contains(from), "{from}");
        text.replacen(from, to, 1).into_bytes()
    };
    let sign = |key: &Key, selector, canon| dkimpy_sign(m, key, selector, canon, key.algorithm, false);
    let case = |name, message, want: &[&'static str]| Case { name, message, want: want.to_vec(), departs: None };
    let relaxed = sign(&rsa, "rsa", "relaxed/relaxed");
    let simple = sign(&rsa, "rsa", "simple/simple");
    let mut cases = vec![
        case("rsa relaxed/simple", sign(&rsa, "rsa", "relaxed/simple"), &["pass"]),
        case("rsa simple/simple", simple.clone(), &["pass"]),
        case("rsa relaxed/relaxed", relaxed.clone(), &["pass"]),
        case("ed25519 relaxed/relaxed", sign(&ed, "ed", "relaxed/relaxed"), &["pass"]),
        case("ed25519 simple/simple", sign(&ed, "ed", "simple/simple"), &["pass"]),
        case("rsa 1024 bits", sign(&k1024, "k1024", "relaxed/simple"), &["pass"]),
        case("tampered body", edit(&relaxed, "Bye", "Bye!"), &["fail"]),
        case("tampered header", edit(&relaxed, "Subject: a test", "Subject: a toast"), &["fail"]),
        case("ed25519 tampered body", edit(&sign(&ed, "ed", "relaxed/relaxed"), "Bye", "Hi"), &["fail"]),
        case("revoked key", sign(&rsa, "revoked", "relaxed/simple"), &["fail"]),
        case("no key", sign(&rsa, "missing", "relaxed/simple"), &["permerror"]),
        case("512-bit key (RFC 8301 §3.2)", sign(&short, "short", "relaxed/simple"), &["fail"]),
        case(
            "relaxed white space",
            edit(&edit(&relaxed, "Hello  there ", "Hello \t there"), "Subject: a test", "Subject:  a   test"),
            &["pass"],
        ),
        case("simple white space", edit(&simple, "Hello  there ", "Hello there "), &["fail"]),
        case("trailing empty lines, simple", [simple.as_slice(), b"\r\n\r\n"].concat(), &["pass"]),
        case("trailing empty lines, relaxed", [relaxed.as_slice(), b"\r\n\r\n\r\n"].concat(), &["pass"]),
        case(
            "l= with text appended",
            [dkimpy_sign(m, &rsa, "rsa", "relaxed/simple", "rsa-sha256", true).as_slice(), b"appended\r\n"].concat(),
            &["pass"],
        ),
        case(
            "two signatures, one good",
            dkimpy_sign(&relaxed, &rsa, "missing", "relaxed/simple", "rsa-sha256", false),
            &["permerror", "pass"],
        ),
    ];
    cases.push(Case {
        name: "DNS timeout",
        message: sign(&rsa, "slow", "relaxed/simple"),
        want: vec!["temperror"],
        departs: Some(("fail", "RFC 6376 §6.1.2: a key query that gets no answer is TEMPFAIL, to try again later")),
    });
    cases.push(Case {
        name: "rsa-sha1",
        message: dkimpy_sign(m, &rsa, "rsa", "relaxed/simple", "rsa-sha1", false),
        want: vec!["fail"],
        departs: Some(("pass", "RFC 8301 §3.1: verifiers must not consider rsa-sha1 signatures valid")),
    });
    if have_mail_dkim() {
        cases.push(case("Mail::DKIM relaxed/relaxed", mail_dkim_sign(m, &rsa, "rsa", "relaxed/relaxed"), &["pass"]));
        cases.push(case("Mail::DKIM simple/simple", mail_dkim_sign(m, &rsa, "rsa", "simple/simple"), &["pass"]));
        cases.push(case(
            "Mail::DKIM tampered",
            edit(&mail_dkim_sign(m, &rsa, "rsa", "relaxed/simple"), "Bye", "Bye."),
            &["fail"],
        ));
    } else {
        eprintln!("SKIP: Mail::DKIM is missing: its three cases are not run");
    }

    let paths: Vec<PathBuf> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let path = dir.path().join(format!("m{i}.eml"));
            std::fs::write(&path, &c.message).unwrap();
            path
        })
        .collect();
    let theirs = dkimpy_verify(&dns, &paths);
    assert_eq!(theirs.len(), cases.len());
    let mut wrong = Vec::new();
    for ((case, path), theirs) in cases.iter().zip(&paths).zip(&theirs) {
        let (ours, verdict) = postern(&conf, path);
        eprintln!("{}: postern {ours:?}, dkimpy {theirs:?}", case.name);
        assert_eq!(verdict, "verdict: accept", "{}: DKIM alone never refuses (RFC 6376 §6.3)", case.name);
        if ours != case.want {
            wrong.push(format!("{}: postern {ours:?}, want {:?}", case.name, case.want));
        }
        // dkimpy says pass or fail (it folds permerror into fail), or temperror.
        let ours_as_theirs: Vec<&str> =
            ours.iter().map(|r| if r == "permerror" { "fail" } else { r.as_str() }).collect();
        match case.departs {
            None if ours_as_theirs != *theirs => {
                wrong.push(format!("{}: postern {ours:?}, dkimpy {theirs:?}", case.name))
            }
            Some((theirs_departs, why)) => {
                assert_eq!(
                    theirs,
                    &[theirs_departs],
                    "{}: dkimpy agrees with the RFC now; drop the note ({why})",
                    case.name
                )
            }
            None => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn an_unsigned_message_is_dkim_none_and_without_a_message_nothing_reads_it() {
    let dir = TempDir::new("dkim-none");
    let dns = FakeDns::start(&[]);
    let conf = dir.path().join("postern.conf");
    std::fs::write(&conf, config_with(dir.path(), &format!("dns_servers = {}\nspf_timeout = 3s\n", dns.addr))).unwrap();
    let path = dir.path().join("m.eml");
    std::fs::write(&path, MESSAGE).unwrap();
    let (ours, verdict) = postern(&conf, &path);
    assert_eq!(ours, ["none"]);
    assert_eq!(verdict, "verdict: accept");
    // No message file: nothing that reads the message is run.
    let out = Command::new(support::smtpd_binary())
        .arg("-c")
        .arg(&conf)
        .args(["--test-sender", "192.0.2.1", "mx.remote.test", "sender@remote.test"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.contains("dkim="), "{text}");
}

#[test]
fn dmarc_policies_decide_the_verdict() {
    let dir = TempDir::new("dmarc");
    let rsa = rsa_key(dir.path(), 2048);
    let dns = FakeDns::start(&[
        ("rsa._domainkey.example.test", TXT, Answer::Txt(vec![rsa.record])),
        ("_dmarc.example.test", TXT, Answer::Txt(vec!["v=DMARC1; p=reject; sp=quarantine"])),
        ("_dmarc.quarantine.test", TXT, Answer::Txt(vec!["v=DMARC1; p=quarantine"])),
        ("_dmarc.watch.test", TXT, Answer::Txt(vec!["v=DMARC1; p=none; rua=mailto:d@watch.test"])),
        ("_dmarc.slow.test", TXT, Answer::Silence),
        ("remote.test", TXT, Answer::Txt(vec!["v=spf1 ip4:192.0.2.1 -all"])),
        ("mail.example.test", TXT, Answer::Txt(vec!["v=spf1 ip4:192.0.2.1 -all"])),
    ]);
    let conf = dir.path().join("postern.conf");
    std::fs::write(&conf, config_with(dir.path(), &format!("dns_servers = {}\nspf_timeout = 3s\n", dns.addr))).unwrap();
    let from = |author: &str| MESSAGE.replace("Alice <alice@example.test>", author).into_bytes();
    let mut cases: Vec<(&str, &str, Vec<u8>, &str, &str)> = vec![
        // (name, MAIL FROM, message, dmarc= in the field, verdict line)
        (
            "p=reject",
            "sender@remote.test",
            from("alice@example.test"),
            "dmarc=fail (p=reject dis=reject)",
            "verdict: reject 550 5.7.26 ",
        ),
        (
            "sp=quarantine",
            "sender@remote.test",
            from("a@news.example.test"),
            "dmarc=fail (p=quarantine dis=quarantine)",
            "verdict: quarantine",
        ),
        (
            "p=quarantine",
            "sender@remote.test",
            from("a@quarantine.test"),
            "dmarc=fail (p=quarantine",
            "verdict: quarantine",
        ),
        ("p=none", "sender@remote.test", from("a@watch.test"), "dmarc=fail (p=none dis=none)", "verdict: accept"),
        (
            "no policy",
            "sender@remote.test",
            from("a@nodmarc.test"),
            "dmarc=none header.from=nodmarc.test",
            "verdict: accept",
        ),
        ("DNS timeout", "sender@remote.test", from("a@slow.test"), "dmarc=temperror", "verdict: accept"),
        (
            "SPF aligned",
            "bounce@mail.example.test",
            from("alice@example.test"),
            "dmarc=pass (p=reject dis=none)",
            "verdict: accept",
        ),
        ("two authors", "sender@remote.test", from("a@watch.test, b@watch.test"), "", "verdict: reject 550 5.7.1 "),
        (
            "no author",
            "sender@remote.test",
            MESSAGE.replace("From: Alice <alice@example.test>\r\n", "").into_bytes(),
            "",
            "verdict: reject 550 5.7.1 ",
        ),
    ];
    if have_dkimpy() {
        let signed = dkimpy_sign(MESSAGE.as_bytes(), &rsa, "rsa", "relaxed/relaxed", "rsa-sha256", false);
        let forwarded = String::from_utf8(signed.clone()).unwrap().replace("Bye", "Bye [scanned]").into_bytes();
        cases.push(("DKIM aligned, forwarded", "list@remote.test", signed, "dmarc=pass", "verdict: accept"));
        cases.push((
            "DKIM broken in transit",
            "list@remote.test",
            forwarded,
            "dmarc=fail",
            "verdict: reject 550 5.7.26 ",
        ));
    } else {
        eprintln!("SKIP: dkimpy is not in target/venv: the two signed DMARC cases are not run");
    }
    for (i, (name, sender, message, field, verdict)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("d{i}.eml"));
        std::fs::write(&path, message).unwrap();
        let text = test_sender(&conf, sender, &path);
        let last = text.lines().last().unwrap_or("");
        assert!(last.starts_with(verdict), "{name}: {last}\n{text}");
        assert!(text.contains(field), "{name}: no {field:?} in\n{text}");
    }
}

fn have_pydmarc() -> bool {
    support::venv_has("dkim, dmarc, publicsuffix2")
}

/// Python's dmarc library on each case: (From: domain, the record found, the domain it was
/// found at when that is not the From: domain, SPF's result and domain, DKIM's results and
/// domains) -> (result, disposition). Its organizational domains come from the public suffix
/// list (publicsuffix2), with the list's default rule `*` for a name no rule matches
/// (publicsuffix2 itself answers the bare top-level label there, which would align everything).
fn pydmarc(cases: &[String]) -> Vec<(String, String)> {
    let script = "import sys, json, dmarc, publicsuffix2\n\
        psl = publicsuffix2.PublicSuffixList()\n\
        class Org:\n\
        \x20   def get_public_suffix(self, d):\n\
        \x20       return psl.get_sld(d, strict=True) or '.'.join(d.split('.')[-2:])\n\
        for line in sys.stdin:\n\
        \x20   frm, record, org, spf, spf_domain, dkims = json.loads(line)\n\
        \x20   policy = dmarc.DMARCPolicy(record=record, domain=frm, org_domain=org, publicsuffix=Org())\n\
        \x20   results = [dmarc.SPF(spf_domain, dmarc.SPFResult(spf))]\n\
        \x20   results += [dmarc.DKIM(d, dmarc.DKIMResult(r)) for r, d in dkims]\n\
        \x20   try:\n\
        \x20       policy.verify(auth_results=results)\n\
        \x20   except dmarc.PolicyError:\n\
        \x20       pass\n\
        \x20   print(json.dumps([policy.result.result.value, policy.result.disposition.name.lower()]), flush=True)\n";
    let input: String = cases.iter().map(|c| format!("{c}\n")).collect();
    let out = run(Command::new(python()).arg("-c").arg(script), input.as_bytes());
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let parts: Vec<&str> = l.trim_matches(['[', ']']).split(", ").map(|s| s.trim_matches('"')).collect();
            (parts[0].to_string(), parts.get(1).unwrap_or(&"").to_string())
        })
        .collect()
}

/// The value of `key=` in postern's output, up to the next space, semicolon or line end.
fn after<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.split(key).skip(1).map(|r| r.split([' ', ';', '\n', ')']).next().unwrap_or("")).collect()
}

#[test]
fn dmarc_agrees_with_python_dmarc_on_alignment_and_policy() {
    if skip_unless(have_pydmarc(), "dkimpy or dmarc is not in target/venv (make test-deps installs them)") {
        return;
    }
    let dir = TempDir::new("dmarc-oracle");
    let rsa = rsa_key(dir.path(), 2048);
    let orgs = [
        ("org1.test", "v=DMARC1; p=reject"),
        ("org2.test", "v=DMARC1; p=quarantine; sp=reject; adkim=s; aspf=s"),
        ("org3.test", "v=DMARC1; p=none; sp=quarantine; aspf=s"),
    ];
    let mut zone = vec![("s._domainkey.other.test", TXT, Answer::Txt(vec![rsa.record]))];
    let spf_pass = Answer::Txt(vec!["v=spf1 ip4:192.0.2.1 -all"]);
    zone.push(("other.test", TXT, spf_pass.clone()));
    for (org, record) in orgs {
        zone.push((leak(format!("_dmarc.{org}")), TXT, Answer::Txt(vec![record])));
        for host in [org.to_string(), format!("mail.{org}")] {
            zone.push((leak(format!("s._domainkey.{host}")), TXT, Answer::Txt(vec![rsa.record])));
            zone.push((leak(host), TXT, spf_pass.clone()));
        }
        zone.push((leak(format!("bad.{org}")), TXT, Answer::Txt(vec!["v=spf1 -all"])));
    }
    let dns = FakeDns::start(&zone);
    let conf = dir.path().join("postern.conf");
    std::fs::write(
        &conf,
        config_with(dir.path(), &format!("dns_servers = {}\nspf_timeout = 3s\nspf_fail = accept\n", dns.addr)),
    )
    .unwrap();

    let mut ours = Vec::new();
    let mut inputs = Vec::new();
    let mut names = Vec::new();
    for (org, record) in orgs {
        for author in [org.to_string(), format!("news.{org}")] {
            let message = MESSAGE.replace("alice@example.test", &format!("alice@{author}"));
            for signer in ["", org, leak(format!("mail.{org}")), "other.test"] {
                let signed = if signer.is_empty() {
                    message.clone().into_bytes()
                } else {
                    dkimpy_sign_as(message.as_bytes(), &rsa, signer, "s", "relaxed/relaxed", "rsa-sha256", false)
                };
                let path = dir.path().join(format!("o{}.eml", names.len()));
                std::fs::write(&path, &signed).unwrap();
                for sender in
                    [format!("b@{org}"), format!("b@mail.{org}"), "b@other.test".into(), format!("b@bad.{org}")]
                {
                    let text = test_sender(&conf, &sender, &path);
                    let spf = after(&text, "\tspf=").first().unwrap_or_else(|| panic!("{text}")).to_string();
                    let spf_domain = sender.split('@').nth(1).unwrap().to_string();
                    let dkim: Vec<String> = after(&text, "dkim=")
                        .iter()
                        .zip(after(&text, "header.d=").iter().chain(std::iter::repeat(&"")))
                        .filter(|(r, _)| **r != "none")
                        .map(|(r, d)| format!("[\"{r}\", \"{d}\"]"))
                        .collect();
                    let dmarc = after(&text, "dmarc=")[0].to_string();
                    let dis = after(&text, " dis=").first().copied().unwrap_or("").to_string();
                    let org_domain = if author == org { "null".to_string() } else { format!("\"{org}\"") };
                    inputs.push(format!(
                        "[\"{author}\", \"{record}\", {org_domain}, \"{spf}\", \"{spf_domain}\", [{}]]",
                        dkim.join(", ")
                    ));
                    ours.push((dmarc, dis, text.lines().last().unwrap_or("").to_string()));
                    names.push(format!("From {author}, signed by {signer:?}, MAIL FROM {sender}"));
                }
            }
        }
    }
    let theirs = pydmarc(&inputs);
    assert_eq!(theirs.len(), ours.len());
    let mut wrong = Vec::new();
    let mut tally = std::collections::BTreeMap::new();
    for ((name, (dmarc, dis, verdict)), (their_result, their_dis)) in names.iter().zip(&ours).zip(&theirs) {
        *tally.entry(format!("{dmarc} {dis}")).or_insert(0) += 1;
        if dmarc != their_result || (dmarc == "fail" && dis != their_dis) {
            wrong.push(format!("{name}: postern {dmarc} {dis}, dmarc library {their_result} {their_dis}"));
        }
        let want = match (dmarc.as_str(), dis.as_str()) {
            ("fail", "reject") => "verdict: reject 550 5.7.26 ",
            ("fail", "quarantine") => "verdict: quarantine",
            _ => "verdict: accept",
        };
        assert!(verdict.starts_with(want), "{name}: {verdict}");
    }
    eprintln!("{} cases: {tally:?}", names.len());
    assert!(tally.keys().any(|k| k.starts_with("pass")), "{tally:?}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for seen in ["pass none", "fail reject", "fail quarantine", "fail none"] {
        assert!(tally.contains_key(seen), "no case gave {seen}: {tally:?}");
    }
}

/// `message` sent from inside the namespace with MAIL FROM `from` to alice; what DATA (or
/// the command that failed) was answered.
fn send_in(ns: &Netns, server: &Server, from: &str, message: &[u8]) -> String {
    let file = server.dir.path().join(format!("out-{}.eml", message.len()));
    std::fs::write(&file, message).unwrap();
    let script = format!(
        "import smtplib\ns = smtplib.SMTP('{host}', {port}, timeout=30)\ns.ehlo('mx.sender.test')\n\
         msg = open('{file}', 'rb').read()\n\
         try:\n    s.sendmail('{from}', ['alice@example.test'], msg)\n    print('DATA 250')\n\
         except smtplib.SMTPDataError as e:\n    print('DATA', e.smtp_code, e.smtp_error.decode())\n\
         except smtplib.SMTPServerDisconnected as e:\n    print('lost', e)\n",
        host = ns.host,
        port = server.addr.port(),
        file = file.display()
    );
    ns.python(&script)
}

/// A message from `author`, with a body of `body` octets.
fn authored(author: &str, body: usize) -> Vec<u8> {
    let mut text = MESSAGE.replace("Alice <alice@example.test>", author).into_bytes();
    text.extend((0..body).map(|i| if i % 70 == 69 { b'\n' } else { b'a' + (i % 26) as u8 }).flat_map(|b| match b {
        b'\n' => vec![b'\r', b'\n'],
        b => vec![b],
    }));
    text.extend_from_slice(b"\r\n");
    text
}

/// End to end over SMTP, from a client that is neither on loopback nor trusted: a p=reject
/// failure is refused after the final dot and nothing is kept; a p=quarantine failure (large
/// enough to be written before the checks end) lands in the recipient's Junk folder marked
/// X-Spam; a forwarded message whose DKIM signature still verifies passes DMARC though its
/// SPF does not; an author count other than one is refused; a trusted client is not checked.
#[test]
fn through_smtp_dmarc_refuses_quarantines_into_junk_and_lets_a_signed_forward_through() {
    if skip_unless(have_dkimpy(), "dkimpy is not in target/venv (make test-deps installs it)") {
        return;
    }
    let Some(ns) = Netns::new(21) else { return };
    let dir = TempDir::new("dmarc-smtp");
    let rsa = rsa_key(dir.path(), 2048);
    let dns = FakeDns::start(&[
        ("reject.test", TXT, Answer::Txt(vec!["v=spf1 ~all"])),
        ("_dmarc.reject.test", TXT, Answer::Txt(vec!["v=DMARC1; p=reject"])),
        ("quarantine.test", TXT, Answer::Txt(vec!["v=spf1 ~all"])),
        ("_dmarc.quarantine.test", TXT, Answer::Txt(vec!["v=DMARC1; p=quarantine"])),
        ("forwarded.test", TXT, Answer::Txt(vec!["v=spf1 ip4:192.0.2.1 ~all"])),
        ("_dmarc.forwarded.test", TXT, Answer::Txt(vec!["v=DMARC1; p=reject"])),
        ("sel._domainkey.forwarded.test", TXT, Answer::Txt(vec![rsa.record])),
    ]);
    let extra = format!("dns_servers = {}\nreverse_dns = off\ntrusted_networks = {}/32\n", dns.addr, ns.host);
    let config = instant(&config_with(dir.path(), &extra))
        .replace("listen = 127.0.0.1:0\n", &format!("listen = {}:0\n", ns.host));
    let server = Server::start_in(dir, &config);
    let inbox = server.dir.path().join("maildirs/alice");

    let said = send_in(&ns, &server, "boss@reject.test", &authored("boss@reject.test", 100));
    assert!(said.contains("DATA 550 5.7.26 DMARC: reject.test refuses mail"), "{said}");
    let said = send_in(&ns, &server, "boss@quarantine.test", &authored("a@quarantine.test, b@quarantine.test", 10));
    assert!(said.contains("DATA 550 5.7.1 Message rejected: 2 author addresses in From:"), "{said}");

    // Larger than what a draft holds in memory: its fields come with a second draft.
    let big = authored("Boss <boss@quarantine.test>", 200 * 1024);
    let said = send_in(&ns, &server, "boss@quarantine.test", &big);
    assert!(said.contains("DATA 250"), "{said}");
    let junk = inbox.join(".Junk");
    wait_until(|| !support::maildir(&junk).is_empty());
    let copies = support::maildir(&junk);
    assert_eq!(copies.len(), 1, "{}", server.log());
    let copy = copies[0].replace('\n', "\r\n");
    assert!(
        copy.contains("\tdmarc=fail (p=quarantine dis=quarantine) reason=\"no aligned SPF or DKIM pass\""),
        "{copy}"
    );
    assert!(copy.contains("\tmechanism=\"~all\";\r\nX-Spam: Yes\r\nReceived: from mx.sender.test"), "{copy}");
    assert!(copy.ends_with(std::str::from_utf8(&big).unwrap()), "the message follows its fields whole");
    assert!(junk.join("maildirfolder").exists());

    // A forward: its SPF fails (softfail) but the author domain's signature verifies.
    let signed = dkimpy_sign_as(
        &authored("Boss <boss@forwarded.test>", 500),
        &rsa,
        "forwarded.test",
        "sel",
        "relaxed/relaxed",
        "rsa-sha256",
        false,
    );
    let said = send_in(&ns, &server, "boss@forwarded.test", &signed);
    assert!(said.contains("DATA 250"), "{said}");
    wait_until(|| !support::maildir(&inbox).is_empty());
    let copies = support::maildir(&inbox);
    assert_eq!(copies.len(), 1, "{}", server.log());
    let copy = copies[0].replace('\n', "\r\n");
    for want in [
        "\tspf=softfail smtp.mailfrom=boss@forwarded.test;\r\n",
        "\tdkim=pass header.d=forwarded.test header.s=sel;\r\n",
        "\tdmarc=pass (p=reject dis=none) header.from=forwarded.test\r\n",
    ] {
        assert!(copy.contains(want), "no {want:?} in\n{copy}");
    }
    assert!(!copy.contains("X-Spam"), "{copy}");

    // A trusted client (this side of the link) is not checked: the p=reject author passes.
    let mut client = support::Client::greeted(server.addr);
    assert!(client.cmd("EHLO trusted.test").starts_with("250"));
    let reply = client.mail("boss@reject.test", &["alice@example.test"], &authored("boss@reject.test", 10));
    assert!(reply.starts_with("250 "), "{reply}");

    let log = server.log();
    assert!(log.contains("NOQUEUE: reject: DATA from unknown["), "{log}");
    assert!(log.contains("550 5.7.26 DMARC: reject.test refuses mail"), "{log}");
    assert!(log.contains(": dkim=none, dmarc=fail (quarantine.test, p=quarantine), quarantined"), "{log}");
    assert!(log.contains(": dkim=pass (forwarded.test), dmarc=pass (forwarded.test, p=reject)"), "{log}");
    // The refused messages left nothing behind; the others were delivered, and are gone.
    let spool = server.spool();
    assert!(wait_until(|| support::waiting(&spool).is_empty() && support::maildir(&inbox).len() == 2), "{log}");
    let trusted: Vec<String> = support::maildir(&inbox).into_iter().filter(|m| m.contains("reject.test")).collect();
    assert_eq!(trusted.len(), 1, "only the trusted client's copy");
    assert!(!trusted[0].contains("dmarc="), "{}", trusted[0]);
    assert_eq!(support::maildir(&junk).len(), 1);
}

/// Whether `done` came true within ten seconds (instant delivery runs apart from the reply).
fn wait_until(done: impl Fn() -> bool) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        if std::time::Instant::now() > until {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}

/// The boundary a second draft adds (doc/queue.md, S1): killed once the copy with the
/// checks' fields on top is written and before the first draft is removed, the server
/// answers nothing and queues nothing. Its drafts are anonymous files, which leave nothing
/// behind; where they are named in `tmp/` (a filesystem without anonymous files), both are
/// left there, and the server sweeps them when it starts again. The client's second try is
/// taken.
#[test]
fn killed_while_a_second_draft_is_written_nothing_is_queued_and_both_drafts_are_swept() {
    let Some(ns) = Netns::new(22) else { return };
    killed_while_a_second_draft_is_written(&ns, true);
    killed_while_a_second_draft_is_written(&ns, false);
}

fn killed_while_a_second_draft_is_written(ns: &Netns, named: bool) {
    let dir = TempDir::new("second-draft");
    let dns = FakeDns::start(&[
        ("quarantine.test", TXT, Answer::Txt(vec!["v=spf1 ~all"])),
        ("_dmarc.quarantine.test", TXT, Answer::Txt(vec!["v=DMARC1; p=quarantine"])),
    ]);
    let extra = format!("dns_servers = {}\nreverse_dns = off\n", dns.addr);
    let config =
        config_with(dir.path(), &extra).replace("listen = 127.0.0.1:0\n", &format!("listen = {}:0\n", ns.host));
    let mut wrapper = vec!["env", "POSTERN_CRASH_AT=second-draft-written"];
    if named {
        wrapper.push("POSTERN_NAMED_DRAFTS=1");
    }
    let mut server = Server::start_wrapped(dir, &config, &wrapper);
    let spool = server.spool();
    let big = authored("boss@quarantine.test", 100 * 1024);
    let said = send_in(ns, &server, "boss@quarantine.test", &big);
    assert!(said.contains("lost") && !said.contains("DATA 250"), "{said}");
    assert!(server.exits_within(std::time::Duration::from_secs(10)), "the crash point stops the server");
    let mut left: Vec<String> = support::list(&spool.join("tmp"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert!(support::waiting(&spool).is_empty(), "nothing queued");
    if !named {
        assert!(left.is_empty(), "anonymous drafts leave nothing: {left:?}");
        return;
    }
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[1], format!("{}.1", left[0]), "the first draft and its second");

    let dir = server.kill9();
    let server = Server::start_in(dir, &config);
    // The sweep runs as the server starts, once its listeners are open.
    let swept = wait_until(|| server.log().matches("removed leftover").count() == 2);
    assert!(swept && support::list(&spool.join("tmp")).is_empty(), "both swept at start: {}", server.log());
    let said = send_in(ns, &server, "boss@quarantine.test", &big);
    assert!(said.contains("DATA 250"), "{said}");
    let queued = server.queued();
    assert_eq!(queued.len(), 1);
    let text = std::fs::read(&queued[0]).unwrap();
    assert!(String::from_utf8_lossy(&text).contains("\nquarantine: yes\n"), "the envelope says so");
    assert!(text.ends_with(&big), "the message whole after its fields");
}
