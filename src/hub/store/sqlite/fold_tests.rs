//! The fold leaves the table as the same writes applied one by one do.

use proptest::prelude::*;
use rusqlite::Connection;

use super::*;
use crate::hub::store::sqlite::schema::create_for_tests;
use crate::hub::store::sqlite::stored::Codec;
use crate::hub::store::state::{Change, Outcome};
use crate::hub::store::{TaskEvent, TaskState};

/// One event of a task, for the fold equivalence property.
#[derive(Debug, Clone)]
enum Event {
    Add,
    Start(i64),
    Requeue,
    Finish(bool),
}

fn event() -> impl Strategy<Value = (usize, Event)> {
    let kind = prop_oneof![
        Just(Event::Add),
        (1..4i64).prop_map(Event::Start),
        Just(Event::Requeue),
        any::<bool>().prop_map(Event::Finish),
    ];
    (0..4usize, kind)
}

/// A connection with the schema, one job, and tasks 1 and 2 already in
/// the table (tasks 3 and 4 may be added by the events).
fn fold_table() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    create_for_tests(&conn);
    conn.execute(
        "INSERT INTO jobs (id, submitted, client, spec) VALUES (1, 0, 'c', x'')",
        [],
    )
    .unwrap();
    for id in [1, 2] {
        apply(
            &conn,
            &mut Codec::default(),
            Write::AddTasks(vec![sql_task(id)]),
            &BatchErrors::default(),
        );
    }
    conn
}

fn sql_task(id: i64) -> SqlTask {
    SqlTask {
        id,
        job: 1,
        seq: id as u64 as i64,
        request: vec![id as u8],
        submitted: id,
    }
}

fn write_of(n: usize, (task, event): &(usize, Event)) -> Write {
    let (task, at) = (*task as i64 + 1, n as i64);
    let change = match event {
        Event::Add => return Write::AddTasks(vec![sql_task(task)]),
        Event::Start(engine) => Change::Start {
            engine: *engine,
            started: at,
            attempts: n as u32,
        },
        Event::Requeue => Change::Requeue,
        Event::Finish(ok) => Change::Finish(Outcome {
            state: if *ok {
                TaskState::Ok
            } else {
                TaskState::Failed
            },
            result: vec![n as u8; 3],
            error: (!ok).then(|| format!("error {n}")),
            completed: at,
            engine: 9,
            attempts: n as u32,
        }),
    };
    Write::Event { task, change }
}

