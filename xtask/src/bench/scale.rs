//! `cargo xtask bench --keys N`: keygate holding N keys (a million, say), seeded by
//! `keygate keys import`, on SQLite and PostgreSQL. Measures the import rate, the time
//! from start to `/health`, `/forward-auth` and `GET /api-keys` with keys drawn
//! uniformly from 200,000 of them (mostly not in memory) against 1,000 hot keys in the
//! same run, the process's resident memory, and the key cache's bytes per key.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use super::{
    Client, Load, MASTER, Paired, ROUNDS, Server, free_port, fresh_postgres_schema, next_year, wrk,
};

/// Keys hot in memory, as a busy API's regular clients would be.
const HOT: usize = 1_000;
/// Keys the cold scenario draws from uniformly.
const COLD: usize = 200_000;
/// Keys per owner: what `GET /api-keys` lists.
const PER_OWNER: usize = 10;

/// What one backend measured.
pub struct Scale {
    pub backend: &'static str,
    pub keys: usize,
    pub import_seconds: f64,
    pub startup_ms: f64,
    pub forward: Paired,
    pub listing: Paired,
    /// Cache hits over lookups while the cold scenarios ran.
    pub cold_hit_ratio: f64,
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
    pub cache_entries: u64,
    pub cache_bytes: u64,
}

impl Scale {
    fn import_rate(&self) -> f64 {
        self.keys as f64 / self.import_seconds.max(1e-9)
    }

    fn bytes_per_key(&self) -> f64 {
        self.cache_bytes as f64 / (self.cache_entries.max(1) as f64)
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"keys\": {}, \"import_seconds\": {:.2}, \"import_keys_per_second\": {:.0}, \"startup_to_health_ms\": {:.0}, \"forward_auth\": {}, \"get_api_keys\": {}, \"cold_cache_hit_ratio\": {:.3}, \"rss_mb\": {:.1}, \"peak_rss_mb\": {:.1}, \"cache_entries\": {}, \"cache_bytes\": {}, \"cache_bytes_per_key\": {:.0}}}",
            self.keys,
            self.import_seconds,
            self.import_rate(),
            self.startup_ms,
            self.forward.json("hot", "cold", "cold_over_hot"),
            self.listing.json("hot", "cold", "cold_over_hot"),
            self.cold_hit_ratio,
            self.rss_mb,
            self.peak_rss_mb,
            self.cache_entries,
            self.cache_bytes,
            self.bytes_per_key()
        )
    }

    pub fn print(&self) {
        let rate = |loads: &[Load; ROUNDS]| Paired::rate(loads);
        let p99 = |loads: &[Load; ROUNDS]| {
            loads.iter().map(|l| l.p99_us).max().unwrap_or(0) as f64 / 1000.0
        };
        println!(
            "{:<9} {} keys: import {:.1} s ({:.0} keys/s); start-up to /health {:.0} ms; RSS {:.0} MB (peak {:.0} MB); cache {} keys, {:.0} bytes/key",
            self.backend,
            self.keys,
            self.import_seconds,
            self.import_rate(),
            self.startup_ms,
            self.rss_mb,
            self.peak_rss_mb,
            self.cache_entries,
            self.bytes_per_key()
        );
        for (name, paired) in [
            ("/forward-auth", &self.forward),
            ("GET /api-keys", &self.listing),
        ] {
            println!(
                "{:<9} {name}: hot ({HOT} keys) {:.0} req/s (p99 {:.2} ms); cold ({COLD} keys) {:.0} req/s (p99 {:.2} ms) = {:.2}x hot",
                self.backend,
                rate(&paired.reference),
                p99(&paired.reference),
                rate(&paired.measured),
                p99(&paired.measured),
                paired.ratio()
            );
        }
        println!(
            "{:<9} cache hits while the cold scenarios ran: {:.0}%",
            self.backend,
            100.0 * self.cold_hit_ratio
        );
    }
}

