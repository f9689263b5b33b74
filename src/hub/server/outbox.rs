//! The one seam every send of the hub goes through. The hub's reactions
//! say what to send to whom; the [`Outbox`] sends it: the hub's sockets
//! ([`Sockets`](super::sockets::Sockets)) when it runs, a [`Recorder`] in
//! the unit tests, which then check what the hub said without a socket.

use crate::hub::protocol::{HubToEngine, JobId, Notification, Reply};
use crate::message::{Command, Header, MessageError};

/// Where the hub's messages go. Sends that the hub reacts to when they fail
/// (tasks, commands) return the error; the others are logged and dropped
/// there (an engine or client that is gone learns nothing either way).
/// One task as the hub sends it to an engine: beside the request as it
/// was recorded (never decoded or rewritten here), the attempt this is and,
/// for a job with a resource request, what this copy was given there (a
/// [`TaskGrant`](crate::resources::TaskGrant) in its metadata form). The
/// engine stamps both into the request's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TaskOut<'a> {
    /// The task's id.
    pub(super) id: u64,
    /// 1 for the first run.
    pub(super) attempt: u32,
    /// What it was given, if its job asked for resources.
    pub(super) grant: Option<String>,
    /// The request as recorded.
    pub(super) request: &'a [u8],
}

pub(super) trait Outbox {
    /// Tasks of `job` to the engine `engine`: a first attempt with no
    /// grant alone as a plain request, anything else as one `Tasks`
    /// message, which carries each task's attempt and grant.
    fn tasks(
        &mut self,
        engine: &[u8],
        job: JobId,
        tasks: &[TaskOut<'_>],
    ) -> Result<(), MessageError>;

    /// A command (kill, restart, ping) to the engine `engine`, under `token`.
    fn command(&mut self, engine: &[u8], token: u64, command: &Command)
        -> Result<(), MessageError>;

    /// A control message to the engine `engine`.
    fn to_engine(&mut self, engine: &[u8], message: &HubToEngine);

    /// The answer to a client's call number `request`.
    fn reply(&mut self, client: &[u8], request: u64, reply: &Reply);

    /// A result from an engine, forwarded as it came (header and body).
    fn result(&mut self, client: &[u8], header: &Header, body: &[u8]);

    /// A failed result from the hub itself, for a task that will not run.
    fn failure(&mut self, client: &[u8], job: JobId, task: u64, reason: &str);

    /// A notification for every subscriber.
    fn publish(&mut self, notification: &Notification);

    /// Sends what is kept to go several per message (results to clients):
    /// called at the end of every turn of the hub's loop, so batching
    /// never holds anything back for longer than the turn it came in.
    fn flush(&mut self) {}
}

#[cfg(test)]
pub(super) use recorder::{Recorder, Sent};

#[cfg(test)]
mod recorder {
    use std::collections::HashSet;

    use super::{Outbox, TaskOut};
    use crate::hub::protocol::{HubToEngine, JobId, Notification, Reply};
    use crate::message::{Command, Header, MessageError};

    /// One message the hub sent, as a test sees it.
    #[derive(Debug, Clone, PartialEq)]
    pub(in crate::hub::server) enum Sent {
        Tasks {
            engine: Vec<u8>,
            job: JobId,
            tasks: Vec<u64>,
            /// Each task's attempt number, as sent.
            attempts: Vec<u32>,
            /// What each was given where it goes, as sent.
            grants: Vec<Option<String>>,
        },
        Command {
            engine: Vec<u8>,
            command: Command,
        },
        ToEngine {
            engine: Vec<u8>,
            message: HubToEngine,
        },
        Reply {
            client: Vec<u8>,
            reply: Reply,
        },
        Result {
            client: Vec<u8>,
            header: Header,
        },
        Failure {
            client: Vec<u8>,
            job: JobId,
            task: u64,
            reason: String,
        },
        Notify(Notification),
    }

    /// An outbox that keeps what is sent, and fails sends to the engines
    /// named unreachable (as a ROUTER does for a peer that is gone).
    #[derive(Default)]
    pub(in crate::hub::server) struct Recorder {
        pub(in crate::hub::server) sent: Vec<Sent>,
        pub(in crate::hub::server) unreachable: HashSet<Vec<u8>>,
    }

    impl Recorder {
        /// What was sent since the last call.
        pub(in crate::hub::server) fn take(&mut self) -> Vec<Sent> {
            std::mem::take(&mut self.sent)
        }

        fn reach(&self, engine: &[u8]) -> Result<(), MessageError> {
            if self.unreachable.contains(engine) {
                Err(MessageError::Zmq(zmq::Error::EHOSTUNREACH))
            } else {
                Ok(())
            }
        }
    }

    impl Outbox for Recorder {
        fn tasks(
            &mut self,
            engine: &[u8],
            job: JobId,
            tasks: &[TaskOut<'_>],
        ) -> Result<(), MessageError> {
            self.reach(engine)?;
            self.sent.push(Sent::Tasks {
                engine: engine.to_vec(),
                job,
                tasks: tasks.iter().map(|t| t.id).collect(),
                attempts: tasks.iter().map(|t| t.attempt).collect(),
                grants: tasks.iter().map(|t| t.grant.clone()).collect(),
            });
            Ok(())
        }

        fn command(
            &mut self,
            engine: &[u8],
            _token: u64,
            command: &Command,
        ) -> Result<(), MessageError> {
            self.reach(engine)?;
            self.sent.push(Sent::Command {
                engine: engine.to_vec(),
                command: command.clone(),
            });
            Ok(())
        }

        fn to_engine(&mut self, engine: &[u8], message: &HubToEngine) {
            self.sent.push(Sent::ToEngine {
                engine: engine.to_vec(),
                message: message.clone(),
            });
        }

        fn reply(&mut self, client: &[u8], _request: u64, reply: &Reply) {
            self.sent.push(Sent::Reply {
                client: client.to_vec(),
                reply: reply.clone(),
            });
        }

        fn result(&mut self, client: &[u8], header: &Header, _body: &[u8]) {
            self.sent.push(Sent::Result {
                client: client.to_vec(),
                header: *header,
            });
        }

        fn failure(&mut self, client: &[u8], job: JobId, task: u64, reason: &str) {
            self.sent.push(Sent::Failure {
                client: client.to_vec(),
                job,
                task,
                reason: reason.to_string(),
            });
        }

        fn publish(&mut self, notification: &Notification) {
            self.sent.push(Sent::Notify(notification.clone()));
        }
    }
}
