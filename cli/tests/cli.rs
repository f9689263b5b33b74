//! Tests of the `zcluster` binary as a user runs it: real processes, real
//! signals, real files. One test binary (`autotests = false`) links once;
//! each capability is a module.

mod attacks;
mod chaos;
mod common;
mod dashboard;
mod devices;
mod drain;
mod events;
mod files;
mod habits;
mod hostile;
mod hub;
mod launch;
mod map;
mod map_person;
mod pipes;
mod resources;
mod slurm;
mod store;
mod systemd;
mod views;
