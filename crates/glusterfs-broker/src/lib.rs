//! glusterfs-broker (issue #13, in the making): GlusterFS storage for apps, mounted natively.
//! Shared plans (a quota'd directory on a volume) work; `allow` lists (`access.rs`) and
//! dedicated volumes are not wired in yet.

pub mod access;
pub mod backend;
pub mod cli;
pub mod config;
pub mod names;
pub mod share;
