//! trellis-cni-types
