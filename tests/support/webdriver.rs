//! The dashboard's browser test on `fantoccini`: this module starts `chromedriver`, opens one
//! headless Chromium session in it, and adds what fantoccini leaves to its caller.
//!
//! fantoccini runs without a TLS feature (chromedriver is plain HTTP on 127.0.0.1), on hyper-util's
//! `HttpConnector`. On top of it: every command and every wait is bounded, and a wait's error says
//! what it last saw. Dropping a [`Driver`] deletes the session (so chromedriver closes Chromium)
//! and kills chromedriver: a failing test still leaves no browser behind.
// Each test includes this module and uses only part of it.
#![allow(dead_code)]

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use fantoccini::elements::Element;

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long chromedriver may take to listen on its port.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Any one WebDriver command (a page load and the session's creation included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two looks of a polling wait.
const POLL: Duration = Duration::from_millis(100);

/// Whether the browser test can run here (Debian's `chromium` and `chromium-driver`).
pub fn chromium_available() -> bool {
    Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists()
}

/// A chromedriver process and one browser session in it.
pub struct Driver {
    child: Child,
    client: Client,
    port: u16,
    session: Option<String>,
    // Chromium's profile; removed after the browser is gone (fields drop after `drop` runs).
    profile: tempfile::TempDir,
}

/// `fut` within [`COMMAND_TIMEOUT`]; an error names `what` was asked.
async fn bounded<T, E: std::fmt::Display>(what: &str, fut: impl Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {COMMAND_TIMEOUT:?}")),
    }
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
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{CHROMEDRIVER}: {e}"))?;
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;

        // Without the background-networking flags Chromium waits on a network it cannot reach.
        let flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
            --disable-background-networking --disable-component-update --disable-sync --window-size=1280,900";
        let mut args: Vec<String> = flags.split_whitespace().map(str::to_owned).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities: Capabilities = serde_json::from_value(json!({
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "timeouts": {"pageLoad": 30_000, "script": 30_000, "implicit": 0},
        }))
        .map_err(|e| e.to_string())?;
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);

        // Until chromedriver listens, creating the session fails to connect: try again then.
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + START_TIMEOUT;
        let client = loop {
            let error = match tokio::time::timeout(COMMAND_TIMEOUT, builder.connect(&url)).await {
                Ok(Ok(client)) => break client,
                Ok(Err(fantoccini::error::NewSessionError::FailedC(e))) if e.is_connect() => format!("{e:?}"),
                Ok(Err(e)) => return Err(kill(child, format!("new session: {e}"))),
                Err(_) => {
                    return Err(kill(
                        child,
                        format!("new session: no answer within {COMMAND_TIMEOUT:?}"),
                    ));
                }
            };
            if let Ok(Some(exit)) = child.try_wait() {
                return Err(format!("chromedriver exited at start: {exit}"));
            }
            if Instant::now() > deadline {
                return Err(kill(
                    child,
                    format!("chromedriver not listening after {START_TIMEOUT:?}: {error}"),
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        let mut driver = Driver {
            child,
            client,
            port,
            session: None,
            profile,
        };
        // The session is deleted in `drop` (which cannot await), not by fantoccini's task once
        // the client is dropped: by then chromedriver is killed.
        driver.session = bounded("session id", driver.client.session_id()).await?;
        bounded("persist", driver.client.persist()).await?;
        Ok(driver)
    }

    pub async fn goto(&self, url: &str) -> Result<(), String> {
        bounded(&format!("goto {url}"), self.client.goto(url)).await
    }

    pub async fn url(&self) -> Result<String, String> {
        Ok(bounded("url", self.client.current_url()).await?.to_string())
    }

    /// The first element matching `css`, now.
    pub async fn find(&self, css: &str) -> Result<Element, String> {
        bounded(&format!("find `{css}`"), self.client.find(Locator::Css(css))).await
    }

    /// Every element matching `css`, now (possibly none).
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>, String> {
        bounded(&format!("find all `{css}`"), self.client.find_all(Locator::Css(css))).await
    }

    /// The first element matching `css` inside `parent`.
    pub async fn find_in(&self, parent: &Element, css: &str) -> Result<Element, String> {
        bounded(&format!("find `{css}` in an element"), parent.find(Locator::Css(css))).await
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
        self.wait_text_where(css, &format!("text {expected:?}"), |t| t.trim() == expected, timeout)
            .await
    }

    /// As [`Driver::wait_text`], for a text that contains `part`.
    pub async fn wait_text_containing(&self, css: &str, part: &str, timeout: Duration) -> Result<Element, String> {
        self.wait_text_where(
            css,
            &format!("a text containing {part:?}"),
            |t| t.contains(part),
            timeout,
        )
        .await
    }

    /// Polls until some element matching `css` has a text `wanted` accepts (`described` for the
    /// error, which lists the texts last seen).
    async fn wait_text_where(
        &self,
        css: &str,
        described: &str,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<Element, String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Texts seen, or why nothing could be read (an element replaced between find and
            // read is stale: it is looked for again next round).
            let mut seen = Vec::new();
            match self.find_all(css).await {
                Ok(elements) => {
                    for el in elements {
                        match self.text(&el).await {
                            Ok(text) if wanted(&text) => return Ok(el),
                            Ok(text) => seen.push(text),
                            Err(e) => seen.push(format!("<{e}>")),
                        }
                    }
                }
                Err(e) => seen.push(format!("<{e}>")),
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no `{css}` with {described} within {timeout:?}; last seen: {seen:?}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn click(&self, el: &Element) -> Result<(), String> {
        bounded("click", el.click()).await
    }

    pub async fn send_keys(&self, el: &Element, text: &str) -> Result<(), String> {
        bounded("send keys", el.send_keys(text)).await
    }

    /// The element's rendered text (empty when it is hidden).
    pub async fn text(&self, el: &Element) -> Result<String, String> {
        bounded("text", el.text()).await
    }

    /// Runs `script` as a function body in the page (`arguments[i]` are `args`); answers its
    /// `return` value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        bounded("execute", self.client.execute(script, args)).await
    }

    pub async fn set_window_size(&self, width: u32, height: u32) -> Result<(), String> {
        bounded("set window size", self.client.set_window_size(width, height)).await
    }

    /// Writes a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<(), String> {
        let png = bounded("screenshot", self.client.screenshot()).await?;
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

/// Kills a chromedriver that has no session (yet); answers `error`.
fn kill(mut child: Child, error: String) -> String {
    let _ = child.kill();
    let _ = child.wait();
    error
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
