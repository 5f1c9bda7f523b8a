//! `cargo xtask container`: the `Dockerfile` and `docker-compose.yml`, unchanged, built and
//! run for real on a machine with no Docker engine and no registry. Podman serves the
//! Docker API on a private socket to the ordinary `docker` CLI and Compose; the base
//! images the two files name are built here and kept (Debian by debootstrap from the
//! machine's mirror, the Rust builder from the machine's toolchain, a PostgreSQL
//! stand-in), tagged with the names the files use. Then `docker build`, `docker run` on
//! SQLite with a volume, `docker compose up` on PostgreSQL, and a teardown of all it
//! started, also when a step fails.

use std::collections::BTreeMap;
use std::env;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{self, Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The label that keys a locally built base image to the recipe it was built from.
const RECIPE_LABEL: &str = "org.keygate.xtask.recipe";
/// The label on the containers and volumes this task creates itself.
const OURS: &str = "org.keygate.xtask=container";
/// The Compose project this task runs docker-compose.yml under.
const PROJECT: &str = "keygate-xtask";
/// The tag `docker build -t` gives the image, as the README says.
const IMAGE: &str = "keygate";
/// The build stage, tagged so its layers stay cached while superseded ones are pruned.
const BUILD_STAGE_TAG: &str = "keygate-xtask/build-stage";
/// The uid the Dockerfile gives the user `keygate`.
const KEYGATE_UID: &str = "10001";
const IMAGE_SIZE_LIMIT_MB: f64 = 120.0;
/// What docker-compose.yml publishes on 127.0.0.1.
const COMPOSE_PORT: u16 = 5001;
const NEW_KEY: &str =
    r#"{"name":"c","owner":"o","scopes":["ledgers:read"],"expires_at":"2030-01-01T00:00:00Z"}"#;
const SECRETS: [&str; 2] = ["KEYGATE_MASTER_KEY", "POSTGRES_PASSWORD"];
const MASTER_KEY_FILE: &str = "/var/lib/keygate/keygate-master.key";

pub(crate) fn run() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .map_err(|e| format!("cannot find the workspace: {e}"))?;
    let mut steps = Steps::default();
    let mut engine = steps.time("start podman's Docker API", || Engine::start(&root))?;
    steps.time("base images", || {
        build_bases(&engine, &bases_named(&engine.context)?)
    })?;
    let size = steps.time("docker build", || build(&engine))?;
    steps.time("docker run on SQLite", || run_on_sqlite(&engine))?;
    steps.time("docker compose on PostgreSQL", || compose(&engine))?;
    steps.time("teardown", || engine.teardown())?;
    eprintln!("xtask: container: passed; image {IMAGE} is {size:.1} MB");
    Ok(())
}

/// How long each step took: printed as each ends, and all together at the end (also
/// when one failed).
struct Steps {
    total: Instant,
    taken: Vec<String>,
}

impl Default for Steps {
    fn default() -> Self {
        Self {
            total: Instant::now(),
            taken: Vec::new(),
        }
    }
}

impl Steps {
    fn time<T>(
        &mut self,
        name: &str,
        step: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, String> {
        eprintln!("xtask: container: {name}");
        let start = Instant::now();
        let result = step();
        let seconds = start.elapsed().as_secs_f64();
        let outcome = if result.is_ok() {
            "took"
        } else {
            "failed after"
        };
        eprintln!("xtask: container: {name} {outcome} {seconds:.1} s");
        self.taken.push(format!("{name} {seconds:.0} s"));
        result
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        eprintln!(
            "xtask: container: {} (in all {:.0} s)",
            self.taken.join(", "),
            self.total.elapsed().as_secs_f64()
        );
    }
}

/// A base image the Dockerfile or docker-compose.yml names, and how it is made here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Base {
    /// `debian:bookworm-slim`: debootstrap from the machine's mirror.
    Debian,
    /// `rust:<version>-bookworm`: the Debian base with the machine's Rust toolchain.
    Rust { tag: String, version: String },
    /// `postgres:<tag>`: the Debian base with Debian's PostgreSQL.
    Postgres { tag: String },
}

const DEBIAN: &str = "debian:bookworm-slim";

/// The images the two files name, checked against what can be built here.
fn bases_named(root: &Path) -> Result<Vec<Base>, String> {
    let dockerfile = read(&root.join("Dockerfile"))?;
    let compose = read(&root.join("docker-compose.yml"))?;
    let mut stages = Vec::new();
    let mut names = Vec::new();
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            let Some(image) = words.get(1) else { continue };
            if !stages.contains(image) {
                names.push((*image).to_owned());
            }
            if words.get(2).is_some_and(|w| w.eq_ignore_ascii_case("AS")) {
                stages.extend(words.get(3));
            }
        }
    }
    for line in compose.lines() {
        if let Some(image) = line.trim().strip_prefix("image:") {
            names.push(image.trim().trim_matches(['"', '\'']).to_owned());
        }
    }
    let mut bases = vec![Base::Debian];
    for name in names {
        let base = if name == DEBIAN {
            Base::Debian
        } else if let Some(version) = name
            .strip_prefix("rust:")
            .and_then(|tag| tag.strip_suffix("-bookworm"))
        {
            Base::Rust {
                tag: name.clone(),
                version: version.to_owned(),
            }
        } else if name.starts_with("postgres:") {
            Base::Postgres { tag: name.clone() }
        } else {
            return Err(format!(
                "the Dockerfile or docker-compose.yml names {name}, which `cargo xtask container` \
                 cannot build here (no registry can be reached); teach xtask/src/container.rs"
            ));
        };
        if !bases.contains(&base) {
            bases.push(base);
        }
    }
    Ok(bases)
}

/// The name a short image name resolves to, as the Docker API resolves it.
fn qualified(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("docker.io/library/{name}")
    }
}

/// Podman's Docker API on a private socket, and everything run through it. Dropping it
/// tears down what this task started: containers, volumes, networks and the service.
struct Engine {
    root: PathBuf,
    /// The work tree as it was when the run started, where every build and Compose run
    /// of this task happens: one tree for all of them, however the work tree changes.
    context: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
    socket: PathBuf,
    /// An empty file given to Compose as `--env-file`, so a developer's `.env` cannot
    /// supply the secrets the test withholds.
    env_file: PathBuf,
    compose: Vec<String>,
    service: Option<Child>,
    torn_down: bool,
}

