//! A network that stops carrying packets between keygate and PostgreSQL, made with real
//! packet drops (nftables rules on the loopback ports of a relay in front of the
//! server). keygate's side: a storage call fails in bounded time instead of holding its
//! connection for the kernel's fifteen minutes of retransmissions, and the pool recovers
//! once the network does. The server's side: a transaction cut off mid-way is ended,
//! and its locks released, instead of being kept for hours.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::Command;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};
use diesel::{Connection, PgConnection};
use keygate_core::{Actor, ApiKey, KeySpec, KeyStore, PlainKey};
use keygate_storage::test_support::{TestDatabase, skip_unless_ci};
use keygate_storage::{Database, DatabaseUrl, PoolOptions};

/// The pool timeout of these tests.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How long a call into a partition may take before the test calls it hung: far above
/// the timeouts under test, far below the kernel's own give-up.
const HUNG: Duration = Duration::from_secs(60);

/// The prefix of the nftables tables these tests make.
const TABLES: &str = "keygate_partition_";

/// A TCP relay from a loopback port to a PostgreSQL server.
struct Relay {
    /// The port clients connect to.
    port: u16,
    /// The local port of each of the relay's own connections to the server, in order.
    upstream_ports: Arc<Mutex<Vec<u16>>>,
}

impl Relay {
    /// A relay to `upstream`, one pair of copying threads per connection.
    fn to(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a relay port");
        let port = listener.local_addr().expect("its address").port();
        let upstream_ports = Arc::new(Mutex::new(Vec::new()));
        let ports = upstream_ports.clone();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                if let Ok(local) = server.local_addr() {
                    ports.lock().expect("the ports").push(local.port());
                }
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
        Relay {
            port,
            upstream_ports,
        }
    }

    /// The local port of the relay's latest connection to the server.
    fn latest_upstream_port(&self) -> u16 {
        *self
            .upstream_ports
            .lock()
            .expect("the ports")
            .last()
            .expect("a connection through the relay")
    }
}

/// `url` with its host and port replaced by those of a new relay to the server it named,
/// and the relay.
fn through_relay(url: &str) -> (String, Relay) {
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
    let relay = Relay::to(upstream);
    let user = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    (
        format!("{scheme}://{user}127.0.0.1:{}{tail}", relay.port),
        relay,
    )
}

/// Packets on the loopback interface to or from a port dropped, until dropped itself.
struct Partition {
    table: String,
}

