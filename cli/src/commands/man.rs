//! `zcluster man [SUBCOMMAND]`: the manual page, as roff, made by
//! `clap_mangen` from the same clap definitions that parse the command
//! line (`zcluster man map | man -l -`); `--dir` writes every page.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::UsageError;

/// `zcluster man [SUBCOMMAND]`.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
              zcluster man map | man -l -\n  \
              zcluster man --dir ~/.local/share/man/man1    # every page: zcluster.1, zcluster-map.1, ...")]
pub struct ManArgs {
    /// The subcommand whose page to print (default: zcluster's own).
    subcommand: Option<String>,
    /// Write every page (zcluster.1 and zcluster-SUBCOMMAND.1) into DIR
    /// instead of printing one.
    #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
    dir: Option<PathBuf>,
}

/// Prints (or writes) the page of `command` (the whole `zcluster` command
/// line) or of one of its subcommands.
pub fn run(args: ManArgs, command: clap::Command) -> anyhow::Result<ExitCode> {
    let command = command.disable_help_subcommand(true);
    if let Some(dir) = args.dir {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        clap_mangen::generate_to(command, &dir)
            .with_context(|| format!("cannot write the pages into {}", dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let (page, title) = match args.subcommand {
        None => {
            let title = command.get_name().to_owned();
            (command, title)
        }
        Some(name) => {
            let mut command = command;
            command.build();
            let found = command
                .get_subcommands()
                .find(|sub| sub.get_name() == name)
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> =
                        command.get_subcommands().map(|s| s.get_name()).collect();
                    UsageError(format!(
                        "no subcommand {name:?}; the pages are: {}",
                        known.join(", ")
                    ))
                })?;
            // As `generate_to` names it, and as `man` shows it.
            let title = format!("{}-{}", command.get_name(), found.get_name());
            let bin = format!("{} {}", command.get_name(), found.get_name());
            (found.bin_name(bin), title)
        }
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page).title(title).render(&mut roff)?;
    let mut stdout = super::stdout();
    stdout.write_all(&roff)?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}
