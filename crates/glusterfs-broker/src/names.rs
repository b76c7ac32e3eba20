//! GlusterFS names derived from OSB ids, built only here (with osb-core's injective
//! [`NameRule`]): `[a-z0-9_]`, so a directory name is one path component and one word of the
//! `gluster` command line.

use osb_core::ids::InstanceId;
use osb_core::naming::NameRule;

/// `op_` + the instance id: a shared instance's directory on the volume.
const DIRS: NameRule = NameRule::new("op_", 255);
/// `op_` + the instance id: a dedicated instance's volume. Short, as a volume's name also
/// goes into its brick paths, volfile names and log file names on every server.
const VOLUMES: NameRule = NameRule::new("op_", 64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirName(String);

impl DirName {
    pub fn for_instance(platform: &str, id: &InstanceId) -> Self {
        Self(DIRS.name(platform, id.as_str()))
    }

    /// A name read back from the store, if it is one the rule makes.
    pub fn recorded(raw: &str) -> Option<Self> {
        DIRS.could_make(raw).then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeName(String);

impl VolumeName {
    pub fn for_instance(platform: &str, id: &InstanceId) -> Self {
        Self(VOLUMES.name(platform, id.as_str()))
    }

    /// A name read back from the store, if it is one the rule makes.
    pub fn recorded(raw: &str) -> Option<Self> {
        VOLUMES.could_make(raw).then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
