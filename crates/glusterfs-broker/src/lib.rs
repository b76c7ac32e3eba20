//! glusterfs-broker: GlusterFS storage for apps, mounted natively. A shared plan's instance is
//! a quota'd directory on one volume (`share.rs`), a dedicated plan's a volume of its own
//! (`volumes.rs`); who may mount is the volume's `auth.allow` (`access.rs`); everything goes
//! through the `gluster` CLI (`cli.rs`).

pub mod access;
pub mod backend;
pub mod cli;
pub mod config;
pub mod names;
pub mod share;
pub mod volumes;