impl Engine {
    fn start(root: &Path) -> Result<Self, String> {
        for tool in ["podman", "docker", "debootstrap", "tar", "curl"] {
            which(tool).ok_or_else(|| format!("`{tool}` is required and not on PATH"))?;
        }
        remove_stale_dirs();
        let dir = env::temp_dir().join(format!("{DIR_PREFIX}{}", process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut engine = Self {
            root: root.to_owned(),
            context: dir.join("context"),
            conf: dir.join("containers.conf"),
            socket: dir.join("podman.sock"),
            env_file: dir.join("empty.env"),
            dir,
            compose: Vec::new(),
            service: None,
            torn_down: false,
        };
        write(&engine.conf, &containers_conf()?)?;
        write(&engine.env_file, "")?;
        snapshot(root, &engine.context)?;
        // What a run that was killed left behind.
        engine.sweep();

        let log = fs::File::create(engine.dir.join("podman-service.log"))
            .map_err(|e| format!("cannot create the service log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot share the service log: {e}"))?;
        let service = engine
            .podman()
            // Idle for that long, it stops by itself: after a run that was killed.
            .args(["system", "service", "--time=300"])
            .arg(format!("unix://{}", engine.socket.display()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start podman system service: {e}"))?;
        engine.service = Some(service);
        wait_for("podman's Docker API", Duration::from_secs(30), || {
            Ok(engine
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()))
        })?;
        engine.compose = if engine
            .docker(&["compose", "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            vec!["docker".to_owned(), "compose".to_owned()]
        } else if which("docker-compose").is_some() {
            vec!["docker-compose".to_owned()]
        } else {
            return Err("neither `docker compose` nor `docker-compose` is installed".to_owned());
        };
        eprintln!(
            "xtask: container: docker CLI and `{}` on podman at {}",
            engine.compose.join(" "),
            engine.socket.display()
        );
        Ok(engine)
    }

    fn podman(&self) -> Command {
        let mut command = Command::new("podman");
        command.env("CONTAINERS_CONF", &self.conf);
        command
    }

    fn docker(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker");
        command
            .args(args)
            .current_dir(&self.context)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_BUILDKIT", "0");
        command
    }

    /// Compose on docker-compose.yml, with neither secret set unless the caller sets it.
    fn compose(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.compose[0]);
        command
            .args(&self.compose[1..])
            .args(["--project-name", PROJECT, "--env-file"])
            .arg(&self.env_file)
            .arg("--file")
            .arg(self.context.join("docker-compose.yml"))
            .args(args)
            .current_dir(&self.context)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_BUILDKIT", "0");
        for secret in SECRETS {
            command.env_remove(secret);
        }
        command
    }

    /// `docker inspect --format`.
    fn inspect(&self, object: &str, format: &str) -> Result<String, String> {
        output(&mut self.docker(&["inspect", "--format", format, object]))
    }

    /// The container of a Compose service.
    fn service_container(&self, service: &str) -> Result<Option<String>, String> {
        let ids = output(self.podman().args([
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label=com.docker.compose.project={PROJECT}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]))?;
        Ok(ids.lines().next().map(str::to_owned))
    }

    /// `podman image inspect --format` (Docker's API leaves out some of the image's
    /// configuration, such as its health check).
    fn image_inspect(&self, image: &str, format: &str) -> Result<String, String> {
        output(
            self.podman()
                .args(["image", "inspect", "--format", format, image]),
        )
    }

    /// The recipe label of an image, if the image exists.
    fn recipe_of(&self, tag: &str) -> Option<String> {
        let format = format!("{{{{index .Labels \"{RECIPE_LABEL}\"}}}}");
        let label = self.image_inspect(tag, &format).ok()?;
        Some(label.trim().to_owned())
    }

    fn image_id(&self, tag: &str) -> Option<String> {
        let id = self.image_inspect(tag, "{{.Id}}").ok()?;
        Some(id.trim().to_owned())
    }

    /// Removes every container, volume and network of this task, through podman itself
    /// (so it works without the service).
    fn sweep(&self) {
        for (_, list, remove) in SWEPT {
            let listed = self.remaining_of(list);
            if !listed.is_empty() {
                let _ = output(self.podman().args(remove).args(&listed));
            }
        }
    }

    /// What of this task is still there, as `kind id`.
    fn remaining(&self) -> Vec<String> {
        SWEPT
            .iter()
            .flat_map(|(kind, list, _)| {
                self.remaining_of(list)
                    .into_iter()
                    .map(move |id| format!("{kind} {id}"))
            })
            .collect()
    }

    fn remaining_of(&self, list: &[&str]) -> Vec<String> {
        let mut ids = Vec::new();
        for label in [
            OURS.to_owned(),
            format!("com.docker.compose.project={PROJECT}"),
        ] {
            let listed = output(
                self.podman()
                    .args(list)
                    .args(["--filter", &format!("label={label}")]),
            )
            .unwrap_or_default();
            ids.extend(listed.lines().map(str::to_owned));
        }
        ids
    }

    fn teardown(&mut self) -> Result<(), String> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        if self.service.is_some() && !self.compose.is_empty() {
            // Compose's own way first; the sweep catches what it leaves.
            let _ = self
                .compose(&["down", "--volumes", "--remove-orphans"])
                .env("KEYGATE_MASTER_KEY", "unused")
                .env("POSTGRES_PASSWORD", "unused")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.sweep();
        if !self.remaining().is_empty() {
            self.sweep();
        }
        let left = self.remaining();
        if let Some(mut service) = self.service.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &service.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while service.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
            if service.try_wait().ok().flatten().is_none() {
                let _ = service.kill();
                let _ = service.wait();
            }
        }
        remove_dir(&self.dir);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("teardown could not remove {}", left.join(", ")))
        }
    }
}

