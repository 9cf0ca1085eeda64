//! The deployment files — `Dockerfile`, `.dockerignore` and `k8s/*.yaml` — agree with the
//! server: every variable they set is one `src/` reads (the `env = "..."` names of the clap
//! definitions, parsed at test time), every variable of `env.example` is deployed (or listed in
//! [`NOT_DEPLOYED`]), and ports, probes, users and shutdown timing match. Files only: nothing
//! is built or started.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

/// Variables of `env.example` deliberately absent from the ConfigMap, the Secret and the
/// Deployment's `env`. Each is optional and off (or derived from another variable) unless set;
/// an empty value is not the same as unset, so they cannot be listed with empty values.
const NOT_DEPLOYED: &[(&str, &str)] = &[
    // RS256 instead of (or next to) the HS256 secret; add to the Secret when Django signs RS256.
    ("JWT_PUBLIC_KEY", "optional RS256 key"),
    (
        "JWT_PUBLIC_KEY_FILE",
        "optional RS256 key file (mount a Secret and set the path)",
    ),
    // Webhooks are off unless a URL is set; the secret defaults to DJANGO_JWT_SECRET.
    ("DJANGO_WEBHOOK_URL", "webhooks off unless set"),
    ("DJANGO_WEBHOOK_SECRET", "defaults to DJANGO_JWT_SECRET"),
    // Default: a self-signed certificate rotated in memory. Operator certificates come from a
    // mounted TLS Secret plus these two paths.
    (
        "WEBTRANSPORT_CERT_FILE",
        "self-signed certificate by default",
    ),
    (
        "WEBTRANSPORT_KEY_FILE",
        "self-signed certificate by default",
    ),
];

/// Kinds without a namespace.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "CustomResourceDefinition",
    "IngressClass",
];

const NAMESPACE: &str = "sfu";
/// Seconds the server may spend delivering queued webhooks after the drain (README).
const WEBHOOK_FLUSH_SECS: i64 = 5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ------------------------------------------------------------------------------------------
// What the server reads
// ------------------------------------------------------------------------------------------

