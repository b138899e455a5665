//! DANE for SMTP (RFC 7672): TLSA records at `_PORT._tcp.MX`, believed only when a
//! validating resolver says they are DNSSEC-authenticated (the AD bit), and the server's
//! certificate chain checked against them.
//!
//! All of it is pure: the question as bytes, the answer read from bytes, the match of a
//! chain against records. `dns::tlsa` sends the question.

use openssl::hash::MessageDigest;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509, X509StoreContext};

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use crate::dns::DnsFailure;

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// RFC 7672 §3.1: DANE-TA(2) and DANE-EE(3) are the usages for SMTP.
pub const DANE_TA: u8 = 2;
pub const DANE_EE: u8 = 3;

impl Tlsa {
    /// RFC 7672 §3.1.3, RFC 7671 §4: a DANE-TA or DANE-EE record of the full certificate
    /// or its public key, exact or by SHA-256 or SHA-512, with data of the right length.
    pub fn is_usable(&self) -> bool {
        let length_ok = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        matches!(self.usage, DANE_TA | DANE_EE) && self.selector <= 1 && length_ok
    }

    /// Whether this record names `cert` (its full DER, or its public key's).
    pub fn matches(&self, cert: &X509) -> bool {
        let selected = match self.selector {
            0 => cert.to_der(),
            _ => cert.public_key().and_then(|k| k.public_key_to_der()),
        };
        let Ok(selected) = selected else { return false };
        let digest = match self.matching {
            0 => return selected == self.data,
            1 => MessageDigest::sha256(),
            _ => MessageDigest::sha512(),
        };
        openssl::hash::hash(digest, &selected).is_ok_and(|h| *h == *self.data)
    }
}

/// What DNS says about a host's TLSA records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Authenticated records (the AD bit): DANE applies to the host.
    Secure(Vec<Tlsa>),
    /// No records, or records DNSSEC did not authenticate: DANE does not apply.
    NotSecure,
}

/// The question for `name`'s TLSA records, with AD set (RFC 6840 §5.7) and EDNS's DO bit
/// (RFC 3225), so that a validating resolver says whether it authenticated the answer.
pub fn question(id: u16, name: &str) -> Result<Vec<u8>, DnsFailure> {
    let name = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| DnsFailure::Temporary(format!("{name}: {e}")))?;
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.authentic_data = true;
    message.add_query(Query::query(name, RecordType::TLSA));
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true);
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message.to_vec().map_err(|e| DnsFailure::Temporary(e.to_string()))
}

/// Reads the reply to `question(id, name)`. `Ok(None)`: truncated, ask again over TCP.
pub fn read_answer(bytes: &[u8], id: u16, name: &str) -> Result<Option<Answer>, DnsFailure> {
    let reply =
        Message::from_vec(bytes).map_err(|e| DnsFailure::Temporary(format!("a reply that does not parse: {e}")))?;
    let asked =
        reply.queries.first().map(|q| (q.name().to_ascii().trim_end_matches('.').to_lowercase(), q.query_type()));
    let wanted = (name.trim_end_matches('.').to_lowercase(), RecordType::TLSA);
    if reply.metadata.id != id || reply.metadata.message_type != MessageType::Response || asked != Some(wanted) {
        return Err(DnsFailure::Temporary("a reply to another question".into()));
    }
    if reply.metadata.truncation {
        return Ok(None);
    }
    match reply.metadata.response_code {
        ResponseCode::NoError => {}
        // RFC 7672 §2.2.1: a denial, secure or not, means no DANE.
        ResponseCode::NXDomain => return Ok(Some(Answer::NotSecure)),
        code => return Err(DnsFailure::Temporary(format!("the resolver says {code}"))),
    }
    let records: Vec<Tlsa> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TLSA(t) => Some(Tlsa {
                usage: t.cert_usage.into(),
                selector: t.selector.into(),
                matching: t.matching.into(),
                data: t.cert_data.clone(),
            }),
            _ => None,
        })
        .collect();
    // RFC 7672 §2.1.1: only authenticated records count.
    if records.is_empty() || !reply.metadata.authentic_data {
        return Ok(Some(Answer::NotSecure));
    }
    Ok(Some(Answer::Secure(records)))
}

