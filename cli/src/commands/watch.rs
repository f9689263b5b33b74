//! `zcluster status --watch`: a full-screen view of the hub that redraws in
//! place: the engines (slots busy, tasks done, failures, heartbeat age, a
//! dead or gone mark), the jobs (progress bar, rate, ETA, failed), and the
//! last failures with their reasons.
//!
//! A poller thread owns the hub connections (a [`HubClient`] asking for
//! the status every interval, a [`Subscriber`] for the events) and sends
//! what it learns over a channel; the main thread only draws and reads the
//! keyboard, so `q` answers at once even while the hub does not. It
//! survives a resized terminal (each draw fits the size of the moment), a
//! hub restart (the client's connection is renewed: "hub restarted") and
//! a hub that is gone (it says so and keeps asking).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::Frame;
use zcluster::hub::client::HubClient;
use zcluster::hub::connection::ConnectionInfo;
use zcluster::hub::protocol::{EngineId, EngineStatus, HubStatus, JobId, Notification};
use zcluster::hub::subscriber::{Received, Subscriber};

/// Failures kept for the view (the newest first).
const FAILURES_KEPT: usize = 50;

/// Engines gone (dead or left) kept for the view.
const GONE_KEPT: usize = 20;

/// How far back a job's rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// How long "hub restarted" stays on the screen.
const RESTART_NOTICE: Duration = Duration::from_secs(15);

/// Longest the keyboard waits between two looks at the channel.
const KEY_POLL: Duration = Duration::from_millis(50);

/// What the poller thread learned (the dashboard's too).
pub(super) enum Update {
    /// The hub answered: its status, under connection number `generation`.
    Status(HubStatus, u64),
    /// The hub did not answer.
    NoAnswer(String),
    /// An event from the notification socket.
    Event(Received),
}

/// Asks the hub every `interval` and forwards its events, until the view
/// hangs up.
pub(super) fn poll_hub(connection: ConnectionInfo, interval: Duration, to_view: Sender<Update>) {
    let ctx = zmq::Context::new();
    let mut client = match HubClient::connect(&ctx, &connection) {
        Ok(client) => client,
        Err(e) => {
            let _ = to_view.send(Update::NoAnswer(e.to_string()));
            return;
        }
    };
    client.set_timeout(interval.clamp(Duration::from_millis(500), Duration::from_secs(3)));
    let mut subscriber = Subscriber::connect(&ctx, &connection).ok();
    let mut next_look = Instant::now();
    loop {
        if Instant::now() >= next_look {
            let update = match client.status(false) {
                Ok(status) => Update::Status(status, client.generation()),
                Err(e) => Update::NoAnswer(e.to_string()),
            };
            if to_view.send(update).is_err() {
                return;
            }
            next_look = Instant::now() + interval;
        }
        let wait = next_look.saturating_duration_since(Instant::now());
        match subscriber.as_mut() {
            Some(events) => match events.next(wait) {
                Ok(Some(received)) => {
                    if to_view.send(Update::Event(received)).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(_) => std::thread::sleep(wait),
            },
            None => std::thread::sleep(wait),
        }
    }
}

/// How a view's link to the hub stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// No answer yet.
    Connecting,
    /// Answering.
    Up,
    /// It answered again after a restart (or an absence), at that instant.
    Restarted(Instant),
    /// Not answering since then, with the last error.
    Down(Instant, String),
}

/// A view's link to the hub, kept from the poller's updates: the terminal
/// view and the dashboard say the same things of it.
#[derive(Debug, Clone)]
pub struct HubLink {
    pub link: Link,
    /// The client connection the hub last answered on: a new one means
    /// the hub restarted.
    generation: Option<u64>,
}

impl Default for HubLink {
    fn default() -> Self {
        HubLink {
            link: Link::Connecting,
            generation: None,
        }
    }
}

