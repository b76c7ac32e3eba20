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
use osb_core::broker::{BindingView, BindingsOf};
use osb_core::claims::Claims;
use serde_json::{Map, Value};

use crate::cli::{Gluster, Nothing, VolumeInfo};

/// How long one change of `auth.allow` may hold the volume's lock: its section (three quarters
/// of it) outlasts one `gluster` change's own timeout.
const HOLD: Duration = Duration::from_secs(180);

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
    /// The clients of an open entry (no restriction).
    open_to: Vec<String>,
}

impl AuthAllow {
    /// `value` read with `open_to` as the clients of an open entry.
    pub fn parse(value: &str, open_to: &[String]) -> Self {
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
        let mut open_to = open_to.to_vec();
        open_to.sort();
        open_to.dedup();
        Self { entries, open_to }
    }

    /// The clients `dir` is restricted to (none: an open entry, or no entry).
    pub fn clients(&self, dir: &str) -> Vec<&str> {
        self.entries
            .iter()
            .find_map(|e| match e {
                Entry::Dir { dir: d, clients } if d == dir && !opens(&self.open_to, clients) => {
                    Some(
                        clients
                            .iter()
                            .map(String::as_str)
                            .filter(|c| *c != ANYONE)
                            .collect(),
                    )
                }
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

    /// Drops `dir`'s entry, whatever it holds.
    pub fn forget(&mut self, dir: &str) {
        self.entries
            .retain(|e| !matches!(e, Entry::Dir { dir: d, .. } if d == dir));
    }

    /// Keeps the broker's directories mountable. An open entry is one of `made`'s directories
    /// allowing exactly the open clients. While any other entry is there (a restriction, the
    /// root's or an operator's entry: Gluster then refuses whatever no entry names), or
    /// `always`, each of `open` gets an open entry if it has none, and open entries allow the
    /// open clients of now; when `open` is `complete` (every claimed directory), open entries
    /// of directories no longer claimed go. Otherwise the open entries go, and the option can
    /// return to its default. Refused: opening directories to everyone (`*`, no `open_to`)
    /// beside entries the broker did not make, which would widen the operator's limits.
    pub fn settle(
        &mut self,
        policy: &Policy,
        open: &[String],
        complete: bool,
    ) -> Result<(), BrokerError> {
        let open_to = self.open_to.clone();
        let is_open = |e: &Entry| matches!(e, Entry::Dir { dir, clients } if (policy.made)(dir) && opens(&open_to, clients));
        let shut = policy.always || self.entries.iter().any(|e| !is_open(e));
        if !shut {
            self.entries.retain(|e| !is_open(e));
            return Ok(());
        }
        let foreign = self
            .entries
            .iter()
            .any(|e| !matches!(e, Entry::Dir { dir, .. } if (policy.made)(dir)));
        if foreign && self.open_to == [ANYONE] && !open.is_empty() {
            return Err(BrokerError::Failed(
                "the volume's auth.allow has entries the broker did not make: set [glusterfs] open_to to the app networks, or the broker would open its directories to everyone".into(),
            ));
        }
        self.entries.retain(|e| match e {
            Entry::Dir { dir, .. } if complete && is_open(e) => open.contains(dir),
            _ => true,
        });
        for e in &mut self.entries {
            if let Entry::Dir { dir, clients } = e
                && (policy.made)(dir)
                && opens(&open_to, clients)
            {
                *clients = open_to.clone();
            }
        }
        for dir in open {
            let listed = self
                .entries
                .iter()
                .any(|e| matches!(e, Entry::Dir { dir: d, .. } if d == dir));
            if !listed {
                self.entries.push(Entry::Dir {
                    dir: dir.clone(),
                    clients: open_to.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Whether `clients` is what an open entry allows: `open_to` (sorted) in any order, or `*`
/// (what open entries allowed before `open_to` was set; no client list is `*`).
fn opens(open_to: &[String], clients: &[String]) -> bool {
    let mut sorted = clients.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted == open_to || sorted == [ANYONE]
}

/// How a volume's entries are kept: which directories are the broker's, and whether every
/// one has an entry even while none is restricted.
pub struct Policy {
    pub made: fn(&str) -> bool,
    pub always: bool,
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

/// The clients a directory should allow, from its instance's bindings (read under the
/// volume's lock): every client of a bound binding (and of the one being bound) must be there,
/// and none but those some binding holds may be.
pub struct Wanted {
    must: BTreeSet<String>,
    may: BTreeSet<String>,
}

impl Wanted {
    /// From `bindings`, but `leaving` (being unbound).
    pub fn of(bindings: &[BindingView], leaving: Option<&BindingView>) -> Self {
        let mut wanted = Self {
            must: BTreeSet::new(),
            may: BTreeSet::new(),
        };
        for b in bindings {
            if leaving.is_some_and(|l| l.id == b.id) {
                continue;
            }
            for c in Client::of(b) {
                if b.ready {
                    wanted.must.insert(c.0.clone());
                }
                wanted.may.insert(c.0);
            }
        }
        wanted
    }

    /// And `clients` (a binding being made).
    fn with(mut self, clients: &[Client]) -> Self {
        for c in clients {
            self.must.insert(c.0.clone());
            self.may.insert(c.0.clone());
        }
        self
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

/// What one change does to a directory's entry, decided under the volume's lock from what
/// the store holds then.
pub enum Edit {
    /// The entry as the bindings want it.
    Fix(Wanted),
    /// The directory is gone: its entry goes, and it gets no open one.
    Forget,
    /// Nothing for the directory itself; the volume's open entries are settled.
    Settle,
    /// Nothing at all (what the edit depended on is gone).
    Skip,
}

/// Longest `auth.allow` value the broker writes: the value is one argument of one command
/// (Linux caps one at 128 KiB) and one option glusterd hands every client.
const MAX_VALUE: usize = 64 << 10;

/// A volume's `auth.allow`, changed by one writer at a time among every replica (the option is
/// one value: two read-modify-writes at once would lose one).
pub struct Access<'a> {
    pub gluster: &'a Gluster,
    pub claims: &'a Claims,
    pub volume: &'a str,
    /// The store's pool of the volume's directories (the shared volume), or none (a dedicated
    /// volume: its root is the only directory).
    pub dirs: Option<&'a str>,
    pub policy: Policy,
    /// Whom an open entry allows: `*`, or the operator's app networks.
    pub open_to: &'a [String],
}

impl Access<'_> {
    async fn current(&self) -> Result<AuthAllow, BrokerError> {
        let info: VolumeInfo = self.gluster.read(&["volume", "info", self.volume]).await?;
        let value = info
            .info
            .volumes
            .volumes
            .first()
            .and_then(|v| v.option("auth.allow"))
            .unwrap_or("");
        Ok(AuthAllow::parse(value, self.open_to))
    }

    /// The directories that keep an open entry while the volume is shut: every claimed one
    /// of the broker's, `except` one going away.
    async fn open_dirs(&self, except: Option<&str>) -> Result<Vec<String>, BrokerError> {
        Ok(match self.dirs {
            Some(pool) => self
                .claims
                .all(pool)
                .await?
                .into_iter()
                .map(|c| c.item)
                .filter(|d| (self.policy.made)(d) && Some(d.as_str()) != except)
                .collect(),
            None if except.is_some() => Vec::new(),
            None => vec![String::new()],
        })
    }

    /// Under the volume's lock: decides the edit (`decide` reads the store then, so that no
    /// binding made or removed meanwhile is missed), reads the option, applies the edit to
    /// `dir`'s entry, settles the open entries and writes the result back if it changed.
    async fn change(
        &self,
        dir: &str,
        decide: impl AsyncFnOnce() -> Result<Edit, BrokerError>,
    ) -> Result<(), BrokerError> {
        let lock = format!("glusterfs auth.allow {}", self.volume);
        self.claims
            .exclusive(&lock, HOLD, || async {
                let edit = decide().await?;
                if matches!(edit, Edit::Skip) {
                    return Ok(());
                }
                let before = self.current().await?;
                let mut after = before.clone();
                let except = matches!(edit, Edit::Forget).then_some(dir);
                match edit {
                    Edit::Fix(wanted) => {
                        if let Some(fixed) = wanted.fix(&after.clients(dir)) {
                            after.restrict(dir, &fixed.iter().map(String::as_str).collect());
                        }
                    }
                    Edit::Forget => after.forget(dir),
                    Edit::Settle | Edit::Skip => {}
                }
                after.settle(&self.policy, &self.open_dirs(except).await?, true)?;
                if after == before {
                    return Ok(());
                }
                let (old, value) = (before.to_string(), after.to_string());
                if value.len() > MAX_VALUE && value.len() > old.len() {
                    return Err(BrokerError::Unprocessable(format!(
                        "volume {} has too many directories to give each an auth.allow entry: use a dedicated plan",
                        self.volume
                    )));
                }
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

    /// Lets `clients` (a binding being made) mount `dir`, beside what the instance's other
    /// bindings hold.
    pub async fn grant(
        &self,
        dir: &str,
        clients: &[Client],
        bindings: &BindingsOf<'_>,
    ) -> Result<(), BrokerError> {
        if clients.is_empty() {
            return Ok(());
        }
        self.change(dir, async || {
            let wanted = Wanted::of(&bindings.load().await?, None).with(clients);
            Ok(Edit::Fix(wanted))
        })
        .await
    }

    /// Takes back what `binding` was given, but what the instance's other bindings (read
    /// under the lock, those being made included) still hold.
    pub async fn revoke(
        &self,
        dir: &str,
        binding: &BindingView,
        bindings: &BindingsOf<'_>,
    ) -> Result<(), BrokerError> {
        if Client::of(binding).is_empty() {
            return Ok(());
        }
        self.change(dir, async || {
            Ok(Edit::Fix(Wanted::of(
                &bindings.load().await?,
                Some(binding),
            )))
        })
        .await
    }

    /// Drops `dir`'s entry (its data is gone), if it has one or the volume keeps open ones.
    pub async fn forget(&self, dir: &str) -> Result<(), BrokerError> {
        let current = self.current().await?;
        let mut settled = current.clone();
        settled.forget(dir);
        settled.settle(&self.policy, &self.open_dirs(Some(dir)).await?, true)?;
        if settled == current {
            return Ok(());
        }
        self.change(dir, async || Ok(Edit::Forget)).await
    }

    /// Gives a new directory its open entry if the volume needs one.
    pub async fn open(&self, dir: &str) -> Result<(), BrokerError> {
        let current = self.current().await?;
        let mut settled = current.clone();
        settled.settle(&self.policy, &[dir.to_owned()], false)?;
        if settled == current {
            return Ok(());
        }
        self.change(dir, async || Ok(Edit::Settle)).await
    }

    /// Puts `dir`'s entry right by the instance's bindings, if it is not and the instance is
    /// still there and ready (read again under the lock): what upkeep does after a lost
    /// write (a crash between the store and Gluster, or a second writer) or a change of
    /// `open_to`.
    pub async fn reconcile(&self, dir: &str, bindings: &BindingsOf<'_>) -> Result<(), BrokerError> {
        let current = self.current().await?;
        let mut settled = current.clone();
        if let Some(fixed) = Wanted::of(&bindings.load().await?, None).fix(&current.clients(dir)) {
            settled.restrict(dir, &fixed.iter().map(String::as_str).collect());
        }
        settled.settle(&self.policy, &[dir.to_owned()], false)?;
        if settled == current {
            return Ok(());
        }
        self.change(dir, async || {
            if !bindings.instance_ready().await? {
                return Ok(Edit::Skip);
            }
            Ok(Edit::Fix(Wanted::of(&bindings.load().await?, None)))
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

    fn anyone() -> Vec<String> {
        vec![ANYONE.to_owned()]
    }

    const SOMETIMES: Policy = Policy {
        made,
        always: false,
    };

    fn set(allow: &mut AuthAllow, dir: &str, clients: &[&str]) {
        allow.restrict(dir, &clients.iter().copied().collect());
    }

    fn names(dirs: &[&str]) -> Vec<String> {
        dirs.iter().map(|d| (*d).to_owned()).collect()
    }

    #[test]
    fn restrictions_keep_other_entries_and_read_back_the_same() {
        let mut allow = AuthAllow::parse("/(127.0.0.1),/op_b(10.0.0.9)", &anyone());
        set(&mut allow, "op_a", &["10.0.0.1", "10.0.0.0/24"]);
        assert_eq!(
            allow.to_string(),
            "/(127.0.0.1),/op_b(10.0.0.9),/op_a(10.0.0.0/24|10.0.0.1)"
        );
        assert_eq!(allow.clients("op_a"), ["10.0.0.0/24", "10.0.0.1"]);
        assert_eq!(AuthAllow::parse(&allow.to_string(), &anyone()), allow);
        set(&mut allow, "op_a", &[]);
        assert_eq!(allow.to_string(), "/(127.0.0.1),/op_b(10.0.0.9)");
    }

    /// What a directory allows follows its bindings: bound ones' clients must be there, a
    /// binding being made or removed keeps its own, nothing else stays.
    #[test]
    fn the_bindings_decide_what_a_directory_allows() {
        let binding = |id: &str, ready: bool, allow: &[&str]| BindingView {
            id: osb_core::ids::BindingId::parse(id).unwrap(),
            ready,
            state: Value::Null,
            parameters: serde_json::from_value(serde_json::json!({ "allow": allow })).unwrap(),
        };
        let bound = binding("b1", true, &["10.0.0.1", "10.0.0.2"]);
        let making = binding("b2", false, &["10.0.0.3"]);
        let bindings = [bound.clone(), making];
        let wanted = Wanted::of(&bindings, None);
        assert_eq!(
            wanted.fix(&["10.0.0.3", "10.9.9.9"]).unwrap(),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert!(wanted.fix(&["10.0.0.1", "10.0.0.2"]).is_none());
        // b1 leaving: only what b2, being made, holds may stay.
        let leaving = Wanted::of(&bindings, Some(&bound));
        assert_eq!(
            leaving.fix(&["10.0.0.1", "10.0.0.3"]).unwrap(),
            ["10.0.0.3"]
        );
        // A binding being made adds its own.
        let with = Wanted::of(&[], None).with(&clients(&["10.0.0.7"]));
        assert_eq!(with.fix(&[]).unwrap(), ["10.0.0.7"]);
    }

    #[test]
    fn one_restricted_directory_keeps_the_others_open_until_it_is_lifted() {
        let open = names(&["op_a", "op_b", "op_c"]);
        let mut allow = AuthAllow::parse("*", &anyone());
        allow.settle(&SOMETIMES, &open, true).unwrap();
        assert_eq!(allow.to_string(), "", "nothing restricted: the default");
        set(&mut allow, "op_a", &["10.0.0.1"]);
        allow.settle(&SOMETIMES, &open, true).unwrap();
        assert_eq!(allow.to_string(), "/op_a(10.0.0.1),/op_b(*),/op_c(*)");
        assert!(allow.clients("op_b").is_empty(), "open is no restriction");
        set(&mut allow, "op_a", &[]);
        allow.settle(&SOMETIMES, &open, true).unwrap();
        assert_eq!(allow.to_string(), "", "the last restriction lifted");
    }

    /// Opening directories to everyone beside an operator's entries would widen them: refused
    /// until `open_to` names the app networks.
    #[test]
    fn an_operator_entry_without_open_to_is_refused() {
        let open = names(&["op_a"]);
        for value in ["/(10.1.1.1)", "10.0.0.*"] {
            let mut allow = AuthAllow::parse(value, &anyone());
            assert!(allow.settle(&SOMETIMES, &open, true).is_err(), "{value}");
        }
    }

    /// With the app networks configured, open entries allow those (never `*`; an old `*`
    /// entry is rewritten), every directory has one even while nothing is restricted, a
    /// restriction replaces it, and an operator's entries stay.
    #[test]
    fn open_entries_allow_the_configured_networks_only() {
        let networks = names(&["10.2.0.0/16", "10.1.0.0/16"]);
        let always = Policy { made, always: true };
        let open = names(&["op_a", "op_b"]);
        let mut allow = AuthAllow::parse("/(10.3.3.3),/op_b(*)", &networks);
        allow.settle(&always, &open, true).unwrap();
        assert_eq!(
            allow.to_string(),
            "/(10.3.3.3),/op_b(10.1.0.0/16|10.2.0.0/16),/op_a(10.1.0.0/16|10.2.0.0/16)"
        );
        assert!(allow.clients("op_a").is_empty());
        set(&mut allow, "op_a", &["10.1.2.3"]);
        allow.settle(&always, &open, true).unwrap();
        assert_eq!(allow.clients("op_a"), ["10.1.2.3"]);
        set(&mut allow, "op_a", &[]);
        allow.settle(&always, &open, true).unwrap();
        assert!(
            allow
                .to_string()
                .ends_with(",/op_a(10.1.0.0/16|10.2.0.0/16)")
        );
        // A directory going away loses its entry, and an open entry of a directory no longer
        // claimed goes once every claimed one is known.
        allow.forget("op_a");
        allow.settle(&always, &open[1..], true).unwrap();
        assert_eq!(
            allow.to_string(),
            "/(10.3.3.3),/op_b(10.1.0.0/16|10.2.0.0/16)"
        );
        allow.settle(&always, &[], true).unwrap();
        assert_eq!(allow.to_string(), "/(10.3.3.3)");
    }
}
