//! `cargo xtask bench`: the release server on SQLite and on PostgreSQL, 10,000 keys, and
//! HTTP load from `wrk` with 64 connections: (a) `GET /api-keys` with API keys drawn
//! uniformly, (b) the same with the master key, (c) a flood of unknown keys beside (a),
//! (d) `/forward-auth` with 1,000 metered keys (rate limit and credits) against 1,000
//! unmetered ones, in the same run, and on SQLite once more with the Redis backend;
//! and once, (e) the gateway entry points with 1,000 keys beside a reference measured in
//! the same run: nginx answering `return 204;` itself (`worker_processes auto`),
//! `/forward-auth`, and gRPC `Check` (64 streams over 4 connections).

mod scale;

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MASTER: &str = "bench-master-key-0123456789abcdefghij";
const KEYS: usize = 10_000;
const OWNERS: usize = 1_000;
const CONNECTIONS: u32 = 64;
const LOCAL_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const SCHEMA: &str = "keygate_bench";
const METERED_KEYS: usize = 1_000;
const LOCAL_REDIS: &str = "redis://127.0.0.1:6379";

const SCRIPT: &str = r#"
local keys = {}
for line in io.lines(os.getenv("KEYGATE_BENCH_KEYS")) do keys[#keys + 1] = line end
local mode = os.getenv("KEYGATE_BENCH_MODE")
local master = os.getenv("KEYGATE_BENCH_MASTER")
math.randomseed(os.time() + #keys)
local turn = 0

request = function()
  local pick = keys[math.random(#keys)]
  if mode == "warm" then
    -- Each key in turn: after #keys requests every key has been used.
    turn = turn % #keys + 1
    pick = keys[turn]
  end
  if mode == "forward" then
    return wrk.format("GET", "/forward-auth", {
      ["X-Blnk-Key"] = pick, ["X-Original-Method"] = "GET", ["X-Original-URI"] = "/ledgers/l1" })
  end
  if mode == "master" then
    return wrk.format("GET", "/api-keys?owner=" .. pick, { ["X-Blnk-Key"] = master })
  end
  return wrk.format("GET", "/api-keys", { ["X-Blnk-Key"] = pick })
end

done = function(summary, latency, requests)
  io.write(string.format(
    "KEYGATE_RESULT %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean))
end
"#;

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    requests: u64,
    duration_us: u64,
    socket_errors: u64,
    non_2xx: u64,
    timeouts: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

impl Load {
    fn per_second(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }

    fn json(&self) -> String {
        format!(
            "{{\"requests\": {}, \"requests_per_second\": {:.0}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}, \"socket_errors\": {}, \"non_2xx\": {}, \"timeouts\": {}}}",
            self.requests,
            self.per_second(),
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.max_us as f64 / 1000.0,
            self.socket_errors,
            self.non_2xx,
            self.timeouts
        )
    }
}

/// The scenarios on one backend.
struct Report {
    backend: &'static str,
    keys: Load,
    master: Load,
    keys_under_flood: Load,
    flood: Load,
    metering: Metering,
    /// The metered scenario again with rate limits in Redis (SQLite only).
    metering_redis: Option<Metering>,
}

/// Rounds of a paired comparison: each side measured this many times, in turn, to even
/// out the machine's drift between runs.
const ROUNDS: usize = 3;

/// A paired comparison measured in turn: a reference (unmetered keys in (d), nginx's own
/// answer in (e)) and what is compared with it.
#[derive(Debug, Clone, Copy, Default)]
struct Paired {
    reference: [Load; ROUNDS],
    measured: [Load; ROUNDS],
}

impl Paired {
    /// A round in which some request failed, if any.
    fn failed(&self) -> Option<&Load> {
        self.reference
            .iter()
            .chain(&self.measured)
            .find(|load| load.non_2xx + load.socket_errors + load.timeouts > 0)
    }

    fn rate(loads: &[Load; ROUNDS]) -> f64 {
        loads.iter().map(Load::per_second).sum::<f64>() / ROUNDS as f64
    }

    /// The measured throughput over the reference's.
    fn ratio(&self) -> f64 {
        Self::rate(&self.measured) / Self::rate(&self.reference).max(1.0)
    }

    /// `{"<reference>": [...], "<measured>": [...], "<ratio>": r}`.
    fn json(&self, reference: &str, measured: &str, ratio: &str) -> String {
        let list = |loads: &[Load]| loads.iter().map(Load::json).collect::<Vec<_>>().join(", ");
        format!(
            "{{\"{reference}\": [{}], \"{measured}\": [{}], \"{ratio}\": {:.3}}}",
            list(&self.reference),
            list(&self.measured),
            self.ratio()
        )
    }
}

/// (d): forward-auth with unmetered (reference) and metered keys.
type Metering = Paired;

/// Options of `cargo xtask bench`.
pub struct Options {
    pub seconds: u32,
    pub backends: Vec<&'static str>,
    /// `--keys N`: the scale scenarios with N imported keys, instead of the others.
    pub keys: Option<usize>,
}

impl Options {
    /// `--backend none`: only the gateway scenario (e).
    fn gateways_only(&self) -> bool {
        self.backends.is_empty()
    }
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Options {
            seconds: 10,
            backends: vec!["sqlite", "postgres"],
            keys: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--seconds" => {
                    options.seconds = args
                        .next()
                        .and_then(|s| s.parse().ok())
                        .ok_or("--seconds takes a whole number")?;
                }
                "--backend" => {
                    options.backends = match args.next().map(String::as_str) {
                        Some("sqlite") => vec!["sqlite"],
                        Some("postgres") => vec!["postgres"],
                        Some("both") => vec!["sqlite", "postgres"],
                        Some("none") => Vec::new(),
                        _ => return Err("--backend takes sqlite, postgres, both or none".into()),
                    };
                }
                "--keys" => {
                    options.keys = Some(
                        args.next()
                            .and_then(|s| s.replace(['_', ','], "").parse().ok())
                            .ok_or("--keys takes a whole number")?,
                    );
                }
                other => return Err(format!("unknown bench option {other:?}")),
            }
        }
        Ok(options)
    }
}

pub fn run(options: &Options) -> Result<(), String> {
    if Command::new("wrk").arg("--version").output().is_err() {
        return Err("the benchmark drives load with wrk: install it (apt-get install wrk)".into());
    }
    crate::cargo(&["build", "--release", "--package", "keygate-server"], &[])?;
    crate::cargo(
        &[
            "build",
            "--release",
            "--package",
            "keygate-server",
            "--example",
            "grpc_load",
        ],
        &[],
    )?;
    let root = workspace_root();
    let binary = root.join("target/release/keygate");
    let work = root.join("target/bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    fs::write(work.join("load.lua"), SCRIPT).map_err(|e| e.to_string())?;

    if let Some(keys) = options.keys {
        return run_scale(&root, &binary, &work, keys, options);
    }
    let gateways = bench_gateways(&root, &binary, &work, options.seconds)?;
    let mut reports = Vec::new();
    for backend in &options.backends {
        reports.push(bench_backend(backend, &binary, &work, options.seconds)?);
    }
    let results = write_results(&root, &reports, &gateways, options.seconds)?;
    if !options.gateways_only() {
        print_reports(&reports);
    }
    gateways.print();
    println!("\nresults written to {}", results.display());
    Ok(())
}

/// The scale scenarios on each backend, printed and written to bench-results/.
fn run_scale(
    root: &Path,
    binary: &Path,
    work: &Path,
    keys: usize,
    options: &Options,
) -> Result<(), String> {
    let mut results = Vec::new();
    for backend in &options.backends {
        let scale = scale::bench(backend, binary, work, keys, options.seconds)?;
        scale.print();
        results.push(scale);
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let backends: Vec<String> = results
        .iter()
        .map(|scale| format!("\"{}\": {}", scale.backend, scale.json()))
        .collect();
    let json = format!(
        "{{\n  \"unix_time\": {stamp},\n  \"machine\": \"{}\",\n  \"seconds_per_scenario\": {},\n  \"rounds\": {ROUNDS},\n  \"connections\": {CONNECTIONS},\n  \"scale\": {{{}}}\n}}\n",
        machine().replace('"', "'"),
        options.seconds,
        backends.join(", ")
    );
    let dir = root.join("bench-results");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(format!("scale-{stamp}.json"));
    fs::write(&path, json).map_err(|e| e.to_string())?;
    println!("\nmachine: {}", machine());
    for scale in &results {
        scale.print();
    }
    println!("\nresults written to {}", path.display());
    Ok(())
}

fn bench_backend(
    backend: &'static str,
    binary: &Path,
    work: &Path,
    seconds: u32,
) -> Result<Report, String> {
    let dir = work.join(backend);
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let url = match backend {
        "sqlite" => format!("sqlite://{}", dir.join("keygate.db").display()),
        _ => fresh_postgres_schema()?,
    };
    let port = free_port()?;
    eprintln!("bench: {backend}: starting the release server on port {port}");
    let server = Server::start(binary, &dir, port, &url)?;
    eprintln!("bench: {backend}: creating {KEYS} keys for {OWNERS} owners");
    let created = Instant::now();
    let (keys, owners) = create_keys(port)?;
    eprintln!(
        "bench: {backend}: created in {:.1} s",
        created.elapsed().as_secs_f64()
    );
    let keys_file = dir.join("keys.txt");
    let owners_file = dir.join("owners.txt");
    let unknown_file = dir.join("unknown.txt");
    fs::write(&keys_file, keys.join("\n")).map_err(|e| e.to_string())?;
    fs::write(&owners_file, owners.join("\n")).map_err(|e| e.to_string())?;
    fs::write(&unknown_file, unknown_keys(100_000).join("\n")).map_err(|e| e.to_string())?;

    let script = work.join("load.lua");
    // Warm up: every key verified once (in turn: keys drawn at random for 3 s left a
    // sixth of them unread, whose first use in (a) paid a lookup), as a long-running
    // server would have them.
    wrk(port, &script, &keys_file, "warm", 4)?;
    eprintln!("bench: {backend}: (a) API keys for {seconds} s");
    let keys_load = wrk(port, &script, &keys_file, "keys", seconds)?;
    eprintln!("bench: {backend}: (b) master key for {seconds} s");
    let master_load = wrk(port, &script, &owners_file, "master", seconds)?;
    eprintln!("bench: {backend}: (c) API keys beside a flood of unknown keys for {seconds} s");
    let (keys_under_flood, flood) = thread::scope(|scope| {
        let flood = scope.spawn(|| wrk(port, &script, &unknown_file, "keys", seconds));
        let keys = wrk(port, &script, &keys_file, "keys", seconds);
        (
            keys,
            flood
                .join()
                .unwrap_or_else(|_| Err("the flood's wrk panicked".into())),
        )
    });
    eprintln!("bench: {backend}: (d) forward-auth, metered keys against unmetered ones");
    let (plain_file, metered_file) = (dir.join("plain.txt"), dir.join("metered.txt"));
    fs::write(
        &plain_file,
        create_many(port, METERED_KEYS, |i| forward_key(i, ""))?.join("\n"),
    )
    .map_err(|e| e.to_string())?;
    let metering = r#","ratelimit":{"limit":1000000000,"window_ms":60000},"credits":{"remaining":1000000000000}"#;
    fs::write(
        &metered_file,
        create_many(port, METERED_KEYS, |i| forward_key(i, metering))?.join("\n"),
    )
    .map_err(|e| e.to_string())?;
    let metering = measure_metering(port, &script, &plain_file, &metered_file, seconds)?;
    drop(server);
    let metering_redis = if backend == "sqlite" {
        let redis =
            std::env::var("KEYGATE_BENCH_REDIS_URL").unwrap_or_else(|_| LOCAL_REDIS.to_owned());
        let port = free_port()?;
        eprintln!("bench: {backend}: (d) again with rate limits in Redis ({redis})");
        let _server = Server::start_with(
            binary,
            &dir,
            port,
            &url,
            &[
                ("KEYGATE_METERING__BACKEND", "redis"),
                ("KEYGATE_METERING__REDIS_URL", &redis),
            ],
        )?;
        Some(measure_metering(
            port,
            &script,
            &plain_file,
            &metered_file,
            seconds,
        )?)
    } else {
        None
    };
    Ok(Report {
        backend,
        keys: keys_load,
        master: master_load,
        keys_under_flood: keys_under_flood?,
        flood: flood?,
        metering,
        metering_redis,
    })
}

/// (e): what gateways get, beside nginx answering by itself.
struct Gateways {
    /// nginx's own answer (reference) and `/forward-auth`, measured in turn.
    rounds: Paired,
    /// The same nginx rounds, against a keygate with one worker: on a machine whose
    /// other cores run wrk, one worker per core oversubscribes them.
    one_worker: Paired,
    grpc_per_second: f64,
    grpc_errors: u64,
}

impl Gateways {
    fn json(&self) -> String {
        format!(
            "{{\"http\": {}, \"http_one_worker\": {}, \"grpc_check_per_second\": {:.0}, \"grpc_errors\": {}}}",
            self.rounds.json(
                "nginx_return_204",
                "forward_auth",
                "forward_auth_over_nginx"
            ),
            self.one_worker.json(
                "nginx_return_204",
                "forward_auth",
                "forward_auth_over_nginx"
            ),
            self.grpc_per_second,
            self.grpc_errors
        )
    }

    fn print(&self) {
        println!(
            "gateways   (e) nginx return 204: {:.0} req/s; /forward-auth (1,000 keys): {:.0} req/s = {:.2}x nginx (one worker per core); {:.0} req/s = {:.2}x nginx with server.workers = 1 (wrk has the other core); gRPC Check: {:.0} decisions/s ({} errors)",
            Paired::rate(&self.rounds.reference),
            Paired::rate(&self.rounds.measured),
            self.rounds.ratio(),
            Paired::rate(&self.one_worker.measured),
            self.one_worker.ratio(),
            self.grpc_per_second,
            self.grpc_errors
        );
    }
}

/// (e) on a fresh SQLite database.
fn bench_gateways(
    root: &Path,
    binary: &Path,
    work: &Path,
    seconds: u32,
) -> Result<Gateways, String> {
    let dir = work.join("gateways");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let url = format!("sqlite://{}", dir.join("keygate.db").display());
    let (port, grpc_port) = (free_port()?, free_port()?);
    eprintln!("bench: gateways: keygate on {port} (gRPC on {grpc_port}), 1,000 keys");
    let _server = Server::start_with(
        binary,
        &dir,
        port,
        &url,
        &[("KEYGATE_SERVER__GRPC_PORT", &grpc_port.to_string())],
    )?;
    let keys_file = dir.join("keys.txt");
    fs::write(
        &keys_file,
        create_many(port, METERED_KEYS, |i| forward_key(i, ""))?.join("\n"),
    )
    .map_err(|e| e.to_string())?;
    let script = work.join("load.lua");
    // The same database behind a keygate with one worker.
    let single = dir.join("one-worker");
    fs::create_dir_all(&single).map_err(|e| e.to_string())?;
    let single_port = free_port()?;
    let _single = Server::start_with(
        binary,
        &single,
        single_port,
        &url,
        &[("KEYGATE_SERVER__WORKERS", "1")],
    )?;
    let nginx = Nginx::start(&dir)?;
    eprintln!(
        "bench: gateways: (e) nginx return 204 and /forward-auth (default and one worker), in turn"
    );
    wrk(nginx.port, &script, &keys_file, "forward", 2)?;
    wrk(port, &script, &keys_file, "forward", 3)?;
    wrk(single_port, &script, &keys_file, "forward", 3)?;
    let (mut rounds, mut one_worker) = (Paired::default(), Paired::default());
    for round in 0..ROUNDS {
        rounds.reference[round] = wrk(nginx.port, &script, &keys_file, "forward", seconds)?;
        one_worker.reference[round] = rounds.reference[round];
        rounds.measured[round] = wrk(port, &script, &keys_file, "forward", seconds)?;
        one_worker.measured[round] = wrk(single_port, &script, &keys_file, "forward", seconds)?;
    }
    drop(nginx);
    eprintln!("bench: gateways: (e) gRPC Check for {seconds} s");
    let load = root.join("target/release/examples/grpc_load");
    let output = Command::new(&load)
        .arg(grpc_port.to_string())
        .arg(&keys_file)
        .arg(seconds.to_string())
        .output()
        .map_err(|e| format!("{}: {e}", load.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let numbers: Vec<f64> = stdout
        .lines()
        .find_map(|line| line.strip_prefix("KEYGATE_GRPC_RESULT "))
        .ok_or_else(|| {
            format!(
                "grpc_load printed no result: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let [allowed, other, errors, micros] = numbers[..] else {
        return Err(format!("an unexpected grpc_load result: {stdout}"));
    };
    Ok(Gateways {
        rounds,
        one_worker,
        grpc_per_second: (allowed + other) / (micros.max(1.0) / 1e6),
        grpc_errors: errors as u64,
    })
}

/// nginx answering every request with `return 204;` by itself: the reference of (e).
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path) -> Result<Self, String> {
        let port = free_port()?;
        let d = dir.display();
        let config = format!(
            "daemon off;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 1024; }}\nhttp {{\n    access_log off;\n    \
             client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    \
             fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    \
             server {{ listen 127.0.0.1:{port}; location / {{ return 204; }} }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        fs::write(&path, config).map_err(|e| e.to_string())?;
        let child = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("nginx (apt-get install nginx-light): {e}"))?;
        let nginx = Nginx { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("nginx did not listen".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A key that may read ledgers, with `metering` (JSON fields, each with a leading comma).
fn forward_key(i: usize, metering: &str) -> String {
    format!(
        r#"{{"name":"forward {i}","owner":"forward_{}","scopes":["ledgers:read"],"expires_at":"{}"{metering}}}"#,
        i % OWNERS,
        next_year()
    )
}

/// (d) on the server at `port`: unmetered and metered in turn, [`ROUNDS`] times
/// each, after a warm-up of each (every key verified, every lease taken).
fn measure_metering(
    port: u16,
    script: &Path,
    plain: &Path,
    metered: &Path,
    seconds: u32,
) -> Result<Metering, String> {
    wrk(port, script, plain, "forward", 3)?;
    wrk(port, script, metered, "forward", 3)?;
    let mut result = Metering::default();
    for round in 0..ROUNDS {
        result.reference[round] = wrk(port, script, plain, "forward", seconds)?;
        result.measured[round] = wrk(port, script, metered, "forward", seconds)?;
    }
    Ok(result)
}

fn fresh_postgres_schema() -> Result<String, String> {
    let server =
        std::env::var("KEYGATE_BENCH_POSTGRES_URL").unwrap_or_else(|_| LOCAL_POSTGRES.to_owned());
    let status = Command::new("psql")
        .args([
            &server,
            "-qtAc",
            &format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}"),
        ])
        .status()
        .map_err(|e| format!("psql: {e}"))?;
    if !status.success() {
        return Err(format!("could not prepare schema {SCHEMA} on {server}"));
    }
    let separator = if server.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{server}{separator}options=-csearch_path%3D{SCHEMA}"
    ))
}

struct Server(Child);

impl Server {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn start(binary: &Path, dir: &Path, port: u16, url: &str) -> Result<Self, String> {
        Self::start_with(binary, dir, port, url, &[])
    }

    fn start_with(
        binary: &Path,
        dir: &Path,
        port: u16,
        url: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let log = fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .envs(env.iter().copied())
            .current_dir(dir)
            .env("KEYGATE_SERVER__PORT", port.to_string())
            .env("KEYGATE_SERVER__SECRET_KEY", MASTER)
            .env("KEYGATE_DATABASE__URL", url)
            .env("RUST_LOG", "warn")
            // The flood scenario measures what unknown keys cost when they are looked up;
            // with throttling on, the flood's address would be refused without a lookup.
            .env("KEYGATE_THROTTLE__FAILURES_PER_MINUTE", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut client) = Client::connect(port)
                && client
                    .request("GET", "/health", None, None)
                    .map(|(status, _)| status)
                    == Ok(200)
            {
                return Ok(server);
            }
            thread::sleep(Duration::from_millis(5));
        }
        Err("the server did not start; see its server.log".into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// A keep-alive HTTP/1.1 connection, enough to create keys.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let body = body.unwrap_or_default();
        let key = key
            .map(|key| format!("X-Blnk-Key: {key}\r\n"))
            .unwrap_or_default();
        write!(
            self.writer,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{key}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .map_err(|e| e.to_string())?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("a malformed response")?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(|_| "a bad Content-Length")?;
            }
        }
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| e.to_string())?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Creates the keys over 8 connections; returns each key and, in the same order, owners.
fn create_keys(port: u16) -> Result<(Vec<String>, Vec<String>), String> {
    let keys = create_many(port, KEYS, |i| {
        format!(
            r#"{{"name":"bench {i}","owner":"owner_{}","scopes":["api-keys:read"],"expires_at":"{}"}}"#,
            i % OWNERS,
            next_year()
        )
    })?;
    let owners = (0..OWNERS).map(|i| format!("owner_{i}")).collect();
    Ok((keys, owners))
}

/// Creates `count` keys over 8 connections, the `i`th from `body(i)`; returns each key.
fn create_many(
    port: u16,
    count: usize,
    body: impl Fn(usize) -> String + Sync,
) -> Result<Vec<String>, String> {
    let workers = 8;
    let body = &body;
    let results: Vec<Result<Vec<String>, String>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                scope.spawn(move || {
                    let mut client = Client::connect(port).map_err(|e| e.to_string())?;
                    let mut keys = Vec::new();
                    for i in (worker..count).step_by(workers) {
                        let body = body(i);
                        let (status, reply) =
                            client.request("POST", "/api-keys", Some(MASTER), Some(&body))?;
                        if status != 201 {
                            return Err(format!("creating a key answered {status}: {reply}"));
                        }
                        let key = reply
                            .split("\"key\":\"")
                            .nth(1)
                            .and_then(|rest| rest.split('"').next())
                            .ok_or("no key in the reply")?;
                        keys.push(key.to_owned());
                    }
                    Ok(keys)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a worker panicked".into())))
            .collect()
    });
    let mut keys = Vec::with_capacity(count);
    for result in results {
        keys.extend(result?);
    }
    Ok(keys)
}

/// An expiry about a year away: within the default ten-year limit whenever this runs.
fn next_year() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{}-01-01T00:00:00Z", 1970 + seconds / 31_556_952 + 1)
}

/// Keys of the right shape that were never issued.
fn unknown_keys(count: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    (0..count)
        .map(|_| {
            let mut key: String = (0..43)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ALPHABET[(state % 64) as usize] as char
                })
                .collect();
            key.push('=');
            key
        })
        .collect()
}

fn wrk(port: u16, script: &Path, keys: &Path, mode: &str, seconds: u32) -> Result<Load, String> {
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .env("KEYGATE_BENCH_KEYS", keys)
        .env("KEYGATE_BENCH_MODE", mode)
        .env("KEYGATE_BENCH_MASTER", MASTER)
        .output()
        .map_err(|e| format!("wrk: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("KEYGATE_RESULT "))
        .ok_or_else(|| {
            format!(
                "wrk printed no result: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let n: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse::<f64>().map(|f| f as u64).unwrap_or(0))
        .collect();
    let [
        requests,
        duration_us,
        socket_errors,
        non_2xx,
        timeouts,
        p50_us,
        p99_us,
        max_us,
        ..,
    ] = n[..]
    else {
        return Err(format!("an unexpected wrk result: {line}"));
    };
    Ok(Load {
        requests,
        duration_us,
        socket_errors,
        non_2xx,
        timeouts,
        p50_us,
        p99_us,
        max_us,
    })
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| e.to_string())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

fn write_results(
    root: &Path,
    reports: &[Report],
    gateways: &Gateways,
    seconds: u32,
) -> Result<PathBuf, String> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut json = format!(
        "{{\n  \"unix_time\": {stamp},\n  \"machine\": \"{}\",\n  \"seconds_per_scenario\": {seconds},\n  \"connections\": {CONNECTIONS},\n  \"keys\": {KEYS},\n  \"backends\": {{",
        machine().replace('"', "'")
    );
    for (i, report) in reports.iter().enumerate() {
        let _ = write!(
            json,
            "{}\n    \"{}\": {{\n      \"a_api_keys\": {},\n      \"b_master_key\": {},\n      \"c_api_keys_under_flood\": {},\n      \"c_flood_of_unknown_keys\": {},\n      \"auth_tax_a_over_b\": {:.3},\n      \"kept_under_flood\": {:.3},\n      \"d_forward_auth_metering\": {},\n      \"d_forward_auth_metering_redis\": {}\n    }}",
            if i == 0 { "" } else { "," },
            report.backend,
            report.keys.json(),
            report.master.json(),
            report.keys_under_flood.json(),
            report.flood.json(),
            report.keys.per_second() / report.master.per_second().max(1.0),
            report.keys_under_flood.per_second() / report.keys.per_second().max(1.0),
            report
                .metering
                .json("unmetered", "metered", "metered_over_unmetered"),
            report.metering_redis.map_or_else(
                || "null".to_owned(),
                |m| m.json("unmetered", "metered", "metered_over_unmetered"),
            ),
        );
    }
    let _ = write!(json, "\n  }},\n  \"e_gateways\": {}", gateways.json());
    json.push_str("\n}\n");
    let dir = root.join("bench-results");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(format!("bench-{stamp}.json"));
    fs::write(&path, json).map_err(|e| e.to_string())?;
    Ok(path)
}

fn print_reports(reports: &[Report]) {
    println!("\nmachine: {}", machine());
    println!(
        "{:<10} {:<26} {:>10} {:>9} {:>9} {:>9}",
        "backend", "scenario", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for report in reports {
        let rows = [
            ("(a) API keys", report.keys),
            ("(b) master key", report.master),
            ("(c) API keys under flood", report.keys_under_flood),
            ("(c) the flood (401s)", report.flood),
        ];
        for (name, load) in rows {
            let errors = load.socket_errors
                + load.timeouts
                + if name.contains("flood (") {
                    0
                } else {
                    load.non_2xx
                };
            println!(
                "{:<10} {:<26} {:>10.0} {:>9.2} {:>9.2} {:>9}",
                report.backend,
                name,
                load.per_second(),
                load.p50_us as f64 / 1000.0,
                load.p99_us as f64 / 1000.0,
                errors
            );
        }
        println!(
            "{:<10} auth tax (a)/(b) = {:.2}; (a) kept {:.0}% of its throughput under the flood",
            report.backend,
            report.keys.per_second() / report.master.per_second().max(1.0),
            100.0 * report.keys_under_flood.per_second() / report.keys.per_second().max(1.0)
        );
        let metering = [
            ("local", Some(report.metering)),
            ("redis", report.metering_redis),
        ];
        for (mode, metering) in metering {
            let Some(metering) = metering else { continue };
            println!(
                "{:<10} (d) forward-auth {mode}: unmetered {:.0} req/s (p99 {:.2} ms), metered {:.0} req/s (p99 {:.2} ms): metered/unmetered = {:.3}",
                report.backend,
                Paired::rate(&metering.reference),
                metering.reference[1].p99_us as f64 / 1000.0,
                Paired::rate(&metering.measured),
                metering.measured[1].p99_us as f64 / 1000.0,
                metering.ratio()
            );
        }
    }
}
