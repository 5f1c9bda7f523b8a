//! `keygate keys import`: keys brought from elsewhere, one JSON object a line, with
//! their secrets kept, so clients holding them need nothing new. Each line is validated
//! as `POST /api-keys` validates a body; a bad line is reported with its number and
//! stores nothing; good lines are stored in batches, one transaction each.

use std::collections::HashSet;
use std::io::BufRead;

use chrono::{DateTime, Utc};
use keygate_core::{Actor, ApiKey, ApiKeyId, KeyStore, PlainKey};
use serde::Deserialize;
use serde_json::Value;

use crate::keys::CreateKey;
use crate::keys::views::parse_timestamp;

/// Keys stored per transaction.
pub const BATCH: usize = 50_000;

/// One line of an import file: the body of `POST /api-keys`, the secret itself, and
/// optionally the key's id and creation time where it came from.
#[derive(Debug, Deserialize)]
struct Line {
    key: String,
    #[serde(default)]
    api_key_id: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(flatten)]
    body: CreateKey,
}

/// What an import did (or, dry, would do).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Keys stored.
    pub imported: usize,
    /// Good lines whose key (its id or its secret) was already stored, or repeated.
    pub duplicates: usize,
    /// Lines refused, each reported.
    pub refused: usize,
    /// Nothing was stored.
    pub dry_run: bool,
}

/// Reads `input` to its end, storing its keys in `store` as of `now`. Each refused line
/// is passed to `refuse` with its number (from 1) and the reason; `progress` hears the
/// number of lines read after each batch.
pub fn import(
    input: impl BufRead,
    store: &dyn KeyStore,
    now: DateTime<Utc>,
    max_days: u32,
    dry_run: bool,
    mut refuse: impl FnMut(usize, &str),
    mut progress: impl FnMut(usize),
) -> Result<Summary, String> {
    let mut summary = Summary {
        dry_run,
        ..Summary::default()
    };
    let mut batch = Batch::default();
    let mut read = 0;
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| format!("line {number}: cannot be read: {e}"))?;
        read = number;
        if line.trim().is_empty() {
            continue;
        }
        match key_of(&line, now, max_days) {
            Ok((key, length)) => batch.push(key, length),
            Err(reason) => {
                summary.refused += 1;
                refuse(number, &reason);
            }
        }
        if batch.keys.len() >= BATCH {
            batch.store(store, dry_run, &mut summary)?;
            progress(read);
        }
    }
    batch.store(store, dry_run, &mut summary)?;
    progress(read);
    Ok(summary)
}

/// Keys waiting to be stored, and the lengths of secrets not of keygate's own shape.
#[derive(Default)]
struct Batch {
    keys: Vec<ApiKey>,
    lengths: HashSet<u16>,
}

impl Batch {
    fn push(&mut self, key: ApiKey, length: Option<u16>) {
        self.keys.extend([key]);
        self.lengths.extend(length);
    }

    fn store(
        &mut self,
        store: &dyn KeyStore,
        dry_run: bool,
        summary: &mut Summary,
    ) -> Result<(), String> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let lengths: Vec<u16> = self.lengths.drain().collect();
        let stored = store
            .import(&self.keys, &lengths, &Actor::Import, dry_run)
            .map_err(|e| format!("database: {e}"))?;
        summary.imported += stored;
        summary.duplicates += self.keys.len() - stored;
        self.keys.clear();
        Ok(())
    }
}

/// The key a line describes, and its secret's length when that is not keygate's own
/// shape; or why the line is refused.
fn key_of(line: &str, now: DateTime<Utc>, max_days: u32) -> Result<(ApiKey, Option<u16>), String> {
    let line: Line = serde_json::from_str(line).map_err(|e| {
        // serde's message names the field at fault, and never the text itself (which
        // may hold a secret); the position is always line 1 and is left out.
        let text = e.to_string();
        let reason = text
            .split_once(" at line ")
            .map_or(text.as_str(), |(r, _)| r);
        if e.is_data() {
            reason.to_owned()
        } else {
            format!("not a JSON object: {reason}")
        }
    })?;
    if !PlainKey::could_be_imported(&line.key) {
        return Err("key: must be 16 to 512 characters of printable ASCII, without leading or trailing spaces".into());
    }
    let spec = line
        .body
        .validate(now, max_days)
        .map_err(|e| e.to_string())?;
    let created_at = match &line.created_at {
        None => now,
        Some(text) => {
            let at = parse_timestamp("created_at", text).map_err(|e| e.to_string())?;
            if at > now {
                return Err("created_at: must not be in the future".into());
            }
            at
        }
    };
    let plain = PlainKey::from_presented(&line.key);
    let mut key = ApiKey::issue(spec, &plain, created_at);
    if let Some(id) = &line.api_key_id {
        key = key.renamed(imported_id(id)?);
    }
    let length = (!PlainKey::could_be_issued(&line.key))
        .then(|| u16::try_from(line.key.len()).ok())
        .flatten();
    Ok((key, length))
}

/// An id kept from elsewhere: `api_key_` and then letters, digits, `-` or `_`.
fn imported_id(id: &str) -> Result<ApiKeyId, String> {
    let rest = id.strip_prefix("api_key_").unwrap_or_default();
    let good = (1..=200).contains(&rest.len())
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if good {
        Ok(ApiKeyId::new(id))
    } else {
        Err("api_key_id: must be api_key_ followed by 1 to 200 letters, digits, - or _".into())
    }
}

/// The JSON of a summary, as the command prints it.
pub fn summary_json(summary: &Summary) -> Value {
    serde_json::to_value(summary).unwrap_or(Value::Null)
}
