//! The daemon's web page, end to end: a real daemon, Debian's headless
//! Chromium driven through ChromeDriver (WebDriver), as a user clicks.
//!
//! Needs `chromium` and `chromium-driver` (the README's test command installs
//! them); fails, never skips, when they are missing.

#![allow(clippy::disallowed_methods)] // runs the program under test, and the browser

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use drover_daemon::{Client, Method, Target};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn drover(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover")).arg("--data-dir").arg(data).args(args).output().unwrap()
}

fn ok(data: &Path, args: &[&str]) -> String {
    let out = drover(data, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "drover {args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

struct Cleanup<'a> {
    data: &'a Path,
    driver: Child,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = drover(self.data, &["daemon", "stop"]);
    }
}

/// A WebDriver session, over the same small HTTP client the CLI uses.
struct Browser {
    driver: Client,
    session: String,
}

impl Browser {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        call(&self.driver, method, &path, body).await
    }

    async fn goto(&self, url: &str) {
        self.call(Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    /// The element matching `css`, once there is one.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let path = format!("/session/{}/element", self.session);
            let body = json!({ "using": "css selector", "value": css });
            let (status, bytes) =
                self.driver.raw(Method::POST, &path, Some(body.to_string().into_bytes())).await.unwrap();
            if status.is_success() {
                let value: Value = serde_json::from_slice(&bytes).unwrap();
                let element = value["value"].as_object().unwrap().values().next().unwrap();
                return element.as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "no element `{css}` on the page");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        let value = self.call(Method::GET, &format!("/element/{element}/text"), None).await;
        value["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the text of `css` satisfies `want`.
    async fn wait_text(&self, css: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.text(css).await;
            if want(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "`{css}` shows {text:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }
}

async fn call(client: &Client, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, bytes) = client.raw(method.clone(), path, body.map(|b| b.to_string().into_bytes())).await.unwrap();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert!(status.is_success(), "WebDriver {method} {path}: {status} {value}");
    value
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_web_page_shows_processes_live_and_its_kill_button_ends_one() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: install Debian's chromium and chromium-driver (sudo ./scripts/test does)"
        );
    }
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    ok(d, &["daemon", "start", "--http", "127.0.0.1:0"]);
    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let _cleanup = Cleanup { data: d, driver };
    let status: Value = serde_json::from_str(&ok(d, &["daemon", "status", "--json"])).unwrap();
    let url = status["web"].as_str().expect("the daemon serves a web page").to_owned();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let driver = Client::new(Target::Tcp { addr: format!("127.0.0.1:{port}"), token: None });
        let deadline = Instant::now() + Duration::from_secs(20);
        while driver.raw(Method::GET, "/status", None).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver does not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--user-data-dir=".to_owned() + &d.join("chromium").display().to_string()]
            }
        }}});
        let session = call(&driver, Method::POST, "/session", Some(capabilities)).await;
        let session = session["value"]["sessionId"].as_str().expect("a session").to_owned();
        let browser = Browser { driver: driver.clone(), session };

        // The page is open before the jobs exist: what follows comes live.
        browser.goto(&url).await;
        browser.wait_text("#live", |t| t == "live").await;
        // The page's session is a cookie that is not the token: cookies are
        // not port-scoped, so every other localhost server would receive it.
        let token = std::fs::read_to_string(drover_daemon::Paths::new(d).token()).unwrap().trim().to_owned();
        let cookies = browser.call(Method::GET, "/cookie", None).await;
        let cookies = cookies["value"].as_array().expect("a list of cookies").clone();
        assert_eq!(cookies.len(), 1, "{cookies:?}");
        assert_eq!(cookies[0]["name"], "drover_session", "{cookies:?}");
        assert_eq!(cookies[0]["httpOnly"], true, "{cookies:?}");
        let session = cookies[0]["value"].as_str().expect("a cookie value");
        assert!(session.len() >= 32 && !session.contains(&token), "the cookie carries the token: {cookies:?}");
        let jobs = d.join("web.toml");
        std::fs::write(
            &jobs,
            "[[job]]\nid = \"quick\"\nscript = \"sleep 1; echo done\"\n\n\
             [[job]]\nid = \"nap\"\ncommand = \"sleep\"\nargs = [\"300\"]\n",
        )
        .unwrap();
        ok(d, &["submit", jobs.to_str().unwrap()]);

        let quick = r#"tr[data-id$=".web.quick"]"#;
        let nap = r#"tr[data-id$=".web.nap"]"#;
        browser.wait_text(&format!("{nap} .state"), |t| t == "running").await;
        browser.wait_text(&format!("{quick} .state"), |t| t == "finished").await;
        assert_eq!(browser.text(&format!("{quick} .kind")).await, "shell");
        browser.wait_text(r#".count[data-state="finished"]"#, |t| t == "finished 1").await;

        // The detail view: history and output.
        browser.click(&format!("{quick} td.id")).await;
        browser.wait_text("#detail-state", |t| t == "finished").await;
        browser.wait_text("#stdout", |t| t.trim() == "done").await;
        browser.find(r#"#history li[data-state="queued"]"#).await;
        browser.find(r#"#history li[data-state="finished"]"#).await;

        // Kill, pressed on the page, ends the running process.
        let shown: Value = serde_json::from_str(&ok(d, &["show", "web.nap", "--json"])).unwrap();
        let pid = shown["history"].as_array().unwrap().iter().rev().find_map(|t| t["data"]["Running"]["pid"].as_i64());
        let pid = pid.expect("a pid");
        browser.click(&format!("{nap} button.kill")).await;
        browser.wait_text(&format!("{nap} .state"), |t| t == "killed").await;
        browser.wait_text(r#".count[data-state="killed"]"#, |t| t == "killed 1").await;
        let after: Value = serde_json::from_str(&ok(d, &["show", "web.nap", "--json"])).unwrap();
        assert_eq!(after["state"], "killed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "the killed job's process {pid} lives on");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        browser.call(Method::DELETE, "", None).await;
    });
}
