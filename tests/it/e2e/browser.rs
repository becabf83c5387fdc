//! A real headless Chromium for the console tests, driven through WebDriver: one
//! `chromedriver --port=PORT` per test (in its own process group, killed on drop with the
//! browser it started), a fresh profile directory, bounded waits, and screenshots saved under
//! `target/console-screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`apt-get install -y chromium
//! chromium-driver`); a test that finds them missing fails saying so.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// Where the screenshots go: `target/console-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|t| t.join("console-screenshots"))
        .unwrap_or_else(|| PathBuf::from("target/console-screenshots"))
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A browser session; the driver (and its browser) is killed on drop.
pub struct Browser {
    pub client: Client,
    driver: DriverGuard,
    _profile: tempfile::TempDir,
    /// The console's base URL (`http://127.0.0.1:PORT`).
    pub base: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium on a fresh profile.
    pub async fn start(base: String) -> Browser {
        let driver_bin = find(&["chromedriver"]).unwrap_or_else(|| {
            panic!(
                "chromedriver is not installed: the console's browser tests need Debian's \
                 chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
            )
        });
        let browser_bin =
            find(&["chromium", "chromium-browser", "google-chrome"]).unwrap_or_else(|| {
                panic!(
                    "chromium is not installed: the console's browser tests need it \
                     (apt-get install -y chromium chromium-driver)"
                )
            });
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().unwrap().port()
        };
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(&driver_bin)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let mut guard = DriverGuard(Some(driver));
        crate::support::wait::expect(
            Duration::from_secs(15),
            &format!("chromedriver to listen on port {port}"),
            async || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        )
        .await;
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": browser_bin,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        caps.insert(
            "unhandledPromptBehavior".into(),
            json!("ignore"), // an alert (there must be none) stays open for the test to find
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            Duration::from_secs(60),
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("the browser started within 60 s")
        .expect("a WebDriver session");
        Browser {
            client,
            driver: DriverGuard(guard.0.take()),
            _profile: profile,
            base,
        }
    }

    /// Opens a console path.
    pub async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .text()
            .await
            .expect("element text")
    }

    /// Clicks the first element matching `css` and waits (bounded) until the page it leads
    /// to has loaded.
    pub async fn click(&self, css: &str) {
        self.eval("window.__before_click = true; return null").await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
        crate::support::wait::expect(
            Duration::from_secs(10),
            &format!("the page a click on {css} leads to"),
            async || {
                self.client
                    .execute(
                        "return window.__before_click === undefined && document.readyState === 'complete'",
                        vec![],
                    )
                    .await
                    .ok()
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false)
            },
        )
        .await;
    }

    /// Types `text` into the field matching `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no field {css}: {e}"));
        el.clear().await.expect("clear field");
        el.send_keys(text).await.expect("type into field");
    }

    /// Runs a script in the page and returns its JSON value.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// The current path and query.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("current url");
        let mut p = url.path().to_string();
        if let Some(q) = url.query() {
            p.push('?');
            p.push_str(q);
        }
        p
    }

    /// Saves a screenshot of the whole page as `target/console-screenshots/{name}.png`.
    pub async fn shot(&self, name: &str) {
        let height = self
            .eval("return document.documentElement.scrollHeight")
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 4000);
        let _ = self
            .client
            .set_window_size(1280, u32::try_from(height).unwrap_or(900) + 140)
            .await;
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
        let _ = self.client.set_window_size(1280, 900).await;
    }

    /// Ends the WebDriver session (the browser quits), then the driver.
    pub async fn close(self) {
        let Browser { client, driver, .. } = self;
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        drop(driver);
    }
}

/// Kills the driver's process group (the driver and the browser it started).
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            kill_group(child);
        }
    }
}

fn kill_group(child: &mut Child) {
    // The leader is not reaped before this, so its id (and the group's) cannot be reused yet.
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}
