//! The parts of the URIs brokers hand apps (`mysql://`, `amqp://`, `redis://`, ...), written
//! once: a user name, password or path segment percent-encoded, a host as a URI needs it, and
//! the hosts a config names, checked when it is read.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

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

/// A server's host as a config names it: a DNS name, an IPv4 address, or an IPv6 address bare
/// or in brackets (kept bare, as drivers and `hostname` credentials take it; [`authority`]
/// brackets it again). Never a port, which has a field of its own: `db:3306` as a host would
/// reach nothing, or worse, be handed to apps as `mysql://...@db:3306:3306/...`. Nor an IPv6
/// zone (`fe80::1%eth0`): it names an interface of one machine, means nothing on the apps',
/// and the HTTP clients' URL parser refuses it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Host(String);

impl Host {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Host {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Host {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if let Some(inner) = value.strip_prefix('[') {
            return match inner.strip_suffix(']') {
                Some(address) if address.parse::<Ipv6Addr>().is_ok() => {
                    Ok(Host(address.to_owned()))
                }
                _ => Err(format!(
                    "host {value:?}: brackets hold an IPv6 address and nothing else"
                )),
            };
        }
        if value.contains(':') {
            return if value.parse::<Ipv6Addr>().is_ok() {
                Ok(Host(value))
            } else {
                Err(format!(
                    "host {value:?}: a host alone, without its port or a path (a port, where one is wanted, has a field of its own)"
                ))
            };
        }
        if is_name(&value) {
            Ok(Host(value))
        } else {
            Err(format!(
                "host {value:?}: not a DNS name, an IPv4 or an IPv6 address"
            ))
        }
    }
}

/// `host[:port]` as a config names a server apps reach: an IPv6 address in brackets, since
/// its colons leave `fd00::5:27017` open to two readings. Written out as it came, bracketed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Authority {
    pub host: Host,
    pub port: Option<u16>,
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => f.write_str(&authority(&self.host, port)),
            None => f.write_str(&host(&self.host)),
        }
    }
}

impl TryFrom<String> for Authority {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        let (host, port) = match value.find(']') {
            Some(end) if value.starts_with('[') => match &value[end + 1..] {
                "" => (&value[..=end], None),
                rest => match rest.strip_prefix(':') {
                    Some(port) => (&value[..=end], Some(port)),
                    None => {
                        return Err(format!(
                            "{value:?}: after the brackets, a colon and the port or nothing"
                        ));
                    }
                },
            },
            _ if value.matches(':').count() > 1 => {
                return Err(format!(
                    "{value:?}: an IPv6 address goes in brackets, `[fd00::5]:27017`"
                ));
            }
            _ => match value.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (value.as_str(), None),
            },
        };
        let port = port
            .map(|port| match port.parse::<u16>() {
                // Digits only: `u16`'s parser takes a sign too.
                Ok(n) if n != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
                _ => Err(format!(
                    "{value:?}: the port is not a number from 1 to 65535"
                )),
            })
            .transpose()?;
        Ok(Authority {
            host: Host::try_from(host.to_owned()).map_err(|e| format!("{value:?}: {e}"))?,
            port,
        })
    }
}

/// A DNS name (an IPv4 address reads as one): labels of letters, digits, `-` and `_` (which
/// container platforms' service names use), none starting or ending with `-` (RFC 1123: one
/// in front would read as an option to the commands a host is handed to, as `mount` takes
/// glusterfs-broker's servers), 63 bytes at most each, 253 in all, and an optional final dot.
fn is_name(name: &str) -> bool {
    let labels = name.strip_suffix('.').unwrap_or(name);
    !labels.is_empty()
        && labels.len() <= 253
        && labels.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
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

    fn host(value: &str) -> Result<String, String> {
        Host::try_from(value.to_owned()).map(|h| h.as_str().to_owned())
    }

    #[test]
    fn a_host_is_a_name_or_an_address_kept_bare() {
        for ok in [
            "db",
            "db.example.",
            "mysql-0.mysql_svc.ns.svc",
            "10.0.0.5",
            "::1",
        ] {
            assert_eq!(host(ok).as_deref(), Ok(ok));
        }
        assert_eq!(host("[fd00::5]").as_deref(), Ok("fd00::5"));
    }

    #[test]
    fn a_host_with_a_port_or_anything_else_is_refused() {
        for bad in [
            "",
            "db:3306",
            "[fd00::5]:3306",
            "[db]",
            "[fd00::5",
            "db example",
            " db",
            "db/x",
            "u@db",
            "db..example",
            ".",
            "fe80::1%eth0",
            "[fe80::1%25eth0]",
            "db\nbind 0.0.0.0",
            "-oro",
            "db.-x",
            "db-.example",
            &"a".repeat(64),
            &["a"; 128].join("."),
        ] {
            assert!(host(bad).is_err(), "{bad:?} was taken as a host");
        }
        assert!(host("db:3306").unwrap_err().contains("without its port"));
    }

    #[test]
    fn an_authority_needs_brackets_around_ipv6_and_keeps_them() {
        let parse = |v: &str| Authority::try_from(v.to_owned()).map(|a| a.to_string());
        assert_eq!(parse("mongos-1:27017").as_deref(), Ok("mongos-1:27017"));
        assert_eq!(parse("mongos-1").as_deref(), Ok("mongos-1"));
        assert_eq!(parse("[fd00::5]:27018").as_deref(), Ok("[fd00::5]:27018"));
        assert_eq!(parse("[fd00::5]").as_deref(), Ok("[fd00::5]"));
        for bad in [
            "fd00::5",
            "fd00::5:27017",
            "[fd00::5]27017",
            "[fd00::5]:",
            "db:",
            "db:0",
            "db:+27017",
            "db:70000",
            "db:x",
            ":27017",
            "db:1:2",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was taken as host[:port]");
        }
    }
}
