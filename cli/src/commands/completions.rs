//! `zcluster completions SHELL`: a completion script for the shell, made
//! by `clap_complete` from the same clap definitions that parse the
//! command line, so it never falls behind a flag.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;
use clap_complete::Shell;

/// `zcluster completions SHELL`.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
              zcluster completions bash > ~/.local/share/bash-completion/completions/zcluster\n  \
              zcluster completions zsh > ~/.zfunc/_zcluster    # with fpath+=~/.zfunc before compinit\n  \
              zcluster completions fish > ~/.config/fish/completions/zcluster.fish")]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

/// Prints the script for `args.shell` of `command` (the whole `zcluster`
/// command line) to standard output.
pub fn run(args: CompletionsArgs, mut command: clap::Command) -> anyhow::Result<ExitCode> {
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    let mut stdout = super::stdout();
    stdout.write_all(&script)?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}
