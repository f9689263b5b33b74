//! Commands to engines on a client's behalf: kill, restart, ping and the
//! shutdown fan-out; the engines' replies, and the answer to the client once
//! every engine asked has answered or the wait is over.

use crate::ids::IdSet;
use std::time::{Duration, Instant};

use tracing::warn;

use super::outbox::Outbox;
use super::state::{CommandPurpose, PendingCommand};
use super::Core;
use crate::hub::protocol::{EngineId, Reply};
use crate::message::{Command, CommandReply};

/// How long kill and ping wait for engines to answer.
const COMMAND_WAIT: Duration = Duration::from_secs(5);

impl<O: Outbox> Core<O> {
    /// Sends `command` to the engines `targets` for the client's call
    /// `request`, which is answered once they all replied (or timed out).
    pub(super) fn start_command(
        &mut self,
        client: Vec<u8>,
        request: u64,
        command: Command,
        targets: Vec<EngineId>,
        purpose: CommandPurpose,
    ) {
        let token = self.state.next_token;
        self.state.next_token += 1;
        let (mut waiting, mut silent) = (IdSet::default(), Vec::new());
        for id in targets {
            if let Some(engine) = self.state.engines.get(&id) {
                match self.outbox.command(&engine.identity, token, &command) {
                    Ok(()) => {
                        waiting.insert(id);
                    }
                    Err(e) => {
                        warn!(engine = id, error = %e, "cannot send a command");
                        silent.push(id);
                    }
                }
            }
        }
        self.state.commands.insert(
            token,
            PendingCommand {
                client,
                request,
                purpose,
                waiting,
                replies: Vec::new(),
                silent,
                deadline: Instant::now() + COMMAND_WAIT,
            },
        );
        self.finish_command_if_done(token);
    }

    /// An engine answered a command; one that acknowledged a kill or a
    /// shutdown takes no new tasks.
    pub(super) fn on_command_reply(&mut self, engine: EngineId, reply: CommandReply) {
        let token = reply.token;
        let Some(command) = self.state.commands.get_mut(&token) else {
            return;
        };
        if command.waiting.remove(&engine) {
            if matches!(
                command.purpose,
                CommandPurpose::Kill | CommandPurpose::Shutdown
            ) {
                if let Some(e) = self.state.engines.get_mut(&engine) {
                    e.leaving = true;
                }
            }
            let drained = matches!(command.purpose, CommandPurpose::Drain);
            command.replies.push((engine, reply));
            if drained {
                self.mark_draining(engine, "zcluster drain");
            }
        }
        self.finish_command_if_done(token);
    }

    /// Gives up on the engines that did not answer a command in time.
    pub(super) fn expire_commands(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .state
            .commands
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            if let Some(command) = self.state.commands.get_mut(&token) {
                let mut late: Vec<EngineId> = command.waiting.drain().collect();
                if !late.is_empty() {
                    late.sort_unstable();
                    warn!(engines = ?late, "engines did not answer a command in time");
                    command.silent.extend(late);
                }
            }
            self.finish_command_if_done(token);
        }
    }

    /// Answers the client of command `token` if no engine is left to hear
    /// from.
    pub(super) fn finish_command_if_done(&mut self, token: u64) {
        if !self
            .state
            .commands
            .get(&token)
            .is_some_and(|c| c.waiting.is_empty())
        {
            return;
        }
        let Some(command) = self.state.commands.remove(&token) else {
            return;
        };
        let reply = match command.purpose {
            CommandPurpose::Kill | CommandPurpose::Drain => Reply::Killed {
                acknowledged: command.replies.iter().map(|(id, _)| *id).collect(),
                silent: command.silent,
            },
            CommandPurpose::Ping => Reply::Pong {
                replies: command.replies.into_iter().map(|(_, r)| r).collect(),
                silent: command.silent,
            },
            CommandPurpose::Shutdown => {
                self.shutdown = true;
                Reply::Ok
            }
        };
        self.outbox.reply(&command.client, command.request, &reply);
    }
}
