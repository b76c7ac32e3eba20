//! glusterfs-broker, in the making (issue #13): so far the `gluster` command line it manages
//! GlusterFS through, the quota'd directories shared plans are made of, and who may mount
//! them (`auth.allow`). The broker binary
//! and its backend come next.

pub mod access;
pub mod cli;
pub mod share;
