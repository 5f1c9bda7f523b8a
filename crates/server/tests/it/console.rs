//! The web console in a real headless Chromium, driven through chromedriver (WebDriver)
//! against the real `keygate` binary on SQLite: every flow a person would use, checked
//! both on the page and against the API, with the browser's own log read for JavaScript
//! errors and Content-Security-Policy violations after each step.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::process::{Running, exchange, field, free_port, http};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const MASTER: &str = "console-master-key-0123456789abcdef";
// WebDriver's codes for these keys.
const TAB: &str = "\u{e004}";
const ENTER: &str = "\u{e007}";
const ESCAPE: &str = "\u{e00c}";

/// Where screenshots go: `KEYGATE_SCREENSHOTS` if set (the README's comes from
/// `KEYGATE_SCREENSHOTS=docs`), else beside the build's other outputs.
fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("KEYGATE_SCREENSHOTS")
        .map(|dir| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(dir)
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots"));
    std::fs::create_dir_all(&dir).expect("a folder for screenshots");
    dir
}

/// Chromium and chromedriver are installed, or (outside CI) the test says why it skips.
fn browser_installed() -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{CHROMIUM} or {CHROMEDRIVER} is missing: CI installs chromium and chromium-driver"
    );
    eprintln!("skipped: console test (apt-get install chromium chromium-driver)");
    false
}

