//! The task state machine, as a table a reader can check by eye.

use super::*;
use TaskState::{Failed, Ok, Pending, Running};

/// Every (state, event) pair and what it leads to (`None`: refused).
#[test]
fn the_state_machine_is_this_table() {
    let table: [(TaskState, TaskEvent, Option<TaskState>); 20] = [
        (Pending, TaskEvent::Start, Some(Running)),
        (Running, TaskEvent::Start, Some(Running)),
        (Ok, TaskEvent::Start, None),
        (Failed, TaskEvent::Start, None),
        (Pending, TaskEvent::Requeue, None),
        (Running, TaskEvent::Requeue, Some(Pending)),
        (Ok, TaskEvent::Requeue, None),
        (Failed, TaskEvent::Requeue, None),
        (Pending, TaskEvent::Finish(Ok), Some(Ok)),
        (Running, TaskEvent::Finish(Ok), Some(Ok)),
        (Ok, TaskEvent::Finish(Ok), None),
        (Failed, TaskEvent::Finish(Ok), None),
        (Pending, TaskEvent::Finish(Failed), Some(Failed)),
        (Running, TaskEvent::Finish(Failed), Some(Failed)),
        (Ok, TaskEvent::Finish(Failed), None),
        (Failed, TaskEvent::Finish(Failed), None),
        (Pending, TaskEvent::Resubmit, None),
        (Running, TaskEvent::Resubmit, None),
        (Ok, TaskEvent::Resubmit, Some(Pending)),
        (Failed, TaskEvent::Resubmit, Some(Pending)),
    ];
    for (state, event, expected) in table {
        let got = state.apply(event);
        assert_eq!(got.ok(), expected, "{state} + {event:?}");
        if let Err(refused) = got {
            assert_eq!(refused, Refused { state, event });
        }
        // What the SQL guards are built from says the same.
        assert_eq!(
            event.applies_in().contains(&state),
            expected.is_some(),
            "{state} + {event:?}"
        );
    }
}

/// A "finish" as pending or running is no finish: refused everywhere.
#[test]
fn a_finish_that_does_not_complete_is_refused_in_every_state() {
    for end in [Pending, Running] {
        for state in TaskState::ALL {
            assert!(state.apply(TaskEvent::Finish(end)).is_err());
        }
    }
}

type Row = Progress<u64, u64, Vec<u8>, String>;

fn finish(state: TaskState, engine: u64) -> Change<u64, u64, Vec<u8>, String> {
    Change::Finish(Outcome {
        state,
        result: vec![1],
        error: Some("e".into()),
        completed: 9,
        engine,
        attempts: 2,
    })
}

/// What each event sets and clears, and that a refused one changes nothing.
#[test]
fn each_event_sets_its_columns_and_a_refused_one_none() {
    let mut row = Row::new();
    row.apply(Change::Start {
        engine: 3,
        started: 5,
        attempts: 1,
    })
    .unwrap();
    assert_eq!(
        (row.state, row.engine, row.started, row.attempts),
        (Running, Some(3), Some(5), 1)
    );
    row.apply(Change::Requeue).unwrap();
    assert_eq!((row.state, row.engine, row.started), (Pending, None, None));
    assert_eq!(row.attempts, 1, "a requeue keeps the count");
    row.apply(finish(Ok, 4)).unwrap();
    let done = row.clone();
    assert_eq!(
        (done.state, done.engine, done.completed, done.attempts),
        (Ok, Some(4), Some(9), 2)
    );
    assert_eq!(
        (done.result.as_deref(), done.error.as_deref()),
        (Some(&[1u8][..]), Some("e"))
    );
    assert!(row.apply(finish(Failed, 7)).is_err());
    assert!(row.apply(Change::Requeue).is_err());
    assert!(row.clone().apply(finish(Ok, 4)).is_err());
    assert_eq!(row, done, "first result kept");
    row.resubmit().unwrap();
    assert_eq!(
        row,
        Row {
            attempts: 2,
            ..Row::new()
        },
        "a resubmit clears all but the count"
    );
}