/// RFC 7672 §3.1: whether the server's `chain` (its certificate first, as sent) matches one
/// of the usable `records`: a DANE-EE record its certificate (name and dates not checked,
/// §3.1.1), or a DANE-TA record a certificate of the chain that the server's certificate,
/// valid for `host` (§3.2.2), chains up to (§3.1.2). Returns which kind matched.
pub fn verify(records: &[Tlsa], chain: &[X509], host: &str) -> Result<&'static str, String> {
    let Some(leaf) = chain.first() else { return Err("the server sent no certificate".into()) };
    let usable = records.iter().filter(|r| r.is_usable());
    if usable.clone().any(|r| r.usage == DANE_EE && r.matches(leaf)) {
        return Ok("DANE-EE");
    }
    let mut why = "no TLSA record matches the server's certificate chain".to_string();
    for (i, anchor) in chain.iter().enumerate().skip(1) {
        if !usable.clone().any(|r| r.usage == DANE_TA && r.matches(anchor)) {
            continue;
        }
        match chains_to(leaf, &chain[1..i], anchor, host) {
            Ok(()) => return Ok("DANE-TA"),
            Err(e) => why = format!("the trust anchor matches, but {e}"),
        }
    }
    Err(why)
}

/// Whether `leaf`, through `between`, chains up to `anchor` and is valid now for `host`.
fn chains_to(leaf: &X509, between: &[X509], anchor: &X509, host: &str) -> Result<(), String> {
    let text = |e: openssl::error::ErrorStack| e.to_string();
    let mut store = X509StoreBuilder::new().map_err(text)?;
    store.add_cert(anchor.clone()).map_err(text)?;
    let mut param = X509VerifyParam::new().map_err(text)?;
    // The anchor need not be a self-signed root (RFC 7671 §5.2.2).
    param.set_flags(X509VerifyFlags::PARTIAL_CHAIN).map_err(text)?;
    param.set_host(host.trim_end_matches('.')).map_err(text)?;
    store.set_param(&param).map_err(text)?;
    let store = store.build();
    let mut untrusted = Stack::new().map_err(text)?;
    for cert in between {
        untrusted.push(cert.clone()).map_err(text)?;
    }
    let mut context = X509StoreContext::new().map_err(text)?;
    let verdict = context
        .init(&store, leaf, &untrusted, |c| Ok(c.verify_cert()?.then_some(()).ok_or(c.error())))
        .map_err(text)?;
    verdict.map_err(|e| format!("the server's certificate does not chain to it for {host}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509Builder, X509NameBuilder};

    fn key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    /// A certificate for `cn` (a CA when `ca`), signed by `issuer` (itself when `None`).
    fn cert(cn: &str, ca: bool, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>) -> X509 {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap()).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(issuer.map_or(&name, |(c, _)| c.subject_name())).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
        if ca {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
        } else {
            let san = SubjectAlternativeName::new().dns(cn).build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None));
            b.append_extension(san.unwrap()).unwrap();
        }
        b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256()).unwrap();
        b.build()
    }

    fn record(usage: u8, selector: u8, matching: u8, cert: &X509) -> Tlsa {
        let selected = if selector == 0 {
            cert.to_der().unwrap()
        } else {
            cert.public_key().unwrap().public_key_to_der().unwrap()
        };
        let data = match matching {
            0 => selected,
            1 => openssl::sha::sha256(&selected).to_vec(),
            _ => openssl::sha::sha512(&selected).to_vec(),
        };
        Tlsa { usage, selector, matching, data }
    }

    #[test]
    fn dane_ee_matches_the_certificate_or_its_key_whatever_its_name() {
        let k = key();
        let leaf = cert("other-name.test", false, &k, None);
        for (selector, matching) in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)] {
            let r = record(DANE_EE, selector, matching, &leaf);
            assert!(r.is_usable());
            assert_eq!(
                verify(&[r], std::slice::from_ref(&leaf), "mx.example.test"),
                Ok("DANE-EE"),
                "{selector} {matching}"
            );
        }
        let stranger = cert("mx.example.test", false, &key(), None);
        assert!(verify(&[record(DANE_EE, 1, 1, &stranger)], std::slice::from_ref(&leaf), "mx.example.test").is_err());
    }

    #[test]
    fn dane_ta_needs_the_chain_and_the_name() {
        let (ca_key, leaf_key) = (key(), key());
        let ca = cert("Test CA", true, &ca_key, None);
        let leaf = cert("mx.example.test", false, &leaf_key, Some((&ca, &ca_key)));
        let chain = [leaf.clone(), ca.clone()];
        for (selector, matching) in [(0, 1), (1, 1), (0, 2), (1, 2)] {
            assert_eq!(verify(&[record(DANE_TA, selector, matching, &ca)], &chain, "mx.example.test"), Ok("DANE-TA"));
        }
        let ta = [record(DANE_TA, 1, 1, &ca)];
        let e = verify(&ta, &chain, "other.example.test").unwrap_err();
        assert!(e.contains("does not chain to it for other.example.test"), "{e}");
        assert!(verify(&ta, std::slice::from_ref(&leaf), "mx.example.test").is_err(), "the anchor must be sent");
        // A TA record for the leaf itself, or an EE record for the CA, is no match.
        assert!(verify(&[record(DANE_TA, 1, 1, &leaf)], &chain, "mx.example.test").is_err());
        assert!(verify(&[record(DANE_EE, 1, 1, &ca)], &chain, "mx.example.test").is_err());
        // A leaf from another CA that sends our CA along does not chain to it.
        let rogue_key = key();
        let rogue_ca = cert("Test CA", true, &rogue_key, None);
        let rogue = cert("mx.example.test", false, &key(), Some((&rogue_ca, &rogue_key)));
        assert!(verify(&ta, &[rogue, ca], "mx.example.test").is_err());
    }

    #[test]
    fn only_dane_usages_with_known_selectors_and_digests_are_usable() {
        let leaf = cert("mx.example.test", false, &key(), None);
        let ok = record(DANE_EE, 1, 1, &leaf);
        for unusable in [
            Tlsa { usage: 0, ..ok.clone() },
            Tlsa { usage: 1, ..ok.clone() },
            Tlsa { selector: 2, ..ok.clone() },
            Tlsa { matching: 3, ..ok.clone() },
            Tlsa { data: vec![0; 31], ..ok.clone() },
            Tlsa { matching: 2, ..ok.clone() },
        ] {
            assert!(!unusable.is_usable(), "{unusable:?}");
            assert!(verify(&[unusable], std::slice::from_ref(&leaf), "mx.example.test").is_err());
        }
        assert!(verify(&[ok], &[], "mx.example.test").is_err(), "no certificate");
    }

    fn reply(id: u16, name: &str, ad: bool, code: ResponseCode, records: &[Tlsa]) -> Vec<u8> {
        use hickory_resolver::proto::rr::Record;
        use hickory_resolver::proto::rr::rdata::TLSA;
        let question = Message::from_vec(&question(id, name).unwrap()).unwrap();
        assert!(question.metadata.authentic_data && question.edns.as_ref().unwrap().flags().dnssec_ok);
        let mut m = Message::response(id, OpCode::Query);
        m.metadata.authentic_data = ad;
        m.metadata.response_code = code;
        m.queries = question.queries.clone();
        for r in records {
            let rdata = TLSA::new(r.usage.into(), r.selector.into(), r.matching.into(), r.data.clone());
            m.answers.push(Record::from_rdata(Name::from_ascii(format!("{name}.")).unwrap(), 60, RData::TLSA(rdata)));
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn only_authenticated_records_count() {
        let name = "_25._tcp.mx.example.test";
        let r = Tlsa { usage: 3, selector: 1, matching: 1, data: vec![7; 32] };
        let secure = reply(9, name, true, ResponseCode::NoError, std::slice::from_ref(&r));
        assert_eq!(read_answer(&secure, 9, name), Ok(Some(Answer::Secure(vec![r.clone()]))));
        let forged = reply(9, name, false, ResponseCode::NoError, std::slice::from_ref(&r));
        assert_eq!(read_answer(&forged, 9, name), Ok(Some(Answer::NotSecure)), "no AD bit");
        assert_eq!(
            read_answer(&reply(9, name, true, ResponseCode::NoError, &[]), 9, name),
            Ok(Some(Answer::NotSecure))
        );
        assert_eq!(
            read_answer(&reply(9, name, true, ResponseCode::NXDomain, &[]), 9, name),
            Ok(Some(Answer::NotSecure))
        );
        assert!(read_answer(&reply(9, name, false, ResponseCode::ServFail, &[]), 9, name).is_err());
        assert!(read_answer(&secure, 10, name).is_err(), "another id");
        assert!(read_answer(&reply(9, "_25._tcp.other.test", true, ResponseCode::NoError, &[r]), 9, name).is_err());
        assert!(read_answer(b"\x00\x09garbage", 9, name).is_err());
    }
}
