//! Fields every network config shares (spec "Network configuration"); plugins parse their own fields from `raw`.
use serde_json::Value;

use crate::error::CniError;
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

/// The keys GC's list of live attachments goes by: spec 1.1.0 says `cni.dev/valid-attachments`, the text of
/// SPEC.md at the v1.1.0 tag said `cni.dev/attachments`, and libcni sends both.
pub const GC_ATTACHMENT_KEYS: [&str; 2] = ["cni.dev/valid-attachments", "cni.dev/attachments"];

/// One attachment named in GC's `cni.dev/valid-attachments` (or `cni.dev/attachments`).
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

/// The union of the attachments under either GC key; None when neither key is present. Keeping whatever
/// either list names is the safe reading if a runtime ever sent two lists that differ.
fn gc_attachments(raw: &Value) -> Result<Option<Vec<Attachment>>, CniError> {
    let mut out: Option<Vec<Attachment>> = None;
    for key in GC_ATTACHMENT_KEYS {
        let items = match raw.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items,
            Some(_) => return Err(CniError::config(format!("{key} must be an array"))),
        };
        let list = out.get_or_insert_with(Vec::new);
        for a in items {
            let f = |k| a.get(k).and_then(|v: &Value| v.as_str()).map(str::to_string);
            let (Some(container_id), Some(ifname)) = (f("containerID"), f("ifname")) else {
                return Err(CniError::config(format!("{key} item {a} needs \"containerID\" and \"ifname\"")));
            };
            let att = Attachment { container_id, ifname };
            if !list.contains(&att) {
                list.push(att);
            }
        }
    }
    Ok(out)
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
        let valid_attachments = gc_attachments(&raw)?;
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
        if n == "." || n == ".." {
            return Err(CniError::config(format!(
                "network name {n:?} is not allowed: \".\" and \"..\" name directories"
            )));
        }
        if !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
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

    fn named(name: &str) -> Result<String, CniError> {
        let c = NetConf::from_value(serde_json::json!({"cniVersion": "1.0.0", "type": "x", "name": name})).unwrap();
        c.require_name().map(str::to_string)
    }

    #[test]
    fn dot_names_are_refused_as_names_not_for_their_characters() {
        for n in [".", ".."] {
            let e = named(n).unwrap_err();
            assert_eq!(e.code, 7);
            assert!(e.msg.contains("is not allowed") && !e.msg.contains("letters"), "{n}: {e}");
        }
        let e = named("a/b").unwrap_err();
        assert!(e.msg.contains("letters, digits"), "{e}");
        assert_eq!(named("...").unwrap(), "...");
        assert_eq!(named("net-1_a.b").unwrap(), "net-1_a.b");
        assert!(named("").is_err());
    }

    fn gc_list(v: serde_json::Value) -> Result<Option<Vec<Attachment>>, CniError> {
        let mut conf = serde_json::json!({"cniVersion": "1.1.0", "type": "x", "name": "n"});
        for (k, x) in v.as_object().unwrap() {
            conf[k] = x.clone();
        }
        NetConf::from_value(conf).map(|c| c.valid_attachments)
    }

    #[test]
    fn gc_list_is_read_under_either_key_and_merged() {
        let a = |id: &str| serde_json::json!([{"containerID": id, "ifname": "eth0"}]);
        let att = |id: &str| Attachment { container_id: id.into(), ifname: "eth0".into() };
        assert_eq!(gc_list(serde_json::json!({})).unwrap(), None);
        assert_eq!(gc_list(serde_json::json!({"cni.dev/attachments": a("x")})).unwrap(), Some(vec![att("x")]));
        assert_eq!(gc_list(serde_json::json!({"cni.dev/valid-attachments": a("y")})).unwrap(), Some(vec![att("y")]));
        // libcni sends both, with the same list: no duplicates; two different lists: keep everything named.
        let both = serde_json::json!({"cni.dev/valid-attachments": a("x"), "cni.dev/attachments": a("x")});
        assert_eq!(gc_list(both).unwrap(), Some(vec![att("x")]));
        let differ = serde_json::json!({"cni.dev/valid-attachments": a("x"), "cni.dev/attachments": a("y")});
        assert_eq!(gc_list(differ).unwrap(), Some(vec![att("x"), att("y")]));
        assert_eq!(gc_list(serde_json::json!({"cni.dev/valid-attachments": []})).unwrap(), Some(vec![]));
        for bad in [
            serde_json::json!({"cni.dev/attachments": {"containerID": "x"}}),
            serde_json::json!({"cni.dev/attachments": [{"containerID": "x"}]}),
        ] {
            assert_eq!(gc_list(bad.clone()).unwrap_err().code, 7, "{bad}");
        }
    }
}