/// What this task creates, how podman lists it, and how it removes it (containers with
/// their anonymous volumes first, then volumes, then networks).
const SWEPT: [(&str, &[&str], &[&str]); 3] = [
    (
        "container",
        &["ps", "--all", "--quiet"],
        &["rm", "--force", "--volumes"],
    ),
    (
        "volume",
        &["volume", "ls", "--quiet"],
        &["volume", "rm", "--force"],
    ),
    (
        "network",
        &["network", "ls", "--quiet"],
        &["network", "rm", "--force"],
    ),
];

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(message) = self.teardown() {
            eprintln!("xtask: {message}");
        }
    }
}

/// Podman's settings for this machine: no default rlimits (the machine's hard limit on
/// open files is below podman's default, which the runtime then fails to set), CNI with
/// its dnsname plugin (so Compose's services find each other by name), and runc where
/// crun refuses the machine's hybrid cgroups (a cgroup v2 hierarchy with controllers
/// beside the v1 ones).
fn containers_conf() -> Result<String, String> {
    let plugins = [
        "/usr/lib/cni",
        "/usr/local/lib/cni",
        "/opt/cni/bin",
        "/usr/libexec/cni",
    ];
    if !plugins
        .iter()
        .any(|dir| Path::new(dir).join("dnsname").exists())
    {
        return Err(
            "podman's dnsname CNI plugin is missing (Compose's services find each \
                    other by name through it): apt-get install \
                    golang-github-containernetworking-plugin-dnsname"
                .to_owned(),
        );
    }
    let mut conf = "# Written by `cargo xtask container`.\n\
                    [containers]\n\
                    default_ulimits = []\n\
                    [network]\n\
                    network_backend = \"cni\"\n"
        .to_owned();
    let hybrid = fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .is_ok_and(|controllers| !controllers.trim().is_empty());
    if hybrid {
        which("runc").ok_or(
            "crun refuses this machine's hybrid cgroups and runc is not installed: \
             apt-get install runc",
        )?;
        conf.push_str("[engine]\nruntime = \"runc\"\n");
    }
    Ok(conf)
}

