//! A minimal W3C WebDriver client for the dashboard's browser test: it starts `chromedriver`,
//! opens one headless Chromium session, and offers the handful of commands the test needs.
//!
//! Only the crates the package already has: `reqwest` without its `json` feature (bodies are
//! `serde_json::to_vec` with a `content-type` header, answers `serde_json::from_slice`), a
//! small base64 decoder for screenshots. Every wait is bounded and says what it last saw.
//! Dropping a [`Driver`] deletes the session (so chromedriver closes Chromium) and kills
//! chromedriver: a failing test still leaves no browser behind.
// Each test includes this module and uses only part of it.
#![allow(dead_code)]

use reqwest::Method;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long chromedriver may take to answer `GET /status` with `ready: true`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Any one WebDriver command (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two looks of a polling wait.
const POLL: Duration = Duration::from_millis(100);
/// The W3C key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether the browser test can run here (Debian's `chromium` and `chromium-driver`).
pub fn chromium_available() -> bool {
    Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists()
}

/// An element reference, valid until the page replaces the element.
#[derive(Clone, Debug)]
pub struct Element(pub String);

/// A chromedriver process and one browser session in it.
pub struct Driver {
    child: Child,
    http: reqwest::Client,
    port: u16,
    session: Option<String>,
    // Chromium's profile; removed after the browser is gone (fields drop after `drop` runs).
    profile: tempfile::TempDir,
}

impl Driver {
    /// Starts chromedriver on a free port and opens a headless 1280×900 session.
    pub async fn start() -> Result<Driver, String> {
        // Bind-and-drop finds a free port; another process taking it in between is unlikely
        // and shows up as a start timeout.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{CHROMEDRIVER}: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut driver = Driver {
            child,
            http,
            port,
            session: None,
            profile,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = driver.request(Method::GET, "/status", None).await;
            if status.as_ref().is_ok_and(|v| v["ready"] == json!(true)) {
                break;
            }
            if let Ok(Some(exit)) = driver.child.try_wait() {
                return Err(format!("chromedriver exited at start: {exit}"));
            }
            if Instant::now() > deadline {
                return Err(format!("chromedriver not ready after {START_TIMEOUT:?}: {status:?}"));
            }
            tokio::time::sleep(POLL).await;
        }

        // Without the background-networking flags Chromium waits on a network it cannot reach.
        let flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
            --disable-background-networking --disable-component-update --disable-sync --window-size=1280,900";
        let mut args: Vec<String> = flags.split_whitespace().map(str::to_owned).collect();
        args.push(format!("--user-data-dir={}", driver.profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "timeouts": {"pageLoad": 30_000, "script": 30_000, "implicit": 0},
        }}});
        let session = driver.request(Method::POST, "/session", Some(capabilities)).await?;
        let id = session["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no sessionId in {session}"))?;
        driver.session = Some(id.to_owned());
        Ok(driver)
    }

    /// One request to chromedriver; answers the response's `value`, or its error and message.
    async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
            req = req.header("content-type", "application/json").body(bytes);
        }
        let resp = req.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{method} {path}: {e}: {}", String::from_utf8_lossy(&bytes)))?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!(
                "{method} {path}: {status} {}: {}",
                value["error"], value["message"]
            ))
        }
    }

    /// `GET` a command of this session (`path` after `/session/{id}`).
    async fn get(&self, path: &str) -> Result<Value, String> {
        let id = self.session.as_deref().ok_or("no session")?;
        self.request(Method::GET, &format!("/session/{id}{path}"), None).await
    }

    /// `POST` a command of this session with a JSON body.
    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let id = self.session.as_deref().ok_or("no session")?;
        self.request(Method::POST, &format!("/session/{id}{path}"), Some(body))
            .await
    }

    pub async fn goto(&self, url: &str) -> Result<(), String> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    pub async fn url(&self) -> Result<String, String> {
        Ok(self.get("/url").await?.as_str().unwrap_or_default().to_owned())
    }

    /// The first element matching `css`, now.
    pub async fn find(&self, css: &str) -> Result<Element, String> {
        element(&self.post("/element", by_css(css)).await?)
    }

    /// Every element matching `css`, now (possibly none).
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>, String> {
        let v = self.post("/elements", by_css(css)).await?;
        v.as_array()
            .ok_or_else(|| format!("not a list: {v}"))?
            .iter()
            .map(element)
            .collect()
    }

    /// The first element matching `css` inside `parent`.
    pub async fn find_in(&self, parent: &Element, css: &str) -> Result<Element, String> {
        element(
            &self
                .post(&format!("/element/{}/element", parent.0), by_css(css))
                .await?,
        )
    }

    /// Polls until an element matches `css`, for at most `timeout`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(css).await {
                Ok(e) => return Ok(e),
                Err(e) if Instant::now() > deadline => return Err(format!("no `{css}` within {timeout:?}: {e}")),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Polls until some element matching `css` has exactly the text `expected` (as rendered,
    /// trimmed), for at most `timeout`. The error lists the texts last seen.
    pub async fn wait_text(&self, css: &str, expected: &str, timeout: Duration) -> Result<Element, String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Texts seen, or why nothing could be read (an element replaced between find and
            // read is stale: it is looked for again next round).
            let mut seen = Vec::new();
            match self.find_all(css).await {
                Ok(elements) => {
                    for el in elements {
                        match self.text(&el).await {
                            Ok(text) if text.trim() == expected => return Ok(el),
                            Ok(text) => seen.push(text),
                            Err(e) => seen.push(format!("<{e}>")),
                        }
                    }
                }
                Err(e) => seen.push(format!("<{e}>")),
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no `{css}` with text {expected:?} within {timeout:?}; last seen: {seen:?}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn click(&self, el: &Element) -> Result<(), String> {
        self.post(&format!("/element/{}/click", el.0), json!({}))
            .await
            .map(drop)
    }

    pub async fn send_keys(&self, el: &Element, text: &str) -> Result<(), String> {
        self.post(&format!("/element/{}/value", el.0), json!({ "text": text }))
            .await
            .map(drop)
    }

    /// The element's rendered text (empty when it is hidden).
    pub async fn text(&self, el: &Element) -> Result<String, String> {
        Ok(self
            .get(&format!("/element/{}/text", el.0))
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// An attribute, `None` when the element has none.
    pub async fn attr(&self, el: &Element, name: &str) -> Result<Option<String>, String> {
        Ok(self
            .get(&format!("/element/{}/attribute/{name}", el.0))
            .await?
            .as_str()
            .map(str::to_owned))
    }

    pub async fn displayed(&self, el: &Element) -> Result<bool, String> {
        Ok(self.get(&format!("/element/{}/displayed", el.0)).await? == json!(true))
    }

    /// Runs `script` as a function body in the page (`arguments[i]` are `args`); answers its
    /// `return` value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    pub async fn set_window_size(&self, width: u32, height: u32) -> Result<(), String> {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await
            .map(drop)
    }

    /// Writes a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<(), String> {
        let png = base64_decode(
            self.get("/screenshot")
                .await?
                .as_str()
                .ok_or("screenshot: not a string")?,
        )?;
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Drop cannot await, so the session is deleted over a plain blocking socket: that makes
        // chromedriver close Chromium, which killing chromedriver alone would leave running.
        if let Some(id) = self.session.take() {
            let _ = delete_blocking(self.port, &format!("/session/{id}"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn delete_blocking(port: u16, path: &str) -> std::io::Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map(drop)
}

fn by_css(css: &str) -> Value {
    json!({ "using": "css selector", "value": css })
}

fn element(v: &Value) -> Result<Element, String> {
    v[ELEMENT_KEY]
        .as_str()
        .map(|id| Element(id.to_owned()))
        .ok_or_else(|| format!("not an element: {v}"))
}

/// Standard-alphabet base64 (padding and whitespace ignored), enough for screenshots.
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("base64: unexpected byte {c:#04x}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
