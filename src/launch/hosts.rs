//! Host files in GNU parallel's `--sshloginfile` format, so a lab's existing
//! files work unchanged:
//!
//! ```text
//! # comment lines and blank lines are ignored
//! node1                 # one worker, as many slots as node1 has cores
//! 8/alice@node2:2222    # 8 slots, user alice, port 2222
//! :                     # this machine, without ssh
//! ```
//!
//! Each line is `[N/][user@]host[:port]`, `[N/]:` for this machine, or an
//! IPv6 address in brackets (`[fe80::1]:22`). GNU parallel also accepts a
//! whole ssh command in a line (`ssh -p 2222 host`); here that is refused
//! with a pointer to `--ssh`, which sets the ssh command for every host.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a host file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HostFileError {
    /// The file could not be read.
    #[error("cannot read the host file {path}: {source}")]
    Read {
        /// The host file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line does not parse; the user fixes the file at `line`.
    #[error("{path}:{line}: {reason} in {text:?} (expected [N/][user@]host[:port] or [N/]:)")]
    BadLine {
        /// The host file (or `<input>` for parsed text).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line as written (trimmed).
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Only comments and blank lines: nothing to start workers on.
    #[error("{0}: no hosts in the host file")]
    Empty(PathBuf),
}

/// Where one worker runs: a line of the host file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `:`: this machine, started without ssh.
    Local,
    /// A machine reached with ssh.
    Remote {
        /// `user@`, when given (else ssh's default applies).
        user: Option<String>,
        /// Host name or address (IPv6 without its brackets).
        host: String,
        /// `:port`, when given (else ssh's default applies).
        port: Option<u16>,
    },
}

/// One host of a host file: where, and how many slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Slots from `N/`; `None` lets the worker use the host's cores.
    pub slots: Option<usize>,
    /// Where the worker runs.
    pub target: Target,
    /// The line number it came from, for messages about it.
    pub line: usize,
}

impl Host {
    /// Whether this host is this machine or a loopback address, which a
    /// hub listening on loopback can serve.
    pub fn is_loopback(&self) -> bool {
        match &self.target {
            Target::Local => true,
            Target::Remote { host, .. } => {
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

impl fmt::Display for Host {
    /// The host as the user wrote it (without the slot count): the name the
    /// launcher's reports use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Local => f.write_str(":"),
            Target::Remote { user, host, port } => {
                if let Some(user) = user {
                    write!(f, "{user}@")?;
                }
                if host.contains(':') {
                    write!(f, "[{host}]")?;
                } else {
                    f.write_str(host)?;
                }
                if let Some(port) = port {
                    write!(f, ":{port}")?;
                }
                Ok(())
            }
        }
    }
}

/// Reads and parses a host file; see the module docs for the format.
pub fn read(path: &Path) -> Result<Vec<Host>, HostFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses host file text; `path` only names the file in errors. A file
/// with no hosts is an error too: launching on nothing is never meant.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Host>, HostFileError> {
    let mut hosts = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        // A `#` starts a comment anywhere: no host name, user or port
        // contains one.
        let text = raw.split('#').next().unwrap_or("").trim();
        if text.is_empty() {
            continue;
        }
        let bad = |reason: &str| HostFileError::BadLine {
            path: path.to_path_buf(),
            line,
            text: text.to_string(),
            reason: reason.to_string(),
        };
        hosts.push(parse_line(text, line).map_err(|reason| bad(&reason))?);
    }
    if hosts.is_empty() {
        return Err(HostFileError::Empty(path.to_path_buf()));
    }
    Ok(hosts)
}