fn build_bases(engine: &Engine, bases: &[Base]) -> Result<(), String> {
    let dir = engine.context.join("xtask/container");
    let (mirror, security) = debian_mirrors()?;
    let slim = read(&dir.join("debian-slim.sh"))?;
    let debian_key = fingerprint(&[
        b"bookworm minbase",
        slim.as_bytes(),
        mirror.as_bytes(),
        security.as_bytes(),
    ]);
    let debian = qualified(DEBIAN);
    ensure(engine, &debian, &debian_key, || {
        let rootfs = engine.dir.join("rootfs");
        run_logged(
            Command::new("debootstrap")
                .args(["--variant=minbase", "bookworm"])
                .arg(&rootfs)
                .arg(&mirror),
            &engine.dir.join("debootstrap.log"),
        )?;
        run_logged(
            Command::new("sh")
                .arg(dir.join("debian-slim.sh"))
                .arg(&rootfs)
                .args([&mirror, &security]),
            &engine.dir.join("debian-slim.log"),
        )?;
        let imported = import(engine, &rootfs, &debian, &debian_key);
        remove_dir(&rootfs);
        imported
    })?;
    for base in bases {
        match base {
            Base::Debian => {}
            Base::Rust { tag, version } => build_rust(engine, &dir, &debian_key, tag, version)?,
            Base::Postgres { tag } => {
                let containerfile = read(&dir.join("postgres.Containerfile"))?;
                let entrypoint = read(&dir.join("postgres-entrypoint.sh"))?;
                let key = fingerprint(&[
                    debian_key.as_bytes(),
                    containerfile.as_bytes(),
                    entrypoint.as_bytes(),
                ]);
                let tag = qualified(tag);
                ensure(engine, &tag, &key, || {
                    podman_build(
                        engine,
                        &tag,
                        &key,
                        &dir.join("postgres.Containerfile"),
                        &dir,
                        &[],
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// Builds an image unless one with this tag was built from this recipe already; the
/// image it replaces is removed if nothing uses it.
fn ensure(
    engine: &Engine,
    tag: &str,
    key: &str,
    build: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    if engine.recipe_of(tag).as_deref() == Some(key) {
        eprintln!("xtask: container: {tag}: cached");
        return Ok(());
    }
    eprintln!("xtask: container: {tag}: building");
    let old = engine.image_id(tag);
    build()?;
    if let Some(old) = old
        && engine.image_id(tag).as_ref() != Some(&old)
    {
        let _ = output(engine.podman().args(["rmi", &old]));
    }
    Ok(())
}

/// The rootfs as an image, as the official one is made (`FROM scratch`, `ADD`, `CMD bash`).
fn import(engine: &Engine, rootfs: &Path, tag: &str, key: &str) -> Result<(), String> {
    let mut archive = Command::new("tar");
    archive
        .arg("--numeric-owner")
        .arg("-C")
        .arg(rootfs)
        .args(["-c", "."]);
    let mut import = engine.podman();
    import
        .args(["import", "--change", "CMD [\"bash\"]", "--change"])
        .arg(format!("LABEL {RECIPE_LABEL}={key}"))
        .args(["-", tag]);
    pipe(&mut archive, &mut import)
}

/// The work tree copied into `into`, less what `.dockerignore` leaves out by plain name
/// (`target`, `.git`, ...; Docker applies the whole file again when it builds).
fn snapshot(root: &Path, into: &Path) -> Result<(), String> {
    fs::create_dir_all(into).map_err(|e| format!("cannot create {}: {e}", into.display()))?;
    let ignored = read(&root.join(".dockerignore")).unwrap_or_default();
    let mut archive = Command::new("tar");
    archive.arg("-C").arg(root);
    for name in ignored.lines().map(str::trim) {
        if !name.is_empty() && !name.starts_with(['#', '!']) && !name.contains(['*', '?', '[']) {
            archive.arg(format!("--exclude=./{}", name.trim_matches('/')));
        }
    }
    archive.args(["-c", "."]);
    pipe(
        &mut archive,
        Command::new("tar").arg("-C").arg(into).arg("-x"),
    )
}

/// `from | to`; fails if either fails.
fn pipe(from: &mut Command, to: &mut Command) -> Result<(), String> {
    let mut source = from
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", describe(from)))?;
    let stream = source.stdout.take().ok_or("no pipe")?;
    let sunk = to.stdin(stream).output();
    // Let go of the pipe's reading end, so that `from` cannot block on a pipe nobody reads.
    to.stdin(Stdio::null());
    let failed = match sunk {
        Ok(sunk) if sunk.status.success() => None,
        Ok(sunk) => Some(format!(
            "{} failed ({}): {}",
            describe(to),
            sunk.status,
            String::from_utf8_lossy(&sunk.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run {}: {e}", describe(to))),
    };
    if let Some(message) = failed {
        let _ = source.kill();
        let _ = source.wait();
        return Err(message);
    }
    let sourced = source
        .wait()
        .map_err(|e| format!("{}: {e}", describe(from)))?;
    if sourced.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({sourced})", describe(from)))
    }
}

fn build_rust(
    engine: &Engine,
    dir: &Path,
    debian_key: &str,
    tag: &str,
    version: &str,
) -> Result<(), String> {
    let rustc = output(Command::new("rustc").arg("-vV").current_dir(&engine.root))?;
    let release = rustc
        .lines()
        .find_map(|line| line.strip_prefix("release: "))
        .unwrap_or_default();
    if release != version && !release.starts_with(&format!("{version}.")) {
        return Err(format!(
            "the Dockerfile builds on {tag}, but this machine's rustc is {release}: \
             the local stand-in is made from this machine's toolchain"
        ));
    }
    let sysroot = PathBuf::from(
        output(
            Command::new("rustc")
                .args(["--print", "sysroot"])
                .current_dir(&engine.root),
        )?
        .trim(),
    );
    let toolchain = sysroot
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| format!("cannot name the toolchain at {}", sysroot.display()))?
        .to_owned();
    let containerfile = read(&dir.join("rust.Containerfile"))?;
    let authorities = Path::new("/usr/local/share/ca-certificates");
    let mut parts = vec![
        debian_key.as_bytes().to_vec(),
        containerfile.into_bytes(),
        rustc.into_bytes(),
        toolchain.clone().into_bytes(),
    ];
    for (path, contents) in files_under(authorities) {
        parts.push(path.into_os_string().into_encoded_bytes());
        parts.push(contents);
    }
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let key = fingerprint(&parts);
    let tag = qualified(tag);
    ensure(engine, &tag, &key, || {
        // The context: the toolchain without its documentation (linked, not copied,
        // where the file system allows) and the machine's extra certificate authorities.
        let context = engine.dir.join("rust-context");
        let staged = context.join("toolchain");
        fs::create_dir_all(&staged)
            .map_err(|e| format!("cannot create {}: {e}", staged.display()))?;
        let entries = fs::read_dir(&sysroot)
            .map_err(|e| format!("cannot read {}: {e}", sysroot.display()))?;
        for entry in entries.flatten() {
            if entry.file_name() == "share" {
                continue;
            }
            let linked = Command::new("cp")
                .arg("-al")
                .arg(entry.path())
                .arg(&staged)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !linked {
                output(Command::new("cp").arg("-a").arg(entry.path()).arg(&staged))?;
            }
        }
        let certificates = context.join("ca-certificates");
        fs::create_dir_all(&certificates)
            .map_err(|e| format!("cannot create {}: {e}", certificates.display()))?;
        if authorities.is_dir() {
            output(
                Command::new("cp")
                    .arg("-a")
                    .arg(authorities.join("."))
                    .arg(&certificates),
            )?;
        }
        let built = podman_build(
            engine,
            &tag,
            &key,
            &dir.join("rust.Containerfile"),
            &context,
            &[format!("TOOLCHAIN={toolchain}")],
        );
        remove_dir(&context);
        built
    })
}

fn podman_build(
    engine: &Engine,
    tag: &str,
    key: &str,
    containerfile: &Path,
    context: &Path,
    build_args: &[String],
) -> Result<(), String> {
    let mut command = engine.podman();
    command
        .args([
            "build",
            "--pull=never",
            "--layers=false",
            "--tag",
            tag,
            "--label",
        ])
        .arg(format!("{RECIPE_LABEL}={key}"))
        .arg("--file")
        .arg(containerfile);
    for arg in build_args {
        command.args(["--build-arg", arg]);
    }
    command.arg(context);
    let name = tag.replace(['/', ':'], "_");
    run_logged(&mut command, &engine.dir.join(format!("build-{name}.log")))
}

/// The Debian mirror and security mirror this machine's apt uses for bookworm.
fn debian_mirrors() -> Result<(String, String), String> {
    let mut sources = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        sources.extend(one_line_sources(&text));
    }
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(|e| e.to_str()) {
            Some("list") => sources.extend(one_line_sources(&text)),
            Some("sources") => sources.extend(deb822_sources(&text)),
            _ => {}
        }
    }
    let find = |suite: &str| {
        sources
            .iter()
            .find(|(_, suites)| suites.iter().any(|s| s == suite))
            .map(|(uri, _)| uri.trim_end_matches('/').to_owned())
    };
    let mirror = find("bookworm").ok_or(
        "no Debian bookworm mirror is configured in /etc/apt/sources.list or \
         /etc/apt/sources.list.d; debootstrap needs one",
    )?;
    let security = find("bookworm-security").unwrap_or_else(|| format!("{mirror}-security"));
    Ok((mirror, security))
}

/// `deb [options] URI SUITE COMPONENTS...` lines: (URI, [SUITE]).
fn one_line_sources(text: &str) -> Vec<(String, Vec<String>)> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line
            .strip_prefix("deb")
            .filter(|r| r.starts_with(char::is_whitespace))
        else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']').map_or("", |(_, after)| after),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            sources.push((uri.to_owned(), vec![suite.to_owned()]));
        }
    }
    sources
}

/// deb822 `.sources` stanzas of type `deb` that are not disabled: (URI, SUITES) per URI.
fn deb822_sources(text: &str) -> Vec<(String, Vec<String>)> {
    let mut sources = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields = BTreeMap::new();
        for line in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
            if let Some((name, value)) = line.split_once(':')
                && !name.starts_with(char::is_whitespace)
            {
                fields.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
        if !field("types").split_whitespace().any(|t| t == "deb")
            || field("enabled").eq_ignore_ascii_case("no")
        {
            continue;
        }
        let suites: Vec<String> = field("suites")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        for uri in field("uris").split_whitespace() {
            sources.push((uri.to_owned(), suites.clone()));
        }
    }
    sources
}

/// `docker build -t keygate .` with the unchanged Dockerfile, then the Compose build (the
/// same layers); checks the image. Returns its size in MB.
fn build(engine: &Engine) -> Result<f64, String> {
    // The builds this one supersedes, removed once it stands: only images of these tags,
    // never anything else in the machine's image store.
    let superseded: Vec<String> = [IMAGE, BUILD_STAGE_TAG]
        .iter()
        .filter_map(|tag| engine.image_id(tag))
        .collect();
    run_shown(&mut engine.docker(&["build", "--tag", IMAGE, "."]))?;
    let dockerfile = read(&engine.context.join("Dockerfile"))?;
    let stage = dockerfile.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        (words.len() == 4
            && words[0].eq_ignore_ascii_case("FROM")
            && words[2].eq_ignore_ascii_case("AS"))
        .then(|| words[3].to_owned())
    });
    if let Some(stage) = &stage {
        output(&mut engine.docker(&[
            "build",
            "--quiet",
            "--target",
            stage,
            "--tag",
            BUILD_STAGE_TAG,
            ".",
        ]))?;
    }
    run_shown(
        engine
            .compose(&["build"])
            .env("KEYGATE_MASTER_KEY", "unused")
            .env("POSTGRES_PASSWORD", "unused"),
    )?;
    let current: Vec<String> = [IMAGE, BUILD_STAGE_TAG]
        .iter()
        .filter_map(|tag| engine.image_id(tag))
        .collect();
    for old in superseded.iter().filter(|id| !current.contains(id)) {
        // Still in use (by a container of another run) is fine: it stays.
        let _ = output(engine.podman().args(["rmi", old]));
    }

    let size: f64 = engine
        .image_inspect(IMAGE, "{{.Size}}")?
        .trim()
        .parse()
        .map_err(|e| format!("image size: {e}"))?;
    let size = size / 1e6;
    eprintln!("xtask: container: image {IMAGE}: {size:.1} MB");
    if size >= IMAGE_SIZE_LIMIT_MB {
        return Err(format!(
            "image {IMAGE} is {size:.1} MB, over the {IMAGE_SIZE_LIMIT_MB} MB it should stay under"
        ));
    }
    let user = engine.image_inspect(IMAGE, "{{.Config.User}}")?;
    if user.trim() != "keygate" {
        return Err(format!(
            "image {IMAGE} runs as {:?}, not keygate",
            user.trim()
        ));
    }
    let check = engine.image_inspect(IMAGE, "{{json .Config.Healthcheck.Test}}")?;
    if !check.contains("\"keygate\",\"health\"") {
        return Err(format!(
            "image {IMAGE} has no `keygate health` HEALTHCHECK: {}",
            check.trim()
        ));
    }
    Ok(size)
}

