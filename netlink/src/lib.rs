//! trellis-netlink
