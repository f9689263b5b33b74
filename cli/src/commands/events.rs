//! `zcluster events`: the hub's notifications as JSON Lines, one per event
//! as it happens, for a script to `| jq`. Every line has `event` (its kind
//! in snake case) and `at` (RFC 3339, milliseconds); the rest are the
//! event's own fields (`job`, `task`, `engine`, `reason`, ...).

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use clap::Args;
use serde_json::{Map, Value};
use zcluster::hub::protocol::{JobId, Notification};
use zcluster::hub::subscriber::{Received, Subscriber};

use super::HubArg;

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    hub: HubArg,
    /// Only the events of this job (engines' events are left out too).
    #[arg(long, value_name = "JOB")]
    job: Option<JobId>,
}

/// How often the loop looks at its stop flag while no event comes.
const STOP_CHECK_PERIOD: Duration = Duration::from_millis(200);

/// `EngineDead` -> `engine_dead`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// One event as a JSON object: `event`, `at`, then its fields. The two
/// engine notices defined first are named for what they are about
/// (`engine_registered`, `engine_unregistered`). Shared with the other
/// live views, so that every one of them speaks of events alike.
pub fn event_json(received: &Received) -> Value {
    let mut object = Map::new();
    let (name, fields) = match serde_json::to_value(&received.notification) {
        Ok(Value::Object(outer)) => match outer.into_iter().next() {
            Some((name, Value::Object(fields))) => (name, fields),
            Some((name, _)) => (name, Map::new()),
            None => ("Unknown".to_string(), Map::new()),
        },
        Ok(Value::String(name)) => (name, Map::new()),
        _ => ("Unknown".to_string(), Map::new()),
    };
    let name = match name.as_str() {
        "Registered" | "Unregistered" => format!("engine_{}", snake_case(&name)),
        _ => snake_case(&name),
    };
    object.insert("event".into(), Value::String(name));
    object.insert(
        "at".into(),
        Value::String(humantime::format_rfc3339_millis(received.at).to_string()),
    );
    for (field, value) in fields {
        match field.as_str() {
            "at" => {}
            // A Duration is {secs, nanos} in serde: seconds read better.
            "running_for" => {
                if let Notification::TaskCopied { running_for, .. } = &received.notification {
                    object.insert("running_for_s".into(), running_for.as_secs_f64().into());
                }
            }
            _ => {
                object.insert(field, value);
            }
        }
    }
    Value::Object(object)
}

pub fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let connection = args.hub.connection()?;
    let ctx = zmq::Context::new();
    let mut subscriber = Subscriber::connect(&ctx, &connection)?;
    let stop = super::stop_on_signals()?;
    let mut out = super::stdout();
    let mut listening = false;
    while !stop.load(Ordering::Relaxed) {
        let Some(received) = subscriber.next(STOP_CHECK_PERIOD)? else {
            continue;
        };
        if let Notification::Subscribed { .. } = received.notification {
            // Not an event of the cluster: the sign that every event
            // from now on reaches this process. Said once, for a person
            // or a script waiting for it.
            if !listening {
                listening = true;
                eprintln!(
                    "zcluster events: listening to the hub at {} since {}",
                    subscriber.url(),
                    humantime::format_rfc3339_millis(SystemTime::now())
                );
            }
            continue;
        }
        if args.job.is_some() && received.notification.job() != args.job {
            continue;
        }
        writeln!(out, "{}", event_json(&received))?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_flat_object_with_its_kind_and_time() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        let received = Received {
            notification: Notification::TaskCopied {
                job: 4,
                task: 7,
                engine: 2,
                running_for: Duration::from_millis(2_500),
                at,
            },
            at,
        };
        let json = event_json(&received);
        assert_eq!(json["event"], "task_copied");
        assert_eq!(json["at"], "1970-01-01T00:00:01.500Z");
        assert_eq!(json["job"], 4);
        assert_eq!(json["running_for_s"], 2.5);
        assert!(json.get("running_for").is_none());
        let registered = Received {
            notification: Notification::Registered {
                engine: 1,
                host: "h".into(),
                pid: 9,
                slots: 2,
            },
            at,
        };
        assert_eq!(event_json(&registered)["event"], "engine_registered");
    }
}