/// `docker run` on SQLite with a volume, once with a generated master key and once with a
/// configured one: a key made before a restart (and before the container is replaced)
/// still works, and the volume holds what should persist.
fn run_on_sqlite(engine: &Engine) -> Result<(), String> {
    let sqlite = Sqlite {
        engine,
        port: free_port()?,
    };
    let base = format!("http://127.0.0.1:{}", sqlite.port);

    // No master key given: one is generated into the volume.
    sqlite.create_volume()?;
    sqlite.start(None)?;
    let status = output(&mut engine.docker(&["exec", SQLITE, "cat", "/proc/1/status"]))?;
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .unwrap_or_default();
    if uid.trim().is_empty() || !uid.split_whitespace().all(|id| id == KEYGATE_UID) {
        return Err(format!(
            "keygate runs as uid {:?}, not {KEYGATE_UID}",
            uid.trim()
        ));
    }
    let (status, _) = http("GET", &format!("{base}/health"), &[], None)?;
    expect("GET /health", status, 200)?;
    let master = master_key_in(engine)?;
    let mode = output(&mut engine.docker(&["exec", SQLITE, "stat", "-c", "%a", MASTER_KEY_FILE]))?;
    if mode.trim() != "600" {
        return Err(format!(
            "{MASTER_KEY_FILE} has mode {}, not 600",
            mode.trim()
        ));
    }
    let (key, id) = create_key(&base, &master)?;
    forward_auth(&base, &key, 200)?;
    forward_auth(&base, "not-a-key-of-this-server-0123456789", 401)?;

    output(&mut engine.docker(&["restart", SQLITE]))?;
    wait_healthy(engine, SQLITE)?;
    if master_key_in(engine)? != master {
        return Err("the generated master key changed across a restart".to_owned());
    }
    forward_auth(&base, &key, 200)?;
    let (status, body) = http(
        "GET",
        &format!("{base}/api-keys?owner=o"),
        &[("X-Blnk-Key", &master)],
        None,
    )?;
    expect("GET /api-keys?owner=o with the master key", status, 200)?;
    if !body.contains(&id) {
        return Err(format!(
            "the key {id} is not listed after the restart: {body}"
        ));
    }

    // A new container on the same volume: the volume alone carries the state.
    output(&mut engine.docker(&["rm", "--force", SQLITE]))?;
    sqlite.start(None)?;
    if master_key_in(engine)? != master {
        return Err("a new container on the volume has another master key".to_owned());
    }
    forward_auth(&base, &key, 200)?;
    sqlite.expect_files(&["keygate.db", "keygate-master.key"], &[])?;
    sqlite.remove()?;
    eprintln!(
        "xtask: container: a generated master key and a key made with it outlive a restart \
         and a new container on the volume"
    );

    // A configured master key: the database persists, and no key file is written.
    let master = random_secret()?;
    sqlite.create_volume()?;
    sqlite.start(Some(&master))?;
    let (key, _) = create_key(&base, &master)?;
    output(&mut engine.docker(&["restart", SQLITE]))?;
    wait_healthy(engine, SQLITE)?;
    forward_auth(&base, &key, 200)?;
    sqlite.expect_files(&["keygate.db"], &["keygate-master.key"])?;
    sqlite.remove()?;
    eprintln!(
        "xtask: container: with a configured master key, a key outlives a restart and no key \
         file is written"
    );
    Ok(())
}

