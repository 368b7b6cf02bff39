//! trellis-e2e
