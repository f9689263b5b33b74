//! `--cpus --gpus --mem --resource` on `zcluster map`: what each task of a
//! job asks for, sent when the job opens (the hub runs a task only where
//! all of it is free).

use clap::Args;
use zcluster::resources::ResourceRequest;

use super::UsageError;

/// What each task of a job needs.
#[derive(Args, Debug, Default, Clone)]
pub struct RequestArgs {
    /// Cores each task needs (default 1).
    #[arg(
        long,
        value_name = "N",
        help_heading = "Resources per task (with --hub)"
    )]
    cpus: Option<String>,
    /// GPUs each task needs: whole devices, or a fraction of one such as
    /// 0.5 (two such tasks share a device). The task sees its own in
    /// CUDA_VISIBLE_DEVICES.
    #[arg(
        long,
        value_name = "N",
        help_heading = "Resources per task (with --hub)"
    )]
    gpus: Option<String>,
    /// Memory each task needs, e.g. 4G.
    #[arg(
        long,
        value_name = "SIZE",
        help_heading = "Resources per task (with --hub)"
    )]
    mem: Option<String>,
    /// Another resource each task needs, NAME=AMOUNT (repeatable).
    #[arg(
        long = "resource",
        value_name = "NAME=AMOUNT",
        help_heading = "Resources per task (with --hub)"
    )]
    resources: Vec<String>,
}

impl RequestArgs {
    /// The request, if any flag is given (`--cpus 1` too: its tasks are
    /// given a core by index, which `worker --pin` binds them to); a
    /// malformed one is a usage error naming the word.
    pub fn request(&self) -> Result<Option<ResourceRequest>, UsageError> {
        let request = ResourceRequest::parse(
            self.cpus.as_deref(),
            self.gpus.as_deref(),
            self.mem.as_deref(),
            &self.resources,
        )
        .map_err(|e| UsageError(e.to_string()))?;
        let given = self.cpus.is_some()
            || self.gpus.is_some()
            || self.mem.is_some()
            || !self.resources.is_empty();
        Ok(given.then_some(request))
    }
}