const SQLITE: &str = "keygate-xtask-sqlite";

/// The image run on its SQLite default: container and volume both named [`SQLITE`].
struct Sqlite<'a> {
    engine: &'a Engine,
    port: u16,
}

impl Sqlite<'_> {
    fn create_volume(&self) -> Result<(), String> {
        output(
            &mut self
                .engine
                .docker(&["volume", "create", "--label", OURS, SQLITE]),
        )
        .map(drop)
    }

    /// Starts the container (with this master key in its environment, if any) and waits
    /// until it is healthy.
    fn start(&self, master: Option<&str>) -> Result<(), String> {
        let publish = format!("127.0.0.1:{}:5001", self.port);
        let mount = format!("{SQLITE}:/var/lib/keygate");
        let mut run = self.engine.docker(&[
            "run",
            "--detach",
            "--name",
            SQLITE,
            "--label",
            OURS,
            "--publish",
            &publish,
            "--volume",
            &mount,
        ]);
        if let Some(master) = master {
            run.env("KEYGATE_SERVER__SECRET_KEY", master)
                .args(["--env", "KEYGATE_SERVER__SECRET_KEY"]);
        }
        output(run.arg(IMAGE))?;
        wait_healthy(self.engine, SQLITE)
    }

    fn expect_files(&self, present: &[&str], absent: &[&str]) -> Result<(), String> {
        let listed =
            output(
                &mut self
                    .engine
                    .docker(&["exec", SQLITE, "ls", "-A", "/var/lib/keygate"]),
            )?;
        let has = |file: &&str| listed.lines().any(|line| line == *file);
        if present.iter().all(has) && !absent.iter().any(has) {
            Ok(())
        } else {
            Err(format!(
                "the volume should hold {present:?} and not {absent:?}; it holds {:?}",
                listed.lines().collect::<Vec<_>>()
            ))
        }
    }

    fn remove(&self) -> Result<(), String> {
        output(&mut self.engine.docker(&["rm", "--force", SQLITE]))?;
        output(&mut self.engine.docker(&["volume", "rm", SQLITE])).map(drop)
    }
}

/// docker-compose.yml unchanged: it refuses to start without its secrets; keygate starts
/// only once PostgreSQL is healthy, serves, and survives `restart keygate`.
fn compose(engine: &Engine) -> Result<(), String> {
    if TcpListener::bind(("127.0.0.1", COMPOSE_PORT)).is_err() {
        return Err(format!(
            "127.0.0.1:{COMPOSE_PORT} is taken, and docker-compose.yml publishes keygate there"
        ));
    }
    let master = random_secret()?;
    let password = random_secret()?;
    let need_master = "set KEYGATE_MASTER_KEY to a long random string";
    let need_password = "set POSTGRES_PASSWORD";
    // One secret missing, then both: compose refuses, with the file's message for one
    // that is missing.
    for (master, password) in [(None, Some(&password)), (Some(&master), None), (None, None)] {
        let missing: Vec<&str> = [(master, need_master), (password, need_password)]
            .into_iter()
            .filter_map(|(given, message)| given.is_none().then_some(message))
            .collect();
        let mut up = engine.compose(&["up", "--detach", "--no-build"]);
        if let Some(master) = master {
            up.env("KEYGATE_MASTER_KEY", master);
        }
        if let Some(password) = password {
            up.env("POSTGRES_PASSWORD", password);
        }
        let refused = up
            .output()
            .map_err(|e| format!("cannot run compose: {e}"))?;
        let said = String::from_utf8_lossy(&refused.stderr);
        if refused.status.success() || !missing.iter().any(|m| said.contains(m)) {
            return Err(format!(
                "compose should refuse with one of {missing:?}; it said: {said}"
            ));
        }
    }
    if engine.service_container("postgres")?.is_some()
        || engine.service_container("keygate")?.is_some()
    {
        return Err("compose created a container although a secret was missing".to_owned());
    }
    eprintln!(
        "xtask: container: compose refuses to start without KEYGATE_MASTER_KEY or POSTGRES_PASSWORD"
    );

    let with_secrets = |command: &mut Command| {
        command
            .env("KEYGATE_MASTER_KEY", &master)
            .env("POSTGRES_PASSWORD", &password);
    };
    let mut up = engine.compose(&["up", "--detach"]);
    with_secrets(&mut up);
    let mut up = Running(
        up.spawn()
            .map_err(|e| format!("cannot run compose up: {e}"))?,
    );

    // keygate must not run while PostgreSQL is not healthy. Podman runs health checks
    // from systemd timers, and there is no systemd here: PostgreSQL stays unhealthy, and
    // keygate waits, until this task runs the checks itself.
    let mut postgres = None;
    wait_for(
        "compose to start postgres",
        Duration::from_secs(120),
        || {
            up.check()?;
            postgres = engine.service_container("postgres")?;
            Ok(match &postgres {
                Some(id) => engine.inspect(id, "{{.State.Status}}")?.trim() == "running",
                None => false,
            })
        },
    )?;
    let postgres = postgres.ok_or("compose started no postgres")?;
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        up.check()?;
        let keygate_runs = match engine.service_container("keygate")? {
            Some(id) => engine.inspect(&id, "{{.State.Status}}")?.trim() == "running",
            None => false,
        };
        let health = engine.inspect(&postgres, "{{.State.Health.Status}}")?;
        if keygate_runs && health.trim() != "healthy" {
            return Err(format!(
                "compose started keygate while PostgreSQL was {}",
                health.trim()
            ));
        }
        thread::sleep(Duration::from_millis(500));
    }
    let ticker = HealthTicker::start(engine.conf.clone());
    wait_for("compose up", Duration::from_secs(180), || up.finished())?;
    let keygate = engine
        .service_container("keygate")?
        .ok_or("compose up started no keygate")?;
    wait_healthy(engine, &keygate)?;
    eprintln!("xtask: container: keygate started once PostgreSQL was healthy");

    let base = format!("http://127.0.0.1:{COMPOSE_PORT}");
    let (key, id) = create_key(&base, &master)?;
    forward_auth(&base, &key, 200)?;
    let rows = output(&mut engine.docker(&[
        "exec",
        &postgres,
        "psql",
        "--username=keygate",
        "--dbname=keygate",
        "--tuples-only",
        "--no-align",
        "--command",
        &format!(
            "SELECT count(*) FROM api_keys WHERE api_key_id = '{}'",
            sql_safe(&id)?
        ),
    ]))?;
    if rows.trim() != "1" {
        return Err(format!(
            "the key {id} is not in compose's PostgreSQL ({})",
            rows.trim()
        ));
    }

    let mut restart = engine.compose(&["restart", "keygate"]);
    with_secrets(&mut restart);
    run_shown(&mut restart)?;
    wait_healthy(engine, &keygate)?;
    forward_auth(&base, &key, 200)?;
    eprintln!("xtask: container: a key made before `restart keygate` works after it");

    let mut down = engine.compose(&["down", "--volumes"]);
    with_secrets(&mut down);
    run_shown(&mut down)?;
    drop(ticker);
    if engine.service_container("postgres")?.is_some()
        || engine.service_container("keygate")?.is_some()
    {
        return Err("compose down left containers".to_owned());
    }
    Ok(())
}