impl HubLink {
    /// The hub answered on connection `generation`, at `now`.
    pub fn answered(&mut self, generation: u64, now: Instant) {
        let renewed = self.generation.is_some_and(|g| g != generation);
        let was_down = matches!(self.link, Link::Down(..));
        self.link = match &self.link {
            _ if renewed || was_down => Link::Restarted(now),
            Link::Restarted(at) if now.duration_since(*at) < RESTART_NOTICE => Link::Restarted(*at),
            _ => Link::Up,
        };
        self.generation = Some(generation);
    }

    /// The hub did not answer, at `now`.
    pub fn silent(&mut self, error: String, now: Instant) {
        self.link = match &self.link {
            Link::Down(since, _) => Link::Down(*since, error),
            _ => Link::Down(now, error),
        };
    }

    /// What a person is told of it: `connected`, `hub restarted;
    /// reconnected`, `hub gone (no answer for 5.0 s; still trying): ...`.
    pub fn describe(&self, now: Instant) -> String {
        match &self.link {
            Link::Connecting => "connecting".into(),
            Link::Up => "connected".into(),
            Link::Restarted(_) => "hub restarted; reconnected".into(),
            Link::Down(since, error) => format!(
                "hub gone (no answer for {}; still trying): {error}",
                super::short_duration(now.duration_since(*since))
            ),
        }
    }
}

/// One failure as the view lists it.
struct Failure {
    at: SystemTime,
    job: JobId,
    task: u64,
    engine: Option<EngineId>,
    retried: bool,
    reason: String,
}

/// Everything the view shows, kept from the updates (drawing is a pure
/// function of it, tested without a terminal).
pub struct View {
    hub: PathBuf,
    link: HubLink,
    status: Option<HubStatus>,
    /// Each job's (instant, tasks finished), over the rate window.
    history: HashMap<JobId, VecDeque<(Instant, u64)>>,
    failures: VecDeque<Failure>,
    /// Failures seen per engine since the view started.
    failed_on: HashMap<EngineId, u64>,
    /// Engines that went: (id, dead or left, reason, when).
    gone: VecDeque<(EngineId, bool, String, SystemTime)>,
}

impl View {
    fn new(hub: PathBuf) -> Self {
        View {
            hub,
            link: HubLink::default(),
            status: None,
            history: HashMap::new(),
            failures: VecDeque::new(),
            failed_on: HashMap::new(),
            gone: VecDeque::new(),
        }
    }

    fn apply(&mut self, update: Update, now: Instant) {
        match update {
            Update::Status(status, generation) => {
                self.link.answered(generation, now);
                for job in &status.jobs {
                    let history = self.history.entry(job.id).or_default();
                    history.push_back((now, job.done + job.failed));
                    while history.len() > 2
                        && history
                            .get(1)
                            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
                    {
                        history.pop_front();
                    }
                }
                self.status = Some(status);
            }
            Update::NoAnswer(error) => self.link.silent(error, now),
            Update::Event(received) => self.event(received),
        }
    }

    fn event(&mut self, received: Received) {
        let failure = match received.notification {
            Notification::TaskFailed {
                job,
                task,
                engine,
                reason,
                ..
            } => Failure {
                at: received.at,
                job,
                task,
                engine,
                retried: false,
                reason,
            },
            Notification::TaskRetried {
                job,
                task,
                engine,
                reason,
                ..
            } => Failure {
                at: received.at,
                job,
                task,
                engine: Some(engine),
                retried: true,
                reason,
            },
            Notification::EngineDead { engine, reason, at } => {
                self.engine_gone(engine, true, reason, at);
                return;
            }
            Notification::EngineRetired { engine, reason, at } => {
                self.engine_gone(engine, false, reason, at);
                return;
            }
            _ => return,
        };
        if let Some(engine) = failure.engine {
            *self.failed_on.entry(engine).or_default() += 1;
        }
        self.failures.push_front(failure);
        self.failures.truncate(FAILURES_KEPT);
    }

    fn engine_gone(&mut self, engine: EngineId, dead: bool, reason: String, at: SystemTime) {
        self.gone.push_front((engine, dead, reason, at));
        self.gone.truncate(GONE_KEPT);
        if let Some(status) = self.status.as_mut() {
            status.engines.retain(|e| e.id != engine);
        }
    }

