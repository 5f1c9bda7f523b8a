//! A network that stops carrying packets between keygate and PostgreSQL, made with real
//! packet drops (an nftables rule on the loopback port of a relay in front of the
//! server): a storage call fails in bounded time instead of holding its connection for
//! the kernel's fifteen minutes of retransmissions, and the pool recovers once the
//! network does.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use keygate_core::KeyStore;
use keygate_storage::test_support::{TestDatabase, skip_unless_ci};
use keygate_storage::{Database, DatabaseUrl, PoolOptions};

/// How long a call into a partition may take before the test calls it hung: far above
/// the timeouts under test (2 s), far below the kernel's own give-up.
const HUNG: Duration = Duration::from_secs(60);

/// A TCP relay from a loopback port to `upstream`, one pair of copying threads per
/// connection.
fn relay(upstream: SocketAddr) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a relay port");
    let port = listener.local_addr().expect("its address").port();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                thread::spawn(move || {
                    let _ = io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            };
            if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                pipe(c, server);
                pipe(s, client);
            }
        }
    });
    port
}

/// `url` with its host and port replaced by those of a new relay to the server it named,
/// and the relay's port.
fn through_relay(url: &str) -> (String, u16) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (user, host) = authority
        .rsplit_once('@')
        .map_or(("", authority), |(user, host)| (user, host));
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    let upstream = host
        .to_socket_addrs()
        .expect("a resolvable host")
        .next()
        .expect("an address");
    let port = relay(upstream);
    let user = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    (format!("{scheme}://{user}127.0.0.1:{port}{tail}"), port)
}

/// Packets to and from a loopback port dropped, until dropped itself.
struct Partition {
    table: String,
}

impl Partition {
    /// Drops every packet to or from `port`; `None` (after failing under CI) where nft
    /// cannot be run.
    fn of(port: u16) -> Option<Self> {
        let table = format!("keygate_partition_{port}");
        let chain = format!(
            "add chain inet {table} out {{ type filter hook output priority 0 ; policy accept ; }}"
        );
        let rules = [
            format!("add table inet {table}"),
            chain,
            format!("add rule inet {table} out tcp dport {port} drop"),
            format!("add rule inet {table} out tcp sport {port} drop"),
        ];
        let partition = Partition { table };
        for rule in &rules {
            let ran = Command::new("nft").args(rule.split(' ')).output();
            match ran {
                Ok(output) if output.status.success() => {}
                other => {
                    let why = match other {
                        Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
                        Err(error) => error.to_string(),
                    };
                    skip_unless_ci(
                        &format!("nft could not drop packets ({})", why.trim()),
                        "apt-get install nftables, and run as root",
                    );
                    return None;
                }
            }
        }
        Some(partition)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// What `call` returned on its own thread, or `None` if it had not within [`HUNG`].
fn within_bound<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(call());
    });
    result.recv_timeout(HUNG).ok()
}

#[test]
fn a_storage_call_into_a_partition_fails_in_bounded_time_and_the_pool_recovers() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let (relayed, port) = through_relay(&db.url_string);
    let options = PoolOptions {
        max_size: 1,
        connection_timeout: Duration::from_secs(2),
        min_idle: 1,
    };
    let store = std::sync::Arc::new(
        Database::connect(&DatabaseUrl::parse(&relayed).expect("a URL"), &options)
            .expect("connected through the relay"),
    );
    store
        .list_by_owner("alice")
        .expect("read through the relay");

    // A request sent into the partition is never acknowledged.
    let Some(partition) = Partition::of(port) else {
        return;
    };
    let reader = store.clone();
    let started = Instant::now();
    let outcome = within_bound(move || reader.list_by_owner("alice"));
    let waited = started.elapsed();
    let outcome =
        outcome.unwrap_or_else(|| panic!("a read into a partition still waits after {HUNG:?}"));
    assert!(outcome.is_err(), "a read into a partition cannot succeed");
    eprintln!("a read into a partition failed after {waited:?}");
    drop(partition);
    let recovered = within_bound({
        let reader = store.clone();
        move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match reader.list_by_owner("alice") {
                    Ok(_) => return true,
                    Err(_) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(200))
                    }
                    Err(_) => return false,
                }
            }
        }
    });
    assert_eq!(
        recovered,
        Some(true),
        "the pool reconnects once the network is back"
    );

    // A request the server took, whose answer the partition then keeps away: the
    // server waits on a lock held elsewhere, answers after its lock timeout, and that
    // answer is dropped.
    let mut holder = PgConnection::establish(&db.url_string).expect("a direct connection");
    holder
        .batch_execute("BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE;")
        .expect("the table locked");
    let reader = store.clone();
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(reader.list_by_owner("alice"));
    });
    // Long enough for the request to reach the server and wait on the lock.
    thread::sleep(Duration::from_millis(500));
    let Some(partition) = Partition::of(port) else {
        return;
    };
    let started = Instant::now();
    let outcome = result
        .recv_timeout(HUNG)
        .unwrap_or_else(|_| panic!("a read whose answer is lost still waits after {HUNG:?}"));
    assert!(
        outcome.is_err(),
        "a read whose answer is lost cannot succeed"
    );
    eprintln!(
        "a read whose answer was lost failed {:?} after the partition",
        started.elapsed()
    );
    drop(partition);
    holder.batch_execute("ROLLBACK").expect("the lock released");
}
