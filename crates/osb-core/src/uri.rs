//! The parts of the URIs brokers hand apps (`mysql://`, `amqp://`, `redis://`, ...), written
//! once: a user name, password or path segment percent-encoded, and a host as a URI needs it.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// RFC 3986 unreserved characters stay as they are; everything else is encoded, so a part
/// never ends the user, the password or the path it stands in.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `part` percent-encoded for any place in a URI.
pub fn component(part: &str) -> String {
    utf8_percent_encode(part, COMPONENT).to_string()
}

/// `host` as it stands in a URI: an IPv6 literal in brackets (its zone's `%` encoded, RFC
/// 6874), anything else as it is. A host name never holds a colon, so one means IPv6; a host
/// already in brackets is left alone.
pub fn host(host: &str) -> Cow<'_, str> {
    if host.contains(':') && !host.starts_with('[') {
        Cow::Owned(format!("[{}]", host.replace('%', "%25")))
    } else {
        Cow::Borrowed(host)
    }
}

/// `host:port` for a URI's authority.
pub fn authority(host: &str, port: u16) -> String {
    format!("{}:{port}", self::host(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_literals_are_bracketed_and_names_are_not() {
        assert_eq!(authority("db.example", 3306), "db.example:3306");
        assert_eq!(authority("10.0.0.5", 5672), "10.0.0.5:5672");
        assert_eq!(authority("fd00::5", 5672), "[fd00::5]:5672");
        assert_eq!(authority("::1", 6379), "[::1]:6379");
        assert_eq!(authority("[fd00::5]", 27017), "[fd00::5]:27017");
        assert_eq!(authority("fe80::1%eth0", 80), "[fe80::1%25eth0]:80");
    }

    #[test]
    fn a_component_keeps_only_unreserved_characters() {
        assert_eq!(component("Ab9-._~"), "Ab9-._~");
        assert_eq!(
            component("a:b@c/d?e#f[g]%h"),
            "a%3Ab%40c%2Fd%3Fe%23f%5Bg%5D%25h"
        );
        assert_eq!(component("/"), "%2F");
        assert_eq!(component("ü"), "%C3%BC");
    }
}