    /// Tasks per second of `job` over the rate window.
    fn rate(&self, job: JobId) -> Option<f64> {
        let history = self.history.get(&job)?;
        let (first, last) = (history.front()?, history.back()?);
        let secs = last.0.duration_since(first.0).as_secs_f64();
        (secs > 0.0).then(|| (last.1.saturating_sub(first.1)) as f64 / secs)
    }

    fn link_line(&self, now: Instant) -> Line<'static> {
        let hub = self.hub.display();
        let color = match &self.link.link {
            Link::Up => Color::Green,
            Link::Down(..) => Color::Red,
            Link::Connecting | Link::Restarted(_) => Color::Yellow,
        };
        let text = format!("hub {hub}: {}", self.link.describe(now));
        Line::styled(
            format!("{text}   (q: quit)"),
            Style::new().fg(color).add_modifier(Modifier::BOLD),
        )
    }

    /// Draws the whole view on `frame`, fitting whatever size it has.
    pub fn draw(&self, frame: &mut Frame, now: Instant) {
        let engines = self.status.as_ref().map_or(0, |s| s.engines.len()) + self.gone.len();
        let [top, engines_area, jobs_area, failures_area] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length((engines as u16).saturating_add(3).min(12)),
            Constraint::Min(5),
            Constraint::Length(8),
        ])
        .areas(frame.area());
        frame.render_widget(Paragraph::new(self.link_line(now)), top);
        frame.render_widget(self.engines_table(), engines_area);
        frame.render_widget(self.jobs_table(jobs_area.width), jobs_area);
        frame.render_widget(self.failures_table(), failures_area);
    }

    fn engines_table(&self) -> Table<'static> {
        let header = Row::new([
            "ENGINE",
            "HOST",
            "PID",
            "BUSY",
            "DONE",
            "FAILED",
            "HEARTBEAT",
            "",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD));
        let mut rows: Vec<Row> = Vec::new();
        let (mut busy, mut slots) = (0, 0);
        for e in self.status.iter().flat_map(|s| &s.engines) {
            busy += e.running;
            slots += e.slots;
            rows.push(Row::new([
                e.id.to_string(),
                e.host.clone(),
                e.pid.to_string(),
                format!("{}/{}", e.running, e.slots),
                e.completed.to_string(),
                self.failed_on.get(&e.id).copied().unwrap_or(0).to_string(),
                format!("{} ago", super::short_duration(e.last_heartbeat)),
                engine_notes(e),
            ]));
        }
        for (id, dead, reason, _) in &self.gone {
            let mark = if *dead { "DEAD" } else { "left" };
            rows.push(
                Row::new([
                    id.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    self.failed_on.get(id).copied().unwrap_or(0).to_string(),
                    String::new(),
                    format!("{mark}: {reason}"),
                ])
                .style(Style::new().fg(if *dead {
                    Color::Red
                } else {
                    Color::DarkGray
                })),
            );
        }
        Table::new(
            rows,
            [
                Constraint::Length(6),
                Constraint::Length(16),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(10),
                Constraint::Fill(1),
            ],
        )
        .header(header)
        .block(Block::bordered().title(format!(" Engines: {busy}/{slots} slots busy ")))
    }

    fn jobs_table(&self, width: u16) -> Table<'static> {
        let bar_width = usize::from(width.saturating_sub(70).clamp(10, 40));
        let header = Row::new([
            "JOB", "PROGRESS", "DONE", "FAILED", "RATE", "ETA", "CLIENT", "COMMAND",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD));
        let mut jobs: Vec<_> = self.status.iter().flat_map(|s| &s.jobs).collect();
        // The running ones first, the newest first.
        jobs.sort_by_key(|j| {
            let over = j.total.is_some_and(|t| j.done + j.failed >= t);
            (over, std::cmp::Reverse(j.id))
        });
        let rows = jobs.into_iter().map(|j| {
            let finished = j.done + j.failed;
            let fraction = j.total.map(|t| {
                if t == 0 {
                    1.0
                } else {
                    finished as f64 / t as f64
                }
            });
            let bar = match fraction {
                Some(f) => {
                    let filled = ((f * bar_width as f64).round() as usize).min(bar_width);
                    format!(
                        "{}{} {:>3.0}%",
                        "█".repeat(filled),
                        "░".repeat(bar_width - filled),
                        f * 100.0
                    )
                }
                None => format!("{finished} of ?"),
            };
            let rate = self.rate(j.id);
            let eta = match (rate, j.total) {
                (_, Some(t)) if finished >= t => "done".to_string(),
                (Some(r), Some(t)) if r > 0.0 => {
                    super::short_duration(Duration::from_secs_f64((t - finished) as f64 / r))
                }
                _ => "-".to_string(),
            };
            let style = if j.failed > 0 {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            };
            Row::new([
                Cell::from(j.id.to_string()),
                Cell::from(bar),
                Cell::from(format!(
                    "{}/{}",
                    j.done,
                    j.total.map_or("?".into(), |t| t.to_string())
                )),
                Cell::from(j.failed.to_string()).style(style),
                Cell::from(rate.map_or("-".into(), |r| format!("{r:.1}/s"))),
                Cell::from(eta),
                Cell::from(super::client_mark(j.client_attached)).style(
                    if j.client_attached == Some(false) {
                        Style::new().fg(Color::Yellow)
                    } else {
                        Style::new()
                    },
                ),
                Cell::from(j.description.clone()),
            ])
        });
        Table::new(
            rows,
            [
                Constraint::Length(5),
                Constraint::Length(bar_width as u16 + 5),
                Constraint::Length(12),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Fill(1),
            ],
        )
        .header(header)
        .block(Block::bordered().title(" Jobs "))
    }

    fn failures_table(&self) -> Table<'static> {
        let header = Row::new(["TIME", "JOB/TASK", "ENGINE", "", "REASON"])
            .style(Style::new().add_modifier(Modifier::BOLD));
        let rows = self.failures.iter().map(|f| {
            let time = humantime::format_rfc3339_seconds(f.at).to_string();
            Row::new([
                time.get(11..19).unwrap_or(&time).to_string(),
                format!("{}/{}", f.job, f.task),
                f.engine.map_or("hub".into(), |e| e.to_string()),
                if f.retried { "retried" } else { "failed" }.to_string(),
                f.reason.replace('\n', " "),
            ])
        });
        Table::new(
            rows,
            [
                Constraint::Length(9),
                Constraint::Length(10),
                Constraint::Length(7),
                Constraint::Length(8),
                Constraint::Fill(1),
            ],
        )
        .header(header)
        .block(Block::bordered().title(" Last failures "))
    }
}

