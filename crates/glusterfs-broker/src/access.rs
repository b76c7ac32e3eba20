//! Who may mount a directory: GlusterFS's subdirectory authorisation, `auth.allow` entries of
//! the form `/<dir>(<addr>|<addr>...)` on the volume. A binding's `allow` parameter (client
//! addresses or CIDRs) adds its addresses to its instance's directory; unbind takes back those
//! no other binding of the directory still holds. Entries the broker does not manage (the
//! volume root's, an operator's) are kept as they are.

use std::fmt;
use std::net::IpAddr;

use osb_core::BrokerError;

/// A client address or CIDR block, checked: only such text ever reaches the option value,
/// where `,`, `(`, `)` and `|` are syntax.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Client(String);

impl Client {
    pub fn parse(raw: &str) -> Result<Self, BrokerError> {
        let bad = || {
            BrokerError::InvalidParameters(format!(
                "allow: {raw:?} is no IP address or CIDR block (such as 10.0.0.5 or 10.0.0.0/24)"
            ))
        };
        let (addr, bits) = match raw.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (raw, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        if let Some(bits) = bits {
            let bits: u8 = bits.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if bits > max || bits.to_string() != raw.rsplit('/').next().unwrap_or_default() {
                return Err(bad());
            }
        }
        // Written back as parsed: one spelling per address.
        Ok(Self(match bits {
            Some(bits) => format!("{addr}/{bits}"),
            None => addr.to_string(),
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `/<dir>(a|b)`: a directory the broker manages.
    Dir { dir: String, clients: Vec<String> },
    /// Anything else, kept verbatim.
    Other(String),
}

/// A volume's `auth.allow`, read, changed and written back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthAllow {
    entries: Vec<Entry>,
}

impl AuthAllow {
    pub fn parse(value: &str) -> Self {
        let entries = value
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let dir = e
                    .strip_prefix('/')
                    .and_then(|rest| rest.strip_suffix(')'))
                    .and_then(|rest| rest.split_once('('));
                match dir {
                    Some((dir, clients)) if !dir.is_empty() => Entry::Dir {
                        dir: dir.to_owned(),
                        clients: clients.split('|').map(str::to_owned).collect(),
                    },
                    _ => Entry::Other(e.to_owned()),
                }
            })
            .collect();
        Self { entries }
    }

    /// The clients `dir` allows.
    pub fn clients(&self, dir: &str) -> Vec<&str> {
        self.entries
            .iter()
            .find_map(|e| match e {
                Entry::Dir { dir: d, clients } if d == dir => {
                    Some(clients.iter().map(String::as_str).collect())
                }
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Lets `clients` mount `dir` too.
    pub fn grant(&mut self, dir: &str, clients: &[Client]) {
        let position = self
            .entries
            .iter()
            .position(|e| matches!(e, Entry::Dir { dir: d, .. } if d == dir));
        let index = position.unwrap_or_else(|| {
            self.entries.push(Entry::Dir {
                dir: dir.to_owned(),
                clients: Vec::new(),
            });
            self.entries.len() - 1
        });
        if let Entry::Dir { clients: held, .. } = &mut self.entries[index] {
            for c in clients {
                if !held.iter().any(|h| h == c.as_str()) {
                    held.push(c.as_str().to_owned());
                }
            }
        }
    }

    /// Takes `clients` back from `dir`, but those in `kept` (other bindings still hold them);
    /// a directory left with none loses its entry.
    pub fn revoke(&mut self, dir: &str, clients: &[Client], kept: &[Client]) {
        for e in &mut self.entries {
            if let Entry::Dir {
                dir: d,
                clients: held,
            } = e
                && d == dir
            {
                held.retain(|h| {
                    !clients.iter().any(|c| c.as_str() == h) || kept.iter().any(|k| k.as_str() == h)
                });
            }
        }
        self.entries
            .retain(|e| !matches!(e, Entry::Dir { clients, .. } if clients.is_empty()));
    }
}

impl fmt::Display for AuthAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|e| match e {
                Entry::Dir { dir, clients } => format!("/{dir}({})", clients.join("|")),
                Entry::Other(text) => text.clone(),
            })
            .collect();
        f.write_str(&entries.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(raw: &[&str]) -> Vec<Client> {
        raw.iter().map(|r| Client::parse(r).unwrap()).collect()
    }

    #[test]
    fn only_addresses_and_cidrs_pass() {
        for good in ["10.0.0.5", "10.0.0.0/24", "fd00::1", "fd00::/64"] {
            assert!(Client::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "*",
            "10.0.0.*",
            "host.example",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.1|10.0.0.2",
            "10.0.0.1),/(*",
            "1.2.3.4/08",
            "",
        ] {
            assert!(
                matches!(Client::parse(bad), Err(BrokerError::InvalidParameters(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn grants_and_revokes_keep_other_entries_and_shared_clients() {
        let mut allow = AuthAllow::parse("/(127.0.0.1),/op_b(10.0.0.9)");
        allow.grant("op_a", &clients(&["10.0.0.1", "10.0.0.0/24"]));
        allow.grant("op_a", &clients(&["10.0.0.1"]));
        assert_eq!(
            allow.to_string(),
            "/(127.0.0.1),/op_b(10.0.0.9),/op_a(10.0.0.1|10.0.0.0/24)"
        );
        // Another binding of op_a still holds 10.0.0.1.
        allow.revoke(
            "op_a",
            &clients(&["10.0.0.1", "10.0.0.0/24"]),
            &clients(&["10.0.0.1"]),
        );
        assert_eq!(allow.clients("op_a"), ["10.0.0.1"]);
        allow.revoke("op_a", &clients(&["10.0.0.1"]), &[]);
        assert_eq!(allow.to_string(), "/(127.0.0.1),/op_b(10.0.0.9)");
        assert_eq!(AuthAllow::parse(&allow.to_string()), allow);
    }
}
