//! `zcluster dashboard` in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, plain HTTP on loopback), against a dashboard on
//! a real hub while a map runs. Its JSON API and its token, over HTTP.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::common::*;

/// One HTTP/1.1 exchange with `Connection: close`: status and body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(FAIL_AFTER)).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    // Read the head, then as much body as it says (chromedriver keeps the
    // connection open whatever the request asks).
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = match stream.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read.expect("read the response"),
        };
        assert!(n > 0, "connection closed before a response head");
        response.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let have = response.len() - head_end;
        let done = match length {
            Some(length) => have >= length,
            None if chunked => response.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = match stream.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read.expect("read the response body"),
        };
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response[head_end..]).into_owned();
    let body = if chunked {
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        text
    };
    (status, body)
}

/// A free port on loopback (released for the caller to bind at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A headless Chromium session through chromedriver.
struct Browser {
    _driver: ChildGuard,
    base: String,
    session: String,
}

impl Browser {
    /// `None` (after a SKIP line) where Chromium or chromedriver is missing
    /// and cannot be installed: never on CI, whose script installs them.
    fn start() -> Option<Self> {
        let missing = ["chromium", "chromedriver"].into_iter().find(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if let Some(tool) = missing {
            assert!(
                std::env::var_os("CI").is_none(),
                "{tool} is missing on CI (.ci/run installs it)"
            );
            println!("SKIP: no {tool} (apt-get install chromium chromium-driver)");
            return None;
        }
        let port = free_port();
        let driver = ChildGuard::spawn(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let base = format!("127.0.0.1:{port}");
        wait_until("chromedriver to answer", || {
            TcpStream::connect(&base).is_ok() && http(&base, "GET", "/status", &[], "").0 == 200
        });
        let capabilities = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"]
        }}}});
        let (status, body) = http(&base, "POST", "/session", &[], &capabilities.to_string());
        assert_eq!(status, 200, "{body}");
        let reply: Value = serde_json::from_str(&body).unwrap();
        let session = reply["value"]["sessionId"].as_str().unwrap().to_string();
        Some(Browser {
            _driver: driver,
            base,
            session,
        })
    }

    fn command(&self, method: &str, what: &str, body: Value) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, text) = http(&self.base, method, &path, &[], &body);
        assert_eq!(status, 200, "{what}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["value"].take()
    }

    fn open(&self, url: &str) {
        self.command("POST", "url", json!({ "url": url }));
    }

    /// Runs `script` in the page (a function body) and returns its value.
    fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            "execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    /// Waits until `script` returns true in the page.
    fn wait_for(&self, what: &str, script: &str) {
        wait_until(what, || self.eval(script) == Value::Bool(true));
    }

    fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let png = self.command("GET", "screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = TcpStream::connect(&self.base).map(|_| http(&self.base, "DELETE", &path, &[], ""));
    }
}

/// A running `zcluster dashboard`, and the URL it printed.
struct Dashboard {
    _guard: ChildGuard,
    url: String,
}

impl Dashboard {
    fn start(hub: &Hub, listen: &str, extra: &[&str]) -> Self {
        let err = hub.dir().join(format!("dashboard-{}.err", free_port()));
        let guard = ChildGuard::spawn(
            Command::new(zcluster_path())
                .args([
                    "dashboard",
                    "--listen",
                    listen,
                    "--interval",
                    "200ms",
                    "--hub",
                ])
                .arg(&hub.file)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&err).unwrap()),
        );
        let mut url = String::new();
        wait_until("the dashboard to print its address", || {
            let text = fs::read_to_string(&err).unwrap_or_default();
            match text.split_whitespace().find(|w| w.starts_with("http://")) {
                Some(found) => {
                    url = found.to_string();
                    true
                }
                None => false,
            }
        });
        Dashboard { _guard: guard, url }
    }

    /// `host:port` of its URL.
    fn addr(&self) -> String {
        let rest = self.url.trim_start_matches("http://");
        rest.split('/').next().unwrap().to_string()
    }
}

