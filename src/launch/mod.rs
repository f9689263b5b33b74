//! Starting and supervising workers on other machines, using the hub only
//! through its client API, as any other client would.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`hosts`] | host files in GNU parallel's `--sshloginfile` format |

pub mod hosts;