fn table(conn: &Connection) -> Vec<String> {
    conn.prepare(concat!(
        "SELECT ",
        task_columns!(payloads),
        " FROM tasks ORDER BY id"
    ))
    .unwrap()
    .query_map([], |row| {
        Ok((0..12)
            .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
            .collect::<Vec<_>>()
            .join("|"))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// A batch holding more payload than [`FOLD_BYTES`] writes what it
/// holds at once instead of keeping it to the end of the batch.
#[test]
fn the_fold_writes_out_what_it_holds_past_its_byte_bound() {
    let conn = fold_table();
    let errors = BatchErrors::default();
    let mut fold = Fold::default();
    fold.apply(&conn, write_of(1, &(0, Event::Start(1))), &errors);
    fold.apply(&conn, write_of(2, &(1, Event::Start(1))), &errors);
    assert_eq!(fold.held.len(), 2);
    let big = Write::Event {
        task: 1,
        change: Change::Finish(Outcome {
            state: TaskState::Ok,
            result: vec![7; FOLD_BYTES + 1],
            error: None,
            completed: 3,
            engine: 1,
            attempts: 1,
        }),
    };
    fold.apply(&conn, big, &errors);
    assert!(
        fold.held.is_empty() && fold.order.is_empty(),
        "nothing held"
    );
    assert_eq!(fold.bytes, 0);
    let states: Vec<String> = conn
        .prepare("SELECT state FROM tasks ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(states, ["ok", "running"]);
}

/// Many tasks new in one flush are inserted many rows a statement; a
/// statement whose rows hold an id already taken is undone alone and its
/// rows written one by one, so the table and the failures are those of
/// the same writes applied one by one: the taken id's insert fails, its
/// events go to the row already there, and the rows around it go in.
#[test]
fn a_taken_id_among_many_new_tasks_fails_alone() {
    let (plain, folded) = (fold_table(), fold_table());
    let (plain_errors, folded_errors) = (BatchErrors::default(), BatchErrors::default());
    let mut fold = Fold::default();
    // 3 ..= 200 with 2 (already in the table) in place of 101: a full
    // chunk of INSERT_ROWS, then the one holding the taken id, then the rest.
    let ids: Vec<i64> = (3..=200).map(|id| if id == 101 { 2 } else { id }).collect();
    let mut writes = vec![Write::AddTasks(
        ids.iter().map(|&id| sql_task(id)).collect(),
    )];
    for (n, &id) in ids.iter().enumerate().step_by(7) {
        let task = id as usize - 1;
        writes.push(write_of(n, &(task, Event::Start(1))));
        writes.push(write_of(n + 1, &(task, Event::Finish(n % 2 == 0))));
    }
    writes.push(write_of(500, &(1, Event::Start(3))));
    for write in writes {
        // The same writes for both (a `Write` is not `Clone`).
        let again = match &write {
            Write::AddTasks(tasks) => {
                Write::AddTasks(tasks.iter().map(|t| sql_task(t.id)).collect())
            }
            Write::Event { task, change } => Write::Event {
                task: *task,
                change: change.clone(),
            },
            _ => unreachable!(),
        };
        apply(&plain, &mut Codec::default(), write, &plain_errors);
        fold.apply(&folded, again, &folded_errors);
    }
    fold.flush(&folded, &folded_errors);
    assert_eq!(table(&plain).len(), 199);
    assert_eq!(table(&plain), table(&folded));
    let failures = |d: BatchErrors| d.take().map(|(_, more)| more + 1);
    assert_eq!(failures(plain_errors), Some(1));
    assert_eq!(failures(folded_errors), Some(1));
}

proptest! {
    /// The writer's fold leaves the table as the same writes applied
    /// one by one do, whatever their order: adds (a duplicate id
    /// included), starts, requeues and finishes of old and new tasks.
    #[test]
    fn folded_writes_leave_the_table_unfolded_writes_leave(
        events in proptest::collection::vec(event(), 0..24)
    ) {
        let (plain, folded) = (fold_table(), fold_table());
        let (plain_errors, folded_errors) = (BatchErrors::default(), BatchErrors::default());
        let mut fold = Fold::default();
        for (n, e) in events.iter().enumerate() {
            apply(&plain, &mut Codec::default(), write_of(n, e), &plain_errors);
            fold.apply(&folded, write_of(n, e), &folded_errors);
        }
        fold.flush(&folded, &folded_errors);
        prop_assert_eq!(table(&plain), table(&folded));
        let failures = |d: BatchErrors| d.take().map(|(_, more)| more + 1);
        prop_assert_eq!(failures(plain_errors), failures(folded_errors));
    }
}

/// The SQL of each write, plain and folded, moves a task between states
/// exactly as [`TaskState::apply`] does, from every state: the guards are
/// built from the state machine, and this checks what they build.
#[test]
fn the_sql_of_each_event_follows_the_state_machine() {
    let events = [
        (Event::Start(1), TaskEvent::Start),
        (Event::Requeue, TaskEvent::Requeue),
        (Event::Finish(true), TaskEvent::Finish(TaskState::Ok)),
        (Event::Finish(false), TaskEvent::Finish(TaskState::Failed)),
    ];
    let state_of = |conn: &Connection| -> TaskState {
        conn.query_row("SELECT state FROM tasks WHERE id = 1", [], |r| r.get(0))
            .unwrap()
    };
    for from in TaskState::ALL {
        for (event, machine) in &events {
            let expected = from.apply(*machine).unwrap_or(from);
            let (plain, folded) = (fold_table(), fold_table());
            for conn in [&plain, &folded] {
                conn.execute(
                    "UPDATE tasks SET state = ?1, engine = 5, started = 5 WHERE id = 1",
                    [from],
                )
                .unwrap();
            }
            let errors = BatchErrors::default();
            let before = table(&plain);
            apply(
                &plain,
                &mut Codec::default(),
                write_of(1, &(0, event.clone())),
                &errors,
            );
            if from.apply(*machine).is_err() {
                assert_eq!(table(&plain), before, "{from} + {machine:?} refused");
            }
            // Folded: held from a start, then this event.
            let mut fold = Fold::default();
            let first = write_of(1, &(0, Event::Start(2)));
            fold.apply(&folded, first, &errors);
            fold.apply(&folded, write_of(2, &(0, event.clone())), &errors);
            fold.flush(&folded, &errors);
            assert!(!errors.any());
            assert_eq!(state_of(&plain), expected, "{from} + {machine:?}");
            let after_start = from.apply(TaskEvent::Start).unwrap_or(from);
            let folded_expected = after_start.apply(*machine).unwrap_or(after_start);
            assert_eq!(
                state_of(&folded),
                folded_expected,
                "{from} + start + {machine:?}, folded"
            );
        }
    }
}

/// The schema's CHECK takes every state there is, and no other; and it
/// is written without an `IN` list, which SQLite runs as a temporary
/// b-tree built on every INSERT and state UPDATE (see `schema::SCHEMA`; the partial index of version 3 likewise).
#[test]
fn the_schema_allows_every_state_and_no_other() {
    let conn = Connection::open_in_memory().unwrap();
    create_for_tests(&conn);
    conn.execute(
        "INSERT INTO jobs (id, submitted, client, spec) VALUES (1, 0, 'c', x'')",
        [],
    )
    .unwrap();
    let insert = |id: i64, state: &str| {
        conn.execute(
            "INSERT INTO tasks (id, job, seq, request, submitted, state)
             VALUES (?1, 1, ?1, x'', 0, ?2)",
            rusqlite::params![id, state],
        )
    };
    for (id, state) in (1..).zip(TaskState::ALL) {
        insert(id, state.as_str()).unwrap();
    }
    assert!(insert(100, "done").is_err());
    let plan: Vec<String> = conn
        .prepare("EXPLAIN INSERT INTO tasks (id, job, seq, request, submitted, state) VALUES (200, 1, 200, x'', 0, 'ok')")
        .unwrap()
        .query_map([], |row| row.get::<_, String>(1))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        !plan.iter().any(|op| op == "OpenEphemeral"),
        "an insert builds a temporary b-tree: {plan:?}"
    );
}
