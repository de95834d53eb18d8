//! The `mesh-proxy` binary: reads `MESH_PROXY_*`, runs the proxy;
//! `mesh-proxy init` installs the capture rules instead.

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("init") {
        return mesh_proxy::init::main(&argv[1..]);
    }
    let config = match mesh_proxy::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mesh-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = std::env::var("MESH_PROXY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let rt = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-proxy: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(mesh_proxy::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
