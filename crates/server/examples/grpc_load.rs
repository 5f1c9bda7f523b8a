//! Load for keygate's gRPC ext_authz, as Envoy would send it: `Check` calls for
//! `GET /ledgers/l1` with keys drawn uniformly from a file, from many concurrent streams.
//! Run by `cargo xtask bench`:
//!
//! ```sh
//! cargo run --release -p keygate-server --example grpc_load -- PORT KEYS_FILE SECONDS [STREAMS]
//! ```
//!
//! Prints `KEYGATE_GRPC_RESULT <allowed> <other> <errors> <microseconds>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

fn check(key: &str) -> CheckRequest {
    let headers = HashMap::from([("x-blnk-key".to_owned(), key.to_owned())]);
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/ledgers/l1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, keys, seconds, rest @ ..] = args.as_slice() else {
        return Err("usage: grpc_load PORT KEYS_FILE SECONDS [STREAMS]".into());
    };
    let streams: usize = rest.first().map_or(Ok(64), |s| s.parse())?;
    let keys: Arc<Vec<String>> = Arc::new(
        std::fs::read_to_string(keys)?
            .lines()
            .map(str::to_owned)
            .collect(),
    );
    if keys.is_empty() {
        return Err("no keys".into());
    }
    let deadline = Instant::now() + Duration::from_secs(seconds.parse()?);
    // A few HTTP/2 connections, as Envoy keeps to a cluster, shared by the streams.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(AuthorizationClient::connect(format!("http://127.0.0.1:{port}")).await?);
    }
    let (allowed, other, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for stream in 0..streams {
        let mut client = channels[stream % channels.len()].clone();
        let (keys, allowed, other, errors) =
            (keys.clone(), allowed.clone(), other.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut state = (stream as u64 + 1) * 0x9E37_79B9_7F4A_7C15;
            while Instant::now() < deadline {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let key = &keys[(state % keys.len() as u64) as usize];
                match client.check(check(key)).await {
                    Ok(answer) => {
                        let ok = answer
                            .get_ref()
                            .status
                            .as_ref()
                            .is_some_and(|status| status.code == 0);
                        if ok { &allowed } else { &other }.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    println!(
        "KEYGATE_GRPC_RESULT {} {} {} {}",
        allowed.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        started.elapsed().as_micros()
    );
    Ok(())
}
