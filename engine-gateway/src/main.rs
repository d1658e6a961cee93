//! `cargo run -p engine-gateway [-- --addr 127.0.0.1:8080]`: the gateway with the demo agents.
//!
//! Environment: `GATEWAY_ADDR` (default `127.0.0.1:8080`), `GATEWAY_JWT_SECRET` (without it:
//! development mode with a random secret and `/dev/token`), `RUST_LOG` (tracing filter).
#![allow(clippy::print_stdout)]

use engine_core::UserId;
use engine_gateway::{demo::demo_registry, Gateway, GatewayConfig};

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .iter()
        .position(|a| a == "--addr")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("GATEWAY_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let config = match std::env::var("GATEWAY_JWT_SECRET") {
        Ok(secret) if !secret.is_empty() => GatewayConfig::with_secret(secret),
        _ => GatewayConfig::development(),
    };
    let development = config.development;
    let gateway = Gateway::new(config, demo_registry())?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("engine-gateway listening on http://{local}/");
    if development {
        let token = gateway.keys().issue(&UserId::new("alice")?, 12 * 3600)?;
        println!("development mode (set GATEWAY_JWT_SECRET for production)");
        println!("token for user alice: {token}");
        println!("websocket: ws://{local}/ws?token={token}");
    }
    gateway.serve(listener, shutdown_signal()).await?;
    println!("engine-gateway stopped");
    Ok(())
}
