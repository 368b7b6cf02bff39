//! The spec versions Trellis speaks. Runtimes still send 0.3.x and 0.4.0 (podman's libcni tops out at 1.0.0).
use std::fmt;
use std::str::FromStr;

use crate::error::{codes, CniError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const ALL: [Version; 5] = [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0, Version::V1_0_0, Version::V1_1_0];
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// 0.3.x and 0.4.0 results carry `ips[].version`; 1.x dropped it.
    pub fn has_ip_version_field(self) -> bool {
        self < Version::V1_0_0
    }

    /// CHECK arrived in 0.4.0.
    pub fn supports_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC arrived in 1.1.0, with the interface `mtu` and the richer route fields.
    pub fn is_1_1(self) -> bool {
        self >= Version::V1_1_0
    }

    /// The VERSION command's answer.
    pub fn version_answer(requested: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": if requested.is_empty() { Version::LATEST.as_str() } else { requested },
            "supportedVersions": Version::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Version {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, CniError> {
        Version::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
            CniError::new(
                codes::INCOMPATIBLE_VERSION,
                format!("unsupported cniVersion {s:?}"),
                format!(
                    "this plugin supports {}",
                    Version::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_rejects_others() {
        for v in Version::ALL {
            assert_eq!(v.as_str().parse::<Version>().unwrap(), v);
        }
        for bad in ["0.2.0", "9.9.9", "", "1.0", "v1.0.0"] {
            let e = bad.parse::<Version>().unwrap_err();
            assert_eq!(e.code, codes::INCOMPATIBLE_VERSION, "{bad}");
        }
    }

    #[test]
    fn version_answer_lists_all() {
        let v = Version::version_answer("1.0.0");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
        assert_eq!(Version::version_answer("")["cniVersion"], "1.1.0");
    }
}
