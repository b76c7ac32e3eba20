//! glusterfs-broker, in the making (issue #13): so far the `gluster` command line it manages
//! GlusterFS through, and the quota'd directories shared plans are made of. The broker binary
//! and its backend come next.

pub mod cli;
pub mod share;
