//! trellis-lab
