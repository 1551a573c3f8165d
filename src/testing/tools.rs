//! What the tests that drive the real control plane with its own tools (kubectl, helm) share:
//! running a command, finding helm, and the pod runner's mapping of an image's binary to ours.

use super::pod::{LocalBinary, PodRunnerOptions};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The image path of the operator binary (the chart's container command and the image's
/// entrypoint).
pub const OPERATOR_BINARY: &str = "/usr/local/bin/extension-apiserver-operator";

/// The repository's root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Helm chart's directory.
pub fn chart_dir() -> PathBuf {
    root().join("charts/extension-apiserver-operator")
}

/// helm from `$HELM`, else the one `scripts/install-test-tools.sh` put in `.tools/bin`.
pub fn helm_path() -> PathBuf {
    match std::env::var_os("HELM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => root().join(".tools/bin/helm"),
    }
}

/// A command's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd` to the end with `stdin` (none: no standard input) and returns what it printed.
/// Panics only when the command cannot run at all; its exit status is the caller's to judge.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("{desc} does not read stdin: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{desc} does not finish: {e}"))
}

/// The pod runner's options: the image's binary (`command[0]`, or the entrypoint, which is the
/// operator's) runs as the local binary `local`, with a kubeconfig in `kubeconfig_env`.
pub fn pod_options(local: &str, kubeconfig_env: &[&str], image_binary: &str) -> PodRunnerOptions {
    PodRunnerOptions {
        binaries: BTreeMap::from([(
            image_binary.to_string(),
            LocalBinary {
                path: PathBuf::from(local),
                kubeconfig_env: kubeconfig_env.iter().map(|s| s.to_string()).collect(),
            },
        )]),
        image_entrypoint: vec![OPERATOR_BINARY.to_string()],
    }
}
