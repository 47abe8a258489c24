//! The client's address behind trusted proxies (`[server] trusted_proxies`): a load
//! balancer that ends TLS in front of flexgate, or an ingress that sends logins on,
//! connects for every client, so its address alone would make one client of all of
//! them (one login limit, one audit address). From a trusted proxy, the client is the
//! rightmost `X-Forwarded-For` entry that is not itself a trusted proxy; from anyone
//! else the header means nothing (and is replaced before the upstream sees it).

use std::net::IpAddr;

use http::HeaderMap;

use crate::rules::TrustedProxies;

/// The client a trusted proxy names for this request, or `None` to keep the
/// connection's own address: no proxy trusted, the peer not trusted, no header, every
/// entry a trusted proxy, or an entry that is not an address before an untrusted one
/// was found (then the chain cannot be read and the proxy stands for the client).
pub fn client_behind(
    trusted: &TrustedProxies,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Option<IpAddr> {
    if trusted.is_empty() || !trusted.contains(peer) {
        return None;
    }
    // Every X-Forwarded-For line, in order, is one list; read it from the right.
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        for entry in line.as_bytes().rsplit(|&b| b == b',') {
            let ip = std::str::from_utf8(entry)
                .ok()
                .and_then(|e| e.trim().parse::<IpAddr>().ok())?;
            if !trusted.contains(ip) {
                return Some(ip.to_canonical());
            }
        }
    }
    None
}

/// Whether a trusted proxy says the client reached it over TLS: its `X-Forwarded-Proto`
/// (the last entry of the last line, the closest proxy's), `https` or `http`; `None`
/// when no proxy is trusted, the peer is not, or the header is absent or says
/// something else. Behind a proxy that ends TLS, flexgate then forwards `https`, sends
/// HSTS and compares a browser's `Origin` with `https://` as on its own TLS listener.
pub fn tls_behind(trusted: &TrustedProxies, peer: IpAddr, headers: &HeaderMap) -> Option<bool> {
    if trusted.is_empty() || !trusted.contains(peer) {
        return None;
    }
    let line = headers.get_all("x-forwarded-proto").iter().next_back()?;
    let last = line.as_bytes().rsplit(|&b| b == b',').next()?.trim_ascii();
    if last.eq_ignore_ascii_case(b"https") {
        Some(true)
    } else if last.eq_ignore_ascii_case(b"http") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            entries
                .iter()
                .map(|e| TrustedProxies::parse(e).unwrap())
                .collect(),
        )
    }

    fn client(t: &TrustedProxies, peer: &str, lines: &[&str]) -> Option<IpAddr> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", line.parse().unwrap());
        }
        client_behind(t, peer.parse().unwrap(), &headers)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn networks_parse_and_match() {
        assert_eq!(TrustedProxies::parse("10.0.0.0/8").map(|n| n.1), Some(8));
        assert_eq!(TrustedProxies::parse("::1").map(|n| n.1), Some(128));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0",
            "proxy.example",
            "10.0.0.0/x",
            "",
        ] {
            assert_eq!(TrustedProxies::parse(bad), None, "{bad}");
        }
        let t = trusted(&["10.0.0.0/8", "127.0.0.1", "fd00::/8", "0.0.0.0/0"][..3]);
        assert!(t.contains("10.255.1.2".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(t.contains("127.0.0.1".parse().unwrap()));
        assert!(!t.contains("127.0.0.2".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(
            t.contains("::ffff:10.1.1.1".parse().unwrap()),
            "IPv4-mapped"
        );
        assert!(!t.contains("fe80::1".parse().unwrap()));
        assert!(trusted(&["0.0.0.0/0"]).contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_entry_from_a_trusted_peer() {
        let t = trusted(&["10.0.0.0/8", "127.0.0.1"]);
        // Nothing trusted, or an untrusted peer: the header means nothing.
        assert_eq!(
            client(&TrustedProxies::default(), "127.0.0.1", &["1.2.3.4"]),
            None
        );
        assert_eq!(client(&t, "192.0.2.9", &["1.2.3.4"]), None);
        assert_eq!(client(&t, "127.0.0.1", &[]), None);
        // A client-sent entry on the left is not believed over the proxy's own.
        assert_eq!(
            client(&t, "127.0.0.1", &["6.6.6.6, 1.2.3.4"]),
            ip("1.2.3.4")
        );
        assert_eq!(
            client(&t, "127.0.0.1", &["6.6.6.6", "1.2.3.4"]),
            ip("1.2.3.4")
        );
        // Trusted hops on the right are skipped.
        assert_eq!(
            client(&t, "127.0.0.1", &["1.2.3.4, 10.1.1.1 , 10.2.2.2"]),
            ip("1.2.3.4")
        );
        assert_eq!(client(&t, "127.0.0.1", &["2001:db8::7"]), ip("2001:db8::7"));
        // All hops trusted, or an unreadable entry before any untrusted one: the peer.
        assert_eq!(client(&t, "127.0.0.1", &["10.1.1.1"]), None);
        assert_eq!(client(&t, "127.0.0.1", &["1.2.3.4, garbage"]), None);
        assert_eq!(client(&t, "127.0.0.1", &["1.2.3.4:5678"]), None);
        // An unreadable entry left of the client does not matter.
        assert_eq!(
            client(&t, "127.0.0.1", &["garbage, 1.2.3.4"]),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn only_a_trusted_proxy_says_the_client_came_over_tls() {
        let t = trusted(&["10.0.0.0/8"]);
        let proto = |t: &TrustedProxies, peer: &str, lines: &[&str]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append("x-forwarded-proto", line.parse().unwrap());
            }
            tls_behind(t, peer.parse().unwrap(), &headers)
        };
        assert_eq!(proto(&t, "10.1.2.3", &["https"]), Some(true));
        assert_eq!(proto(&t, "10.1.2.3", &["HTTPS "]), Some(true));
        assert_eq!(proto(&t, "10.1.2.3", &["http"]), Some(false));
        // The closest proxy's word: the last entry of the last line.
        assert_eq!(proto(&t, "10.1.2.3", &["https", "http, https"]), Some(true));
        assert_eq!(proto(&t, "10.1.2.3", &["https, http"]), Some(false));
        assert_eq!(proto(&t, "10.1.2.3", &["wss"]), None);
        assert_eq!(proto(&t, "10.1.2.3", &[]), None);
        assert_eq!(
            proto(&t, "192.0.2.1", &["https"]),
            None,
            "an untrusted peer"
        );
        assert_eq!(proto(&trusted(&[]), "10.1.2.3", &["https"]), None);
    }
}
