//! Orphan sweeps: backend objects a broker made that no instance or binding in the state store
//! claims any more (a half-made database after a crash, an account whose binding record was
//! lost), found by comparing what the broker lists ([`ServiceBroker::objects`]) with the store.

use std::collections::HashMap;

use serde::Serialize;

use crate::broker::{BrokerError, ServiceBroker};
use crate::store::{Store, StoreError, now_ms};

/// Who a backend object was made for, as the broker's own marker on it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "for", rename_all = "snake_case")]
pub enum Claim {
    Instance {
        platform: String,
        id: String,
    },
    Binding {
        platform: String,
        id: String,
    },
    /// Named like the broker's objects but without its marker: made by someone else (or by a
    /// version of the broker before markers). Listed, never removed.
    Unmarked,
}

/// One backend object, as a broker lists it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendObject {
    /// What it is ("database", "user", "vhost", ...).
    pub kind: String,
    pub name: String,
    /// Where it is (the server's configured name, ...).
    pub location: String,
    #[serde(flatten)]
    pub claim: Claim,
    /// When the broker marked it, in Unix milliseconds, where known.
    pub created_at_ms: Option<i64>,
}

/// Who a backend name is for, as a broker's ownership marker records it (the marker is written
/// before the object is made, in a place apps cannot write): a platform's instance, or a
/// binding, whose `parent` is the name of its instance's object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    pub platform: &'a str,
    pub id: &'a str,
    /// Empty for an instance's object.
    pub parent: &'a str,
}

/// What claiming a name found. A marker is written before its object is made and records
/// once the object was made, so a retry of an attempt that died in between still treats
/// whatever stands under the name as someone else's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The broker has not made the object yet (the marker is new, or an earlier attempt died
    /// before making it): anything under this name is someone else's.
    Unmade,
    /// An earlier attempt for the same owner made the object: what stands under the name is
    /// the broker's own.
    Made,
}

/// An ownership marker as a broker stored it (MongoDB documents, RabbitMQ parameters, ...).
#[derive(Debug, Clone)]
pub struct Marker {
    /// What it marks ("database", "vhost", "user", ...).
    pub kind: String,
    pub name: String,
    pub platform: String,
    pub owner_id: String,
    /// Empty for an instance's object.
    pub parent: String,
    pub created_at_ms: i64,
    /// Whether the broker went on to make the object. A marker that is only a claim says
    /// nothing of what stands under the name: that object is not the broker's to remove.
    pub made: bool,
}

/// Removes what `owner`'s marker covers, given how far it got (`held`): the object (`remove`)
/// only when the broker made it, then the marker (`release`). Under a marker that is only a
/// claim, whatever stands under the name was never the broker's: the marker goes alone.
/// Without a marker of this owner, nothing happens.
pub async fn remove_marked<R, M>(
    held: Option<Claimed>,
    remove: impl FnOnce() -> R,
    release: impl FnOnce() -> M,
) -> Result<(), BrokerError>
where
    R: Future<Output = Result<(), BrokerError>>,
    M: Future<Output = Result<(), BrokerError>>,
{
    match held {
        None => return Ok(()),
        Some(Claimed::Made) => remove().await?,
        Some(Claimed::Unmade) => {}
    }
    release().await
}

impl Marker {
    pub fn owner(&self) -> Owner<'_> {
        Owner {
            platform: &self.platform,
            id: &self.owner_id,
            parent: &self.parent,
        }
    }

    /// The object it marks, as an orphan sweep lists it.
    pub fn object(&self, location: &str) -> BackendObject {
        BackendObject::marked(
            &self.kind,
            &self.name,
            location,
            self.owner(),
            self.created_at_ms,
        )
    }
}

impl BackendObject {
    /// An object its marker claims for `owner`.
    pub fn marked(
        kind: &str,
        name: &str,
        location: &str,
        owner: Owner<'_>,
        created_at_ms: i64,
    ) -> Self {
        let (platform, id) = (owner.platform.to_owned(), owner.id.to_owned());
        Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
            location: location.to_owned(),
            claim: if owner.parent.is_empty() {
                Claim::Instance { platform, id }
            } else {
                Claim::Binding { platform, id }
            },
            created_at_ms: Some(created_at_ms),
        }
    }

    /// An object named like the broker's that carries no marker.
    pub fn unmarked(kind: &str, name: &str, location: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
            location: location.to_owned(),
            claim: Claim::Unmarked,
            created_at_ms: None,
        }
    }
}

/// An object no instance or binding claims.
#[derive(Debug, Clone, Serialize)]
pub struct Orphan {
    #[serde(flatten)]
    pub object: BackendObject,
    /// Whether `--delete` may remove it: marked as the broker's and older than the limit.
    pub removable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OrphanError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The broker's objects that nothing in the store claims and that are at least `older_than_ms`
/// old (or of unknown age). An object is claimed while its instance or binding row exists, in
/// any state: rows are written before any backend call, so an operation in flight always claims
/// what it is making.
pub async fn find<B: ServiceBroker>(
    broker: &B,
    store: &Store,
    older_than_ms: i64,
) -> Result<Sweep, OrphanError> {
    let cutoff = now_ms() - older_than_ms;
    let objects = broker.objects().await?;
    let marked = objects
        .iter()
        .filter(|object| object.claim != Claim::Unmarked)
        .count();
    let judged: Vec<BackendObject> = objects
        .into_iter()
        .filter(|object| object.created_at_ms.is_none_or(|t| t <= cutoff))
        .collect();
    let claimants = Claimants::read(store, &judged).await?;
    let orphans = judged
        .into_iter()
        .filter(|object| !claimants.claims(object))
        .map(|object| Orphan {
            removable: object.created_at_ms.is_some() && object.claim != Claim::Unmarked,
            object,
        })
        .collect();
    Ok(Sweep { orphans, marked })
}

/// What [`find`] saw.
#[derive(Debug, Default)]
pub struct Sweep {
    pub orphans: Vec<Orphan>,
    /// How many objects carry the broker's marker, claimed or not.
    pub marked: usize,
}

/// Whether an instance or binding row in the store claims `object` right now.
pub async fn is_claimed(store: &Store, object: &BackendObject) -> Result<bool, StoreError> {
    Ok(Claimants::read(store, std::slice::from_ref(object))
        .await?
        .claims(object))
}

/// The platform of every instance and binding row that some of a sweep's objects name, read
/// together: a sweep over tens of thousands of objects makes a few dozen statements, not a
/// round trip per object.
struct Claimants {
    instances: HashMap<String, String>,
    bindings: HashMap<String, String>,
}

impl Claimants {
    async fn read(store: &Store, objects: &[BackendObject]) -> Result<Self, StoreError> {
        let mut instances = Vec::new();
        let mut bindings = Vec::new();
        for object in objects {
            match &object.claim {
                Claim::Instance { id, .. } => instances.push(id.as_str()),
                Claim::Binding { id, .. } => bindings.push(id.as_str()),
                Claim::Unmarked => {}
            }
        }
        Ok(Self {
            instances: store.instance_platforms(&instances).await?,
            bindings: store.binding_platforms(&bindings).await?,
        })
    }

    /// Whether a row of the platform `object`'s marker names holds it.
    fn claims(&self, object: &BackendObject) -> bool {
        let (rows, platform, id) = match &object.claim {
            Claim::Instance { platform, id } => (&self.instances, platform, id),
            Claim::Binding { platform, id } => (&self.bindings, platform, id),
            Claim::Unmarked => return false,
        };
        rows.get(id) == Some(platform)
    }
}
