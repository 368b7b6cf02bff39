//! How libcni turns one entry of a conflist into the config a plugin reads (pure): `name` and `cniVersion` from
//! the list, `runtimeConfig` filtered by the plugin's `capabilities`, `prevResult` from the previous step.
use anyhow::{anyhow, Result};
use serde_json::{Map, Value};

pub fn plugins(list: &Value) -> Result<&Vec<Value>> {
    list["plugins"].as_array().ok_or_else(|| anyhow!("conflist has no plugins array: {list}"))
}

/// The config for plugin `idx` of `list`.
pub fn plugin_conf(list: &Value, idx: usize, prev_result: Option<&Value>, runtime_config: &Value) -> Result<Value> {
    let mut conf = plugins(list)?.get(idx).cloned().ok_or_else(|| anyhow!("conflist has no plugin {idx}"))?;
    let obj = conf.as_object_mut().ok_or_else(|| anyhow!("plugin {idx} is not an object"))?;
    obj.insert("name".into(), list["name"].clone());
    obj.insert("cniVersion".into(), list["cniVersion"].clone());
    let mut rc = Map::new();
    if let (Some(caps), Some(given)) = (obj.get("capabilities").and_then(Value::as_object), runtime_config.as_object())
    {
        for (k, v) in given {
            if caps.get(k) == Some(&Value::Bool(true)) {
                rc.insert(k.clone(), v.clone());
            }
        }
    }
    if !rc.is_empty() {
        obj.insert("runtimeConfig".into(), Value::Object(rc));
    }
    if let Some(prev) = prev_result {
        obj.insert("prevResult".into(), prev.clone());
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list() -> Value {
        json!({"cniVersion": "1.0.0", "name": "net1", "plugins": [
            {"type": "trellis", "cniVersion": "0.3.0"},
            {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}
        ]})
    }

    #[test]
    fn injects_name_version_and_prev_result() {
        let prev = json!({"ips": []});
        let c = plugin_conf(&list(), 0, Some(&prev), &json!({})).unwrap();
        assert_eq!(c["name"], "net1");
        assert_eq!(c["cniVersion"], "1.0.0", "the list's version wins");
        assert_eq!(c["prevResult"], prev);
        assert!(c.get("runtimeConfig").is_none());
    }

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let rc = json!({"portMappings": [{"hostPort": 80}], "bandwidth": {"x": 1}, "ips": ["1.2.3.4"]});
        let c = plugin_conf(&list(), 1, None, &rc).unwrap();
        assert_eq!(c["runtimeConfig"], json!({"portMappings": [{"hostPort": 80}]}));
        assert!(c.get("prevResult").is_none());
        assert!(plugin_conf(&list(), 2, None, &rc).is_err());
    }
}
