//! A DNS server for the tests, on loopback, answering from a fixed zone: records, NXDOMAIN,
//! SERVFAIL, or silence. It resolves CNAMEs for A/AAAA questions as a recursive server would.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, TLSA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// What the zone says for one name and type.
#[derive(Clone, Debug)]
pub enum Answer {
    Mx(Vec<(u16, &'static str)>),
    Ip(Vec<&'static str>),
    Cname(&'static str),
    /// PTR records (for `N.N.N.N.in-addr.arpa` names).
    Ptr(Vec<&'static str>),
    /// TXT records, each cut into strings of 255 octets as DNS needs.
    Txt(Vec<&'static str>),
    /// TLSA records (usage, selector, matching type, data), with the AD bit set when
    /// `authenticated`, as a validating resolver would.
    Tlsa {
        records: Vec<(u8, u8, u8, Vec<u8>)>,
        authenticated: bool,
    },
    NxDomain,
    ServFail,
    /// No reply at all: the resolver times out.
    Silence,
}

pub struct FakeDns {
    pub addr: SocketAddr,
    pub queries: Arc<Mutex<Vec<String>>>,
}

fn name(text: &str) -> Name {
    Name::from_ascii(format!("{}.", text.trim_end_matches('.'))).unwrap()
}

impl FakeDns {
    /// Entries are (name, type, answer); a name with entries for other types only gets NODATA,
    /// a name with no entries NXDOMAIN.
    pub fn start(entries: &[(&'static str, RecordType, Answer)]) -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.53:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let zone: HashMap<(String, RecordType), Answer> =
            entries.iter().map(|(n, t, a)| ((n.to_string(), *t), a.clone())).collect();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&queries);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else { return };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let Some(q) = query.queries.first().cloned() else { continue };
                let qname = q.name().to_ascii().trim_end_matches('.').to_lowercase();
                seen.lock().unwrap().push(format!("{qname}. {}", q.query_type()));
                let Some(response) = respond(&zone, &query, &qname, q.query_type()) else { continue };
                let _ = socket.send_to(&response.to_vec().unwrap(), peer);
            }
        });
        FakeDns { addr, queries }
    }

    pub fn queried(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

fn respond(
    zone: &HashMap<(String, RecordType), Answer>,
    query: &Message,
    qname: &str,
    qtype: RecordType,
) -> Option<Message> {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.message_type = MessageType::Response;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.queries = query.queries.clone();
    let known = zone.keys().any(|(n, _)| n == qname);
    let mut current = qname.to_string();
    for _ in 0..10 {
        let answer = zone.get(&(current.clone(), qtype)).or_else(|| zone.get(&(current.clone(), RecordType::CNAME)));
        match answer {
            None if !known => response.metadata.response_code = ResponseCode::NXDomain,
            None => {}
            Some(Answer::Silence) => return None,
            Some(Answer::NxDomain) => response.metadata.response_code = ResponseCode::NXDomain,
            Some(Answer::ServFail) => response.metadata.response_code = ResponseCode::ServFail,
            Some(Answer::Mx(list)) => {
                for (pref, host) in list {
                    let exchange = if host.is_empty() { Name::root() } else { name(host) };
                    response.answers.push(Record::from_rdata(name(&current), 60, RData::MX(MX::new(*pref, exchange))));
                }
            }
            Some(Answer::Ip(list)) => {
                for ip in list {
                    let rdata = match ip.parse::<IpAddr>().unwrap() {
                        IpAddr::V4(v4) if qtype == RecordType::A => RData::A(A(v4)),
                        IpAddr::V6(v6) if qtype == RecordType::AAAA => RData::AAAA(AAAA(v6)),
                        _ => continue,
                    };
                    response.answers.push(Record::from_rdata(name(&current), 60, rdata));
                }
            }
            Some(Answer::Ptr(list)) => {
                for target in list {
                    response.answers.push(Record::from_rdata(name(&current), 60, RData::PTR(PTR(name(target)))));
                }
            }
            Some(Answer::Txt(list)) => {
                for text in list {
                    let strings: Vec<&[u8]> = text.as_bytes().chunks(255).collect();
                    let rdata = RData::TXT(TXT::from_bytes(if strings.is_empty() { vec![b""] } else { strings }));
                    response.answers.push(Record::from_rdata(name(&current), 60, rdata));
                }
            }
            Some(Answer::Tlsa { records, authenticated }) => {
                response.metadata.authentic_data = *authenticated;
                for (usage, selector, matching, data) in records {
                    let rdata = TLSA::new((*usage).into(), (*selector).into(), (*matching).into(), data.clone());
                    response.answers.push(Record::from_rdata(name(&current), 60, RData::TLSA(rdata)));
                }
            }
            Some(Answer::Cname(target)) => {
                response.answers.push(Record::from_rdata(name(&current), 60, RData::CNAME(CNAME(name(target)))));
                current = target.to_string();
                continue;
            }
        }
        break;
    }
    Some(response)
}