/// Runs `nft` with `arguments`, or says why it could not.
fn nft(arguments: &[&str]) -> Result<String, String> {
    match Command::new("nft").args(arguments).output() {
        Ok(output) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        }
        Ok(output) => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

impl Partition {
    /// Drops every loopback packet to or from `port`; `None` (after failing under CI)
    /// where nft cannot be run.
    fn of(port: u16) -> Option<Self> {
        // Tables left by a run that was killed would drop whatever later gets their port:
        // those of processes that are gone are deleted.
        if let Ok(tables) = nft(&["list", "tables"]) {
            for stale in tables
                .lines()
                .filter_map(|line| line.strip_prefix("table inet "))
                .filter(|name| {
                    name.strip_prefix(TABLES)
                        .and_then(|rest| rest.split('_').next())
                        .is_some_and(|pid| !std::path::Path::new("/proc").join(pid).exists())
                })
            {
                let _ = nft(&["delete", "table", "inet", stale]);
            }
        }
        let table = format!("{TABLES}{}_{port}", std::process::id());
        let rules = format!(
            "table inet {table} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
             oifname \"lo\" tcp dport {port} drop\n    oifname \"lo\" tcp sport {port} drop\n  }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{table}.nft"));
        std::fs::write(&file, rules).expect("the rules written");
        let applied = nft(&["-f", &file.to_string_lossy()]);
        let _ = std::fs::remove_file(&file);
        match applied {
            Ok(_) => Some(Partition { table }),
            Err(why) => {
                skip_unless_ci(
                    &format!("nft could not drop packets ({why})"),
                    "apt-get install nftables, and run as root",
                );
                None
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", &self.table]);
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

/// Polls `check` every 50 ms until it holds; whether it did within [`HUNG`].
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + HUNG;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// keygate's store on `db`, through a new relay, with one connection.
fn relayed_store(db: &TestDatabase) -> (Arc<Database>, Relay) {
    let (relayed, relay) = through_relay(&db.url_string);
    let options = PoolOptions {
        max_size: 1,
        connection_timeout: TIMEOUT,
        min_idle: 1,
    };
    let store = Database::connect(&DatabaseUrl::parse(&relayed).expect("a URL"), &options)
        .expect("connected through the relay");
    (Arc::new(store), relay)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Sessions whose client is on local port `port` and that are in state `state` (`%`
/// for any), as the server sees them.
fn sessions(conn: &mut PgConnection, port: u16, state: &str) -> i64 {
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE client_port = $1 AND state LIKE $2",
    )
    .bind::<Integer, _>(i32::from(port))
    .bind::<diesel::sql_types::Text, _>(state)
    .get_result::<Count>(conn)
    .expect("pg_stat_activity read")
    .n
}

#[test]
fn a_storage_call_into_a_partition_fails_in_bounded_time_and_the_pool_recovers() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let (store, relay) = relayed_store(&db);
    store
        .list_by_owner("alice")
        .expect("read through the relay");

    // A request sent into the partition is never acknowledged.
    let Some(partition) = Partition::of(relay.port) else {
        return;
    };
    let reader = store.clone();
    let started = Instant::now();
    let outcome = within_bound(move || reader.list_by_owner("alice"))
        .unwrap_or_else(|| panic!("a read into a partition still waits after {HUNG:?}"));
    assert!(outcome.is_err(), "a read into a partition cannot succeed");
    eprintln!(
        "a read into a partition failed after {:?}",
        started.elapsed()
    );
    drop(partition);
    let reader = store.clone();
    let recovered = within_bound(move || eventually(|| reader.list_by_owner("alice").is_ok()));
    assert_eq!(
        recovered,
        Some(true),
        "the pool reconnects once the network is back"
    );

    // A request the server took, whose answer the partition then keeps away: the
    // server waits on a lock held elsewhere.
    let mut holder = PgConnection::establish(&db.url_string).expect("a direct connection");
    holder
        .batch_execute("BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE;")
        .expect("the table locked");
    let reader = store.clone();
    let (done, result) = mpsc::channel();
    let asked = Instant::now();
    thread::spawn(move || {
        let _ = done.send(reader.list_by_owner("alice"));
    });
    let mut watcher = PgConnection::establish(&db.url_string).expect("a direct connection");
    let upstream = relay.latest_upstream_port();
    assert!(
        eventually(|| sessions(&mut watcher, upstream, "active") == 1),
        "the read reaches the server and waits there"
    );
    let Some(partition) = Partition::of(relay.port) else {
        return;
    };
    let outcome = result
        .recv_timeout(HUNG)
        .unwrap_or_else(|_| panic!("a read whose answer is lost still waits after {HUNG:?}"));
    let waited = asked.elapsed();
    let error = outcome.expect_err("a read whose answer is lost cannot succeed");
    // The server's own answer, a lock timeout, must not be what ended it.
    assert!(
        !error.to_string().contains("lock timeout"),
        "ended by the lost answer's timeout, not by the server: {error}"
    );
    eprintln!("a read whose answer was lost failed {waited:?} after it was sent: {error}");
    drop(partition);
    holder.batch_execute("ROLLBACK").expect("the lock released");
}

#[test]
fn the_server_ends_a_transaction_cut_off_mid_way_and_releases_its_locks() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let (store, relay) = relayed_store(&db);
    let now = Utc::now();
    let key = |name: &str| -> ApiKey {
        let spec = KeySpec::new(
            name,
            "owner_1",
            &["ledgers:read"],
            now + chrono::Duration::days(30),
            now,
        )
        .expect("a valid spec");
        ApiKey::issue(spec, &PlainKey::generate().expect("randomness"), now)
    };
    let (first, second) = {
        let (a, b) = (key("a"), key("b"));
        if a.id.as_str() < b.id.as_str() {
            (a, b)
        } else {
            (b, a)
        }
    };
    for key in [&first, &second] {
        store.insert(key, &Actor::Master).expect("insert");
    }
    // Another session holds the second row: keygate's batch locks the first, then waits.
    let mut holder = PgConnection::establish(&db.url_string).expect("a direct connection");
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM api_keys WHERE api_key_id = '{}' FOR UPDATE;",
            second.id.as_str()
        ))
        .expect("the second row locked");
    let writer = store.clone();
    let uses = vec![(first.id.clone(), now), (second.id.clone(), now)];
    thread::spawn(move || {
        // Cut off, this call may wait long for an answer: it is not joined.
        let _ = writer.record_last_used(&uses);
    });
    let mut watcher = PgConnection::establish(&db.url_string).expect("a direct connection");
    let upstream = relay.latest_upstream_port();
    assert!(
        eventually(|| sessions(&mut watcher, upstream, "active") == 1),
        "the batch reaches the server and waits for the second row"
    );
    // The server now hears nothing more from keygate: not the rollback, not a reset.
    let Some(partition) = Partition::of(upstream) else {
        return;
    };
    holder
        .batch_execute("ROLLBACK")
        .expect("the second row released");
    // The batch's statement ends at its lock timeout; its transaction, holding the first
    // row, must not outlive the server's idle-in-transaction timeout.
    let started = Instant::now();
    let ended = eventually(|| sessions(&mut watcher, upstream, "%") == 0);
    assert!(
        ended,
        "the cut-off session still holds its transaction after {HUNG:?}"
    );
    eprintln!(
        "the cut-off session ended {:?} after the partition",
        started.elapsed()
    );
    watcher
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '1s'; \
             SELECT 1 FROM api_keys WHERE api_key_id = '{}' FOR UPDATE; ROLLBACK;",
            first.id.as_str()
        ))
        .expect("the first row is free again");
    drop(partition);
}
