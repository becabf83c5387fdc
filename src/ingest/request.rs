//! What ingest reads off a request: the caller's address (behind trusted proxies), the
//! parameters from the query and a form or flat JSON body, and the source token.

use std::net::IpAddr;

use ipnet::IpNet;
use subtle::ConstantTimeEq;

use crate::rules::decode_form;

/// Why a request's parameters cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    /// `in_query`: the query alone is over the limit (a URL problem, 414); otherwise the
    /// body's parameters pushed the count over it (413).
    #[error("too many parameters: {count} (at most {max})")]
    TooMany {
        count: usize,
        max: usize,
        in_query: bool,
    },
    #[error("body: {0}")]
    Body(String),
}

/// The caller: the peer, or, when the peer is a trusted proxy, the nearest untrusted address
/// of `X-Forwarded-For` (read right to left, so a client cannot forge its way in).
///
/// An entry may carry a port (`203.0.113.9:4711`, `[2001:db8::9]:443`). An entry that is not
/// an address at all (`unknown`, garbage) ends the walk: everything left of it was written
/// before a hop we cannot identify, possibly by the client, so the nearest trusted hop
/// read so far stands for the caller instead.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(xff) = forwarded_for else {
        return peer;
    };
    let mut nearest_trusted = peer;
    for entry in xff.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some(ip) = forwarded_address(entry).map(canonical) else {
            return nearest_trusted;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        nearest_trusted = ip;
    }
    nearest_trusted
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`[v6]:port` for IPv6).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// How many `name=value` pieces a query or form holds, without decoding it.
pub fn count_pairs(raw: &[u8]) -> usize {
    raw.split(|b| *b == b'&').filter(|p| !p.is_empty()).count()
}

/// The parameters of a request, the query's and the body's.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params {
    pub query: Vec<(String, String)>,
    /// From a form or flat JSON object body (POST).
    pub body: Vec<(String, String)>,
    /// Indices into `body` of JSON numbers (see [`crate::rules::BodyParams`]).
    pub body_numbers: Vec<usize>,
}

/// Reads the query's parameters, then the body's (form or flat JSON object).
pub fn params(
    query: &str,
    body: &[u8],
    content_type: Option<&str>,
    max: usize,
) -> Result<Params, ParamsError> {
    let mut count = count_pairs(query.as_bytes());
    if count > max {
        return Err(ParamsError::TooMany {
            count,
            max,
            in_query: true,
        });
    }
    let query = decode_form(query.as_bytes());
    let mut out = Vec::new();
    let mut body_numbers = Vec::new();
    if body.is_empty() {
        return Ok(Params {
            query,
            body: out,
            body_numbers,
        });
    }
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("application/json") {
        let decoded = crate::rules::decode_body(body, crate::rules::BodyKind::Json)
            .map_err(ParamsError::Body)?;
        count += decoded.pairs.len();
        if count > max {
            return Err(ParamsError::TooMany {
                count,
                max,
                in_query: false,
            });
        }
        out.extend(decoded.pairs);
        body_numbers = decoded.numbers;
    } else if ct.is_empty()
        || ct.starts_with("application/x-www-form-urlencoded")
        || ct.starts_with("text/plain")
    {
        count += count_pairs(body);
        if count > max {
            return Err(ParamsError::TooMany {
                count,
                max,
                in_query: false,
            });
        }
        out.extend(decode_form(body));
    } else {
        return Err(ParamsError::Body(format!(
            "content type {ct:?} is not accepted; send application/x-www-form-urlencoded or a flat application/json object"
        )));
    }
    Ok(Params {
        query,
        body: out,
        body_numbers,
    })
}

/// Constant-time token comparison (only the length can leak).
pub fn token_matches(expected: &str, given: &str) -> bool {
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// The raw query with the value of every parameter named by `secret` (the token, the
/// signature) replaced by `***`, the rest untouched.
pub fn redact_query(raw: &str, secret: impl Fn(&str) -> bool) -> String {
    raw.split('&')
        .map(|piece| {
            let name = piece.split('=').next().unwrap_or("");
            let decoded = decode_form(name.as_bytes())
                .into_iter()
                .next()
                .map(|(n, _)| n)
                .unwrap_or_default();
            if secret(&decoded) {
                format!("{name}=***")
            } else {
                piece.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Form-encodes pairs (for storing a POST body's parameters with the raw postback).
pub fn encode_pairs(pairs: &[(String, String)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_forwards() {
        let ip = client_ip(
            "198.51.100.7".parse().unwrap(),
            Some("1.2.3.4"),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip.to_string(), "198.51.100.7");
    }

    #[test]
    fn trusted_proxy_chain_is_read_right_to_left() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = client_ip(
            "10.0.0.2".parse().unwrap(),
            Some("6.6.6.6, 203.0.113.9, 10.0.0.5"),
            &trusted,
        );
        assert_eq!(ip.to_string(), "203.0.113.9");
    }

    #[test]
    fn forwarded_for_entries_with_ports_are_read_and_garbage_stops_the_walk() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = "10.0.0.2".parse().unwrap();
        let ip = |xff: &str| client_ip(peer, Some(xff), &trusted).to_string();
        assert_eq!(ip("6.6.6.6, 203.0.113.9:4711"), "203.0.113.9");
        assert_eq!(ip("6.6.6.6, [2001:db8::9]:443"), "2001:db8::9");
        assert_eq!(ip("6.6.6.6, unknown"), "10.0.0.2");
        assert_eq!(ip("6.6.6.6, unknown, 10.0.0.5"), "10.0.0.5");
    }

    #[test]
    fn token_is_redacted_in_the_stored_query_only() {
        let q = redact_query("cid=1&token=s3cret&TOKEN=x&amt=2", |n| n == "token");
        assert_eq!(q, "cid=1&token=***&TOKEN=x&amt=2");
        let q = redact_query("cid=1&TOKEN=s3cret", |n| n.eq_ignore_ascii_case("token"));
        assert_eq!(q, "cid=1&TOKEN=***");
    }

    #[test]
    fn json_body_is_flattened_into_parameters() {
        let p = params(
            "a=1",
            br#"{"cid":"x","amt":12.500,"n":null,"e":1e2}"#,
            Some("application/json"),
            10,
        )
        .unwrap();
        assert_eq!(p.query, vec![("a".into(), "1".into())]);
        assert_eq!(
            p.body,
            vec![
                ("amt".into(), "12.5".into()),
                ("cid".into(), "x".into()),
                ("e".into(), "100".into()),
                ("n".into(), String::new())
            ]
        );
        assert_eq!(p.body_numbers, vec![0, 2]);
    }

    #[test]
    fn too_many_parameters_are_refused_before_decoding() {
        let q = "a=1&".repeat(11);
        assert_eq!(
            params(&q, b"", None, 10),
            Err(ParamsError::TooMany {
                count: 11,
                max: 10,
                in_query: true
            })
        );
    }
}
