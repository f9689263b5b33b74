//! Starting and supervising workers on other machines. The launcher sees
//! the hub only through its client API, as any other client would; a
//! map's own hub ([`cluster`]) is started the way `zcluster map` embeds
//! one, on an address the hosts can reach.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`hosts`] | host files in GNU parallel's `--sshloginfile` format |
//! | [`ssh`] | one worker per host over OpenSSH, supervised or detached |
//! | [`cluster`] | a hub in this process and workers over ssh, for one `zcluster map --hosts` |
//! | [`batch`] | a batch system behind one interface: submit, state, cancel, end time |
//! | [`slurm`] | Slurm behind that interface (`sbatch`, `squeue`, `scancel`) |
//! | [`alloc`] | allocations on demand: submit while tasks wait, release idle workers |

pub mod alloc;
pub mod batch;
pub mod cluster;
pub mod hosts;
pub mod slurm;
pub mod ssh;
