//! Reactions to engines: registration (and adopting what a re-registered
//! engine still holds), heartbeats, leaving and dying. A dead engine's
//! tasks go back to the front of their queues, or fail once they have
//! taken down `poison_limit` engines.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use super::outbox::Outbox;
use super::state::Engine;
use super::Core;
use crate::hub::protocol::{EngineId, EngineMessage, HubToEngine, JobId, Notification};
use crate::message::{decode_result_items, Envelope, Header, MessageError, MessageKind};
use crate::untrusted::{escape, escape_error};

impl<O: Outbox> Core<O> {
    /// A message on the engines' socket (the handshake already answered).
    pub(super) fn on_engine(
        &mut self,
        identity: Vec<u8>,
        envelope: Result<Envelope, MessageError>,
    ) {
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(e) => return self.refuse("engine", &identity, &e),
        };
        let known = self.state.by_identity.get(&identity).copied();
        if let Some(id) = known {
            if let Some(engine) = self.state.engines.get_mut(&id) {
                engine.last_seen = Instant::now();
                // Back under the same identity (ZeroMQ reconnected it).
                if engine.unreachable {
                    engine.unreachable = false;
                    self.state.freed.push(id);
                }
            }
        }
        match (envelope.header.kind, known) {
            (MessageKind::Control, _) => match envelope.control::<EngineMessage>() {
                Ok(EngineMessage::Register {
                    identity: name,
                    host,
                    pid,
                    slots,
                    handlers,
                    running,
                    origin,
                    resources,
                }) => {
                    let mut engine = Engine {
                        host,
                        pid,
                        handlers,
                        name,
                        origin,
                        ..Engine::new(0, identity.clone(), slots, Instant::now())
                    };
                    if let Some(offer) = resources {
                        engine = engine.with_offer(offer);
                    }
                    self.register(engine);
                    self.adopt(&identity, running);
                }
                Ok(EngineMessage::Heartbeat) if known.is_none() => {
                    // A hub restarted under it, or it was declared dead.
                    self.outbox.to_engine(
                        &identity,
                        &HubToEngine::Refused {
                            reason: "unknown engine: register again".into(),
                        },
                    );
                }
                Ok(EngineMessage::Heartbeat) => {}
                Ok(EngineMessage::Draining) => {
                    if let Some(id) = known {
                        self.mark_draining(id, "its allocation ends");
                    }
                }
                Ok(EngineMessage::Unregister) => {
                    if let Some(id) = known {
                        self.unregister(id, "left", false);
                    }
                }
                Err(e) => {
                    warn!(error = %escape_error(&e), "dropping a bad control message from an engine")
                }
            },
            // A lone result is a success (an engine sends every failure in
            // a batch, which carries its reason).
            (MessageKind::Result(status), Some(engine)) => {
                self.on_result(engine, envelope.header, envelope.body(), status, None)
            }
            (MessageKind::TaskResults, Some(engine)) => {
                match decode_result_items(envelope.body(), "task results") {
                    Ok(results) => {
                        for item in results {
                            let header = Header {
                                kind: MessageKind::Result(item.status),
                                job: item.job,
                                id: item.id,
                            };
                            self.on_result(engine, header, item.body, item.status, item.error);
                        }
                    }
                    Err(e) => {
                        warn!(error = %escape_error(&e), "dropping a bad result batch from an engine")
                    }
                }
            }
            (MessageKind::Reply, Some(engine)) => match envelope.reply() {
                Ok(reply) => self.on_command_reply(engine, reply),
                Err(e) => warn!(error = %escape_error(&e), "dropping a bad reply"),
            },
            (kind, None) => debug!(%kind, "dropping a message from an unregistered engine"),
            (kind, Some(_)) => warn!(%kind, "dropping an unexpected message from an engine"),
        }
    }

    /// Marks engine `id` draining (it gets no new tasks), and says so on
    /// the notification socket the first time.
    pub(super) fn mark_draining(&mut self, id: EngineId, reason: &str) {
        let Some(engine) = self.state.engines.get_mut(&id) else {
            return;
        };
        engine.leaving = true;
        if engine.draining {
            return;
        }
        engine.draining = true;
        info!(engine = id, reason, "engine draining");
        self.outbox.publish(&Notification::EngineDraining {
            engine: id,
            reason: reason.to_string(),
            at: SystemTime::now(),
        });
    }

    /// Registers `engine` (its id is drawn here) under its routing
    /// identity, retiring the ghost of the same process on an old
    /// connection.
    pub(super) fn register(&mut self, mut engine: Engine) {
        let identity = engine.identity.clone();
        if let Some(id) = self.state.by_identity.get(&identity) {
            let reason = format!(
                "identity {} is already registered as engine {id}",
                escape(engine.name.as_bytes())
            );
            warn!(%reason, "refusing a registration");
            self.outbox
                .to_engine(&identity, &HubToEngine::Refused { reason });
            return;
        }
        let id = match self.store.next_engine_id() {
            Ok(id) => id,
            Err(e) => {
                self.outbox.to_engine(
                    &identity,
                    &HubToEngine::Refused {
                        reason: e.to_string(),
                    },
                );
                return;
            }
        };
        // The same process on a new connection (it reconnected after
        // missing the hub): its old record is a ghost, retired without a
        // death; the tasks it still holds it names in its registration, and
        // `adopt` gives them back to it.
        let ghosts: Vec<EngineId> = self
            .state
            .engines
            .values()
            .filter(|e| e.name == engine.name)
            .map(|e| e.id)
            .collect();
        for ghost in ghosts {
            self.unregister(ghost, "registered again on a new connection", false);
        }
        info!(engine = id, host = %escape(engine.host.as_bytes()), pid = engine.pid, slots = engine.slots, "engine registered");
        self.outbox.to_engine(
            &identity,
            &HubToEngine::Registered {
                engine: id,
                heartbeat: self.options.heartbeat,
                max_message: self.options.message_limit() as u64,
            },
        );
        self.outbox.publish(&Notification::Registered {
            engine: id,
            host: engine.host.clone(),
            pid: engine.pid,
            slots: engine.slots,
        });
        engine.id = id;
        engine.last_seen = Instant::now();
        self.state.add_engine(engine);
    }

    /// Takes a (re-)registered engine's word for the tasks it still holds
    /// (after a hub restart, or after it was wrongly declared dead): those
    /// still queued here are left to it instead of being run again.
    pub(super) fn adopt(&mut self, identity: &[u8], running: Vec<(JobId, u64)>) {
        let state = &mut self.state;
        let Some(engine) = state
            .by_identity
            .get(identity)
            .and_then(|id| state.engines.get_mut(id))
        else {
            return;
        };
        let mut adopted = 0;
        for (job_id, task_id) in running {
            let Some(job) = state.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(task) = job.tasks.get(&task_id) else {
                continue;
            };
            if task.engine.is_some() {
                continue; // already running elsewhere: whichever ends first wins
            }
            let Some(at) = job.queue.iter().position(|&t| t == task_id) else {
                continue;
            };
            job.queue.remove(at);
            job.set_engine(task_id, Some(engine.id));
            let Some(task) = job.tasks.get_mut(&task_id) else {
                continue;
            };
            task.started = Some(Instant::now());
            task.attempts = task.attempts.max(1);
            // What it was given before is its word alone; where the
            // request no longer fits, it counts as a core.
            let allocation = job
                .request
                .as_deref()
                .and_then(|r| engine.resources.allocate(r));
            engine.hold((job_id, task_id), allocation);
            if let Err(e) =
                self.store
                    .task_started(task.store_id, engine.id, SystemTime::now(), task.attempts)
            {
                warn!(error = %e, "cannot record a start");
            }
            adopted += 1;
        }
        if adopted > 0 {
            info!(
                engine = engine.id,
                tasks = adopted,
                "engine kept the tasks it was running"
            );
        }
    }

    /// Removes an engine and puts its running tasks back at the front of
    /// their queues; when it `died` (rather than left), a task that has now
    /// taken down `poison_limit` engines is failed instead.
    pub(super) fn unregister(&mut self, id: EngineId, reason: &str, died: bool) {
        let Some(engine) = self.state.remove_engine(id) else {
            return;
        };
        info!(
            engine = id,
            reason,
            requeued = engine.running.len(),
            "engine unregistered"
        );
        let limit = self.options.poison_limit;
        let mut poisoned = Vec::new();
        for (job_id, task_id) in engine.running {
            let Some(job) = self.state.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(task) = job.tasks.get_mut(&task_id) else {
                continue;
            };
            // With two copies running, the one left carries on; the death
            // still counts against the task, or a poison input that takes
            // its time to kill would be copied from engine to engine.
            if task.spare.is_some() {
                task.drop_copy(id);
                if task.lost_on(id, died, limit) {
                    poisoned.push((job_id, task_id, task.lost));
                }
                continue;
            }
            if task.engine == Some(id) {
                let poison = task.lost_on(id, died, limit);
                let (store_id, lost) = (task.store_id, task.lost);
                job.set_engine(task_id, None);
                if poison {
                    poisoned.push((job_id, task_id, lost));
                    continue;
                }
                if let Err(e) = self.store.task_requeued(store_id) {
                    warn!(error = %e, "cannot record a requeue");
                }
                job.queue.push_front(task_id);
                self.state.take_turn(job_id);
            }
        }
        for (job_id, task_id, lost) in poisoned {
            let reason =
                format!("{lost} engines died while running this task; it is not tried again");
            warn!(job = job_id, task = task_id, %reason, "failing a poison task");
            // A copy still running elsewhere would take that engine too.
            let survivor = self
                .state
                .task(job_id, task_id)
                .and_then(|t| t.engine)
                .and_then(|e| self.state.engines.get(&e))
                .map(|e| e.identity.clone());
            if let Some(identity) = survivor {
                let cancel = HubToEngine::CancelTask {
                    job: job_id,
                    id: task_id,
                };
                self.outbox.to_engine(&identity, &cancel);
            }
            self.fail_unrun(job_id, task_id, &reason);
            self.retire_if_done(job_id);
        }
        // Gone before it answered: it never will.
        let mut answered = Vec::new();
        for (&token, command) in &mut self.state.commands {
            if command.waiting.remove(&id) {
                command.silent.push(id);
                answered.push(token);
            }
        }
        for token in answered {
            self.finish_command_if_done(token);
        }
        let (reason, at) = (reason.to_string(), SystemTime::now());
        self.outbox.publish(&if died {
            Notification::EngineDead {
                engine: id,
                reason,
                at,
            }
        } else {
            Notification::EngineRetired {
                engine: id,
                reason,
                at,
            }
        });
    }

    /// Declares dead the engines not heard from for `heartbeat_misses`
    /// periods, and beats the others.
    pub(super) fn heartbeat(&mut self) {
        let limit = self.options.heartbeat * self.options.heartbeat_misses;
        let dead: Vec<EngineId> = self
            .state
            .engines
            .values()
            .filter(|e| e.last_seen.elapsed() > limit)
            .map(|e| e.id)
            .collect();
        for id in dead {
            let reason = format!("missed {} heartbeats", self.options.heartbeat_misses);
            warn!(engine = id, %reason, "engine declared dead");
            self.unregister(id, &reason, true);
        }
        for engine in self.state.engines.values() {
            self.outbox
                .to_engine(&engine.identity, &HubToEngine::Heartbeat);
        }
    }

    /// The hub was `away` from its sockets (up to `now`): the engines'
    /// heartbeats waited unread meanwhile, so their silence is not theirs.
    pub(super) fn excuse_silence(&mut self, away: Duration, now: Instant) {
        for engine in self.state.engines.values_mut() {
            engine.last_seen = (engine.last_seen + away).min(now);
        }
    }

    /// The handlers engines offer, for an error message.
    pub(super) fn offered_handlers(&self) -> String {
        let mut names: Vec<&str> = self
            .state
            .engines
            .values()
            .flat_map(|e| e.handlers.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// Engines that hold tasks of `job`, first copies or second.
    pub(super) fn engines_of(&self, job: JobId) -> HashSet<EngineId> {
        self.state.jobs.get(&job).map_or_else(HashSet::new, |job| {
            job.tasks
                .values()
                .flat_map(|t| [t.engine, t.spare_engine()])
                .flatten()
                .collect()
        })
    }
}