/// Runs the view until `q`, Esc or Ctrl-C.
pub fn run(connection: ConnectionInfo, hub: PathBuf, interval: Duration) -> anyhow::Result<()> {
    let (to_view, updates): (Sender<Update>, Receiver<Update>) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("watch-poller".into())
        .spawn(move || poll_hub(connection, interval, to_view))?;
    let mut terminal = ratatui::try_init()?;
    let outcome = (|| -> anyhow::Result<()> {
        let mut view = View::new(hub);
        let mut next_draw = Instant::now();
        loop {
            let now = Instant::now();
            let mut dirty = false;
            while let Ok(update) = updates.try_recv() {
                view.apply(update, now);
                dirty = true;
            }
            if dirty || now >= next_draw {
                terminal.draw(|frame| view.draw(frame, now))?;
                // The heartbeat ages and the "no answer for" count move on.
                next_draw = now + Duration::from_millis(500);
            }
            if event::poll(KEY_POLL)? {
                match event::read()? {
                    Event::Key(key) if key.kind == KeyEventKind::Press => {
                        let ctrl_c = key.code == KeyCode::Char('c')
                            && key.modifiers.contains(KeyModifiers::CONTROL);
                        if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                            return Ok(());
                        }
                    }
                    Event::Resize(..) => {
                        terminal.autoresize()?;
                        terminal.draw(|frame| view.draw(frame, Instant::now()))?;
                    }
                    _ => {}
                }
            }
        }
    })();
    ratatui::try_restore()?;
    outcome
}