/// Where the test keeps its screenshot: under `target/`.
fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[test]
fn the_dashboard_shows_a_running_cluster_live_in_a_real_browser() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let hub = Hub::start();
    let mut workers = hub.workers(2, 2);
    let victim = hub.engine_of(workers[0].pid());
    let dashboard = Dashboard::start(&hub, "127.0.0.1:0", &[]);
    browser.open(&dashboard.url);
    browser.wait_for(
        "both engines on the page",
        "return document.querySelectorAll('#engines tr').length === 2",
    );

    // A job of 24 quick tasks and one that fails with its reason.
    let mut inputs: Vec<&str> = vec!["0.25"; 24];
    inputs.push("9");
    let inputs = input_file(hub.dir(), "inputs.txt", &inputs);
    let mut map = hub.spawn_map(
        "job",
        &[
            inputs.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "case $0 in 9) echo disk full >&2; exit 9;; *) sleep $0;; esac",
            "{}",
        ],
    );
    wait_until("the job to start", || map.job().is_some());
    let job = map.job().unwrap();
    let percent = format!(
        "const cell = document.querySelector('#jobs tr[data-job=\"{job}\"] .pct'); \
         return cell ? parseInt(cell.textContent) : -1;"
    );
    // Mid-job: a screenshot kept as the test's artifact.
    wait_until("the progress to rise", || {
        browser
            .eval(&percent)
            .as_i64()
            .is_some_and(|p| p > 0 && p < 100)
    });
    let shot = artifact("dashboard-mid-job.png");
    browser.screenshot(&shot);
    assert!(fs::metadata(&shot).unwrap().len() > 10_000);
    // It rises to 100 % live (no reload).
    wait_until("the progress to reach 100%", || {
        browser.eval(&percent).as_i64() == Some(100)
    });
    assert_eq!(map.wait().code(), Some(1));
    browser.wait_for(
        "the failure with its reason",
        &format!(
            "return [...document.querySelectorAll('#failures tr[data-job=\"{job}\"]')]\
             .some(r => r.textContent.includes('exited with status 9'))"
        ),
    );

    // An engine killed outright is shown dead within the heartbeat bound
    // (misses × period), plus the page's half-second stream.
    let killed = Instant::now();
    kill(Pid::from_raw(workers[0].pid()), Signal::SIGKILL).unwrap();
    workers[0].wait();
    browser.wait_for(
        "the killed engine shown dead",
        &format!("const r = document.querySelector('#engines tr[data-engine=\"{victim}\"]'); return !!r && r.className === 'dead';"),
    );
    let bound =
        Duration::from_millis(HEARTBEAT_MS * u64::from(HEARTBEAT_MISSES)) + Duration::from_secs(2);
    assert!(
        killed.elapsed() < bound,
        "shown dead after {:?} (bound {bound:?})",
        killed.elapsed()
    );

    // The API says the same.
    let addr = dashboard.addr();
    let (code, body) = http(&addr, "GET", "/api/status", &[], "");
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    let listed = hub.status();
    assert_eq!(
        status["status"]["jobs"][0]["done"],
        listed["jobs"][0]["done"]
    );
    assert!(status["engines_gone"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["id"] == victim && e["state"] == "dead"));
    let (code, body) = http(&addr, "GET", &format!("/api/jobs/{job}"), &[], "");
    assert_eq!(code, 200);
    let detail: Value = serde_json::from_str(&body).unwrap();
    let counted: u64 = detail["durations"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(counted, 25);
    let (code, body) = http(&addr, "GET", "/api/events", &[], "");
    assert_eq!(code, 200);
    let events: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(events
        .iter()
        .any(|e| e["event"] == "job_finished" && e["job"] == job));
    // Nothing changes the cluster unless asked for.
    let (code, _) = http(&addr, "POST", "/api/control/kill?engine=2", &[], "");
    assert_eq!(code, 403);
    drop(workers);
}

#[test]
fn off_loopback_the_dashboard_refuses_requests_without_its_token() {
    let hub = Hub::start();
    // Bound to every address (not loopback): reached here over loopback
    // only, as the tests' traffic must be.
    let dashboard = Dashboard::start(&hub, "0.0.0.0:0", &["--allow-control"]);
    let port = dashboard.addr().rsplit(':').next().unwrap().to_string();
    let addr = format!("127.0.0.1:{port}");
    let token = dashboard
        .url
        .split("token=")
        .nth(1)
        .expect("the printed URL carries the token")
        .to_string();
    for path in ["/", "/api/status", "/api/events", "/api/jobs/1"] {
        let (code, _) = http(&addr, "GET", path, &[], "");
        assert_eq!(code, 401, "{path}");
        let (code, _) = http(&addr, "GET", &format!("{path}?token=wrong{token}"), &[], "");
        assert_eq!(code, 401, "{path}");
    }
    let (code, page) = http(&addr, "GET", &format!("/?token={token}"), &[], "");
    assert_eq!(code, 200);
    // Served whole: no script or style from elsewhere.
    assert!(page.contains("<script>") && !page.contains("src=\"http"));
    let (code, _) = http(
        &addr,
        "GET",
        "/api/status",
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    );
    assert_eq!(code, 200);
    // Control takes the token in a header, not in the URL.
    let (code, _) = http(
        &addr,
        "POST",
        &format!("/api/control/cancel?job=1&token={token}"),
        &[],
        "",
    );
    assert_eq!(code, 403);
    let (code, body) = http(
        &addr,
        "POST",
        "/api/control/cancel?job=1",
        &[("X-Zcluster-Token", &token)],
        "",
    );
    // With it, the call reaches the hub, which answers for itself.
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("no running job 1"), "{body}");
}
