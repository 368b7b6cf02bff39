//! trellis-cni
