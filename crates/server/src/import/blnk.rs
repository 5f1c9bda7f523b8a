//! `keygate import blnk`: a Blnk deployment's keys, moved as they are. Blnk kept only a
//! bcrypt hash of each key and its first 16 characters, so each key comes over under a
//! placeholder digest with that hash beside it ([`LegacyHash`]); the guard checks it
//! with bcrypt the first time a client presents the key, and from then on finds it by
//! its blake3 digest like any other. Ids, owners, scopes, expiry, revocation and times
//! are kept; clients keep their keys and nothing is reissued.

use chrono::{DateTime, SubsecRound, Utc};
use keygate_core::{ApiKey, KeySpec, KeyStore, LegacyHash, PlainKey};
use keygate_storage::blnk::{BlnkKey, BlnkSource};

use super::{BATCH, Batch, Summary, imported_id};

/// Reads every key of `source` and stores it in `store` as of `now`, in batches of
/// [`BATCH`], one transaction each. Each refused row is passed to `refuse` with its id
/// and the reason; `progress` hears the number of rows read after each batch. Keys
/// already stored (by id) are skipped, so running it again changes nothing.
pub fn import(
    source: &mut BlnkSource,
    store: &dyn KeyStore,
    now: DateTime<Utc>,
    dry_run: bool,
    mut refuse: impl FnMut(&str, &str),
    mut progress: impl FnMut(usize),
) -> Result<Summary, String> {
    let mut summary = Summary {
        dry_run,
        ..Summary::default()
    };
    let mut batch = Batch::default();
    let mut read = 0;
    let mut after: Option<String> = None;
    let page_size = i64::try_from(BATCH).unwrap_or(i64::MAX);
    loop {
        let rows = source
            .page(after.as_deref(), page_size)
            .map_err(|e| stopped(read, &summary, &e.to_string()))?;
        let Some(last) = rows.last() else { break };
        after = Some(last.api_key_id.clone());
        for row in &rows {
            read += 1;
            match key_of(row, now) {
                Ok((key, legacy)) => batch.push_legacy(key, legacy),
                Err(reason) => {
                    summary.refused += 1;
                    refuse(&row.api_key_id, &reason);
                }
            }
        }
        batch
            .store(store, dry_run, &mut summary)
            .map_err(|e| stopped(read, &summary, &e))?;
        progress(read);
    }
    Ok(summary)
}

fn stopped(read: usize, summary: &Summary, why: &str) -> String {
    format!(
        "stopped after {read} key(s) read: {why}; {} key(s) were stored before it ({} duplicates, {} refused)",
        summary.imported, summary.duplicates, summary.refused
    )
}

/// The key a Blnk row describes, under a placeholder digest, and its bcrypt hash; or
/// why the row is refused. Name, owner and scopes are validated as `POST /api-keys`
/// validates them; the expiry only against the creation, since an expired or revoked key
/// comes over as it was (and stays refused).
fn key_of(row: &BlnkKey, now: DateTime<Utc>) -> Result<(ApiKey, LegacyHash), String> {
    let id = imported_id(&row.api_key_id)?;
    let prefix = row.key_prefix.as_deref().unwrap_or_default();
    let legacy = LegacyHash::new(id.clone(), prefix, &row.key).map_err(|e| e.to_string())?;
    let created_at = row.created_at.trunc_subsecs(6);
    if created_at > now {
        return Err("created_at: must not be in the future".into());
    }
    if row.expires_at <= created_at {
        return Err("expires_at: must be after created_at".into());
    }
    let spec = KeySpec::new(
        &row.name,
        &row.owner_id,
        &row.scopes,
        row.expires_at,
        created_at,
    )
    .map_err(|e| e.to_string())?;
    let placeholder =
        LegacyHash::placeholder().map_err(|e| format!("no randomness for a placeholder: {e}"))?;
    // Issued under a throwaway secret, then given Blnk's id, times and status and the
    // placeholder digest: no text is known to hash to it.
    let throwaway = PlainKey::generate().map_err(|e| format!("no randomness: {e}"))?;
    let mut key = ApiKey::issue(spec, &throwaway, created_at).renamed(id);
    key.hash = placeholder;
    key.hint = legacy.hint();
    key.last_used_at = row
        .last_used_at
        .filter(|at| *at <= now)
        .map(|at| at.trunc_subsecs(6));
    key.revoked_at = row
        .is_revoked
        .then(|| row.revoked_at.unwrap_or(now).trunc_subsecs(6));
    Ok((key, legacy))
}