/// One non-comment line; the error is the reason, for [`HostFileError`].
fn parse_line(text: &str, line: usize) -> Result<Host, String> {
    if text.chars().any(char::is_whitespace) {
        return Err(
            "a space (a whole ssh command per line is not supported: use --ssh COMMAND)".into(),
        );
    }
    let (slots, rest) = match text.split_once('/') {
        Some((n, rest)) => {
            let n: usize = n
                .parse()
                .map_err(|_| format!("slot count {n:?} is not a whole number"))?;
            if n == 0 {
                return Err("slot count 0 (at least 1)".into());
            }
            (Some(n), rest)
        }
        None => (None, text),
    };
    if rest == ":" {
        return Ok(Host {
            slots,
            target: Target::Local,
            line,
        });
    }
    let (user, rest) = match rest.split_once('@') {
        Some((user, rest)) => {
            if user.is_empty() {
                return Err("empty user name before @".into());
            }
            if user.starts_with('-') {
                return Err("a user name cannot start with -".into());
            }
            (Some(user.to_string()), rest)
        }
        None => (None, rest),
    };
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "no ] after an IPv6 address".to_string())?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("{after:?} after ] (expected :port)"))?,
            ),
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} in brackets is not an IPv6 address"));
        }
        (host, port)
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err("no host name".into());
    }
    // A name starting with `-` would reach ssh as an option.
    if host.starts_with('-') {
        return Err("a host name cannot start with -".into());
    }
    if !host.contains(':')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!(
            "host name {host:?} has characters a host name cannot have"
        ));
    }
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("port {port:?} is not a number in 1..=65535")),
            Ok(port) => Some(port),
        },
    };
    Ok(Host {
        slots,
        target: Target::Remote {
            user,
            host: host.to_string(),
            port,
        },
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(text: &str) -> Vec<Host> {
        parse(text, Path::new("hosts")).expect("parses")
    }

    fn error(text: &str) -> String {
        parse(text, Path::new("hosts"))
            .expect_err("does not parse")
            .to_string()
    }

    fn remote(user: Option<&str>, host: &str, port: Option<u16>) -> Target {
        Target::Remote {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn every_form_of_a_line() {
        let parsed = hosts(
            "# lab machines\n\
             node1\n\
             \n\
             8/alice@node2:2222\n\
             :\n\
             2/:\n\
             bob@10.0.0.7   # trailing comment\n\
             [fe80::1]:22\n\
             4/[::1]\n",
        );
        let got: Vec<(Option<usize>, Target, usize)> = parsed
            .into_iter()
            .map(|h| (h.slots, h.target, h.line))
            .collect();
        assert_eq!(
            got,
            vec![
                (None, remote(None, "node1", None), 2),
                (Some(8), remote(Some("alice"), "node2", Some(2222)), 4),
                (None, Target::Local, 5),
                (Some(2), Target::Local, 6),
                (None, remote(Some("bob"), "10.0.0.7", None), 7),
                (None, remote(None, "fe80::1", Some(22)), 8),
                (Some(4), remote(None, "::1", None), 9),
            ]
        );
    }

    #[test]
    fn display_gives_back_what_was_written_without_slots() {
        let written = ["node1", "alice@node2:2222", ":", "[fe80::1]:22"];
        for (host, text) in hosts("node1\n3/alice@node2:2222\n:\n[fe80::1]:22\n")
            .iter()
            .zip(written)
        {
            assert_eq!(host.to_string(), text);
        }
    }

    #[test]
    fn a_bad_line_names_its_number_and_what_was_expected() {
        let message = error("node1\n# fine\n0/node2\n");
        assert!(message.starts_with("hosts:3: slot count 0"), "{message}");
        assert!(
            message.contains("expected [N/][user@]host[:port]"),
            "{message}"
        );
    }

    #[test]
    fn each_kind_of_bad_line_says_why() {
        for (line, reason) in [
            ("x/node", "not a whole number"),
            ("@node", "empty user"),
            ("node:", "port \"\""),
            ("node:70000", "1..=65535"),
            ("node:0", "1..=65535"),
            ("alice@", "no host name"),
            ("-oProxyCommand=x", "cannot start with -"),
            ("-l@node", "user name cannot start with -"),
            ("ssh -p 22 node", "use --ssh"),
            ("no de$", "use --ssh"),
            ("node$x", "characters"),
            ("[fe80::1", "no ]"),
            ("[node]", "not an IPv6"),
            ("[::1]x", "expected :port"),
        ] {
            let message = error(line);
            assert!(message.starts_with("hosts:1: "), "{line}: {message}");
            assert!(message.contains(reason), "{line}: {message}");
        }
    }

    #[test]
    fn a_file_of_comments_only_is_an_error() {
        assert!(error("# nothing\n\n   \n").contains("no hosts"));
    }

    #[test]
    fn loopback_hosts_are_told_apart() {
        let parsed = hosts(":\n127.0.0.2\nlocalhost\n[::1]\nnode1\n10.0.0.1\n");
        let loopback: Vec<bool> = parsed.iter().map(Host::is_loopback).collect();
        assert_eq!(loopback, vec![true, true, true, true, false, false]);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let message = read(Path::new("/nonexistent/hosts"))
            .expect_err("no such file")
            .to_string();
        assert!(message.contains("/nonexistent/hosts"), "{message}");
    }
}
