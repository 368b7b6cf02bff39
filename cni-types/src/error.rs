//! CNI error JSON (`{"cniVersion","code","msg","details"}`) and the spec's well-known codes.
use std::fmt;

pub mod codes {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing containers may have limited connectivity.
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    /// Plugin-specific codes start at 100.
    pub const NO_ADDRESSES: u32 = 110;
    pub const INTERFACE_DRIFT: u32 = 120;
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (code {})", self.msg, self.code)
        } else {
            write!(f, "{}: {} (code {})", self.msg, self.details, self.code)
        }
    }
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: details.into() }
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(codes::INVALID_NETWORK_CONFIG, msg, "")
    }
    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(codes::INVALID_ENV, msg, "")
    }
    pub fn decode(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::DECODE_FAILURE, msg, details)
    }
    pub fn io(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::IO_FAILURE, msg, details)
    }
    pub fn internal(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL, msg, details)
    }
    /// Prefixes the message with what was being done, keeping code and details.
    pub fn context(mut self, what: &str) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": if cni_version.is_empty() { crate::Version::LATEST.as_str() } else { cni_version },
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }

    /// Reads error JSON another plugin printed.
    pub fn from_json(v: &serde_json::Value) -> Option<CniError> {
        let code = v.get("code")?.as_u64()? as u32;
        Some(CniError {
            code,
            msg: v.get("msg").and_then(|m| m.as_str()).unwrap_or("").to_string(),
            details: v.get("details").and_then(|m| m.as_str()).unwrap_or("").to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_round_trips() {
        let e = CniError::new(7, "bad subnet", "10.0.0.0/33 is not a CIDR");
        let j = e.to_json("1.0.0");
        assert_eq!(j["cniVersion"], "1.0.0");
        assert_eq!(j["code"], 7);
        assert_eq!(CniError::from_json(&j).unwrap(), e);
        let j = CniError::config("x").to_json("");
        assert!(j.get("details").is_none());
        assert_eq!(j["cniVersion"], "1.1.0");
    }
}
