//! From request headers to a caller: any bytes in X-Blnk-Key or Authorization give a
//! principal or a 401/429, never a panic, and only the configured master key or a stored
//! key is ever let in.
#![no_main]

use std::sync::LazyLock;

use actix_web::http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use actix_web::rt::{System, SystemRunner};
use keygate_core::Principal;
use keygate_server::guard::{GuardError, presented_key};
use keygate_server::{AppState, Application, Settings};
use keygate_storage::test_support::TestDatabase;
use libfuzzer_sys::fuzz_target;

const MASTER: &str = "fuzz-master-key-0123456789";

struct World {
    state: actix_web::web::Data<AppState>,
    _db: TestDatabase,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let db = TestDatabase::sqlite();
    let mut settings = Settings::defaults();
    settings.database.url = db.url.clone();
    settings.server.secret_key = Some(MASTER.into());
    settings.throttle.failures_per_minute = 0;
    let application = System::new()
        .block_on(Application::build(settings))
        .expect("the service builds");
    World {
        state: application.state().clone(),
        _db: db,
    }
});

thread_local! {
    static SYSTEM: SystemRunner = System::new();
}

fuzz_target!(|data: &[u8]| {
    let (which, bytes) = data.split_first().unwrap_or((&0, &[]));
    let mut headers = HeaderMap::new();
    let Ok(value) = HeaderValue::from_bytes(bytes) else {
        return;
    };
    let name = match which % 3 {
        0 => HeaderName::from_static("x-blnk-key"),
        1 => AUTHORIZATION,
        _ => HeaderName::from_static("x-other"),
    };
    headers.insert(name, value);
    let outcome = match presented_key(&headers) {
        Err(error) => Err(error),
        Ok(presented) => SYSTEM.with(|system| system.block_on(WORLD.state.guard().authenticate_client(None, presented))),
    };
    match outcome {
        Ok(Principal::Master) => {
            let presented = presented_key(&headers).ok().flatten();
            assert_eq!(presented, Some(MASTER), "only the master key is the master");
        }
        Ok(Principal::Key(_)) => panic!("no key is stored, yet one was let in"),
        Err(GuardError::MissingKey | GuardError::InvalidKey) => {}
        Err(other) => panic!("unexpected refusal: {other}"),
    }
});
