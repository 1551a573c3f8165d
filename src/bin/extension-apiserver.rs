//! The bundled aggregated API server. Everything lives in `eao::apiserver`; this only parses
//! flags, sets up logging and maps a start-up failure to a clear message and exit code 1.

use clap::Parser;
use eao::apiserver::options::Args;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    eao::telemetry::init(args.log_format, "info");
    if let Err(e) = eao::apiserver::run(args).await {
        eprintln!("extension-apiserver: {e}");
        std::process::exit(1);
    }
}
