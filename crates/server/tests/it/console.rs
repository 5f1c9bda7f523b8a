//! The web console in a real headless Chromium, driven through chromedriver (WebDriver)
//! against the real `keygate` binary on SQLite: every flow a person would use, checked
//! both on the page and against the API, with the browser's own log read for JavaScript
//! errors and Content-Security-Policy violations after each step.

use crate::support;
use keygate_storage::test_support::skip_unless_ci;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
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
/// How long a step may take: generous, since the whole suite shares two cores.
const PATIENCE: Duration = Duration::from_secs(30);
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
    skip_unless_ci(
        &format!("console test: {CHROMIUM} or {CHROMEDRIVER} is missing"),
        "apt-get install chromium chromium-driver",
    );
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
        // In a process group of its own, with the Chromium it starts, so that both can be
        // stopped together whatever happens to the session.
        let mut driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        // Our own chromedriver must hold the port before we talk to whatever answers there.
        let stdout = driver.stdout.take().expect("chromedriver's output");
        let (started, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = started.send(());
                }
            }
        });
        if ready.recv_timeout(PATIENCE).is_err() {
            let _ = driver.kill();
            panic!("chromedriver did not start on port {port}");
        }
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
        let deadline = Instant::now() + PATIENCE;
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
    /// resource the Content-Security-Policy refused, or an API answer with a status other
    /// than those in `expected` (the API's refusals the page is meant to show).
    async fn assert_no_errors(&self, step: &str, expected: &[u16]) {
        let errors: Vec<Value> = self
            .log()
            .await
            .into_iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .filter(|entry| {
                let message = entry["message"].as_str().unwrap_or_default();
                !expected.iter().any(|status| {
                    message.contains(&format!("the server responded with a status of {status} "))
                })
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

    /// Waits (up to [`PATIENCE`]) until `condition`, a JavaScript expression, is true.
    async fn until(&self, what: &str, condition: &str) {
        let deadline = Instant::now() + PATIENCE;
        let script = format!("return Boolean({condition});");
        loop {
            if self.js(&script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let status = self.text_of("status").await;
                let error = self.text_of("error").await;
                panic!("{what}: not within {PATIENCE:?} (status {status:?}, error {error:?})");
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
        let deadline = Instant::now() + PATIENCE;
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
                 + '\\n' + document.cookie + '\\n' + location.href;",
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

    /// Chooses `owner` with the master key, and waits for that owner's finished listing.
    async fn show_owner(&self, owner: &str) {
        self.fill("", "Owner", owner).await;
        self.press("", "Show keys").await;
        self.until_listed(owner).await;
    }

    /// Waits until the table holds `owner`'s keys, as of a finished request.
    async fn until_listed(&self, owner: &str) {
        self.until(
            &format!("{owner}'s keys"),
            &format!(
                "document.querySelector('#keys[data-owner={}][aria-busy=\"false\"] tr[data-key-id]')",
                json!(owner)
            ),
        )
        .await;
    }

    /// The secret the page shows once, read-only.
    async fn shown_secret(&self) -> String {
        self.until("a secret is shown", "document.getElementById('secret') && document.getElementById('secret').value.length > 0").await;
        let field = self.field("", "Secret").await;
        assert!(
            field.attr("readonly").await.ok().flatten().is_some(),
            "the secret is read-only"
        );
        field
            .prop("value")
            .await
            .ok()
            .flatten()
            .expect("the secret's value")
    }

    /// Picks the option beginning with `text` in the select labelled `label`.
    async fn choose(&self, scope: &str, label: &str, text: &str) {
        let select = self.field(scope, label).await;
        let option = select
            .find(Locator::XPath(&format!(
                "./option[starts-with(normalize-space(), {})]",
                xpath_literal(text)
            )))
            .await
            .unwrap_or_else(|error| panic!("no option {text:?} for {label:?}: {error}"));
        option.click().await.expect("the option is chosen");
    }

    /// Ends the session; dropping stops chromedriver.
    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    /// A failed step leaves no chromedriver, nor any Chromium, behind.
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
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

/// The first `on...=` attribute in `html` (an inline event handler), if any.
fn inline_handler(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    (1..bytes.len()).find_map(|at| {
        if !(bytes[at - 1].is_ascii_whitespace() && bytes[at..].starts_with(b"on")) {
            return None;
        }
        let name = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let after = lower[at + name..].trim_start();
        (name > 2 && after.starts_with('=')).then(|| lower[at..].chars().take(40).collect())
    })
}

/// `text` as an XPath 1.0 string literal.
fn xpath_literal(text: &str) -> String {
    if !text.contains('\'') {
        format!("'{text}'")
    } else {
        format!("\"{text}\"")
    }
}

/// The row of key `id`, in JavaScript.
fn row_js(id: &str) -> String {
    format!(
        "(document.querySelector('#keys tr[data-key-id={}]') || {{textContent: ''}})",
        json!(id)
    )
}

/// `owner`'s keys, through the API.
fn listing(keygate: &Running, owner: &str) -> Vec<Value> {
    let (status, body) = keygate.get(&format!("/api-keys?owner={owner}"), Some(MASTER));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a list")
}

fn row(id: &str) -> String {
    format!(
        "//table[@id='keys']//tr[@data-key-id={}]",
        xpath_literal(id)
    )
}

/// The `keygate` binary on a fresh SQLite database, with `extra` settings, and its folder.
fn serve(extra: &[(&str, &str)]) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().expect("a folder");
    let port = free_port();
    let mut env = vec![
        ("KEYGATE_SERVER__PORT", port.to_string()),
        ("KEYGATE_SERVER__SECRET_KEY", MASTER.to_owned()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned())),
    );
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let keygate = Running::start(dir.path(), port, &env);
    (dir, keygate)
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
    gateway(keygate, key, "GET", "/ledgers")
}

/// What keygate answers at the gateway for `key` asking `method uri`.
fn gateway(keygate: &Running, key: &str, method: &str, uri: &str) -> u16 {
    exchange(
        None,
        keygate.port,
        "GET",
        "/forward-auth",
        &[
            ("X-Original-Method", method),
            ("X-Original-URI", uri),
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
    let (_dir, keygate) = serve(&[]);
    let port = keygate.port;
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
    assert_eq!(inline_handler(&page.body), None, "no inline event handler");
    assert!(!page.body.contains("javascript:"), "no javascript: address");
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
    // Dot segments after /console reach nothing: refused as ambiguous, even with the
    // master key, rather than read as the listing they spell.
    let (status, body) = http(
        port,
        "GET",
        "/console/../api-keys?owner=x",
        Some(MASTER),
        None,
    )
    .expect("an answer");
    assert_eq!(status, 400, "{body}");
    assert!(!body.starts_with('['), "not a listing: {body}");
    let (status, body) =
        http(port, "GET", "/console/%2e%2e/metrics", None, None).expect("an answer");
    assert_ne!(status, 200, "{body}");
    let (status, _) = http(port, "POST", "/console", None, Some("{}")).expect("an answer");
    assert_eq!(status, 405);
    drop(keygate);

    // Turned off, there is no console at all.
    let (_dir, _keygate) = serve(&[("KEYGATE_SERVER__CONSOLE", "false")]);
    let port = _keygate.port;
    for path in ["/console", "/console/console.js"] {
        let (status, _) = http(port, "GET", path, Some(MASTER), None).expect("an answer");
        assert_eq!(status, 404, "{path}");
    }
}

#[actix_web::test]
async fn the_console_manages_keys_in_a_real_browser() {
    if !browser_installed() {
        return;
    }
    let (_dir, keygate) = serve(&[]);
    let port = keygate.port;
    let (alpha_secret, alpha) = create(&keygate, "acme", "billing-service", &["ledgers:read"]);
    let (_, beta) = create(
        &keygate,
        "acme",
        "reports",
        &["balances:read", "ledgers:read"],
    );
    let (delta_secret, delta) = create(&keygate, "acme", "batch-jobs", &["ledgers:read"]);
    // A name that would run as script if the page put names into its markup.
    let hostile = "<img src=x onerror=\"document.title='owned'\">";
    let (_, gamma) = create(&keygate, "acme", hostile, &["accounts:read"]);
    let (_, foreign) = create(&keygate, "globex", "not-yours", &["ledgers:read"]);
    let (scoped, scoped_id) = create(
        &keygate,
        "acme",
        "acme-admin",
        &["api-keys:*", "ledgers:read"],
    );
    let base = format!("http://127.0.0.1:{port}/console");

    let browser = Browser::start().await;
    let b = &browser;
    b.client.goto(&base).await.expect("the console loads");
    b.assert_no_errors("the first page", &[]).await;

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
    b.visible("//label[normalize-space()='Key']").await;
    b.assert_no_errors("a wrong key", &[401]).await;

    // The master key chooses an owner, and sees that owner's keys only.
    b.fill("", "Key", MASTER).await;
    b.press("", "Sign in").await;
    b.show_owner("acme").await;
    for id in [&alpha, &beta, &gamma, &delta] {
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
    assert_eq!(
        b.js("return document.querySelectorAll('img').length").await,
        json!(0),
        "no element made from a name"
    );
    b.assert_key_nowhere_lasting().await;
    b.assert_every_control_named("the keys of acme").await;
    // The console asks for the master key's own listing once, which needs an owner (400).
    b.assert_no_errors("the master key lists acme", &[400])
        .await;

    // Another owner, and back: each time that owner's keys and no other's.
    b.show_owner("globex").await;
    b.visible(&row(&foreign)).await;
    let listed = b.text_of("keys").await;
    assert!(
        !listed.contains(&alpha) && !listed.contains("billing-service"),
        "{listed}"
    );
    b.show_owner("acme").await;
    assert!(!b.text_of("keys").await.contains(&foreign));
    b.assert_no_errors("owners in turn", &[400]).await;

    // A new key: the secret is shown once, works at the gateway, and is gone after Done.
    b.press("", "New key").await;
    b.fill("", "Name", "made-in-the-console").await;
    b.fill("", "Scopes", "ledgers:read, balances:write").await;
    b.fill("", "Rate limit (requests)", "100").await;
    b.fill("", "Credits", "50").await;
    b.assert_every_control_named("the new key form").await;
    b.press("", "Create").await;
    let secret = b.shown_secret().await;
    let warning = b.js("return document.body.innerText").await;
    assert!(
        warning
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("not be shown again"),
        "a warning that the secret is shown once"
    );
    b.visible("//button[normalize-space()='Copy']").await;
    assert_eq!(
        forward_auth(&keygate, &secret),
        200,
        "the console's key works"
    );
    b.press("", "Copy").await;
    b.until(
        "the copy is acknowledged",
        "document.getElementById('status').textContent.includes('Copied')",
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
    b.until_listed("acme").await;
    assert!(
        !b.everything_readable().await.contains(&secret),
        "the secret is gone after a reload"
    );
    b.assert_key_nowhere_lasting().await;
    b.assert_no_errors("a new key", &[400]).await;

    // The new key is stored as asked, listed as active; revoking it asks first, then it
    // fails at once.
    let made = listing(&keygate, "acme")
        .into_iter()
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
        "the new key is listed as active",
        &format!("{}.textContent.includes('active')", row_js(&made_id)),
    )
    .await;
    b.press(&row(&made_id), "Revoke").await;
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
    b.until(
        "the row says revoked",
        &format!("{}.textContent.includes('revoked')", row_js(&made_id)),
    )
    .await;
    b.assert_no_errors("a revocation", &[]).await;

    // Rotation asks first. Cancelled, nothing changes; with no grace period the old key
    // stops at once and the new secret works.
    b.press(&row(&delta), "Rotate").await;
    b.press("//dialog[@id='confirm-rotate']", "Cancel").await;
    assert_eq!(
        forward_auth(&keygate, &delta_secret),
        200,
        "a cancelled rotation changes nothing"
    );
    b.press(&row(&delta), "Rotate").await;
    b.choose("//dialog[@id='confirm-rotate']", "Grace period", "None")
        .await;
    b.press("//dialog[@id='confirm-rotate']", "Rotate").await;
    let rotated = b.shown_secret().await;
    assert_eq!(
        forward_auth(&keygate, &rotated),
        200,
        "the rotated key works"
    );
    assert_eq!(
        forward_auth(&keygate, &delta_secret),
        401,
        "the old key stopped at once"
    );
    b.press("", "Done").await;
    b.until(
        "the old key is rotated out",
        &format!("{}.textContent.includes('rotated-out')", row_js(&delta)),
    )
    .await;

    // With the default grace period the old key keeps working, and can still be revoked
    // (a leaked key is rotated, then its old secret revoked).
    b.press(&row(&alpha), "Rotate").await;
    b.press("//dialog[@id='confirm-rotate']", "Rotate").await;
    let successor = b.shown_secret().await;
    assert_eq!(forward_auth(&keygate, &successor), 200, "the new key works");
    assert_eq!(
        forward_auth(&keygate, &alpha_secret),
        200,
        "the old key works in its grace period"
    );
    b.press("", "Done").await;
    b.until(
        "alpha is rotated out",
        &format!("{}.textContent.includes('rotated-out')", row_js(&alpha)),
    )
    .await;
    b.press(&row(&alpha), "Revoke").await;
    b.press("//dialog[@id='confirm-revoke']", "Revoke").await;
    b.until(
        "alpha is revoked",
        &format!("{}.textContent.includes('revoked')", row_js(&alpha)),
    )
    .await;
    assert_eq!(
        forward_auth(&keygate, &alpha_secret),
        401,
        "revoked within its grace period"
    );
    assert_eq!(
        forward_auth(&keygate, &successor),
        200,
        "its successor is untouched"
    );
    b.assert_no_errors("rotations", &[]).await;

    // Edit: a new name and scope, saved through PATCH, which sends only what changed.
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
    let (_, events) = keygate.get(&format!("/api-keys/{beta}/events?owner=acme"), Some(MASTER));
    let events: Vec<Value> = serde_json::from_str(&events).expect("events");
    let updated = events
        .iter()
        .find(|event| event["kind"] == "updated")
        .expect("an update is audited");
    let mut changed: Vec<&String> = updated["details"]
        .as_object()
        .expect("what changed")
        .keys()
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        ["name", "scopes"],
        "only what was edited: {updated}"
    );
    b.assert_no_errors("an edit", &[]).await;

    // Events: the audit trail of the edited key, both ways round.
    b.press(&row(&beta), "Events").await;
    b.until(
        "the events are shown",
        "document.querySelector('#events table tbody tr td')",
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
    let order = b
        .visible("//section[@id='events']//button[@id='events-order']")
        .await;
    order.click().await.expect("the order flips");
    b.until("the order flips", &format!("{first_row} !== {before}"))
        .await;
    b.assert_no_errors("events", &[]).await;

    // Usage: a chart of the successor's traffic (two requests admitted above, and one its
    // scopes refuse), by hour and by day.
    assert_eq!(gateway(&keygate, &successor, "POST", "/balances"), 403);
    let successor_id = listing(&keygate, "acme")
        .into_iter()
        .find(|key| key["name"] == "billing-service" && key["api_key_id"] != alpha.as_str())
        .and_then(|key| key["api_key_id"].as_str().map(str::to_owned))
        .expect("the successor");
    b.press(&row(&successor_id), "Usage").await;
    for (range, button) in [("24h", "Last 24 hours"), ("30d", "Last 30 days")] {
        b.press("//section[@id='usage']", button).await;
        b.until(
            &format!("the {range} chart"),
            &format!("document.querySelector('#usage-chart[data-range=\"{range}\"]')"),
        )
        .await;
        let label = b
            .js("return document.getElementById('usage-chart').getAttribute('aria-label')")
            .await;
        let label = label.as_str().unwrap_or_default();
        assert!(
            label.contains("2 allowed") && label.contains("1 refused"),
            "{range}: {label}"
        );
        assert_eq!(
            b.js("return document.querySelectorAll('#usage-chart rect').length > 0")
                .await,
            json!(true),
            "{range}: bars are drawn"
        );
    }
    b.screenshot("console-usage").await;
    b.assert_no_errors("usage", &[]).await;

    // Back to the list for the README's picture.
    b.client.refresh().await.expect("a reload");
    b.until_listed("acme").await;
    b.screenshot("console").await;

    // A scoped key sees its own owner's keys at once, without choosing an owner.
    b.press("", "Sign out").await;
    b.visible("//label[normalize-space()='Key']").await;
    assert_eq!(
        b.js("return sessionStorage.length").await,
        json!(0),
        "signing out forgets the key"
    );
    assert!(
        !b.text_of("keys").await.contains(&beta),
        "no keys shown once signed out"
    );
    b.fill("", "Key", &scoped).await;
    b.press("", "Sign in").await;
    b.until_listed("acme").await;
    b.visible(&row(&gamma)).await;
    assert!(!b.text_of("keys").await.contains("not-yours"));
    b.assert_key_nowhere_lasting().await;
    assert!(
        !b.everything_readable().await.contains(MASTER),
        "the master key is gone"
    );
    b.assert_no_errors("a scoped key", &[400]).await;

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
    b.until_listed("acme").await;
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
    b.assert_no_errors("the keyboard", &[400]).await;

    // The signed-in key revoked elsewhere: the next action signs out, saying why.
    let (status, body) = keygate.request(
        "DELETE",
        &format!("/api-keys/{scoped_id}?owner=acme"),
        Some(MASTER),
        None,
    );
    assert_eq!(status, 204, "{body}");
    b.press("", "Refresh").await;
    b.until(
        "signed out with the reason",
        "document.getElementById('error').textContent.includes('AUTH_EXPIRED_API_KEY')",
    )
    .await;
    b.visible("//label[normalize-space()='Key']").await;
    assert_eq!(
        b.js("return sessionStorage.length").await,
        json!(0),
        "the dead key is forgotten"
    );
    b.assert_no_errors("a key revoked mid-session", &[401])
        .await;

    browser.close().await;
    drop(keygate);
}
