//! A tiny ledger API of its own, guarded by keygate scopes in-process.
//!
//! ```sh
//! cargo run -p keygate-guard --example ledger
//! # in another shell: a key for it, in the same database
//! KEYGATE_DATABASE__URL=sqlite://ledger-example.db cargo run -- keys create \
//!   --owner demo --name reader --scope ledgers:read --expires-in 1d
//! curl -H "X-Blnk-Key: <the key>" http://127.0.0.1:8080/ledgers          # 200
//! curl -X POST -H "X-Blnk-Key: <the key>" http://127.0.0.1:8080/ledgers  # 403
//! ```
//!
//! `GET` needs `ledgers:read`, `POST` `ledgers:write`, `DELETE` `ledgers:delete`; a
//! revoked key stops working within the change-feed period, wherever it was revoked.

use std::sync::{Arc, Mutex, PoisonError};

use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, HttpServer, web};
use keygate_core::Principal;
use keygate_guard::{Caller, Guard, GuardSettings, Unobserved, require_key};
use keygate_storage::{Database, DatabaseUrl, PoolOptions};
use serde_json::json;

/// The ledgers, by name, and who created each.
type Ledgers = Mutex<Vec<(String, String)>>;

fn who(principal: &Principal) -> String {
    match principal {
        Principal::Master => "master".to_owned(),
        Principal::Key(key) => key.id.to_string(),
    }
}

async fn list(ledgers: web::Data<Ledgers>) -> HttpResponse {
    let ledgers = ledgers.lock().unwrap_or_else(PoisonError::into_inner);
    let names: Vec<&str> = ledgers.iter().map(|(name, _)| name.as_str()).collect();
    HttpResponse::Ok().json(json!({ "ledgers": names }))
}

async fn create(Caller(caller): Caller, ledgers: web::Data<Ledgers>) -> HttpResponse {
    let mut ledgers = ledgers.lock().unwrap_or_else(PoisonError::into_inner);
    let name = format!("ldg_{}", ledgers.len() + 1);
    ledgers.push((name.clone(), who(&caller)));
    HttpResponse::Created().json(json!({ "ledger": name, "created_by": who(&caller) }))
}

async fn delete(id: web::Path<String>, ledgers: web::Data<Ledgers>) -> HttpResponse {
    let mut ledgers = ledgers.lock().unwrap_or_else(PoisonError::into_inner);
    ledgers.retain(|(name, _)| *name != *id);
    HttpResponse::NoContent().finish()
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let url = DatabaseUrl::parse("sqlite://ledger-example.db").map_err(std::io::Error::other)?;
    let store = Database::connect(&url, &PoolOptions::default()).map_err(std::io::Error::other)?;
    let guard = web::Data::new(Guard::new(
        Arc::new(store),
        &GuardSettings::default(),
        Arc::new(Unobserved),
    ));
    let _background = Guard::start(&guard).await;
    let ledgers = web::Data::new(Ledgers::default());
    println!("ledger example listening on http://127.0.0.1:8080");
    let app_guard = guard.clone();
    HttpServer::new(move || {
        App::new()
            .app_data(app_guard.clone())
            .app_data(ledgers.clone())
            .service(
                web::scope("/ledgers")
                    .wrap(from_fn(require_key))
                    .route("", web::get().to(list))
                    .route("", web::post().to(create))
                    .route("/{id}", web::delete().to(delete)),
            )
    })
    .bind(("127.0.0.1", 8080))?
    .run()
    .await?;
    // The last key usage, written before the process ends.
    guard.final_flush().await;
    Ok(())
}
