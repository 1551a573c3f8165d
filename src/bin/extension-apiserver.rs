//! The bundled aggregated API server. Everything lives in `eao::apiserver`; this only parses
//! flags, sets up logging and maps a start-up failure to a clear message and exit code 1.

use clap::Parser;
use eao::apiserver::options::{Args, LogFormat};

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: escape codes in collected pod logs are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
    if let Err(e) = eao::apiserver::run(args).await {
        eprintln!("extension-apiserver: {e}");
        std::process::exit(1);
    }
}