/// chromedriver and one headless Chromium session, with a profile of its own.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("a profile folder");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "no Chromium session through chromedriver: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// The browser's log since the last call: every console message and page error.
    async fn log(&self) -> Vec<Value> {
        match self.client.issue_cmd(BrowserLog).await {
            Ok(Value::Array(entries)) => entries,
            other => panic!("chromedriver gave no browser log: {other:?}"),
        }
    }

    /// Fails on any error the page logged: a script error, an unhandled rejection, a
    /// resource the Content-Security-Policy refused.
    async fn assert_no_errors(&self, step: &str) {
        let errors: Vec<Value> = self
            .log()
            .await
            .into_iter()
            .filter(|entry| entry["level"] == "SEVERE")
            // The API's own refusals (401 for a wrong key, the master key's 400 without an
            // owner) are answers the page shows, not errors of the page.
            .filter(|entry| {
                let message = entry["message"].as_str().unwrap_or_default();
                !(message.contains("/api-keys") && message.contains("the server responded"))
            })
            .collect();
        assert!(
            errors.is_empty(),
            "{step}: the page logged errors: {errors:#?}"
        );
    }

    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|error| panic!("script {script:?} failed: {error}"))
    }

    /// Waits (up to 10 s) until `condition`, a JavaScript expression, is true.
    async fn until(&self, what: &str, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let script = format!("return Boolean({condition});");
        loop {
            if self.js(&script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let status = self.text_of("status").await;
                let error = self.text_of("error").await;
                panic!("{what}: not within 10 s (status {status:?}, error {error:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the element with `id`, or "" when there is none.
    async fn text_of(&self, id: &str) -> String {
        let script = format!(
            "const e = document.getElementById({}); return e ? e.textContent : '';",
            json!(id)
        );
        self.js(&script)
            .await
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The one displayed element `xpath` names.
    async fn visible(&self, xpath: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut shown = Vec::new();
            for element in self
                .client
                .find_all(Locator::XPath(xpath))
                .await
                .unwrap_or_default()
            {
                if element.is_displayed().await.unwrap_or(false) {
                    shown.push(element);
                }
            }
            if shown.len() == 1 {
                return shown.remove(0);
            }
            assert!(
                Instant::now() < deadline,
                "{} displayed elements for {xpath} (wanted one); error: {:?}",
                shown.len(),
                self.text_of("error").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the displayed button whose text is `text`, within `scope` (an XPath prefix,
    /// "" for the whole page).
    async fn press(&self, scope: &str, text: &str) {
        let button = self
            .visible(&format!(
                "{scope}//button[normalize-space()={}]",
                xpath_literal(text)
            ))
            .await;
        button
            .click()
            .await
            .unwrap_or_else(|error| panic!("click {text}: {error}"));
    }

    /// The displayed control labelled `label` (by `<label for>`), within `scope`.
    async fn field(&self, scope: &str, label: &str) -> Element {
        let label_element = self
            .visible(&format!(
                "{scope}//label[normalize-space()={}]",
                xpath_literal(label)
            ))
            .await;
        let id = label_element
            .attr("for")
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("the label {label:?} names no control"));
        self.client
            .find(Locator::Id(&id))
            .await
            .unwrap_or_else(|error| panic!("no control {id} for {label:?}: {error}"))
    }

    /// Replaces what the field labelled `label` holds with `text`, as a person types.
    async fn fill(&self, scope: &str, label: &str, text: &str) {
        let control = self.field(scope, label).await;
        control.clear().await.expect("a field that can be cleared");
        control
            .send_keys(text)
            .await
            .expect("a field that can be typed in");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(screenshot_dir().join(format!("{name}.png")), png)
            .expect("the screenshot is written");
    }

    /// Everything the page holds where a script could read it: its markup with every
    /// field's current value, its session and local storage, and its cookies.
    async fn everything_readable(&self) -> String {
        self.js(
            "const values = Array.from(document.querySelectorAll('input, textarea'))
                 .map(e => e.value).join('\\n');
             return document.documentElement.outerHTML + '\\n' + values + '\\n'
                 + JSON.stringify(sessionStorage) + '\\n' + JSON.stringify(localStorage)
                 + '\\n' + document.cookie;",
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    async fn assert_key_nowhere_lasting(&self) {
        let stored = self
            .js("return [localStorage.length, document.cookie];")
            .await;
        assert_eq!(stored, json!([0, ""]), "nothing in localStorage or cookies");
    }

    /// Fails unless every displayed control has an accessible name: a label, an
    /// `aria-label`/`aria-labelledby`, or (for buttons) its text.
    async fn assert_every_control_named(&self, step: &str) {
        let unnamed = self
            .js(
                "return Array.from(document.querySelectorAll('button, input, select, textarea, a[href]'))
                   .filter(e => e.offsetParent !== null && e.type !== 'hidden')
                   .filter(e => !(e.labels && e.labels.length)
                       && !(e.getAttribute('aria-label') || '').trim()
                       && !e.getAttribute('aria-labelledby')
                       && !((e.tagName === 'BUTTON' || e.tagName === 'A') && e.textContent.trim()))
                   .map(e => e.outerHTML);",
            )
            .await;
        assert_eq!(unnamed, json!([]), "{step}: controls without a name");
    }

    /// Presses Tab until `condition` holds for the focused element (at most 80 times).
    async fn tab_to(&self, what: &str, condition: &str) {
        for _ in 0..80 {
            if self.js(&format!("return Boolean({condition});")).await == Value::Bool(true) {
                return;
            }
            self.type_keys(TAB).await;
        }
        panic!("Tab never reached {what}");
    }

    /// Types `text` into whatever has the focus, as a keyboard does: key actions, which
    /// go where the focus is, with no element named.
    async fn type_keys(&self, text: &str) {
        let mut keys = KeyActions::new("keyboard".to_owned());
        for value in text.chars() {
            keys = keys
                .then(KeyAction::Down { value })
                .then(KeyAction::Up { value });
        }
        self.client
            .perform_actions(keys)
            .await
            .unwrap_or_else(|error| panic!("keys {text:?} are typed: {error}"));
    }

    async fn close(self) {
        let _ = self.client.close().await;
        let mut driver = self.driver;
        let _ = driver.kill();
        let _ = driver.wait();
    }
}

/// chromedriver's browser log (`POST /session/{id}/se/log`), which WebDriver itself lacks.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// `text` as an XPath 1.0 string literal.
fn xpath_literal(text: &str) -> String {
    if !text.contains('\'') {
        format!("'{text}'")
    } else {
        format!("\"{text}\"")
    }
}

fn row(id: &str) -> String {
    format!(
        "//table[@id='keys']//tr[@data-key-id={}]",
        xpath_literal(id)
    )
}

/// Creates a key through the API and returns its plaintext and id.
fn create(keygate: &Running, owner: &str, name: &str, scopes: &[&str]) -> (String, String) {
    let body = json!({
        "name": name, "owner": owner, "scopes": scopes, "expires_at": support::next_year(),
    });
    let (status, body) = keygate.post("/api-keys", MASTER, &body.to_string());
    assert_eq!(status, 201, "{body}");
    (field(&body, "key"), field(&body, "api_key_id"))
}

/// What keygate answers at the gateway for `key` reading ledgers.
fn forward_auth(keygate: &Running, key: &str) -> u16 {
    exchange(
        None,
        keygate.port,
        "GET",
        "/forward-auth",
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/ledgers"),
            ("X-Blnk-Key", key),
        ],
        None,
    )
    .expect("keygate answers")
    .status
}

/// The key object `id` of `owner`, through the API.
fn fetch(keygate: &Running, id: &str, owner: &str) -> Value {
    let (status, body) = keygate.get(&format!("/api-keys/{id}?owner={owner}"), Some(MASTER));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a key object")
}

#[test]
fn the_console_serves_itself_under_a_strict_policy() {
    let dir = tempfile::tempdir().expect("a folder");
    let port = free_port();
    let keygate = Running::start(
        dir.path(),
        port,
        &[
            ("KEYGATE_SERVER__PORT", &port.to_string()),
            ("KEYGATE_SERVER__SECRET_KEY", MASTER),
        ],
    );
    let page = exchange(None, port, "GET", "/console", &[], None).expect("an answer");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
    );
    let policy = page.header("content-security-policy").expect("a policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'none'",
        "base-uri 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    assert!(
        !policy.contains("unsafe"),
        "no unsafe-inline or unsafe-eval: {policy}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    // The page names only its own files, and holds no script or style of its own.
    assert!(page.body.contains("/console/console.js"), "{}", page.body);
    assert!(page.body.contains("/console/console.css"), "{}", page.body);
    assert!(!page.body.contains("<style"), "no inline style block");
    assert!(!page.body.contains(" style="), "no style attribute");
    assert!(!page.body.contains(" on"), "no inline event handler");
    for script in page.body.split("<script").skip(1) {
        let head = script.split('>').next().unwrap_or_default();
        assert!(
            head.contains("src="),
            "every script is a file: <script{head}>"
        );
    }

    for (path, media) in [
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/console/", "text/html"),
    ] {
        let answer = exchange(None, port, "GET", path, &[], None).expect("an answer");
        assert_eq!(answer.status, 200, "{path}");
        assert!(
            answer
                .header("content-type")
                .is_some_and(|t| t.starts_with(media)),
            "{path}"
        );
        assert!(answer.header("content-security-policy").is_some(), "{path}");
        // Revalidated, not downloaded again.
        let tag = answer.header("etag").expect("an entity tag").to_owned();
        let again =
            exchange(None, port, "GET", path, &[("If-None-Match", &tag)], None).expect("an answer");
        assert_eq!(again.status, 304, "{path}");
    }
    // The console's files are public; nothing else under it is, and none of it writes.
    let (status, body) =
        http(port, "GET", "/console/../api-keys?owner=x", None, None).expect("an answer");
    assert_ne!(status, 200, "{body}");
    let (status, _) = http(port, "POST", "/console", None, Some("{}")).expect("an answer");
    assert_eq!(status, 405);
    drop(keygate);
}

#[actix_web::test]
async fn the_console_manages_keys_in_a_real_browser() {
    if !browser_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("a folder");
    let port = free_port();
    let keygate = Running::start(
        dir.path(),
        port,
        &[
            ("KEYGATE_SERVER__PORT", &port.to_string()),
            ("KEYGATE_SERVER__SECRET_KEY", MASTER),
        ],
    );
    let (alpha_secret, alpha) = create(&keygate, "acme", "billing-service", &["ledgers:read"]);
    let (_, beta) = create(
        &keygate,
        "acme",
        "reports",
        &["balances:read", "ledgers:read"],
    );
    // A name that would run as script if the page put names into its markup.
    let hostile = "<img src=x onerror=\"document.title='owned'\">";
    let (_, gamma) = create(&keygate, "acme", hostile, &["accounts:read"]);
    let (_, foreign) = create(&keygate, "globex", "not-yours", &["ledgers:read"]);
    let (scoped, _) = create(
        &keygate,
        "acme",
        "acme-admin",
        &["api-keys:*", "ledgers:read"],
    );
    let base = format!("http://127.0.0.1:{port}/console");

    let browser = Browser::start().await;
    let b = &browser;
    b.client.goto(&base).await.expect("the console loads");
    b.assert_no_errors("the first page").await;

    // A wrong key: the error in words, and still signed out.
    b.fill("", "Key", "kg_definitely-not-a-key-0123456789")
        .await;
    b.press("", "Sign in").await;
    b.until(
        "the refusal is shown",
        "document.getElementById('error').textContent.includes('AUTH_INVALID_API_KEY')",
    )
    .await;
    let error = b.text_of("error").await;
    assert!(error.contains("Invalid API key"), "{error}");
    b.assert_no_errors("a wrong key").await;

    // The master key chooses an owner, and sees that owner's keys only.
    b.fill("", "Key", MASTER).await;
    b.press("", "Sign in").await;
    b.fill("", "Owner", "acme").await;
    b.press("", "Show keys").await;
    b.until(
        "acme's keys",
        &format!("document.querySelector('#keys tr[data-key-id=\"{beta}\"]')"),
    )
    .await;
    for id in [&alpha, &beta, &gamma] {
        b.visible(&row(id)).await;
    }
    let listed = b.text_of("keys").await;
    assert!(
        !listed.contains(&foreign) && !listed.contains("not-yours"),
        "{listed}"
    );
    for header in ["Name", "ID", "Scopes", "Status", "Expires", "Last used"] {
        b.visible(&format!(
            "//table[@id='keys']//th[normalize-space()='{header}']"
        ))
        .await;
    }
    // The hostile name is text, not markup.
    assert!(
        listed.contains(hostile),
        "the name shows as typed: {listed}"
    );
    assert_ne!(b.js("return document.title").await, json!("owned"));
    assert_eq!(
        b.js("return document.querySelectorAll('#keys img').length")
            .await,
        json!(0),
        "no element made from a name"
    );
    b.assert_key_nowhere_lasting().await;
    b.assert_every_control_named("the keys of acme").await;
    b.assert_no_errors("the master key lists acme").await;

    // A new key: the secret is shown once, works at the gateway, and is gone after Done.
    b.press("", "New key").await;
    b.fill("", "Name", "made-in-the-console").await;
    b.fill("", "Scopes", "ledgers:read, balances:write").await;
    b.fill("", "Rate limit (requests)", "100").await;
    b.fill("", "Credits", "50").await;
    b.assert_every_control_named("the new key form").await;
    b.press("", "Create").await;
    b.until(
        "the secret is shown",
        "document.getElementById('secret') && document.getElementById('secret').value.length > 0",
    )
    .await;
    let secret_field = b.field("", "Secret").await;
    let secret = secret_field
        .prop("value")
        .await
        .ok()
        .flatten()
        .expect("the secret's value");
    assert!(
        secret_field.attr("readonly").await.ok().flatten().is_some(),
        "the secret is read-only"
    );
    b.visible("//button[normalize-space()='Copy']").await;
    let warning = b.js("return document.body.innerText").await;
    assert!(
        warning
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("not be shown again"),
        "a warning that the secret is shown once"
    );
    b.screenshot("console-new-key").await;
    assert_eq!(
        forward_auth(&keygate, &secret),
        200,
        "the console's key works"
    );
    b.press("", "Copy").await;
    b.until(
        "the copy is acknowledged",
        "document.getElementById('status').textContent.toLowerCase().includes('cop')",
    )
    .await;
    b.press("", "Done").await;
    b.until(
        "the secret is gone",
        "!document.getElementById('secret') || document.getElementById('secret').value === ''",
    )
    .await;
    assert!(
        !b.everything_readable().await.contains(&secret),
        "the secret left the page"
    );
    b.client.refresh().await.expect("a reload");
    b.until(
        "signed in again after the reload",
        "document.querySelector('#keys tr')",
    )
    .await;
    assert!(
        !b.everything_readable().await.contains(&secret),
        "the secret is gone after a reload"
    );
    b.assert_key_nowhere_lasting().await;
    b.assert_no_errors("a new key").await;

    // The new key is listed as active; revoking it asks first, then it fails at once.
    let made: Vec<Value> = {
        let (_, body) = keygate.get("/api-keys?owner=acme", Some(MASTER));
        serde_json::from_str(&body).expect("a list")
    };
    let made = made
        .iter()
        .find(|key| key["name"] == "made-in-the-console")
        .expect("the console's key is stored");
    let made_id = made["api_key_id"].as_str().expect("an id").to_owned();
    assert_eq!(made["scopes"], json!(["ledgers:read", "balances:write"]));
    assert_eq!(made["ratelimit"]["limit"], 100, "{made}");
    assert_eq!(
        made["credits"]["remaining"], 49,
        "50, less the one request above: {made}"
    );
    b.until(
        "the new key is listed",
        &format!("document.querySelector('#keys tr[data-key-id=\"{made_id}\"]')"),
    )
    .await;
    assert!(b.text_of("keys").await.to_lowercase().contains("active"));
    b.press(&row(&made_id), "Revoke").await;
    b.visible("//dialog[@id='confirm-revoke']").await;
    b.press("//dialog[@id='confirm-revoke']", "Revoke").await;
    b.until(
        "the revocation is reported",
        "document.getElementById('status').textContent.toLowerCase().includes('revoked')",
    )
    .await;
    assert_eq!(
        forward_auth(&keygate, &secret),
        401,
        "a revoked key fails at once"
    );
    b.until("the row says revoked", &format!("(document.querySelector('#keys tr[data-key-id=\"{made_id}\"]') || {{}}).textContent?.toLowerCase().includes('revoked')")).await;
    b.assert_no_errors("a revocation").await;

    // Rotate asks first, and with no grace period the old key stops at once while the
    // new secret works.
    b.press(&row(&alpha), "Rotate").await;
    b.press("//dialog[@id='confirm-rotate']", "Cancel").await;
    assert_eq!(
        forward_auth(&keygate, &alpha_secret),
        200,
        "a cancelled rotation changes nothing"
    );
    b.press(&row(&alpha), "Rotate").await;
    let grace = b
        .field("//dialog[@id='confirm-rotate']", "Grace period")
        .await;
    let none = grace
        .find(Locator::XPath(
            "./option[starts-with(normalize-space(), 'None')]",
        ))
        .await
        .expect("a choice of no grace period");
    none.click().await.expect("no grace period is chosen");
    b.press("//dialog[@id='confirm-rotate']", "Rotate").await;
    b.until(
        "the rotated secret is shown",
        "document.getElementById('secret') && document.getElementById('secret').value.length > 0",
    )
    .await;
    let rotated = b
        .field("", "Secret")
        .await
        .prop("value")
        .await
        .ok()
        .flatten()
        .expect("the new secret");
    assert_eq!(
        forward_auth(&keygate, &rotated),
        200,
        "the rotated key works"
    );
    assert_eq!(
        forward_auth(&keygate, &alpha_secret),
        401,
        "the old key stopped at once"
    );
    b.press("", "Done").await;
    b.until("alpha is rotated out", &format!("(document.querySelector('#keys tr[data-key-id=\"{alpha}\"]') || {{}}).textContent?.toLowerCase().includes('rotated')")).await;
    b.assert_no_errors("a rotation").await;

    // Edit: a new name and scope, saved through PATCH.
    b.press(&row(&beta), "Edit").await;
    b.assert_every_control_named("the edit form").await;
    b.fill("//dialog[@id='edit-key']", "Name", "reports-v2")
        .await;
    b.fill("//dialog[@id='edit-key']", "Scopes", "balances:read")
        .await;
    b.press("//dialog[@id='edit-key']", "Save").await;
    b.until(
        "the new name is listed",
        "document.getElementById('keys').textContent.includes('reports-v2')",
    )
    .await;
    let edited = fetch(&keygate, &beta, "acme");
    assert_eq!(edited["name"], "reports-v2");
    assert_eq!(edited["scopes"], json!(["balances:read"]));
    b.assert_no_errors("an edit").await;

    // Events: the audit trail of the edited key, both ways round.
    b.press(&row(&beta), "Events").await;
    b.until(
        "the events are shown",
        "document.querySelector('#events table tr td')",
    )
    .await;
    let events = b.text_of("events").await;
    assert!(
        events.contains("created") && events.contains("updated"),
        "{events}"
    );
    assert!(
        events.contains("reports-v2"),
        "what changed is shown: {events}"
    );
    let first_row = "document.querySelector('#events tbody tr').textContent";
    let before = b.js(&format!("return {first_row}")).await;
    let toggle = if b
        .client
        .find(Locator::XPath(
            "//section[@id='events']//button[normalize-space()='Oldest first']",
        ))
        .await
        .is_ok()
    {
        "Oldest first"
    } else {
        "Newest first"
    };
    b.press("//section[@id='events']", toggle).await;
    b.until("the order flips", &format!("{first_row} !== {before}"))
        .await;
    b.assert_no_errors("events").await;

    // Usage: a chart of the rotated key's traffic (one allowed above).
    let rotated_id = {
        let (_, body) = keygate.get("/api-keys?owner=acme", Some(MASTER));
        let keys: Vec<Value> = serde_json::from_str(&body).expect("a list");
        let key = keys
            .iter()
            .find(|key| key["name"] == "billing-service" && key["api_key_id"] != alpha.as_str())
            .expect("the rotated key");
        key["api_key_id"].as_str().expect("an id").to_owned()
    };
    b.press(&row(&rotated_id), "Usage").await;
    b.until(
        "a chart is drawn",
        "document.querySelector('#usage-chart rect, #usage-chart path, #usage-chart line')",
    )
    .await;
    let label = b
        .js("return document.getElementById('usage-chart').getAttribute('aria-label')")
        .await;
    assert!(
        label.as_str().is_some_and(|l| !l.is_empty()),
        "the chart is named"
    );
    b.press("//section[@id='usage']", "Last 30 days").await;
    b.until(
        "the monthly chart",
        "document.querySelector('#usage-chart')",
    )
    .await;
    b.screenshot("console-usage").await;
    b.assert_no_errors("usage").await;

    // Back to the list for the README's picture.
    b.client.refresh().await.expect("a reload");
    b.until(
        "the keys after a reload",
        "document.querySelector('#keys tr[data-key-id]')",
    )
    .await;
    b.screenshot("console").await;

    // A scoped key sees its own owner's keys at once, without choosing an owner.
    b.press("", "Sign out").await;
    b.until("signed out", "!document.querySelector('#keys tr[data-key-id]') || document.getElementById('keys').closest('[hidden]')").await;
    assert_eq!(
        b.js("return sessionStorage.length").await,
        json!(0),
        "signing out forgets the key"
    );
    b.fill("", "Key", &scoped).await;
    b.press("", "Sign in").await;
    b.until(
        "acme's keys for its admin key",
        &format!("document.querySelector('#keys tr[data-key-id=\"{gamma}\"]')"),
    )
    .await;
    assert!(!b.text_of("keys").await.contains("not-yours"));
    b.assert_key_nowhere_lasting().await;
    b.assert_no_errors("a scoped key").await;
    assert!(
        !b.everything_readable().await.contains(MASTER),
        "the master key is gone"
    );

    // The keyboard alone: sign in, open the new key form, leave it.
    b.press("", "Sign out").await;
    b.client.refresh().await.expect("a reload");
    b.tab_to(
        "the Key field",
        "document.activeElement.type === 'password'",
    )
    .await;
    b.type_keys(&scoped).await;
    b.type_keys(ENTER).await;
    b.until(
        "signed in by keyboard",
        &format!("document.querySelector('#keys tr[data-key-id=\"{gamma}\"]')"),
    )
    .await;
    b.tab_to(
        "New key",
        "document.activeElement.textContent.trim() === 'New key'",
    )
    .await;
    b.type_keys(ENTER).await;
    b.until(
        "the form has the focus",
        "document.activeElement.closest('dialog[open]')",
    )
    .await;
    b.type_keys(ESCAPE).await;
    b.until(
        "Escape closes the form",
        "!document.querySelector('dialog[open]')",
    )
    .await;
    b.assert_no_errors("the keyboard").await;

    browser.close().await;
    drop(keygate);
}