/// What the last column says of a live engine: draining, what of its
/// offer is in use (when it declared resources), where it came from.
fn engine_notes(e: &EngineStatus) -> String {
    let mut notes = Vec::new();
    if e.draining {
        notes.push("draining".to_string());
    }
    if e.offer.is_some() {
        notes.push(format!("in use: {}", e.in_use));
    }
    if let Some(origin) = &e.origin {
        notes.push(origin.clone());
    }
    notes.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use zcluster::hub::protocol::{EngineStatus, JobStatus};

    fn screen(view: &View, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal
            .draw(|frame| view.draw(frame, Instant::now()))
            .unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn status(done: u64) -> HubStatus {
        HubStatus {
            engines: vec![EngineStatus {
                id: 3,
                host: "node7".into(),
                pid: 42,
                slots: 4,
                running: 2,
                completed: done,
                last_heartbeat: Duration::from_millis(300),
                ..EngineStatus::default()
            }],
            jobs: vec![JobStatus {
                id: 5,
                submitted: SystemTime::now(),
                description: "sleep {}".into(),
                total: Some(10),
                pending: 10 - done,
                running: 0,
                done,
                failed: 0,
                queued_tasks: Vec::new(),
                request: None,
                waiting_for: None,
                client_attached: Some(true),
            }],
            store: "mem".into(),
        }
    }

    /// Progress, rate, a failure's reason, a dead engine and the link's
    /// state all reach the screen, at a small size and a large one.
    #[test]
    fn the_view_shows_progress_rate_failures_and_the_hubs_state() {
        let mut view = View::new("hub.json".into());
        let start = Instant::now();
        view.apply(Update::Status(status(2), 1), start);
        view.apply(Update::Status(status(6), 1), start + Duration::from_secs(2));
        view.apply(
            Update::Event(Received {
                notification: Notification::TaskFailed {
                    job: 5,
                    task: 9,
                    engine: Some(3),
                    attempts: 1,
                    reason: "exited with status 3".into(),
                    at: SystemTime::now(),
                },
                at: SystemTime::now(),
            }),
            start,
        );
        let shown = screen(&view, 120, 30);
        assert!(shown.contains("connected"), "{shown}");
        assert!(shown.contains("60%"), "{shown}");
        assert!(shown.contains("2.0/s"), "{shown}");
        assert!(shown.contains("exited with status 3"), "{shown}");
        assert!(shown.contains("node7"), "{shown}");
        // Small terminals get the same view, cut to fit, without a panic.
        let _ = screen(&view, 20, 5);
        view.apply(
            Update::Event(Received {
                notification: Notification::EngineDead {
                    engine: 3,
                    reason: "missed 3 heartbeats".into(),
                    at: SystemTime::now(),
                },
                at: SystemTime::now(),
            }),
            start,
        );
        view.apply(Update::NoAnswer("no answer".into()), start);
        let shown = screen(&view, 120, 30);
        assert!(shown.contains("DEAD: missed 3 heartbeats"), "{shown}");
        assert!(shown.contains("hub gone"), "{shown}");
        view.apply(Update::Status(status(6), 2), start);
        assert!(screen(&view, 120, 30).contains("hub restarted"));
    }

    /// A live engine's last column says it is draining, what of its offer
    /// is in use, and where it came from.
    #[test]
    fn an_engine_shows_draining_its_resources_in_use_and_its_origin() {
        let start = Instant::now();
        let mut view = View::new("hub.json".into());
        let mut status = status(2);
        status.engines[0].draining = true;
        status.engines[0].offer = Some("4 cpus, gpus 0,1".into());
        status.engines[0].in_use = "2/4 cpus, 1/2 gpus".into();
        status.engines[0].origin = Some("slurm:41/n1".into());
        view.apply(Update::Status(status, 1), start);
        let shown = screen(&view, 160, 30);
        assert!(
            shown.contains("draining; in use: 2/4 cpus, 1/2 gpus; slurm:41/n1"),
            "{shown}"
        );
    }
}