/// Runs the scale scenarios on `backend` with `keys` keys.
pub fn bench(
    backend: &'static str,
    binary: &Path,
    work: &Path,
    keys: usize,
    seconds: u32,
) -> Result<Scale, String> {
    if keys < HOT + COLD {
        return Err(format!("--keys must be at least {}", HOT + COLD));
    }
    let dir = work.join(format!("scale-{backend}"));
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let url = match backend {
        "sqlite" => format!("sqlite://{}", dir.join("keygate.db").display()),
        _ => fresh_postgres_schema()?,
    };
    eprintln!("bench: scale {backend}: writing {keys} keys as JSON lines");
    let file = dir.join("keys.jsonl");
    let (hot_file, cold_file) = (dir.join("hot.txt"), dir.join("cold.txt"));
    write_keys(&file, &hot_file, &cold_file, keys)?;
    keygate(binary, &dir, &url, &["migrate"])?;

    eprintln!("bench: scale {backend}: importing");
    let started = Instant::now();
    let summary = keygate(
        binary,
        &dir,
        &url,
        &["keys", "import", &file.to_string_lossy()],
    )?;
    let import_seconds = started.elapsed().as_secs_f64();
    if !summary.contains(&format!("\"imported\": {keys}")) {
        return Err(format!("the import did not store every key: {summary}"));
    }
    let port = free_port()?;
    let started = Instant::now();
    let server = Server::start(binary, &dir, port, &url)?;
    let startup_ms = started.elapsed().as_secs_f64() * 1000.0;
    eprintln!(
        "bench: scale {backend}: imported in {import_seconds:.1} s; /health after {startup_ms:.0} ms"
    );

    let script = work.join("load.lua");
    // The hot keys are verified once, as a long-running server would have them; the
    // cold ones are not.
    wrk(port, &script, &hot_file, "forward", 2)?;
    let (mut forward, mut listing) = (Paired::default(), Paired::default());
    let mut cold_lookups = (0, 0);
    for round in 0..ROUNDS {
        eprintln!("bench: scale {backend}: round {}", round + 1);
        forward.reference[round] = wrk(port, &script, &hot_file, "forward", seconds)?;
        let start = cache_counts(port)?;
        forward.measured[round] = wrk(port, &script, &cold_file, "forward", seconds)?;
        let end = cache_counts(port)?;
        listing.reference[round] = wrk(port, &script, &hot_file, "keys", seconds)?;
        let start_listing = cache_counts(port)?;
        listing.measured[round] = wrk(port, &script, &cold_file, "keys", seconds)?;
        let end_listing = cache_counts(port)?;
        for (from, to) in [(start, end), (start_listing, end_listing)] {
            cold_lookups.0 += to.0 - from.0;
            cold_lookups.1 += to.1 - from.1;
        }
    }
    // A rate of refusals or broken connections is not a rate of answers.
    for (name, paired) in [("/forward-auth", &forward), ("GET /api-keys", &listing)] {
        if let Some(load) = paired.failed() {
            return Err(format!(
                "{backend} {name}: requests failed ({} not 2xx, {} socket errors, {} timeouts of {}); see {}",
                load.non_2xx,
                load.socket_errors,
                load.timeouts,
                load.requests,
                dir.join("server.log").display()
            ));
        }
    }
    let (rss_mb, peak_rss_mb) = memory(server.pid())?;
    let (cache_entries, cache_bytes) = cache_size(port)?;
    Ok(Scale {
        backend,
        keys,
        import_seconds,
        startup_ms,
        forward,
        listing,
        cold_hit_ratio: cold_lookups.0 as f64 / ((cold_lookups.0 + cold_lookups.1).max(1) as f64),
        rss_mb,
        peak_rss_mb,
        cache_entries,
        cache_bytes,
    })
}

/// Writes `keys` keys of keygate's shape as an import file, `PER_OWNER` to an owner, each
/// allowed to list its owner's keys and read ledgers; the first [`HOT`] secrets to
/// `hot`, the next [`COLD`] to `cold`.
fn write_keys(file: &Path, hot: &Path, cold: &Path, keys: usize) -> Result<(), String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let io = |e: std::io::Error| e.to_string();
    let mut out = BufWriter::with_capacity(1 << 20, fs::File::create(file).map_err(io)?);
    let (mut hot_out, mut cold_out) = (String::new(), String::new());
    let expires = next_year();
    // xorshift, seeded per run: secrets differ from run to run.
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut secret = String::with_capacity(44);
    for i in 0..keys {
        secret.clear();
        for _ in 0..43 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            secret.push(ALPHABET[(state % 64) as usize] as char);
        }
        secret.push('=');
        writeln!(
            out,
            r#"{{"key":"{secret}","api_key_id":"api_key_scale-{i}","name":"scale {i}","owner":"owner_{}","scopes":["api-keys:read","ledgers:read"],"expires_at":"{expires}"}}"#,
            i / PER_OWNER
        )
        .map_err(io)?;
        if i < HOT {
            let _ = writeln!(hot_out, "{secret}");
        } else if i < HOT + COLD {
            let _ = writeln!(cold_out, "{secret}");
        }
    }
    out.flush().map_err(io)?;
    fs::write(hot, hot_out.trim_end()).map_err(io)?;
    fs::write(cold, cold_out.trim_end()).map_err(io)
}

/// Runs `keygate ARGS` on `url`; its standard output.
fn keygate(binary: &Path, dir: &Path, url: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(binary)
        .current_dir(dir)
        .env("KEYGATE_DATABASE__URL", url)
        .env("KEYGATE_SERVER__SECRET_KEY", MASTER)
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    if !output.status.success() {
        return Err(format!(
            "keygate {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A metric's value from `/metrics`.
fn metric(text: &str, name: &str) -> Result<f64, String> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| format!("no {name} in /metrics"))
}

fn metrics(port: u16) -> Result<String, String> {
    let mut client = Client::connect(port).map_err(|e| e.to_string())?;
    let (status, body) = client.request("GET", "/metrics", Some(MASTER), None)?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    Ok(body)
}

/// The cache's hits and misses so far.
fn cache_counts(port: u16) -> Result<(u64, u64), String> {
    let text = metrics(port)?;
    Ok((
        metric(&text, "keygate_key_cache_hits_total")? as u64,
        metric(&text, "keygate_key_cache_misses_total")? as u64,
    ))
}

/// The keys the cache holds and their bytes.
fn cache_size(port: u16) -> Result<(u64, u64), String> {
    let text = metrics(port)?;
    Ok((
        metric(&text, "keygate_key_cache_entries")? as u64,
        metric(&text, "keygate_key_cache_bytes")? as u64,
    ))
}

/// The process's resident memory and its peak, in MB.
fn memory(pid: u32) -> Result<(f64, f64), String> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("{pid}: {e}"))?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .ok_or_else(|| format!("no {field} for {pid}"))
    };
    Ok((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
}
