//! The `keygate` binary as a process, and a bare HTTP/1.1 client to talk to it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `keygate`, stopped when dropped.
pub struct Running {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Running {
    /// Starts the binary in `dir` with only `env` (and PATH) in its environment, and
    /// waits until it answers `/health`.
    pub fn start(dir: &Path, port: u16, env: &[(&str, &str)]) -> Self {
        let stderr = File::create(dir.join("stderr.log")).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
        command
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("the binary starts");
        let mut running = Running {
            child,
            port,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = running.child.try_wait().expect("process status") {
                panic!("keygate exited with {status}: {}", log(dir));
            }
            // Our own process must have bound the port: another test's server may answer
            // on a port that was free a moment ago.
            let listening = log(dir).contains("keygate listening");
            if listening && matches!(http(port, "GET", "/health", None, None), Some((200, _))) {
                return running;
            }
            assert!(
                Instant::now() < deadline,
                "keygate did not answer on {port}: {}",
                log(dir)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        http(self.port, "GET", path, key, None)
            .unwrap_or_else(|| panic!("keygate did not answer GET {path}: {}", log(&self.dir)))
    }

    pub fn post(&self, path: &str, key: &str, body: &str) -> (u16, String) {
        http(self.port, "POST", path, Some(key), Some(body)).expect("keygate answers")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself, for up to 10 s.
    pub fn wait(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("process status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "keygate did not exit within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process outright (SIGKILL), as a crash would, and waits for it.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends one request.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        http(self.port, method, path, key, body)
            .unwrap_or_else(|| panic!("keygate did not answer {method} {path}: {}", log(&self.dir)))
    }

    /// Stops the process with SIGTERM and waits for it.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("process status") {
                return status;
            }
            assert!(Instant::now() < deadline, "keygate did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

/// One HTTP/1.1 request; `None` when nothing listens.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let key_header = key.map(|key| ("X-Blnk-Key", key));
    http_from(None, port, method, path, key_header.as_slice(), body)
}

/// One HTTP/1.1 request with extra `headers`, sent from the loopback address `source`
/// (any of 127.0.0.0/8, so that a test can play several clients), or from the default
/// address; `None` when nothing listens.
pub fn http_from(
    source: Option<std::net::Ipv4Addr>,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String)> {
    exchange(source, port, method, path, headers, body).map(|answer| (answer.status, answer.body))
}

/// An HTTP answer: its status, its headers (names lower-cased) and its body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(have, _)| have == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body's `error_detail.code`.
    pub fn code(&self) -> String {
        let json: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("a JSON body: {:?}", self.body));
        json["error_detail"]["code"]
            .as_str()
            .unwrap_or("<no code>")
            .to_owned()
    }
}

/// [`http_from`], with the answer's headers.
pub fn exchange(
    source: Option<std::net::Ipv4Addr>,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<Answer> {
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream: TcpStream = match source {
        None => TcpStream::connect(target).ok()?,
        Some(source) => {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            socket
                .bind(&std::net::SocketAddr::from((source, 0)).into())
                .ok()?;
            socket.connect(&target.into()).ok()?;
            socket.into()
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let body = body.unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A string field of a JSON object in a response body.
pub fn field(body: &str, name: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("a JSON body: {body}"));
    json[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .to_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}