/// A child process that is killed if it is still running when dropped.
struct Running(Child);

impl Running {
    /// Fails if the process ended unsuccessfully.
    fn check(&mut self) -> Result<(), String> {
        match self.0.try_wait() {
            Ok(Some(status)) if !status.success() => Err(format!("compose up failed ({status})")),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("compose up: {e}")),
        }
    }

    fn finished(&mut self) -> Result<bool, String> {
        self.check()?;
        Ok(self.0.try_wait().ok().flatten().is_some())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs the health checks of the Compose project's containers every two seconds, as the
/// engine would, so Compose's `condition: service_healthy` can be met.
struct HealthTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HealthTicker {
    fn start(conf: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let podman = || {
                let mut command = Command::new("podman");
                command.env("CONTAINERS_CONF", &conf);
                command
            };
            while !stopped.load(Ordering::Relaxed) {
                let ids = output(podman().args([
                    "ps",
                    "--quiet",
                    "--filter",
                    &format!("label=com.docker.compose.project={PROJECT}"),
                ]))
                .unwrap_or_default();
                for id in ids.lines() {
                    let _ = podman()
                        .args(["healthcheck", "run", id])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                for _ in 0..20 {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HealthTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs the container's HEALTHCHECK until it passes and the engine reports it healthy.
fn wait_healthy(engine: &Engine, container: &str) -> Result<(), String> {
    let waited = wait_for(
        &format!("{container} to be healthy"),
        Duration::from_secs(90),
        || {
            let state = engine.inspect(container, "{{.State.Status}}")?;
            if matches!(state.trim(), "exited" | "stopped" | "dead") {
                return Err(format!("{container} stopped"));
            }
            let passed = engine
                .podman()
                .args(["healthcheck", "run", container])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            Ok(passed
                && engine
                    .inspect(container, "{{.State.Health.Status}}")?
                    .trim()
                    == "healthy")
        },
    );
    waited.map_err(|message| {
        let logs = engine
            .docker(&["logs", "--tail", "30", container])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        format!("{message}; its last log lines:\n{logs}")
    })
}

fn master_key_in(engine: &Engine) -> Result<String, String> {
    let key = output(&mut engine.docker(&["exec", SQLITE, "cat", MASTER_KEY_FILE]))?;
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(format!("{MASTER_KEY_FILE} is empty"));
    }
    Ok(key)
}

/// `POST /api-keys` with the master key: the new key and its id.
fn create_key(base: &str, master: &str) -> Result<(String, String), String> {
    let (status, body) = http(
        "POST",
        &format!("{base}/api-keys"),
        &[("X-Blnk-Key", master)],
        Some(NEW_KEY),
    )?;
    expect("POST /api-keys with the master key", status, 201)?;
    let key = json_string(&body, "key").ok_or_else(|| format!("no key in {body}"))?;
    let id = json_string(&body, "api_key_id").ok_or_else(|| format!("no api_key_id in {body}"))?;
    Ok((key, id))
}

/// `/forward-auth` for `GET /ledgers`, which the key's `ledgers:read` allows.
fn forward_auth(base: &str, key: &str, expected: u16) -> Result<(), String> {
    let (status, _) = http(
        "GET",
        &format!("{base}/forward-auth"),
        &[
            ("X-Blnk-Key", key),
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/ledgers"),
        ],
        None,
    )?;
    expect("GET /forward-auth for GET /ledgers", status, expected)
}

fn expect(what: &str, status: u16, expected: u16) -> Result<(), String> {
    if status == expected {
        Ok(())
    } else {
        Err(format!("{what}: {status}, expected {expected}"))
    }
}

/// One request with curl: the status and the body.
fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut command = Command::new("curl");
    command.args([
        "--silent",
        "--show-error",
        "--max-time",
        "10",
        "--request",
        method,
    ]);
    command.args(["--write-out", "\n%{http_code}"]);
    for (name, value) in headers {
        command.arg("--header").arg(format!("{name}: {value}"));
    }
    if let Some(body) = body {
        command.args([
            "--header",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let answered = command
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if !answered.status.success() {
        return Err(format!(
            "{method} {url}: {}",
            String::from_utf8_lossy(&answered.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&answered.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = status
        .trim()
        .parse()
        .map_err(|_| format!("{method} {url}: no status in {text:?}"))?;
    Ok((status, body.to_owned()))
}

/// A top-level string field of a JSON object whose strings hold no escapes.
fn json_string(body: &str, field: &str) -> Option<String> {
    let after = body.split_once(&format!("\"{field}\""))?.1;
    let value = after
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(value[..value.find('"')?].to_owned())
}

fn random_secret() -> Result<String, String> {
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// Polls `check` every half second until it is true, fails, or time runs out.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "gave up waiting for {what} after {} s",
                timeout.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// FNV-1a over the parts: a stable key for a recipe.
fn fingerprint(parts: &[&[u8]]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Every file under a folder with its contents, in path order.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if let Ok(contents) = fs::read(&path) {
                files.push((path, contents));
            }
        }
    }
    files.sort();
    files
}

fn which(tool: &str) -> Option<PathBuf> {
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|path| path.is_file())
    })
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The name of this task's temporary folder, before the process id.
const DIR_PREFIX: &str = "keygate-container-";

/// Removes the temporary folders of runs that were killed (their process is gone).
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            remove_dir(&entry.path());
        }
    }
}

/// A mount point as `/proc/self/mountinfo` writes it, with its octal escapes (`\040` for
/// a space, `\134` for a backslash, ...) decoded.
fn unescape_mount_point(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escape = bytes.get(at + 1..at + 4).filter(|digits| {
            bytes[at] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        });
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, d| value * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                at += 4;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a folder of ours, unmounting first anything mounted under it (debootstrap
/// mounts /proc and /sys, or binds /dev, inside its target while it works); a folder
/// that still has mounts is left alone rather than emptied through them.
fn remove_dir(dir: &Path) {
    if !dir.exists() {
        return;
    }
    // Mount points are listed resolved, with spaces and the like escaped in octal.
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let dir = dir.as_path();
    let mounted = || -> Vec<String> {
        let prefix = format!("{}/", dir.display());
        let mut points: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_whitespace().nth(4).map(unescape_mount_point))
            .filter(|point| point.starts_with(&prefix))
            .collect();
        points.sort_by_key(|point| std::cmp::Reverse(point.len()));
        points
    };
    for point in mounted() {
        let _ = Command::new("umount").args(["--lazy", &point]).status();
    }
    if mounted().is_empty() {
        let _ = fs::remove_dir_all(dir);
    } else {
        eprintln!(
            "xtask: left {} in place: something is still mounted under it",
            dir.display()
        );
    }
}

/// Runs a command, its output to a log file; on failure the error ends with the log's tail.
fn run_logged(command: &mut Command, log: &Path) -> Result<(), String> {
    let file =
        fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let file_err = file
        .try_clone()
        .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
    let status = command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(file_err)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", describe(command)))?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    Err(format!("{} failed ({status}):\n{tail}", describe(command)))
}

/// Runs a command with its output shown.
fn run_shown(command: &mut Command) -> Result<(), String> {
    eprintln!("xtask: container: {}", describe(command));
    let status = command
        .status()
        .map_err(|e| format!("cannot run {}: {e}", describe(command)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({status})", describe(command)))
    }
}

/// Runs a command and returns what it printed; the error carries what it said on stderr.
fn output(command: &mut Command) -> Result<String, String> {
    let ran = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", describe(command)))?;
    if ran.status.success() {
        Ok(String::from_utf8_lossy(&ran.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            describe(command),
            ran.status,
            String::from_utf8_lossy(&ran.stderr).trim()
        ))
    }
}

/// The program and its arguments (secrets are passed through the environment only).
fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// `id` if it is a key id as keygate makes them (`api_key_` and letters, digits, `-`), so
/// that it can stand inside an SQL literal.
fn sql_safe(id: &str) -> Result<&str, String> {
    let plain = id.starts_with("api_key_")
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        Ok(id)
    } else {
        Err(format!("an unexpected key id: {id:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_sources_in_both_formats() {
        let one_line = "# comment\ndeb http://deb.debian.org/debian bookworm main\n\
                        deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm-security main\n\
                        deb-src http://src.example/debian bookworm main\n";
        assert_eq!(
            one_line_sources(one_line),
            vec![
                (
                    "http://deb.debian.org/debian".to_owned(),
                    vec!["bookworm".to_owned()]
                ),
                (
                    "http://m.example/debian".to_owned(),
                    vec!["bookworm-security".to_owned()]
                ),
            ]
        );
        let deb822 = "Types: deb\n# http://snapshot.debian.org/x\nURIs: http://deb.debian.org/debian\n\
                      Suites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n";
        assert_eq!(
            deb822_sources(deb822),
            vec![(
                "http://deb.debian.org/debian".to_owned(),
                vec!["bookworm".to_owned(), "bookworm-updates".to_owned()]
            )]
        );
    }

    #[test]
    fn the_json_string_field() {
        let body = r#"{"api_key_id": "api_key_1", "key":"YV_-=", "name":"c"}"#;
        assert_eq!(json_string(body, "key").as_deref(), Some("YV_-="));
        assert_eq!(
            json_string(body, "api_key_id").as_deref(),
            Some("api_key_1")
        );
        assert_eq!(json_string(body, "missing"), None);
    }

    #[test]
    fn the_files_name_images_this_task_can_build() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bases = bases_named(&root).expect("buildable bases");
        assert!(bases.contains(&Base::Debian));
        assert!(bases.iter().any(|b| matches!(b, Base::Rust { .. })));
        assert!(bases.iter().any(|b| matches!(b, Base::Postgres { .. })));
    }

    #[test]
    fn fingerprints_differ_with_their_parts() {
        assert_eq!(fingerprint(&[b"a", b"b"]), fingerprint(&[b"a", b"b"]));
        assert_ne!(fingerprint(&[b"ab"]), fingerprint(&[b"a", b"b"]));
    }

    #[test]
    fn mount_points_are_read_with_their_escapes_decoded() {
        assert_eq!(unescape_mount_point("/tmp/a\\040b/proc"), "/tmp/a b/proc");
        assert_eq!(unescape_mount_point("/plain/dev"), "/plain/dev");
        assert_eq!(unescape_mount_point("/odd\\9"), "/odd\\9");
        assert_eq!(sql_safe("api_key_1f-2"), Ok("api_key_1f-2"));
        assert!(sql_safe("api_key_x' OR '1'='1").is_err());
    }
}
