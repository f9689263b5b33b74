//! One host's thread of `zcluster launch ssh`: prepare the host, start its
//! worker, wait for it to register, watch it, and start it again after a
//! crash (with backoff) or a restart (at once), until told to stop.

use super::*;

/// One host's thread: prepare, start, wait, watch, again.
pub(super) struct Supervisor {
    pub(super) shared: Arc<Shared>,
    pub(super) host: Host,
    pub(super) name: String,
    pub(super) first: Option<crossbeam_channel::Sender<FirstOutcome>>,
}

/// A running worker session.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    remote_host: String,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Supervisor {
    fn report(&self, event: HostEvent) {
        let report = Report {
            host: self.name.clone(),
            event,
        };
        if let Ok(mut sink) = self.shared.report.lock() {
            sink(&report);
        }
    }

    fn first(&mut self, outcome: FirstOutcome) {
        if let Some(first) = self.first.take() {
            let _ = first.send(outcome);
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    pub(super) fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        let mut again = false;
        loop {
            if self.stopping() {
                break;
            }
            let started = self.prepare().and_then(|()| self.spawn_worker());
            let mut session = match started {
                Ok(session) => session,
                Err(failure) => {
                    // The first start reports every failure as final; a
                    // restart waits out one that may pass.
                    let retry = again && failure.is_transient();
                    if retry {
                        self.report(HostEvent::Restarting {
                            how: format!("could not be started ({failure})"),
                            delay: backoff,
                        });
                    } else {
                        self.report(HostEvent::Failed(failure));
                        self.first(FirstOutcome::Failed);
                        break;
                    }
                    if !self.sleep(backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let since = Instant::now();
            if self.shared.options.detach {
                self.await_registration(&mut session, again);
                // The wrapper has returned (the worker runs on under
                // nohup): nothing to close or kill.
                let _ = session.child.wait();
                break;
            }
            let ended = match self.await_registration(&mut session, again) {
                Some(status) => Some(status),
                None => self.watch(&mut session),
            };
            let Some(status) = ended else {
                self.close(session);
                self.report(HostEvent::Stopped);
                break;
            };
            again = true;
            if since.elapsed() >= STABLE_RUN {
                backoff = FIRST_BACKOFF;
            }
            match status.code() {
                Some(0) => {
                    self.report(HostEvent::Exited);
                    break;
                }
                Some(RESTART_EXIT_CODE) => {
                    self.report(HostEvent::Restarting {
                        how: format!("asked for a restart (status {RESTART_EXIT_CODE})"),
                        delay: Duration::ZERO,
                    });
                }
                _ => {
                    let how = describe_exit(status, &session.stderr);
                    self.report(HostEvent::Restarting {
                        how,
                        delay: backoff,
                    });
                    if !self.sleep(backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        // A thread that stopped before any outcome still counts once.
        self.first(FirstOutcome::Failed);
    }

    /// Sleeps `delay` unless stopped first; whether to carry on.
    fn sleep(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            if self.stopping() {
                return false;
            }
            thread::sleep(POLL_PERIOD.min(deadline.saturating_duration_since(Instant::now())));
        }
        !self.stopping()
    }

    /// Copies the connection file (unless shared or local) and checks the
    /// remote binary's version, in one session.
    fn prepare(&self) -> Result<(), HostFailure> {
        let Target::Remote { .. } = &self.host.target else {
            return Ok(());
        };
        let options = &self.shared.options;
        let copy = !options.shared_fs;
        let mut script = String::new();
        if copy {
            let dir = quote(&remote_dir_of(&self.shared.remote_file));
            let file = quote(&self.shared.remote_file);
            // mktemp: created exclusively, 0600, under a random name; the
            // rename replaces a link instead of writing through it.
            script.push_str(&format!(
                "umask 077 && mkdir -p {dir} && t=$(mktemp {dir}/.hub.XXXXXX) && \
                 cat > \"$t\" && mv -f \"$t\" {file} && echo {COPIED_MARKER} || exit 3\n"
            ));
        }
        script.push_str(&format!("exec {} --version\n", options.remote_command));
        let input = if copy {
            self.shared.json.as_slice()
        } else {
            &[]
        };
        let output = run_bounded(self.command(&script), input, PREPARE_TIMEOUT)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let copied = stdout.lines().any(|l| l == COPIED_MARKER);
        match output.status.code() {
            Some(0) => {}
            Some(255) => return Err(classify_ssh(&stderr)),
            Some(3) if copy && !copied => return Err(HostFailure::Copy(one_line(&stderr))),
            Some(126 | 127) => return Err(HostFailure::BinaryMissing(one_line(&stderr))),
            _ => {
                return Err(HostFailure::BinaryMissing(format!(
                    "`{} --version` {}",
                    options.remote_command,
                    describe_status(output.status, &stderr)
                )))
            }
        }
        let version = stdout
            .lines()
            .rfind(|l| !l.trim().is_empty() && *l != COPIED_MARKER)
            .unwrap_or("")
            .trim()
            .to_string();
        if version.split_whitespace().last() != Some(VERSION) {
            return Err(HostFailure::VersionDiffers {
                remote: if version.is_empty() {
                    "no version".into()
                } else {
                    version
                },
                local: VERSION.into(),
            });
        }
        Ok(())
    }

    /// The command that runs `script` with `sh` on this host: through ssh,
    /// or directly for `:`.
    fn command(&self, script: &str) -> Command {
        let options = &self.shared.options;
        let mut command = match &self.host.target {
            Target::Local => {
                let mut command = Command::new("sh");
                command.arg("-c").arg(script);
                // As ssh does: relative paths (--remote-dir) are under home.
                if let Some(home) = std::env::var_os("HOME") {
                    command.current_dir(home);
                }
                command
            }
            Target::Remote { user, host, port } => {
                let mut command = Command::new(&options.ssh[0]);
                command.args(&options.ssh[1..]);
                // Options the user's command line sets come first and win:
                // ssh keeps the first value it reads for each.
                command.args(["-o", "BatchMode=yes"]);
                command.arg("-o").arg(format!(
                    "ConnectTimeout={}",
                    CONNECT_TIMEOUT.as_secs().max(1)
                ));
                command.arg("-T");
                if let Some(port) = port {
                    command.arg("-p").arg(port.to_string());
                }
                if let Some(user) = user {
                    command.arg("-l").arg(user);
                }
                command.arg(host);
                // The remote login shell may be any shell: it only runs
                // `sh -c 'SCRIPT'`.
                command.arg(format!("sh -c {}", quote(script)));
                command
            }
        };
        // Its own process group: a Ctrl-C at the terminal reaches the
        // launcher alone, which then closes every session in order. A
        // launcher killed outright closes ssh's stdin all the same (the
        // pipe's only writer is gone), so the sessions end with it.
        command.process_group(0);
        command
    }

    fn program(&self) -> String {
        match &self.host.target {
            Target::Local => "sh".into(),
            Target::Remote { .. } => self.shared.options.ssh[0].clone(),
        }
    }

    /// The connection file's path where the worker runs.
    fn worker_file(&self) -> String {
        match &self.host.target {
            Target::Local => self.shared.local_file.display().to_string(),
            Target::Remote { .. } => self.shared.remote_file.clone(),
        }
    }

    /// The worker command line, as a shell command.
    fn worker_command(&self) -> String {
        let binary = match &self.host.target {
            Target::Local => quote(&self.shared.options.local_command.display().to_string()),
            Target::Remote { .. } => self.shared.options.remote_command.clone(),
        };
        let mut command = format!("{binary} worker --hub {}", quote(&self.worker_file()));
        if let Some(slots) = self.host.slots {
            command.push_str(&format!(" -j {slots}"));
        }
        if let Some(origin) = &self.shared.options.origin {
            command.push_str(&format!(" --origin {}", quote(origin)));
        }
        command
    }

    /// Starts the worker wrapper and reads the line saying it runs.
    fn spawn_worker(&self) -> Result<Session, HostFailure> {
        let worker = self.worker_command();
        let script = if self.shared.options.detach {
            let dir = quote(self.shared.options.remote_dir.trim_end_matches('/'));
            format!(
                "umask 077 && mkdir -p {dir} || exit 3\n\
                 s=; command -v setsid >/dev/null 2>&1 && s=setsid\n\
                 nohup $s {worker} </dev/null >>{dir}/worker-$(uname -n).log 2>&1 &\n\
                 echo \"{STARTED_MARKER} $! $(uname -n)\"\n"
            )
        } else {
            // fd 3 keeps the session's stdin for the watcher: an
            // asynchronous list's stdin is /dev/null otherwise. When it
            // reaches end of file, the worker gets SIGTERM.
            format!(
                "exec 3<&0 </dev/null\n\
                 {worker} & w=$!\n\
                 echo \"{STARTED_MARKER} $w $(uname -n)\"\n\
                 {{ cat <&3 >/dev/null 2>&1; kill -TERM $w 2>/dev/null; }} >/dev/null 2>&1 &\n\
                 exec 3<&-\n\
                 wait $w; s=$?\n\
                 kill $! 2>/dev/null\n\
                 exit $s\n"
            )
        };
        let mut command = self.command(&script);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| HostFailure::Spawn {
            program: self.program(),
            reason: e.to_string(),
        })?;
        let stdin = child.stdin.take();
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(pipe) = child.stderr.take() {
            forward_lines(pipe, self.name.clone(), Some(stderr.clone()));
        }
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HostFailure::NotStarted("no stdout pipe".into()));
        };
        // The marker comes first; the rest of stdout is the worker's.
        let (marker_tx, marker_rx) = crossbeam_channel::bounded(1);
        let name = self.name.clone();
        let _ = thread::Builder::new()
            .name("zcluster-launch-out".into())
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let mut sent = false;
                for line in lines.by_ref() {
                    let Ok(line) = line else { break };
                    if !sent {
                        if let Some(rest) = line.strip_prefix(STARTED_MARKER) {
                            let _ = marker_tx.send(rest.trim().to_string());
                            sent = true;
                            continue;
                        }
                    }
                    eprintln!("[{name}] {line}");
                }
            });
        let deadline = Instant::now() + PREPARE_TIMEOUT;
        let mut session = Session {
            child,
            stdin,
            pid: 0,
            remote_host: String::new(),
            stderr,
        };
        loop {
            match marker_rx.recv_timeout(POLL_PERIOD) {
                Ok(rest) => {
                    let mut words = rest.split_whitespace();
                    let pid = words.next().and_then(|p| p.parse().ok());
                    let host = words.next();
                    if let (Some(pid), Some(host)) = (pid, host) {
                        session.pid = pid;
                        session.remote_host = host.to_string();
                        return Ok(session);
                    }
                    self.close(session);
                    return Err(HostFailure::NotStarted(format!(
                        "unexpected start line {rest:?}"
                    )));
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    // stdout closed without the marker: the session ended.
                    let status = session.child.wait();
                    thread::sleep(POLL_PERIOD); // let stderr's reader finish
                    let stderr = kept(&session.stderr);
                    return Err(match status {
                        Ok(s) if s.code() == Some(255) => classify_ssh(&stderr),
                        Ok(s) => HostFailure::NotStarted(describe_status(s, &stderr)),
                        Err(e) => HostFailure::NotStarted(e.to_string()),
                    });
                }
            }
            if self.stopping() || Instant::now() >= deadline {
                let stopping = self.stopping();
                self.close(session);
                return Err(if stopping {
                    HostFailure::NotStarted("stopped".into())
                } else {
                    HostFailure::Timeout(PREPARE_TIMEOUT)
                });
            }
        }
    }

    /// Waits until the hub lists the session's worker, then reports it;
    /// returns the session's exit status if it ended first, `None` once
    /// registered (or still running after the timeout, reported).
    fn await_registration(&mut self, session: &mut Session, again: bool) -> Option<ExitStatus> {
        let timeout = self.shared.options.register_timeout;
        let deadline = Instant::now() + timeout;
        let ctx = zmq::Context::new();
        let mut client: Option<HubClient> = None;
        let mut last_poll: Option<Instant> = None;
        loop {
            if !self.shared.options.detach {
                if let Ok(Some(status)) = session.child.try_wait() {
                    return Some(status);
                }
            }
            if self.stopping() {
                return None;
            }
            if last_poll.is_none_or(|t| t.elapsed() >= REGISTER_POLL_PERIOD) {
                last_poll = Some(Instant::now());
                if client.is_none() {
                    client = HubClient::connect(&ctx, &self.shared.connection).ok();
                    if let Some(c) = client.as_mut() {
                        c.set_timeout(REGISTER_CALL_TIMEOUT);
                    }
                }
                if let Some(c) = client.as_mut() {
                    match engine_of(c, &session.remote_host, session.pid) {
                        Ok(Some(engine)) => {
                            self.report(HostEvent::Started {
                                engine,
                                pid: session.pid,
                                again,
                            });
                            self.first(FirstOutcome::Started);
                            return None;
                        }
                        Ok(None) => {}
                        // A client that timed out may be out of step: a
                        // fresh one next time.
                        Err(_) => client = None,
                    }
                }
            }
            if Instant::now() >= deadline {
                self.report(HostEvent::NotRegistered {
                    pid: session.pid,
                    waited: timeout,
                });
                self.first(FirstOutcome::Unregistered);
                return None;
            }
            thread::sleep(POLL_PERIOD);
        }
    }

    /// Waits for the session to end; `None` when the launcher stops first.
    fn watch(&self, session: &mut Session) -> Option<ExitStatus> {
        loop {
            match session.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => {}
                Err(_) => return Some(ExitStatus::from_raw(1 << 8)),
            }
            if self.stopping() {
                return None;
            }
            thread::sleep(POLL_PERIOD);
        }
    }

    /// Ends a session: closing its stdin stops the worker gracefully; ssh
    /// is killed if it is still there after [`STOP_GRACE`].
    fn close(&self, mut session: Session) {
        drop(session.stdin.take());
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(session.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(POLL_PERIOD);
        }
        let _ = session.child.kill();
        let _ = session.child.wait();
    }
}

/// The engine id the hub gave the worker `pid` on `host`, if registered.
fn engine_of(
    client: &mut HubClient,
    host: &str,
    pid: u32,
) -> Result<Option<u64>, crate::hub::client::ClientError> {
    Ok(client
        .status(false)?
        .engines
        .iter()
        .find(|e| e.pid == pid && e.host == host)
        .map(|e| e.id))
}
