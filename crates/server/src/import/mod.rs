//! `keygate keys import`: keys brought from elsewhere, one JSON object a line, with
//! their secrets kept, so clients holding them need nothing new. Each line is validated
//! as `POST /api-keys` validates a body; a bad line is reported with its number and
//! stores nothing; good lines are stored in batches, one transaction each.

use std::collections::HashSet;
use std::io::BufRead;

use chrono::{DateTime, SubsecRound, Utc};
use keygate_core::{Actor, ApiKey, ApiKeyId, ImportBatch, KeyHash, KeyStore, LegacyHash, PlainKey};
use serde::Deserialize;
use serde_json::Value;

use crate::keys::CreateKey;
use crate::keys::views::parse_timestamp;

pub mod blnk;

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

/// How an import judges and stores lines.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The time lines are judged at (expiry in the future, creation not).
    pub now: DateTime<Utc>,
    /// The furthest an expiry may be, in days.
    pub max_days: u32,
    /// Count, store nothing.
    pub dry_run: bool,
    /// Digests no imported secret may have: the master key's, the metrics token's.
    pub reserved: &'a [KeyHash],
}

/// Reads `input` to its end, storing its keys in `store` as of `now`; a secret whose
/// digest is in `reserved` (the master key's, the metrics token's) is refused. Each refused line
/// is passed to `refuse` with its number (from 1) and the reason; `progress` hears the
/// number of lines read after each batch.
pub fn import(
    input: impl BufRead,
    store: &dyn KeyStore,
    rules: &Rules<'_>,
    mut refuse: impl FnMut(usize, &str),
    mut progress: impl FnMut(usize),
) -> Result<Summary, String> {
    let Rules {
        now,
        max_days,
        dry_run,
        reserved,
    } = *rules;
    let mut summary = Summary {
        dry_run,
        ..Summary::default()
    };
    let mut batch = Batch::default();
    let mut read = 0;
    let mut input = input;
    let mut bytes = Vec::new();
    loop {
        let whole = match next_line(&mut input, &mut bytes) {
            Ok(Some(whole)) => whole,
            Ok(None) => break,
            Err(e) => return Err(stopped(read, &summary, &format!("cannot be read: {e}"))),
        };
        read += 1;
        let verdict = match std::str::from_utf8(&bytes) {
            _ if !whole => Err(format!("longer than {MAX_LINE} bytes")),
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => key_of(line, now, max_days).and_then(|(key, length)| {
                if reserved.contains(&key.hash) {
                    Err("key: is the master key or the metrics token".to_owned())
                } else {
                    Ok((key, length))
                }
            }),
            Err(_) => Err("not UTF-8 text".to_owned()),
        };
        match verdict {
            Ok((key, length)) => batch.push(key, length),
            Err(reason) => {
                summary.refused += 1;
                refuse(read, &reason);
            }
        }
        if batch.keys.len() >= BATCH {
            batch
                .store(store, dry_run, &mut summary)
                .map_err(|e| stopped(read, &summary, &e))?;
            progress(read);
        }
    }
    batch
        .store(store, dry_run, &mut summary)
        .map_err(|e| stopped(read, &summary, &e))?;
    progress(read);
    Ok(summary)
}

/// The longest line read: far more than any valid key needs (a 512-character secret,
/// 255-character name and owner, 64 scopes), and a bound on what one line can make the
/// import hold in memory.
pub const MAX_LINE: usize = 64 * 1024;

/// Reads the next line into `line`: `None` at the end, `Some(false)` for a line longer
/// than [`MAX_LINE`], whose rest is skipped unread into memory.
fn next_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    line.clear();
    let bound = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
    if std::io::Read::take(&mut *input, bound).read_until(b'\n', line)? == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE && line.last() != Some(&b'\n') {
        input.skip_until(b'\n')?;
        return Ok(Some(false));
    }
    Ok(Some(true))
}

/// Why an import stopped, and how far it got: earlier batches stay stored.
fn stopped(read: usize, summary: &Summary, why: &str) -> String {
    format!(
        "stopped at line {read}: {why}; {} key(s) were stored before it ({} duplicates, {} refused)",
        summary.imported, summary.duplicates, summary.refused
    )
}

/// Keys waiting to be stored, the lengths of secrets not of keygate's own shape, and
/// every id and secret met so far in the file.
#[derive(Default)]
struct Batch {
    keys: Vec<ApiKey>,
    lengths: HashSet<u16>,
    legacy: Vec<LegacyHash>,
    seen_ids: HashSet<ApiKeyId>,
    seen_hashes: HashSet<KeyHash>,
    repeated: usize,
}

impl Batch {
    /// Adds `key`, unless the file already had its id or its secret (the first stands).
    fn push(&mut self, key: ApiKey, length: Option<u16>) {
        if self.seen_ids.contains(&key.id) || self.seen_hashes.contains(&key.hash) {
            self.repeated += 1;
            return;
        }
        self.seen_ids.insert(key.id.clone());
        self.seen_hashes.insert(key.hash);
        self.keys.push(key);
        self.lengths.extend(length);
    }

