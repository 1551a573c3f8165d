//! Logging for both binaries: plain or JSON lines on stderr via tracing, filtered by
//! `RUST_LOG` or a default filter. One format enum serves the CLI flags (`--log-format`) and
//! the CRD field (`spec.server.logFormat`), so the operator renders exactly what the server
//! accepts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing_subscriber::{fmt, EnvFilter};

/// Log output format.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The flag value (`plain` or `json`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Plain => "plain",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` wins over `default_filter`.
///
/// Logs go to stderr, as kube-apiserver's do; colours only on a terminal, because escape codes
/// in collected pod logs are noise. JSON lines carry the event's fields at the top level, so a
/// log pipeline indexes `error`, `namespace`, `name` without unpacking.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let result = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
}