/// Environment variable names of the server's configuration, and which of them are secret
/// (`hide_env_values = true`): every `env = "NAME"` in `src/**/*.rs`.
struct KnownEnv {
    names: BTreeSet<String>,
    secret: BTreeSet<String>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `NAME`s of `env = "NAME"` (any spacing around `=`) in `text`.
fn env_names_in(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("env") {
        let start = from + at;
        from = start + 3;
        let preceded_by_ident =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if preceded_by_ident {
            continue;
        }
        let rest = text[start + 3..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some(end) = rest.find('"') else { continue };
        let name = &rest[..end];
        if is_env_name(name) {
            names.push(name.to_string());
        }
    }
    names
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn known_env() -> KnownEnv {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut names = BTreeSet::new();
    let mut secret = BTreeSet::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        names.extend(env_names_in(&text));
        // One attribute = from `#[` to the next `)]`; secret when it hides its value.
        for attribute in text.split("#[").skip(1) {
            let body = attribute.split(")]").next().unwrap_or("");
            if body.contains("hide_env_values = true") {
                secret.extend(env_names_in(body));
            }
        }
    }
    // The parser must find the basics, or every other check would pass vacuously.
    for expected in [
        "NODE_ENV",
        "PORT",
        "DJANGO_JWT_SECRET",
        "DRAIN_TIMEOUT",
        "WEB_DEMO_DIR",
    ] {
        assert!(
            names.contains(expected),
            "`env = \"{expected}\"` not found in src/ (found {names:?})"
        );
    }
    assert!(
        secret.contains("DJANGO_JWT_SECRET"),
        "DJANGO_JWT_SECRET should be hide_env_values (found secret {secret:?})"
    );
    KnownEnv { names, secret }
}

/// Variable names of `env.example`, set (`NAME=value`) or commented out (`# NAME=`).
fn env_example_names() -> BTreeSet<String> {
    let text = read("env.example");
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches('#').trim_start();
        if let Some((name, _)) = line.split_once('=') {
            if is_env_name(name) {
                names.insert(name.to_string());
            }
        }
    }
    assert!(names.len() > 10, "env.example parsed to only {names:?}");
    names
}

// ------------------------------------------------------------------------------------------
// Kubernetes manifests
// ------------------------------------------------------------------------------------------

struct Doc {
    file: String,
    yaml: Yaml,
}

fn manifests() -> Vec<Doc> {
    let dir = root().join("k8s");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no k8s/*.yaml");
    let mut docs = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(&path).unwrap();
        let parsed = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("k8s/{file} is not valid YAML: {e}"));
        let mut count = 0;
        for yaml in parsed {
            // kubectl skips empty documents (e.g. after a trailing `---`).
            if yaml.is_null() {
                continue;
            }
            assert!(
                yaml.as_hash().is_some(),
                "k8s/{file}: a document is not a mapping"
            );
            count += 1;
            docs.push(Doc {
                file: file.clone(),
                yaml,
            });
        }
        assert!(count > 0, "k8s/{file} holds no document");
    }
    docs
}

fn str_at<'a>(yaml: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    path.iter().fold(yaml, |y, key| &y[*key]).as_str()
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Yaml {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| {
            str_at(&d.yaml, &["kind"]) == Some(kind)
                && str_at(&d.yaml, &["metadata", "name"]) == Some(name)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} `{name}` in k8s/"
    );
    &found[0].yaml
}

/// A mapping of strings to strings (ConfigMap `data`, Secret `stringData`); every value must be
/// a YAML string, as the API requires (unquoted numbers and booleans are rejected).
fn string_map(yaml: &Yaml, what: &str) -> BTreeMap<String, String> {
    let Some(hash) = yaml.as_hash() else {
        panic!("{what} is not a mapping");
    };
    hash.iter()
        .map(|(k, v)| {
            let key = k.as_str().unwrap_or_else(|| panic!("{what}: key {k:?}"));
            let value = v
                .as_str()
                .unwrap_or_else(|| panic!("{what}.{key} must be a quoted string, found {v:?}"));
            (key.to_string(), value.to_string())
        })
        .collect()
}

fn config_map(docs: &[Doc]) -> BTreeMap<String, String> {
    string_map(
        &find(docs, "ConfigMap", "sfu-config")["data"],
        "sfu-config data",
    )
}

fn secret(docs: &[Doc]) -> BTreeMap<String, String> {
    let doc = find(docs, "Secret", "sfu-secrets");
    assert!(
        doc["data"].is_badvalue(),
        "the Secret template uses stringData (readable placeholders), not base64 data"
    );
    string_map(&doc["stringData"], "sfu-secrets stringData")
}

fn sfu_deployment(docs: &[Doc]) -> &Yaml {
    find(docs, "Deployment", "sfu")
}

fn sfu_pod(docs: &[Doc]) -> &Yaml {
    &sfu_deployment(docs)["spec"]["template"]
}

fn sfu_container(docs: &[Doc]) -> &Yaml {
    let containers = sfu_pod(docs)["spec"]["containers"]
        .as_vec()
        .expect("Deployment sfu has containers");
    containers
        .iter()
        .find(|c| c["name"].as_str() == Some("sfu"))
        .expect("Deployment sfu has a container named sfu")
}

fn config_number(docs: &[Doc], name: &str) -> i64 {
    let config = config_map(docs);
    let value = config
        .get(name)
        .unwrap_or_else(|| panic!("ConfigMap sfu-config sets no {name}"));
    value
        .parse()
        .unwrap_or_else(|e| panic!("ConfigMap {name}={value}: {e}"))
}

/// `(port, protocol)` of every containerPort, by port name.
fn container_ports(container: &Yaml) -> Vec<(Option<String>, i64, String)> {
    container["ports"]
        .as_vec()
        .expect("container has ports")
        .iter()
        .map(|p| {
            let port = p["containerPort"]
                .as_i64()
                .unwrap_or_else(|| panic!("containerPort of {p:?}"));
            let protocol = p["protocol"].as_str().unwrap_or("TCP").to_string();
            (p["name"].as_str().map(str::to_string), port, protocol)
        })
        .collect()
}

/// A probe/Service port: a number, or the name of a containerPort.
fn resolve_port(container: &Yaml, port: &Yaml) -> i64 {
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = port.as_str().unwrap_or_else(|| panic!("port {port:?}"));
    container_ports(container)
        .into_iter()
        .find(|(n, _, _)| n.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no containerPort named `{name}`"))
        .1
}

fn labels(yaml: &Yaml) -> BTreeMap<String, String> {
    yaml.as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// True when every `selector` label is among `pod_labels`.
fn selects(selector: &BTreeMap<String, String>, pod_labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
}

/// The Deployment container's `env` entries, in order: name → literal value (None when it
/// comes from `valueFrom`).
fn deployment_env(docs: &[Doc]) -> Vec<(String, Option<String>, &Yaml)> {
    sfu_container(docs)["env"]
        .as_vec()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let name = e["name"]
                        .as_str()
                        .expect("env entry has a name")
                        .to_string();
                    let value = e["value"].as_str().map(str::to_string);
                    assert!(
                        value.is_some() || !e["valueFrom"].is_badvalue(),
                        "env {name}: needs a string value or valueFrom, found {e:?}"
                    );
                    (name, value, &e["valueFrom"])
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_manifest_parses_and_is_named_and_namespaced() {
    let docs = manifests();
    for doc in &docs {
        let file = &doc.file;
        let api = str_at(&doc.yaml, &["apiVersion"]);
        let kind = str_at(&doc.yaml, &["kind"]);
        let name = str_at(&doc.yaml, &["metadata", "name"]);
        assert!(api.is_some_and(|a| !a.is_empty()), "k8s/{file}: apiVersion");
        let kind = kind.unwrap_or_else(|| panic!("k8s/{file}: kind"));
        assert!(
            name.is_some_and(|n| !n.is_empty()),
            "k8s/{file}: {kind} without metadata.name"
        );
        let namespace = str_at(&doc.yaml, &["metadata", "namespace"]);
        if CLUSTER_SCOPED.contains(&kind) {
            assert_eq!(namespace, None, "k8s/{file}: {kind} is cluster-scoped");
        } else {
            assert_eq!(
                namespace,
                Some(NAMESPACE),
                "k8s/{file}: {kind} {name:?} must be in namespace {NAMESPACE}"
            );
        }
    }
    assert_eq!(
        str_at(find(&docs, "Namespace", NAMESPACE), &["apiVersion"]),
        Some("v1")
    );
    // Everything the deployment needs is there, exactly once.
    for (kind, name) in [
        ("ConfigMap", "sfu-config"),
        ("Secret", "sfu-secrets"),
        ("Deployment", "sfu"),
        ("Service", "sfu"),
        ("HorizontalPodAutoscaler", "sfu"),
        ("PodDisruptionBudget", "sfu"),
        ("Deployment", "redis"),
        ("Service", "redis"),
    ] {
        find(&docs, kind, name);
    }
}

#[test]
fn deployment_ports_probes_user_and_grace_period() {
    let docs = manifests();
    let deployment = sfu_deployment(&docs);
    assert_eq!(str_at(deployment, &["apiVersion"]), Some("apps/v1"));
    let pod = &sfu_pod(&docs)["spec"];
    let container = sfu_container(&docs);
    let ports = container_ports(container);
    let has = |port: i64, protocol: &str| {
        ports
            .iter()
            .any(|(_, p, proto)| *p == port && proto == protocol)
    };

    // Ports: the literal defaults, and whatever the ConfigMap configures.
    assert!(has(3000, "TCP"), "containerPort 3000/TCP in {ports:?}");
    assert!(has(3001, "UDP"), "containerPort 3001/UDP in {ports:?}");
    assert!(has(config_number(&docs, "PORT"), "TCP"), "PORT");
    assert!(
        has(config_number(&docs, "METRICS_PORT"), "TCP"),
        "METRICS_PORT"
    );
    assert!(
        has(config_number(&docs, "WEBTRANSPORT_PORT"), "UDP"),
        "WEBTRANSPORT_PORT"
    );
    assert!(
        has(config_number(&docs, "ICE_TCP_PORT"), "TCP"),
        "ICE_TCP_PORT is a containerPort/TCP"
    );
    // One UDP port per media worker, inside the configured range.
    let min = config_number(&docs, "MEDIASOUP_WORKER_RTC_MIN_PORT");
    let max = config_number(&docs, "MEDIASOUP_WORKER_RTC_MAX_PORT");
    let workers = config_number(&docs, "SFU_WORKERS");
    assert!(
        workers >= 1 && max - min + 1 >= workers,
        "RTC port range {min}-{max} cannot hold {workers} workers"
    );
    for i in 0..workers {
        assert!(
            has(min + i, "UDP"),
            "media worker {i} binds UDP {} but it is not a containerPort",
            min + i
        );
    }

    // Probes: liveness on /healthz, readiness on /readyz, both on the HTTP port.
    let http_port = config_number(&docs, "PORT");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(
            resolve_port(container, &get["port"]),
            http_port,
            "{probe} port"
        );
    }
    if !container["startupProbe"].is_badvalue() {
        let path = container["startupProbe"]["httpGet"]["path"].as_str();
        assert!(
            matches!(path, Some("/healthz")),
            "startupProbe must not use /readyz semantics: {path:?}"
        );
    }

    // The drain (DRAIN_TIMEOUT, then up to 5 s of webhooks) finishes before SIGKILL.
    let drain = config_number(&docs, "DRAIN_TIMEOUT");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds is set");
    assert!(
        grace > drain + WEBHOOK_FLUSH_SECS,
        "terminationGracePeriodSeconds {grace} must exceed DRAIN_TIMEOUT {drain} + {WEBHOOK_FLUSH_SECS}"
    );
    assert!(
        container["lifecycle"]["preStop"].is_badvalue(),
        "no preStop: the server drains on SIGTERM by itself, a hook only delays it"
    );

    // Non-root: the container's securityContext overrides the pod's.
    let effective = |key: &str| {
        let c = &container["securityContext"][key];
        if c.is_badvalue() {
            pod["securityContext"][key].clone()
        } else {
            c.clone()
        }
    };
    assert_eq!(
        effective("runAsNonRoot").as_bool(),
        Some(true),
        "runAsNonRoot"
    );
    if let Some(uid) = effective("runAsUser").as_i64() {
        assert_ne!(uid, 0, "runAsUser 0 is root");
    }
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    // The image's writable state directory is mounted (the root filesystem may be read-only).
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_vec()
        .map(|v| v.iter().filter_map(|m| m["mountPath"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        mounts.contains(&"/app/data"),
        "/app/data is mounted: {mounts:?}"
    );

    // envFrom names the ConfigMap and Secret that exist.
    let env_from = container["envFrom"].as_vec().expect("envFrom");
    let refs = |kind: &str| -> Vec<&str> {
        env_from
            .iter()
            .filter_map(|e| e[kind]["name"].as_str())
            .collect()
    };
    assert_eq!(refs("configMapRef"), vec!["sfu-config"]);
    assert_eq!(refs("secretRef"), vec!["sfu-secrets"]);
    assert!(
        container["image"].as_str().is_some_and(|i| !i.is_empty()),
        "image"
    );
}

#[test]
fn deployment_network_announced_ip_and_spread() {
    let docs = manifests();
    let pod = &sfu_pod(&docs)["spec"];
    let pod_labels = labels(&sfu_pod(&docs)["metadata"]["labels"]);
    let selector = labels(&sfu_deployment(&docs)["spec"]["selector"]["matchLabels"]);
    assert!(
        selects(&selector, &pod_labels),
        "Deployment selector {selector:?} must match its pod labels {pod_labels:?}"
    );

    // hostNetwork: the node's UDP ports and address; cluster DNS still needed for Redis.
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true), "hostNetwork");
    assert_eq!(
        pod["dnsPolicy"].as_str(),
        Some("ClusterFirstWithHostNet"),
        "hostNetwork pods need ClusterFirstWithHostNet to resolve services"
    );
    // Two pods on one node would collide on the host ports: required anti-affinity per node.
    let terms = pod["affinity"]["podAntiAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_vec()
        .expect("required podAntiAffinity");
    assert!(
        terms.iter().any(|t| {
            t["topologyKey"].as_str() == Some("kubernetes.io/hostname")
                && selects(&labels(&t["labelSelector"]["matchLabels"]), &pod_labels)
        }),
        "podAntiAffinity must keep SFU pods on distinct kubernetes.io/hostname"
    );
    // In-place rolling updates: a surge pod could not bind the ports on an occupied node.
    let rolling = &sfu_deployment(&docs)["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(rolling["maxSurge"].as_i64(), Some(0), "maxSurge");

    // ANNOUNCED_IP is per pod (the node's address), never a loopback or wildcard literal.
    let config = config_map(&docs);
    assert!(
        !config.contains_key("ANNOUNCED_IP"),
        "ANNOUNCED_IP is per node: set it in the Deployment, not the ConfigMap"
    );
    let env = deployment_env(&docs);
    let (_, value, value_from) = env
        .iter()
        .find(|(n, _, _)| n == "ANNOUNCED_IP")
        .expect("the Deployment sets ANNOUNCED_IP");
    match value {
        Some(ip) => assert!(
            !ip.starts_with("127.") && ip != "0.0.0.0" && ip != "::1" && ip != "::",
            "ANNOUNCED_IP {ip} is not reachable by clients"
        ),
        None => assert_eq!(
            value_from["fieldRef"]["fieldPath"].as_str(),
            Some("status.hostIP"),
            "ANNOUNCED_IP from the downward API: the node's address"
        ),
    }

    // Every $(VAR) in an env value refers to a variable defined before it (envFrom or env).
    let mut defined: BTreeSet<String> = config.keys().cloned().collect();
    defined.extend(secret(&docs).into_keys());
    for (name, value, _) in &env {
        if let Some(value) = value {
            let mut rest = value.as_str();
            while let Some(at) = rest.find("$(") {
                let tail = &rest[at + 2..];
                let end = tail
                    .find(')')
                    .unwrap_or_else(|| panic!("env {name}: unclosed $( in {value}"));
                let reference = &tail[..end];
                assert!(
                    defined.contains(reference),
                    "env {name}={value}: $({reference}) is not defined before it"
                );
                rest = &tail[end + 1..];
            }
        }
        defined.insert(name.clone());
    }
}

#[test]
fn every_deployed_variable_is_known_and_every_example_variable_is_deployed() {
    let known = known_env();
    let docs = manifests();
    let config = config_map(&docs);
    let secret = secret(&docs);
    let env = deployment_env(&docs);

    for (source, names) in [
        (
            "ConfigMap sfu-config",
            config.keys().cloned().collect::<Vec<_>>(),
        ),
        ("Secret sfu-secrets", secret.keys().cloned().collect()),
        (
            "Deployment sfu env",
            env.iter().map(|(n, _, _)| n.clone()).collect(),
        ),
    ] {
        for name in names {
            assert!(
                known.names.contains(&name),
                "{source} sets {name}, which the server does not read (known: {:?})",
                known.names
            );
        }
    }
    for name in config.keys() {
        assert!(
            !secret.contains_key(name),
            "{name} is set by both the ConfigMap and the Secret"
        );
        assert!(
            !known.secret.contains(name),
            "{name} is secret (hide_env_values): it belongs in the Secret, not the ConfigMap"
        );
    }
    for (name, value, _) in &env {
        assert!(
            value.is_none() || !known.secret.contains(name),
            "{name} is secret: never a literal in the Deployment"
        );
    }
    // The template holds placeholders only: no real credential is committed.
    for (name, value) in &secret {
        assert!(
            value.contains("CHANGE_ME"),
            "Secret template {name} must be a CHANGE_ME placeholder, found a real-looking value"
        );
    }
    for required in ["DJANGO_JWT_SECRET", "DATABASE_URL"] {
        assert!(secret.contains_key(required), "Secret sets {required}");
    }
    assert_eq!(
        config.get("NODE_ENV").map(String::as_str),
        Some("production")
    );
    assert!(config.contains_key("REDIS_URL"), "ConfigMap sets REDIS_URL");

    let deployed: BTreeSet<&String> = config
        .keys()
        .chain(secret.keys())
        .chain(env.iter().map(|(n, _, _)| n))
        .collect();
    let example = env_example_names();
    for name in &example {
        assert!(
            known.names.contains(name),
            "env.example lists {name}, which the server does not read"
        );
        let left_out = NOT_DEPLOYED.iter().any(|(n, _)| n == name);
        assert!(
            deployed.contains(name) || left_out,
            "env.example has {name}: add it to k8s/configmap.yaml (or the Secret), or to \
             NOT_DEPLOYED in this test with the reason"
        );
    }
    // The allow-list stays honest: only real, undeployed env.example variables.
    for (name, reason) in NOT_DEPLOYED {
        assert!(
            example.contains(*name),
            "NOT_DEPLOYED lists {name} ({reason}), which env.example no longer has"
        );
        assert!(
            !deployed.contains(&name.to_string()),
            "NOT_DEPLOYED lists {name} ({reason}) but k8s/ sets it"
        );
    }
}

#[test]
fn services_autoscaler_disruption_budget_and_redis_fit_together() {
    let docs = manifests();
    let pod_labels = labels(&sfu_pod(&docs)["metadata"]["labels"]);
    let container = sfu_container(&docs);

    // Service: HTTP/WebSocket and metrics, onto the SFU pods' real ports.
    let service = find(&docs, "Service", "sfu");
    let selector = labels(&service["spec"]["selector"]);
    assert!(
        selects(&selector, &pod_labels),
        "Service sfu selector {selector:?} must match the SFU pods {pod_labels:?}"
    );
    let service_type = service["spec"]["type"].as_str().unwrap_or("ClusterIP");
    assert_eq!(service_type, "ClusterIP");
    let mut targets = BTreeSet::new();
    for port in service["spec"]["ports"].as_vec().expect("Service ports") {
        let target = if port["targetPort"].is_badvalue() {
            &port["port"]
        } else {
            &port["targetPort"]
        };
        targets.insert(resolve_port(container, target));
    }
    for name in ["PORT", "METRICS_PORT"] {
        assert!(
            targets.contains(&config_number(&docs, name)),
            "Service sfu must expose {name} (targets: {targets:?})"
        );
    }

    // HPA on CPU targeting the Deployment.
    let hpa = find(&docs, "HorizontalPodAutoscaler", "sfu");
    assert_eq!(str_at(hpa, &["apiVersion"]), Some("autoscaling/v2"));
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"].as_str(), Some("Deployment"));
    assert_eq!(target["name"].as_str(), Some("sfu"));
    let metrics = hpa["spec"]["metrics"].as_vec().expect("HPA metrics");
    assert!(
        metrics
            .iter()
            .any(|m| m["resource"]["name"].as_str() == Some("cpu")),
        "HPA scales on CPU"
    );
    let min = hpa["spec"]["minReplicas"].as_i64().expect("minReplicas");
    let max = hpa["spec"]["maxReplicas"].as_i64().expect("maxReplicas");
    assert!(min >= 2 && max >= min, "HPA replicas {min}..{max}");
    // CPU utilisation is relative to the request: there must be one.
    assert!(
        !container["resources"]["requests"]["cpu"].is_badvalue(),
        "HPA on CPU needs a CPU request"
    );
    assert!(!container["resources"]["limits"]["memory"].is_badvalue());

    // PDB: one pod stays, and with min replicas above it a node can still be drained.
    let pdb = find(&docs, "PodDisruptionBudget", "sfu");
    assert_eq!(str_at(pdb, &["apiVersion"]), Some("policy/v1"));
    assert_eq!(pdb["spec"]["minAvailable"].as_i64(), Some(1));
    assert!(selects(
        &labels(&pdb["spec"]["selector"]["matchLabels"]),
        &pod_labels
    ));
    assert!(min > 1, "minReplicas must exceed the PDB's minAvailable");

    // REDIS_URL names a Service of these manifests, on its port, backed by a Deployment.
    let url = config_map(&docs)["REDIS_URL"].clone();
    let authority = url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
        .unwrap_or_else(|| panic!("REDIS_URL {url}"));
    let host_port = authority.rsplit('@').next().unwrap();
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<i64>().expect("REDIS_URL port")),
        None => (host_port, 6379),
    };
    let mut labels_of_host = host.split('.');
    let service_name = labels_of_host.next().unwrap();
    if let Some(namespace) = labels_of_host.next() {
        assert_eq!(namespace, NAMESPACE, "REDIS_URL namespace");
    }
    let redis = find(&docs, "Service", service_name);
    assert!(
        redis["spec"]["ports"]
            .as_vec()
            .expect("Redis Service ports")
            .iter()
            .any(|p| p["port"].as_i64() == Some(port)),
        "Service {service_name} has no port {port}"
    );
    let redis_selector = labels(&redis["spec"]["selector"]);
    assert!(
        docs.iter().any(|d| {
            str_at(&d.yaml, &["kind"]) == Some("Deployment")
                && selects(
                    &redis_selector,
                    &labels(&d.yaml["spec"]["template"]["metadata"]["labels"]),
                )
        }),
        "no Deployment behind Service {service_name}"
    );
}

// ------------------------------------------------------------------------------------------
// Dockerfile and .dockerignore
// ------------------------------------------------------------------------------------------

/// `(INSTRUCTION, arguments)` per logical line: comments dropped, `\` continuations joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        instructions.push((instruction.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    assert!(current.is_empty(), "Dockerfile ends inside a continuation");
    instructions
}

/// The instructions after the last FROM (the image that ships).
fn final_stage(instructions: &[(String, String)]) -> &[(String, String)] {
    let last_from = instructions
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .expect("Dockerfile has FROM");
    &instructions[last_from..]
}

/// `ENV` assignments of one stage, `NAME=value` or legacy `NAME value`.
fn env_assignments(stage: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (instruction, args) in stage {
        if instruction != "ENV" {
            continue;
        }
        let tokens: Vec<&str> = args.split_whitespace().collect();
        if !tokens[0].contains('=') {
            out.push((tokens[0].to_string(), tokens[1..].join(" ")));
            continue;
        }
        for token in tokens {
            let (name, value) = token
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV token `{token}` (use NAME=value)"));
            out.push((name.to_string(), value.trim_matches('"').to_string()));
        }
    }
    out
}

/// Strings of a JSON-array (exec form) argument such as `["/app/sfu", "serve"]`.
fn exec_form(args: &str) -> Vec<String> {
    let inner = args
        .trim()
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not exec form: {args}"));
    inner
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect()
}

#[test]
fn dockerfile_runs_non_root_with_healthcheck_ports_and_known_env() {
    let known = known_env();
    let instructions = dockerfile();
    let stage = final_stage(&instructions);
    let all = |name: &str| -> Vec<&String> {
        stage
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a)
            .collect()
    };

    // Builder and runtime: Rust 1.95 on Debian bookworm, and the same Debian release at runtime
    // (the binary links the builder's glibc).
    let mut args = BTreeMap::new();
    for (instruction, a) in &instructions {
        if instruction == "FROM" {
            break;
        }
        if instruction == "ARG" {
            if let Some((k, v)) = a.split_once('=') {
                args.insert(k.to_string(), v.to_string());
            }
        }
    }
    let images: Vec<String> = instructions
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| {
            let mut image = a
                .split_whitespace()
                .find(|t| !t.starts_with("--"))
                .unwrap()
                .to_string();
            for (k, v) in &args {
                image = image
                    .replace(&format!("${{{k}}}"), v)
                    .replace(&format!("${k}"), v);
            }
            image
        })
        .collect();
    assert!(images.len() >= 2, "multi-stage build: {images:?}");
    assert_eq!(images[0], "rust:1.95-bookworm", "builder image");
    assert_eq!(
        images.last().unwrap(),
        "debian:bookworm-slim",
        "runtime image"
    );

    // A non-root user.
    let users = all("USER");
    let user = users.last().expect("final stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "USER {user} is root");

    // Health check against /healthz.
    let health = all("HEALTHCHECK");
    assert_eq!(health.len(), 1, "one HEALTHCHECK");
    assert!(!health[0].trim().eq_ignore_ascii_case("NONE"));
    assert!(health[0].contains("CMD") && health[0].contains("/healthz"));

    // Ports, matching the production configuration.
    let exposed: Vec<String> = all("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace().map(str::to_ascii_lowercase))
        .collect();
    let exposes = |port: i64, protocol: &str| {
        exposed.iter().any(|e| {
            let (ports, proto) = e.split_once('/').unwrap_or((e, "tcp"));
            let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
            let (lo, hi): (i64, i64) = (lo.parse().unwrap(), hi.parse().unwrap());
            proto == protocol && lo <= port && port <= hi
        })
    };
    assert!(exposes(3000, "tcp"), "EXPOSE 3000/tcp: {exposed:?}");
    assert!(exposes(3001, "udp"), "EXPOSE 3001/udp: {exposed:?}");
    assert!(exposes(9090, "tcp"), "EXPOSE 9090/tcp: {exposed:?}");
    assert!(
        exposes(7881, "tcp"),
        "EXPOSE 7881/tcp (ICE-TCP): {exposed:?}"
    );
    let docs = manifests();
    let min = config_number(&docs, "MEDIASOUP_WORKER_RTC_MIN_PORT");
    let max = config_number(&docs, "MEDIASOUP_WORKER_RTC_MAX_PORT");
    assert!(
        exposes(min, "udp") && exposes(max, "udp"),
        "EXPOSE the media range {min}-{max}/udp: {exposed:?}"
    );

    // ENV: only variables the server reads, no secrets, production mode, the demo directory.
    let env = env_assignments(stage);
    for (name, _) in &env {
        assert!(
            known.names.contains(name),
            "Dockerfile ENV {name} is not a variable the server reads"
        );
        assert!(
            !known.secret.contains(name),
            "Dockerfile ENV {name} is a secret: never bake it into the image"
        );
    }
    let value = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(value("NODE_ENV"), Some("production"));
    for (name, port) in [("PORT", 3000), ("WEBTRANSPORT_PORT", 3001)] {
        if let Some(v) = value(name) {
            assert_eq!(v.parse::<i64>().ok(), Some(port), "ENV {name}");
        }
    }
    assert!(
        value("ANNOUNCED_IP").is_none(),
        "ANNOUNCED_IP depends on the host"
    );
    let demo = value("WEB_DEMO_DIR").expect("ENV WEB_DEMO_DIR");
    let copies = all("COPY");
    let copied_to = |destination: &str| {
        copies.iter().any(|c| {
            c.split_whitespace()
                .last()
                .is_some_and(|d| d.trim_end_matches('/') == destination)
        })
    };
    assert!(copied_to(demo), "WEB_DEMO_DIR {demo} is a COPY destination");
    assert!(
        copies.iter().any(|c| c.starts_with("web-demo")),
        "the demo is copied from the build context"
    );

    // Entry point, stop signal, writable data.
    let entrypoint = exec_form(all("ENTRYPOINT").last().expect("ENTRYPOINT"));
    assert_eq!(entrypoint, vec!["/app/sfu"]);
    assert!(copied_to("/app/sfu"), "the binary is copied to /app/sfu");
    assert_eq!(
        all("STOPSIGNAL").last().map(|s| s.as_str()),
        Some("SIGTERM")
    );
    assert_eq!(all("WORKDIR").last().map(|s| s.as_str()), Some("/app"));
    assert!(
        all("VOLUME").iter().any(|v| v.contains("/app/data")),
        "VOLUME /app/data"
    );
}

#[test]
fn dockerignore_excludes_build_output_and_secrets_but_not_sources() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches("./")
                .trim_start_matches('/')
                .to_string()
        })
        .collect();
    let excluded =
        |alternatives: &[&str]| alternatives.iter().any(|a| patterns.iter().any(|p| p == a));
    assert!(
        excluded(&["target", "target/", "**/target", "**/target/"]),
        ".dockerignore excludes target: {patterns:?}"
    );
    assert!(excluded(&[".git", ".git/"]), ".dockerignore excludes .git");
    assert!(
        excluded(&["**/node_modules", "**/node_modules/"]),
        "node_modules"
    );
    assert!(excluded(&["data", "data/"]), "data/");
    // `*.pem` would match only at the root; certs/ holds keys too.
    assert!(excluded(&["**/*.pem"]), "**/*.pem");
    assert!(excluded(&["**/*.key"]), "**/*.key");
    assert!(excluded(&[".env"]), ".env");

    // Whatever the Dockerfile copies from the context exists and is not ignored.
    for (instruction, args) in dockerfile() {
        if instruction != "COPY" || args.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_end_matches('/');
            assert!(
                root().join(source).exists(),
                "Dockerfile copies {source}, which does not exist"
            );
            assert!(
                !patterns
                    .iter()
                    .any(|p| p.trim_end_matches('/') == source || p == "*" || p == "**"),
                ".dockerignore excludes {source}, which the Dockerfile copies"
            );
        }
    }
}
