//! Fields every network config shares (spec "Network configuration"); plugins parse their own fields from `raw`.
use serde_json::Value;

use crate::error::{codes, CniError};
use crate::result::CniResult;
use crate::version::Version;

/// The `cniVersion` a runtime sent on stdin, as sent ("" if absent or unreadable): what VERSION and error JSON
/// echo even when the rest of the config does not parse.
pub fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|x| x.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// One attachment named in GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: Version,
    /// The version string exactly as sent, echoed back in results.
    pub cni_version_str: String,
    pub name: String,
    pub plugin_type: String,
    pub prev_result: Option<CniResult>,
    pub runtime_config: Value,
    pub valid_attachments: Option<Vec<Attachment>>,
    pub raw: Value,
}

impl NetConf {
    /// Parses stdin. Malformed JSON is code 6, a bad version code 1, missing required fields code 7.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let raw: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode("network config on stdin is not valid JSON", e.to_string()))?;
        Self::from_value(raw)
    }

    pub fn from_value(raw: Value) -> Result<NetConf, CniError> {
        if !raw.is_object() {
            return Err(CniError::decode("network config must be a JSON object", ""));
        }
        let s = |k: &str| raw.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let cni_version_str =
            s("cniVersion").ok_or_else(|| CniError::config("network config has no \"cniVersion\""))?;
        let cni_version: Version = cni_version_str.parse()?;
        let name = s("name").unwrap_or_default();
        let plugin_type = s("type").ok_or_else(|| CniError::config("network config has no \"type\""))?;
        let prev_result = match raw.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(CniResult::from_json(v).map_err(|e| e.context("prevResult"))?),
        };
        let valid_attachments = match raw.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|a| {
                        let f = |k| a.get(k).and_then(|v: &Value| v.as_str()).map(str::to_string);
                        match (f("containerID"), f("ifname")) {
                            (Some(container_id), Some(ifname)) => Ok(Attachment { container_id, ifname }),
                            _ => Err(CniError::config(format!(
                                "cni.dev/valid-attachments item {a} needs \"containerID\" and \"ifname\""
                            ))),
                        }
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => {
                return Err(CniError::new(
                    codes::INVALID_NETWORK_CONFIG,
                    "cni.dev/valid-attachments must be an array",
                    "",
                ))
            }
        };
        Ok(NetConf {
            cni_version,
            cni_version_str,
            name,
            plugin_type,
            prev_result,
            runtime_config: raw.get("runtimeConfig").cloned().unwrap_or(Value::Null),
            valid_attachments,
            raw,
        })
    }

    /// A network name becomes a directory name in IPAM stores: keep it to a safe character set.
    pub fn require_name(&self) -> Result<&str, CniError> {
        let n = self.name.as_str();
        let ok =
            !n.is_empty() && n != "." && n != ".." && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if ok {
            Ok(n)
        } else {
            Err(CniError::config(format!(
                "network name {n:?} must be non-empty and use only letters, digits, '-', '_' and '.'"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_version_is_read_even_from_a_bad_config() {
        assert_eq!(requested_version(br#"{"cniVersion":"0.4.0","type":3}"#), "0.4.0");
        assert_eq!(requested_version(b"{not json"), "");
        assert_eq!(requested_version(b""), "");
    }

    #[test]
    fn parses_common_fields() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"trellis","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, Version::V1_1_0);
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
        assert!(c.prev_result.is_none());
    }

    #[test]
    fn error_codes_for_bad_input() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(br#"{"cniVersion":"9.9.9","type":"x"}"#).unwrap_err().code, 1);
        assert_eq!(NetConf::parse(br#"{"type":"x"}"#).unwrap_err().code, 7);
        assert_eq!(NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().code, 7);
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","type":"x","name":"../etc"}"#).unwrap();
        assert_eq!(c.require_name().unwrap_err().code, 7);
    }
}