    /// Adds `key`, stored under a placeholder digest, and `legacy`, its hash in the
    /// system it came from.
    fn push_legacy(&mut self, key: ApiKey, legacy: LegacyHash) {
        if self.seen_ids.contains(&key.id) {
            self.repeated += 1;
            return;
        }
        self.seen_ids.insert(key.id.clone());
        self.keys.push(key);
        self.legacy.push(legacy);
    }

    fn store(
        &mut self,
        store: &dyn KeyStore,
        dry_run: bool,
        summary: &mut Summary,
    ) -> Result<(), String> {
        summary.duplicates += std::mem::take(&mut self.repeated);
        if self.keys.is_empty() {
            return Ok(());
        }
        let lengths: Vec<u16> = self.lengths.drain().collect();
        let batch = ImportBatch {
            keys: &self.keys,
            lengths: &lengths,
            legacy: &self.legacy,
        };
        let stored = store
            .import(&batch, &Actor::Import, dry_run)
            .map_err(|e| format!("database: {e}"))?;
        summary.imported += stored;
        summary.duplicates += self.keys.len() - stored;
        self.keys.clear();
        self.legacy.clear();
        // Stored keys are found as duplicates by the store itself; only a dry run, which
        // stores nothing, must remember every key of the file.
        if !dry_run {
            self.seen_ids.clear();
            self.seen_hashes.clear();
        }
        Ok(())
    }
}

/// The fields a line may have: any other is refused rather than dropped, so that a
/// revocation, a misspelt limit or a field keygate does not import is never lost
/// silently.
const FIELDS: [&str; 9] = [
    "key",
    "api_key_id",
    "created_at",
    "name",
    "owner",
    "scopes",
    "expires_at",
    "ratelimit",
    "credits",
];

/// Checks a line's shape field by field, so that no reason quotes a value (which may
/// be the secret).
fn shape(line: &str) -> Result<serde_json::Map<String, Value>, String> {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
        return Err("not a JSON object".into());
    };
    if let Some(unknown) = object.keys().find(|name| !FIELDS.contains(&name.as_str())) {
        let unknown: String = unknown.chars().take(40).collect();
        return Err(format!(
            "{unknown:?}: not a field keygate imports (refused rather than dropped)"
        ));
    }
    for (field, value) in &object {
        let fits = match field.as_str() {
            "scopes" => value.is_array(),
            "ratelimit" | "credits" => value.is_object() || value.is_null(),
            "api_key_id" | "created_at" => value.is_string() || value.is_null(),
            _ => value.is_string(),
        };
        if !fits {
            return Err(format!("{field}: wrong type"));
        }
    }
    Ok(object)
}

/// The key a line describes, and its secret's length when that is not keygate's own
/// shape; or why the line is refused.
fn key_of(line: &str, now: DateTime<Utc>, max_days: u32) -> Result<(ApiKey, Option<u16>), String> {
    let object = shape(line)?;
    let line: Line = serde_json::from_value(Value::Object(object)).map_err(|e| {
        // Only a missing field is named; anything else would quote the value.
        let text = e.to_string();
        match text.strip_prefix("missing field ") {
            Some(rest) => format!(
                "{}: required",
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .trim_matches('`')
            ),
            None => "a field has the wrong type".to_owned(),
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
    // Opened now, so a refill falls due from now, not from a creation long past (which
    // would reset the imported balance at once); the creation time is kept as it was.
    let mut key = ApiKey::issue(spec, &plain, now);
    key.created_at = created_at.trunc_subsecs(6);
    if let Some(id) = &line.api_key_id {
        key = key.renamed(imported_id(id)?);
    }
    let length = (!PlainKey::could_be_issued(&line.key))
        .then(|| u16::try_from(line.key.len()).ok())
        .flatten();
    Ok((key, length))
}

/// An id kept from elsewhere: `api_key_` and then letters, digits, `-` or `_`.
pub(crate) fn imported_id(id: &str) -> Result<ApiKeyId, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_over_the_bound_is_skipped_without_being_held() {
        let text = format!("{}\n{{\"short\": 1}}\n", "x".repeat(MAX_LINE * 3));
        let mut input = std::io::BufReader::with_capacity(1024, text.as_bytes());
        let mut line = Vec::new();
        assert_eq!(next_line(&mut input, &mut line).ok(), Some(Some(false)));
        assert!(line.len() <= MAX_LINE + 1, "held {} bytes", line.len());
        assert_eq!(next_line(&mut input, &mut line).ok(), Some(Some(true)));
        assert_eq!(line, b"{\"short\": 1}\n");
        assert_eq!(next_line(&mut input, &mut line).ok(), Some(None));
    }
}
