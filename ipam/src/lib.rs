//! trellis-ipam
