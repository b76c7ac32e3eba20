//! Who may mount: GlusterFS's address authorisation, the volume's `auth.allow`. A binding's
//! `allow` parameter (client addresses or CIDRs) lets those clients mount its instance's
//! directory (`/<dir>(a|b)`) or dedicated volume (`/(a|b)`); unbind takes back those no other
//! binding still holds, and Gluster cuts off their mounts at once.
//!
//! What glusterd 10 does with the option (tried on the real server): `*` (its default) lets
//! every client mount anything; any list of entries lets a client mount only the paths an entry
//! names for it (the root is `/`), everything else is refused; `*` cannot stand beside entries.
//! So once one directory of the shared volume is restricted, every other directory of the
//! broker's needs an entry `/<dir>(*)` to stay mountable ("open", guarded by the network), and
//! when no directory is restricted any more those go and the option returns to its default.
//! Entries the broker does not make (the root's, an operator's) are kept as they are. Clients
//! on the Gluster servers themselves are trusted by glusterd whatever the option says.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use osb_core::BrokerError;
use osb_core::broker::BindingView;
use osb_core::claims::Claims;
use serde_json::{Map, Value};

use crate::cli::{Gluster, Nothing, VolumeInfo};

/// How long one change of `auth.allow` may hold the volume's lock (a read and a `volume set`).
const HOLD: Duration = Duration::from_secs(60);

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

    /// A binding's `allow` parameter: one address or CIDR, or a list of them.
    pub fn list_from(parameters: &Map<String, Value>) -> Result<Vec<Self>, BrokerError> {
        let bad = |other: &Value| {
            BrokerError::InvalidParameters(format!(
                "allow must be an address or CIDR block, or a list of them (got {other})"
            ))
        };
        let mut clients = match parameters.get("allow") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(one)) => vec![Self::parse(one)?],
            Some(Value::Array(many)) => many
                .iter()
                .map(|v| v.as_str().ok_or_else(|| bad(v)).and_then(Self::parse))
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(bad(other)),
        };
        if clients.is_empty() && parameters.get("allow").is_some_and(Value::is_array) {
            return Err(BrokerError::InvalidParameters(
                "allow lists no client; leave it out to rely on the network alone".into(),
            ));
        }
        clients.sort();
        clients.dedup();
        Ok(clients)
    }

    /// What a stored binding was given (a binding whose parameters no longer parse was never
    /// given anything).
    fn of(binding: &BindingView) -> Vec<Self> {
        Self::list_from(&binding.parameters).unwrap_or_default()
    }
}

