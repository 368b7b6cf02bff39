//! trellis-agent
