//! The CNI plugins' result cache (`/var/lib/cni/results/*`), which libcni writes for every
//! ADD: which sandbox (network namespace) a container or pod got, and the runtime's
//! arguments, among them the pod's name and namespace. No API server needed.
//!
//! Formats, as libcni writes them:
//! - libcni 0.7: the plugin's result alone (`{"cniVersion":..,"interfaces":[{"sandbox":..}],..}`);
//! - libcni 0.8+ (`"kind":"cniCacheV1"`): `containerId`, `ifName`, `networkName`, `cniArgs`
//!   (`[["K8S_POD_NAME","x"],..]`), the result under `result`, and a top-level `netns` path
//!   only in some versions: the sandbox is then found in `result.interfaces[].sandbox`.
//!
//! A pod needs both `K8S_POD_NAME` and `K8S_POD_NAMESPACE`: Podman's CNI backend sets
//! `K8S_POD_NAME` to the container's name with no pod namespace, and a Podman container is
//! not a Kubernetes pod.

use serde_json::Value;

/// What one cache file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniEntry {
    /// The namespace path the runtime passed (`/var/run/netns/cni-...`, `/proc/PID/ns/net`).
    pub netns_path: String,
    /// The (sandbox) container id, when recorded.
    pub container_id: String,
    /// `(name, namespace)` of the Kubernetes pod, when this is one.
    pub pod: Option<(String, String)>,
}

/// Parses one cache file; `None` for anything that names no namespace.
pub fn parse(text: &str) -> Option<CniEntry> {
    let value: Value = serde_json::from_str(text).ok()?;
    let result = value.get("result").unwrap_or(&value);
    let netns_path = value
        .get("netns")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| sandbox(result))?
        .to_owned();
    let arg = |key: &str| -> Option<String> {
        value
            .get("cniArgs")?
            .as_array()?
            .iter()
            .filter_map(Value::as_array)
            .find(|pair| pair.first().and_then(Value::as_str) == Some(key))
            .and_then(|pair| pair.get(1)?.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let pod = match (arg("K8S_POD_NAME"), arg("K8S_POD_NAMESPACE")) {
        (Some(name), Some(namespace)) => Some((name, namespace)),
        _ => None,
    };
    let container_id = value
        .get("containerId")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| arg("K8S_POD_INFRA_CONTAINER_ID"))
        .unwrap_or_default();
    Some(CniEntry { netns_path, container_id, pod })
}

/// The first interface sandbox in a CNI result.
fn sandbox(result: &Value) -> Option<&str> {
    result
        .get("interfaces")?
        .as_array()?
        .iter()
        .filter_map(|i| i.get("sandbox")?.as_str())
        .find(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libcni_v1_cache_with_a_netns_path_gives_the_pod() {
        let text = r#"{"kind":"cniCacheV1","containerId":"abc123","config":"e30=","ifName":"eth0",
            "networkName":"cbr0","netns":"/var/run/netns/cni-1234",
            "cniArgs":[["IgnoreUnknown","1"],["K8S_POD_NAMESPACE","shop"],["K8S_POD_NAME","cart-7d9f"],
                       ["K8S_POD_INFRA_CONTAINER_ID","abc123"]],"result":{}}"#;
        let entry = parse(text).unwrap();
        assert_eq!(entry.netns_path, "/var/run/netns/cni-1234");
        assert_eq!(entry.container_id, "abc123");
        assert_eq!(entry.pod, Some(("cart-7d9f".into(), "shop".into())));
    }

    #[test]
    fn libcni_v1_cache_without_netns_uses_the_result_sandbox() {
        let text = r#"{"kind":"cniCacheV1","containerId":"c1","ifName":"eth0","networkName":"podman",
            "cniArgs":[["K8S_POD_NAME","web"],["K8S_POD_NAMESPACE","default"]],
            "result":{"cniVersion":"1.0.0","interfaces":[{"name":"cni-podman0","mac":"aa"},
              {"name":"eth0","mac":"bb","sandbox":"/run/netns/cni-5678"}],"ips":[]}}"#;
        let entry = parse(text).unwrap();
        assert_eq!(entry.netns_path, "/run/netns/cni-5678");
        assert_eq!(entry.pod, Some(("web".into(), "default".into())));
    }

    #[test]
    fn podman_containers_are_not_pods() {
        let text = r#"{"kind":"cniCacheV1","containerId":"c2","ifName":"eth0","networkName":"podman",
            "cniArgs":[["IgnoreUnknown","1"],["K8S_POD_NAME","my-container"]],
            "result":{"interfaces":[{"name":"eth0","sandbox":"/run/netns/cni-9"}]}}"#;
        let entry = parse(text).unwrap();
        assert_eq!(entry.container_id, "c2");
        assert_eq!(entry.pod, None);
    }

    #[test]
    fn libcni_0_7_results_alone_give_the_sandbox() {
        let text =
            r#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/proc/42/ns/net"}],"ips":[]}"#;
        let entry = parse(text).unwrap();
        assert_eq!(entry.netns_path, "/proc/42/ns/net");
        assert_eq!((entry.container_id.as_str(), entry.pod), ("", None));
    }

    #[test]
    fn broken_files_name_nothing() {
        for text in ["", "{}", "not json", "[]", r#"{"netns":5}"#, r#"{"result":{"interfaces":[{}]}}"#] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