/// The client list of an open entry.
const ANYONE: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `/<dir>(a|b)`: who may mount `dir` (empty: the volume root).
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
            // The default lets everyone in; beside entries it is refused, so it is no entry.
            .filter(|e| !e.is_empty() && *e != ANYONE)
            .map(|e| {
                let dir = e
                    .strip_prefix('/')
                    .and_then(|rest| rest.strip_suffix(')'))
                    .and_then(|rest| rest.split_once('('));
                match dir {
                    Some((dir, clients)) => Entry::Dir {
                        dir: dir.to_owned(),
                        clients: clients.split('|').map(str::to_owned).collect(),
                    },
                    None => Entry::Other(e.to_owned()),
                }
            })
            .collect();
        Self { entries }
    }

    /// The clients `dir` is restricted to (none: open, or no entry).
    pub fn clients(&self, dir: &str) -> Vec<&str> {
        self.entries
            .iter()
            .find_map(|e| match e {
                Entry::Dir { dir: d, clients } if d == dir => Some(
                    clients
                        .iter()
                        .map(String::as_str)
                        .filter(|c| *c != ANYONE)
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Restricts `dir` to `clients`; none lifts the restriction (drops its entry).
    fn restrict(&mut self, dir: &str, clients: &BTreeSet<&str>) {
        let position = self
            .entries
            .iter()
            .position(|e| matches!(e, Entry::Dir { dir: d, .. } if d == dir));
        let entry = Entry::Dir {
            dir: dir.to_owned(),
            clients: clients.iter().map(|c| (*c).to_owned()).collect(),
        };
        match (position, clients.is_empty()) {
            (Some(i), true) => {
                self.entries.remove(i);
            }
            (Some(i), false) => self.entries[i] = entry,
            (None, false) => self.entries.push(entry),
            (None, true) => {}
        }
    }

    /// Lets `clients` mount `dir` too.
    pub fn grant(&mut self, dir: &str, clients: &[Client]) {
        let mut held: BTreeSet<&str> = self.clients(dir).into_iter().collect();
        held.extend(clients.iter().map(Client::as_str));
        let held: Vec<String> = held.into_iter().map(str::to_owned).collect();
        self.restrict(dir, &held.iter().map(String::as_str).collect());
    }

    /// Takes `clients` back from `dir`, but those in `kept` (other bindings still hold them).
    pub fn revoke(&mut self, dir: &str, clients: &[Client], kept: &[Client]) {
        let held: Vec<String> = self
            .clients(dir)
            .into_iter()
            .filter(|h| {
                !clients.iter().any(|c| c.as_str() == *h) || kept.iter().any(|k| k.as_str() == *h)
            })
            .map(str::to_owned)
            .collect();
        self.restrict(dir, &held.iter().map(String::as_str).collect());
    }

    /// Drops `dir`'s entry, whatever it holds.
    pub fn forget(&mut self, dir: &str) {
        self.entries
            .retain(|e| !matches!(e, Entry::Dir { dir: d, .. } if d == dir));
    }

    /// Keeps the broker's directories (`made` names them) mountable: while one of them is
    /// restricted, each of `open` without an entry gets `/<dir>(*)`; while none is, the open
    /// entries go.
    pub fn settle(&mut self, made: impl Fn(&str) -> bool, open: &[String]) {
        let is_open = |clients: &[String]| clients.iter().all(|c| c == ANYONE);
        let restricted = self
            .entries
            .iter()
            .any(|e| matches!(e, Entry::Dir { dir, clients } if made(dir) && !is_open(clients)));
        if restricted {
            for dir in open {
                let listed = self
                    .entries
                    .iter()
                    .any(|e| matches!(e, Entry::Dir { dir: d, .. } if d == dir));
                if !listed {
                    self.entries.push(Entry::Dir {
                        dir: dir.clone(),
                        clients: vec![ANYONE.to_owned()],
                    });
                }
            }
        } else {
            self.entries.retain(
                |e| !matches!(e, Entry::Dir { dir, clients } if made(dir) && is_open(clients)),
            );
        }
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

/// The clients a directory should allow, from its instance's bindings: every client of a
/// bound binding must be there, and none but those some binding (bound, being made or being
/// removed) holds may be.
pub struct Wanted {
    must: BTreeSet<String>,
    may: BTreeSet<String>,
}

impl Wanted {
    pub fn of(bindings: &[BindingView]) -> Self {
        let mut wanted = Self {
            must: BTreeSet::new(),
            may: BTreeSet::new(),
        };
        for b in bindings {
            for c in Client::of(b) {
                if b.ready {
                    wanted.must.insert(c.0.clone());
                }
                wanted.may.insert(c.0);
            }
        }
        wanted
    }

    /// `held` kept where allowed, completed with what must be there; `None` when `held` is
    /// right already.
    fn fix(&self, held: &[&str]) -> Option<Vec<String>> {
        let now: BTreeSet<&str> = held.iter().copied().collect();
        let fixed: BTreeSet<&str> = now
            .iter()
            .copied()
            .filter(|c| self.may.contains(*c))
            .chain(self.must.iter().map(String::as_str))
            .collect();
        (fixed != now).then(|| fixed.into_iter().map(str::to_owned).collect())
    }
}

/// A volume's `auth.allow`, changed by one writer at a time among every replica (the option is
/// one value: two read-modify-writes at once would lose one).
pub struct Access<'a> {
    pub gluster: &'a Gluster,
    pub claims: &'a Claims,
    pub volume: &'a str,
    /// The store's pool of the volume's directories, on the shared volume: those stay
    /// mountable while another directory is restricted.
    pub dirs: Option<&'a str>,
    /// Whether a directory name is one the broker makes.
    pub made: fn(&str) -> bool,
}

impl Access<'_> {
    async fn current(&self) -> Result<AuthAllow, BrokerError> {
        let info: VolumeInfo = self.gluster.run(&["volume", "info", self.volume]).await?;
        let value = info
            .info
            .volumes
            .volumes
            .first()
            .and_then(|v| v.option("auth.allow"))
            .unwrap_or("");
        Ok(AuthAllow::parse(value))
    }

    /// Reads the option, applies `edit`, settles the open entries and writes the result back
    /// if it changed, all under the volume's lock.
    async fn change(&self, edit: impl FnOnce(&mut AuthAllow)) -> Result<(), BrokerError> {
        let lock = format!("glusterfs auth.allow {}", self.volume);
        self.claims
            .exclusive(&lock, HOLD, || async {
                let before = self.current().await?;
                let mut after = before.clone();
                edit(&mut after);
                let open = match self.dirs {
                    Some(pool) => self
                        .claims
                        .all(pool)
                        .await?
                        .into_iter()
                        .map(|c| c.item)
                        .collect(),
                    None => Vec::new(),
                };
                after.settle(self.made, &open);
                if after == before {
                    return Ok(());
                }
                let value = after.to_string();
                let args: Vec<&str> = if value.is_empty() {
                    vec!["volume", "reset", self.volume, "auth.allow"]
                } else {
                    vec!["volume", "set", self.volume, "auth.allow", &value]
                };
                self.gluster.run::<Nothing>(&args).await?;
                Ok(())
            })
            .await
    }

    /// Lets `clients` mount `dir`.
    pub async fn grant(&self, dir: &str, clients: &[Client]) -> Result<(), BrokerError> {
        if clients.is_empty() {
            return Ok(());
        }
        self.change(|a| a.grant(dir, clients)).await
    }

    /// Takes back what `binding` was given, but what the directory's other bindings hold.
    pub async fn revoke(
        &self,
        dir: &str,
        binding: &BindingView,
        bindings: &[BindingView],
    ) -> Result<(), BrokerError> {
        let clients = Client::of(binding);
        if clients.is_empty() {
            return Ok(());
        }
        let kept: Vec<Client> = bindings
            .iter()
            .filter(|b| b.id != binding.id)
            .flat_map(Client::of)
            .collect();
        self.change(|a| a.revoke(dir, &clients, &kept)).await
    }

    /// Drops `dir`'s entry (the directory is going), if it has one.
    pub async fn forget(&self, dir: &str) -> Result<(), BrokerError> {
        if !self
            .current()
            .await?
            .to_string()
            .contains(&format!("/{dir}("))
        {
            return Ok(());
        }
        self.change(|a| a.forget(dir)).await
    }

    /// Gives a new directory its open entry if the volume needs one (another directory is
    /// restricted).
    pub async fn open(&self, dir: &str) -> Result<(), BrokerError> {
        let current = self.current().await?;
        let mut settled = current.clone();
        settled.settle(self.made, &[dir.to_owned()]);
        if settled == current {
            return Ok(());
        }
        self.change(|_| {}).await
    }

    /// Puts `dir`'s entry right by its bindings, if it is not: what upkeep does after a lost
    /// write (a crash between the store and Gluster, or two brokers on one volume).
    pub async fn reconcile(&self, dir: &str, wanted: &Wanted) -> Result<(), BrokerError> {
        let current = self.current().await?;
        let needs_open = {
            let mut settled = current.clone();
            settled.settle(self.made, &[dir.to_owned()]);
            settled != current
        };
        if wanted.fix(&current.clients(dir)).is_none() && !needs_open {
            return Ok(());
        }
        self.change(|a| {
            if let Some(fixed) = wanted.fix(&a.clients(dir)) {
                a.restrict(dir, &fixed.iter().map(String::as_str).collect());
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(raw: &[&str]) -> Vec<Client> {
        raw.iter().map(|r| Client::parse(r).unwrap()).collect()
    }

    fn made(dir: &str) -> bool {
        dir.starts_with("op_")
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
    fn allow_is_one_client_or_a_non_empty_list() {
        let params = |v: Value| {
            let mut m = Map::new();
            m.insert("allow".into(), v);
            m
        };
        let list = Client::list_from(&params(serde_json::json!([
            "10.0.0.2", "10.0.0.1", "10.0.0.2"
        ])));
        assert_eq!(list.unwrap(), clients(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(
            Client::list_from(&params(serde_json::json!("10.0.0.1")))
                .unwrap()
                .len(),
            1
        );
        assert!(Client::list_from(&Map::new()).unwrap().is_empty());
        for bad in [
            serde_json::json!([]),
            serde_json::json!(7),
            serde_json::json!([7]),
        ] {
            assert!(Client::list_from(&params(bad)).is_err());
        }
    }

    #[test]
    fn grants_and_revokes_keep_other_entries_and_shared_clients() {
        let mut allow = AuthAllow::parse("/(127.0.0.1),/op_b(10.0.0.9)");
        allow.grant("op_a", &clients(&["10.0.0.1", "10.0.0.0/24"]));
        allow.grant("op_a", &clients(&["10.0.0.1"]));
        assert_eq!(
            allow.to_string(),
            "/(127.0.0.1),/op_b(10.0.0.9),/op_a(10.0.0.0/24|10.0.0.1)"
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

    #[test]
    fn one_restricted_directory_keeps_the_others_open_until_it_is_lifted() {
        let open = ["op_a".to_owned(), "op_b".to_owned(), "op_c".to_owned()];
        let mut allow = AuthAllow::parse("*");
        allow.settle(made, &open);
        assert_eq!(allow.to_string(), "", "nothing restricted: the default");
        allow.grant("op_a", &clients(&["10.0.0.1"]));
        allow.settle(made, &open);
        assert_eq!(allow.to_string(), "/op_a(10.0.0.1),/op_b(*),/op_c(*)");
        assert!(allow.clients("op_b").is_empty(), "open is no restriction");
        allow.revoke("op_a", &clients(&["10.0.0.1"]), &[]);
        allow.settle(made, &open);
        assert_eq!(allow.to_string(), "", "the last restriction lifted");
        // An operator's entries stay, and do not count as the broker's restrictions.
        let mut allow = AuthAllow::parse("/(10.1.1.1),/shared(10.2.0.0/16)");
        allow.settle(made, &open);
        assert_eq!(allow.to_string(), "/(10.1.1.1),/shared(10.2.0.0/16)");
    }
}
