//! The authority a request names, checked before anything else looks at the request:
//! exactly one `Host` on HTTP/1.1 (RFC 9112 section 3.2; an absolute-form target's
//! authority takes its place, section 3.2.2), and on HTTP/2 a `host` field
//! that agrees with `:authority` when both are sent (RFC 9113 section 8.3.1); the value
//! must be a plain `host[:port]`; and the host must be one the deployment answers to
//! (`[server] allowed_hosts`). The accepted authority is what `X-Forwarded-Host` carries
//! (and, with `preserve_host`, the `Host` the upstream gets).

use http::header::HOST;
use http::request::Parts;
use http::{HeaderValue, Version};

use super::deny::Deny;
use crate::rules::AllowedHosts;

/// Split a `Host` value into host and port, or refuse it. The host is a DNS-style name
/// (letters, digits, `-`, `.`, `_`), an IPv4 address, or an IPv6 literal in brackets;
/// the port, when present, is 1 to 5 digits up to 65535. Userinfo, paths, spaces,
/// percent escapes and empty parts are refused: no upstream should have to guess.
pub fn split_authority(value: &[u8]) -> Option<(&str, Option<u16>)> {
    let text = std::str::from_utf8(value).ok()?;
    let (host, port) = if text.starts_with('[') {
        let close = text.find(']')?;
        let (host, rest) = text.split_at(close + 1);
        let inner = host.get(1..host.len() - 1)?;
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return None;
        }
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        let (host, port) = match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// Take the request's authority out of `parts` (the `Host` header is removed: flexgate
/// sets the one the upstream sees) after checking it as the module doc says.
pub fn take_authority(parts: &mut Parts, allowed: &AllowedHosts) -> Result<HeaderValue, Deny> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(Deny::BadHost("several_host_headers"));
    }
    let value = match (parts.uri.authority(), first) {
        // HTTP/1.1 absolute-form: the target's authority is the one that counts, and
        // the (still required) Host header is ignored (RFC 9112 section 3.2.2).
        (Some(authority), Some(_)) if parts.version != Version::HTTP_2 => {
            HeaderValue::from_str(authority.as_str()).map_err(|_| Deny::BadHost("invalid_host"))?
        }
        // HTTP/2 with both fields: they must agree.
        (Some(authority), Some(host)) => {
            if !authority
                .as_str()
                .as_bytes()
                .eq_ignore_ascii_case(host.as_bytes())
            {
                return Err(Deny::BadHost("host_authority_mismatch"));
            }
            host.clone()
        }
        (Some(authority), None) if parts.version == Version::HTTP_2 => {
            HeaderValue::from_str(authority.as_str()).map_err(|_| Deny::BadHost("invalid_host"))?
        }
        (None, Some(host)) => host.clone(),
        _ => return Err(Deny::BadHost("missing_host")),
    };
    let (host, _) = split_authority(value.as_bytes()).ok_or(Deny::BadHost("invalid_host"))?;
    if !allowed.allows(host) {
        return Err(Deny::BadHost("host_not_allowed"));
    }
    parts.headers.remove(HOST);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> Parts {
        let mut b = http::Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn authorities_split_or_are_refused() {
        let ok: &[(&str, &str, Option<u16>)] = &[
            ("localhost", "localhost", None),
            ("api.example.com:8443", "api.example.com", Some(8443)),
            ("127.0.0.1:1", "127.0.0.1", Some(1)),
            ("[::1]:65535", "[::1]", Some(65535)),
            ("[fe80::1]", "[fe80::1]", None),
            ("under_score.example", "under_score.example", None),
        ];
        for (text, host, port) in ok {
            assert_eq!(
                split_authority(text.as_bytes()),
                Some((*host, *port)),
                "{text}"
            );
        }
        for bad in [
            "",
            ":80",
            "host:",
            "host:65536",
            "host:123456",
            "host:8a",
            "user@host",
            "host/path",
            "host?x",
            "ho st",
            "host%2e",
            "[::1",
            "[]",
            "[::1]x",
            "[g::1]",
            "host:80:80",
            "\u{e9}.example",
            "host\t",
        ] {
            assert_eq!(split_authority(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn http1_needs_exactly_one_valid_host() {
        let any = AllowedHosts::default();
        let mut one = parts(Version::HTTP_11, "/x", &["a.example:8443"]);
        assert_eq!(take_authority(&mut one, &any).unwrap(), "a.example:8443");
        assert!(one.headers.get(HOST).is_none(), "Host is taken out");
        let cases: &[(&[&str], &str)] = &[
            (&[], "missing_host"),
            (&["a.example", "b.example"], "several_host_headers"),
            (&["a.example", "a.example"], "several_host_headers"),
            (&["a b"], "invalid_host"),
        ];
        for (hosts, reason) in cases {
            let mut p = parts(Version::HTTP_11, "/x", hosts);
            assert_eq!(
                take_authority(&mut p, &any),
                Err(Deny::BadHost(reason)),
                "{hosts:?}"
            );
        }
        let mut absolute = parts(Version::HTTP_11, "http://b.example/x", &["a.example"]);
        assert_eq!(take_authority(&mut absolute, &any).unwrap(), "b.example");
        let mut absolute = parts(Version::HTTP_11, "http://b.example/x", &[]);
        assert_eq!(
            take_authority(&mut absolute, &any),
            Err(Deny::BadHost("missing_host"))
        );
        let only_a = AllowedHosts::new(["a.example"]);
        let mut absolute = parts(Version::HTTP_11, "http://b.example/x", &["a.example"]);
        assert_eq!(
            take_authority(&mut absolute, &only_a),
            Err(Deny::BadHost("host_not_allowed")),
            "the target's authority is the one checked"
        );
    }

    #[test]
    fn http2_takes_the_authority_and_refuses_a_disagreeing_host() {
        let any = AllowedHosts::default();
        let mut p = parts(Version::HTTP_2, "https://a.example:8443/x", &[]);
        assert_eq!(take_authority(&mut p, &any).unwrap(), "a.example:8443");
        let mut p = parts(Version::HTTP_2, "https://a.example/x", &["evil.example"]);
        assert_eq!(
            take_authority(&mut p, &any),
            Err(Deny::BadHost("host_authority_mismatch"))
        );
        let mut p = parts(Version::HTTP_2, "/x", &["a.example"]);
        assert_eq!(take_authority(&mut p, &any).unwrap(), "a.example");
        let mut p = parts(Version::HTTP_2, "/x", &[]);
        assert_eq!(
            take_authority(&mut p, &any),
            Err(Deny::BadHost("missing_host"))
        );
    }

    #[test]
    fn allowed_hosts_match_exact_names_and_suffixes_without_port_or_case() {
        let allowed = AllowedHosts::new(["api.example.com", "*.tenants.example"]);
        for (host, ok) in [
            ("api.example.com", true),
            ("API.Example.COM", true),
            ("api.example.com.evil", false),
            ("example.com", false),
            ("a.tenants.example", true),
            ("a.b.tenants.example", true),
            ("tenants.example", false),
            ("xtenants.example", false),
            ("evil.example", false),
        ] {
            assert_eq!(allowed.allows(host), ok, "{host}");
        }
        let mut p = parts(Version::HTTP_11, "/x", &["api.example.com:8443"]);
        assert!(take_authority(&mut p, &allowed).is_ok());
        let mut p = parts(Version::HTTP_11, "/x", &["evil.example"]);
        assert_eq!(
            take_authority(&mut p, &allowed),
            Err(Deny::BadHost("host_not_allowed"))
        );
        assert!(AllowedHosts::default().allows("anything"));
    }
}
