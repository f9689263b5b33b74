//! Command templates with GNU parallel's replacement strings.
//!
//! A task's command line is written once, as a template, and rendered once per
//! input. The template is parsed up front into literal text and replacement
//! segments, so rendering is a single pass that only copies and substitutes;
//! it runs for every task (thousands per second) and never re-parses.
//!
//! # Replacement strings
//!
//! | string | value | `a/b.tar.gz` | `dir.d/file` | `b.c` | `/x` | `a/b/` | `.bashrc` |
//! |--------|-------|--------------|--------------|-------|------|--------|-----------|
//! | `{}`   | the input, unchanged | `a/b.tar.gz` | `dir.d/file` | `b.c` | `/x` | `a/b/` | `.bashrc` |
//! | `{.}`  | input without extension | `a/b.tar` | `dir.d/file` | `b` | `/x` | `a/b/` | `.bashrc` |
//! | `{/}`  | basename | `b.tar.gz` | `file` | `b.c` | `x` | *(empty)* | `.bashrc` |
//! | `{//}` | dirname | `a` | `dir.d` | `.` | `/` | `a` | `.` |
//! | `{/.}` | basename without extension | `b.tar` | `file` | `b` | `x` | *(empty)* | `.bashrc` |
//! | `{#}`  | 1-based sequence number of the task | | | | | | |
//! | `{%}`  | 1-based slot of the task within the engine running it | | | | | | |
//!
//!
//! # Columns and several input sources
//!
//! An input may have several values: the columns of a line (`--colsep`,
//! `--csv`), or one value of each input source (`::: a b ::: 1 2`). Then:
//!
//! * `{N}` is the Nth value (1-based), and `{N.}`, `{N/}`, `{N//}`, `{N/.}`
//!   apply the path operations below to it; with a header (`--header :`,
//!   [`CommandTemplate::parse_with_names`]) `{name}` (and `{name.}`, ...)
//!   is the column of that name.
//! * `{}` is all the values joined by a space (in shell mode each quoted
//!   on its own, so each stays one word), as in GNU parallel; `{.}` and the
//!   others apply to each value.
//! * With no replacement string, each value is appended as an argument of
//!   its own.
//! * A `{N}` past the input's last value fails that task
//!   ([`TemplateError::NoSuchColumn`]); [`CommandTemplate::max_column`]
//!   lets a caller whose inputs have a known number of values refuse it
//!   before the first task.
//!
//! A single input is the one-value case: `{1}` is `{}`.
//!
//! These follow GNU parallel, which defines them as Perl code:
//!
//! * `{.}` removes a final `.` followed by one or more characters that are
//!   neither `/` nor `.` (`s:\.[^/.]+$::`). So the extension is removed only
//!   when the last dot is in the last path component, `foo.` keeps its dot,
//!   and `a.b/` is unchanged. **One deliberate difference**: GNU parallel
//!   turns `.bashrc` into an empty string and `d/.bashrc` into `d/`; here a
//!   dot that has only dots before it in its component is the start of a
//!   hidden file's name, not an extension (as in Python's
//!   `os.path.splitext`), so `.bashrc`, `..x` and `d/.bashrc` are unchanged,
//!   while `.bashrc.bak` becomes `.bashrc`.
//! * `{/}` removes everything up to and including the last `/`
//!   (`s:.*/::`). Like GNU parallel, this makes `{/}` of a path with a
//!   trailing slash (`a/b/`) empty; trailing slashes are not stripped.
//! * `{//}` is POSIX `dirname(1)` (GNU parallel calls Perl's
//!   `File::Basename::dirname`, which behaves the same): trailing slashes are
//!   ignored, the last component and the slashes before it are removed, a
//!   path without a slash gives `.`, and a path directly under the root (or
//!   the root itself) gives `/`. So `{//}` of `a/b/` is `a`, of `a//b` is
//!   `a`, and of the empty string is `.`.
//! * `{/.}` is `{.}` applied to `{/}`.
//! * Unlike Perl's `.`, a newline in an input is an ordinary character.
//!
//! Replacement strings can appear anywhere inside an argument, several times
//! (`out/{/.}.npy`, `{//}/{/.}.{#}.log`). If the template has none at all,
//! the input is appended as one more argument (in shell mode, appended
//! shell-quoted to the command line), as GNU parallel does.
//!
//! # What counts as a replacement string, and what is literal text
//!
//! Command lines are full of braces that are not meant for us (awk's
//! `{print $1}`, shell's `{a,b}` and `${HOME}`), so only brace groups that
//! look like a replacement string are treated as one:
//!
//! * `{{` is a literal `{` and `}}` is a literal `}`, read left to right
//!   (so `{{x}}` renders as `{x}` and `{{}}` as `{}`).
//! * A brace group `{...}` whose content is a known replacement string
//!   (above, a column number with its suffix such as `{12/.}`, or a header
//!   name) is one. Otherwise, one whose content is at most 4 characters,
//!   all from `A-Z a-z 0-9 . / # % _ -` (or starts with a digit and has
//!   only those), is taken for a mistyped one, and parsing fails with
//!   [`TemplateError::UnknownReplacement`] naming it and the argument it is in
//!   (`{x}`, `{..}`, `{##}`, `{/./}`, `{0}`, `{1x}`, `{%%}` are all errors; write
//!   `{{x}}` for a literal `{x}`). Exception: a group right after a `$` that
//!   is not a known replacement string is literal, so shell code such as
//!   `${HOME}` or `${x}` works; `${}` is still the input after a `$`.
//! * Any other brace text is literal: longer words (`{print}`), content with
//!   whitespace, `$`, quotes or commas (`{print $1}`, `{a,b}`), and unmatched
//!   `{` or `}`.
//!
//! # Direct execution and shell mode
//!
//! By default (`shell = false`) each template argument renders to exactly one
//! argument of the program, which is run directly without a shell: an input
//! with spaces, quotes or `$` stays one argument and is never interpreted.
//!
//! In shell mode (`shell = true`) the template arguments are joined with
//! single spaces into one shell command line, and the command is
//! `["sh", "-c", line]`. The template text is shell code and is not quoted;
//! every substituted value is shell-quoted with [`shlex::try_quote`], so the
//! shell sees exactly the input as one word (or as part of the word the
//! replacement string is in: `out/{/.}.npy` becomes `out/'my file'.npy`).
//! Because of that quoting, a replacement string should not itself be put
//! inside quotes in the template (`"{}"` would keep the quote characters).
//!
//! # NUL bytes
//!
//! No program can receive a NUL byte in an argument, and a shell word cannot
//! contain one. Rendering an input that contains NUL, with a template that
//! uses the input, therefore fails with [`TemplateError::NulInInput`] in both
//! modes rather than truncating or mangling it; the caller turns this into a
//! failed task. A template argument containing NUL is rejected at parse time.

mod paths;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fmt::Write as _;
use std::io::Write as _;

use paths::{basename, dirname, remove_extension};

/// The replacement strings this module understands, as listed in error
/// messages so a user who typed an unknown one sees the alternatives.
pub const KNOWN_REPLACEMENTS: &str =
    "{} {.} {/} {//} {/.} {#} {%}, and for column N: {N} {N.} {N/} {N//} {N/.}";

/// Characters allowed inside a brace group that is taken for a replacement
/// string; see the module documentation for the full rule.
fn is_replacement_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'#' | b'%' | b'_' | b'-')
}

/// Longest content of a brace group that is taken for an unknown
/// replacement string (an error) rather than literal text.
const MAX_REPLACEMENT_LEN: usize = 4;

/// Longest content of a brace group looked at all: a column name from a
/// header, or a column number with its path suffix.
const MAX_GROUP_LEN: usize = 256;

/// How long a quoted input may be in an error message before it is cut, so
/// one huge input line cannot flood a log.
const MAX_INPUT_IN_ERROR: usize = 100;

/// Why a template could not be parsed or rendered. These are user errors, so
/// every message names the offending text and says what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template has no program to run.
    #[error("empty command: give the command to run before its inputs")]
    EmptyCommand,
    /// A brace group looks like a replacement string but is not a known one.
    #[error(
        "unknown replacement string `{found}` in argument `{arg}`; known replacement strings are \
         {known} (write `{{{{` and `}}}}` for a literal `{{` or `}}`)",
        known = KNOWN_REPLACEMENTS
    )]
    UnknownReplacement {
        /// The brace group as written, e.g. `{x}`.
        found: String,
        /// The whole template argument it appeared in.
        arg: String,
    },
    /// A template argument contains a NUL byte, which no program can receive.
    #[error("command argument {arg:?} contains a NUL byte, which cannot be passed to a program")]
    NulInTemplate {
        /// The offending argument.
        arg: String,
    },
    /// An input contains a NUL byte, which cannot be put in an argument or a
    /// shell command line.
    #[error("input {input:?} contains a NUL byte, which cannot be passed to a command")]
    NulInInput {
        /// The input (cut after 100 characters).
        input: String,
    },
    /// The template names a column the input does not have (`{4}` of a
    /// line of three columns): that task fails, the others run.
    #[error("no column {column} (`{{{column}}}`): the input {input:?} has {columns}")]
    NoSuchColumn {
        /// The 1-based column asked for.
        column: usize,
        /// How many columns the input has.
        columns: usize,
        /// The input (cut after 100 characters).
        input: String,
    },
}

/// What a replacement string takes of a value: the path operations of GNU
/// parallel, the same for the whole input and for one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathOp {
    /// `{}`, `{N}`: the value unchanged.
    Whole,
    /// `{.}`: without its extension.
    NoExtension,
    /// `{/}`: its basename.
    Basename,
    /// `{//}`: its dirname.
    Dirname,
    /// `{/.}`: its basename without extension.
    BasenameNoExtension,
}

impl PathOp {
    /// The operation a replacement string's suffix names (`""`, `.`, `/`,
    /// `//`, `/.`).
    fn from_suffix(suffix: &str) -> Option<PathOp> {
        Some(match suffix {
            "" => PathOp::Whole,
            "." => PathOp::NoExtension,
            "/" => PathOp::Basename,
            "//" => PathOp::Dirname,
            "/." => PathOp::BasenameNoExtension,
            _ => return None,
        })
    }

    /// Applies the operation to one value.
    fn apply(self, value: &[u8]) -> &[u8] {
        match self {
            PathOp::Whole => value,
            PathOp::NoExtension => remove_extension(value),
            PathOp::Basename => basename(value),
            PathOp::Dirname => dirname(value),
            PathOp::BasenameNoExtension => remove_extension(basename(value)),
        }
    }
}

/// One parsed piece of a template argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text copied as it is (escapes already resolved).
    Literal(String),
    /// A value of the input: all of it (`column: None`, its values joined
    /// by a space) or one 0-based column, through a path operation.
    Value { column: Option<usize>, op: PathOp },
    /// `{#}`
    Sequence,
    /// `{%}`: the slot, known only where the task runs.
    Slot,
}

impl Piece {
    /// Maps the content of a brace group to its replacement, if known:
    /// a column name of `names` (with or without a path suffix), `#`, a
    /// path suffix alone, or a column number with one.
    fn replacement(content: &str, names: &[String]) -> Option<Piece> {
        if content == "#" {
            return Some(Piece::Sequence);
        }
        if content == "%" {
            return Some(Piece::Slot);
        }
        for (index, name) in names.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            if let Some(op) = content
                .strip_prefix(name.as_str())
                .and_then(PathOp::from_suffix)
            {
                return Some(Piece::Value {
                    column: Some(index),
                    op,
                });
            }
        }
        if let Some(op) = PathOp::from_suffix(content) {
            return Some(Piece::Value { column: None, op });
        }
        let digits = content.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: usize = content[..digits].parse().ok()?;
        let op = PathOp::from_suffix(&content[digits..])?;
        let column = number.checked_sub(1)?;
        Some(Piece::Value {
            column: Some(column),
            op,
        })
    }
}

/// Where `{%}` goes in a rendered command: (argument, byte offset) pairs in
/// increasing order (see [`CommandTemplate::render_placed`]).
pub type SlotPlaces = Vec<(u32, u32)>;

/// A parsed command template: parse it once from the user's command line,
/// then [`render`](CommandTemplate::render) it for every input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    /// The template arguments as the user gave them, for display.
    args: Vec<String>,
    /// Whether the command is run through `sh -c`.
    shell: bool,
    /// Non-shell mode: one piece list per argument. Shell mode: a single
    /// piece list for the whole command line (arguments joined by spaces).
    parts: Vec<Vec<Piece>>,
    /// Whether any replacement string appears (if not, the input is appended).
    has_replacement: bool,
    /// Whether rendering copies any part of the input into the command.
    uses_input: bool,
    /// The highest 1-based column a replacement string names.
    max_column: Option<usize>,
}

impl CommandTemplate {
    /// Parses the user's command template. `shell` selects shell mode (run the
    /// joined line with `sh -c`, quoting substituted values) instead of
    /// running the program directly with one argument per template argument.
    ///
    /// # Errors
    ///
    /// [`TemplateError::EmptyCommand`] if no argument has any text,
    /// [`TemplateError::UnknownReplacement`] for a brace group that looks like
    /// a replacement string but is not a known one, and
    /// [`TemplateError::NulInTemplate`] for an argument containing NUL; see
    /// the module documentation for the rules.
    pub fn parse(args: &[String], shell: bool) -> Result<CommandTemplate, TemplateError> {
        Self::parse_with_names(args, shell, &[])
    }

    /// [`parse`](Self::parse) with the column names of a header (`--header
    /// :`): `{name}` is then the column of that name, with the path
    /// suffixes of the other replacement strings (`{name/.}`) too.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse).
    pub fn parse_with_names(
        args: &[String],
        shell: bool,
        names: &[String],
    ) -> Result<CommandTemplate, TemplateError> {
        if args.iter().all(|arg| arg.trim().is_empty()) {
            return Err(TemplateError::EmptyCommand);
        }
        let mut parsed = Vec::with_capacity(args.len());
        for arg in args {
            if arg.contains('\0') {
                return Err(TemplateError::NulInTemplate { arg: arg.clone() });
            }
            parsed.push(parse_arg(arg, names)?);
        }
        let values = || {
            parsed.iter().flatten().filter_map(|piece| match piece {
                Piece::Value { column, .. } => Some(*column),
                _ => None,
            })
        };
        let has_replacement = parsed
            .iter()
            .flatten()
            .any(|piece| !matches!(piece, Piece::Literal(_)));
        let uses_input = !has_replacement || values().next().is_some();
        let max_column = values().flatten().max().map(|column| column + 1);
        let parts = if shell {
            let mut line = Vec::new();
            for (index, pieces) in parsed.into_iter().enumerate() {
                if index > 0 {
                    push_literal(&mut line, " ");
                }
                for piece in pieces {
                    match piece {
                        Piece::Literal(text) => push_literal(&mut line, &text),
                        other => line.push(other),
                    }
                }
            }
            vec![line]
        } else {
            parsed
        };
        Ok(CommandTemplate {
            args: args.to_vec(),
            shell,
            parts,
            has_replacement,
            uses_input,
            max_column,
        })
    }

    /// Builds the argv for one task from its input and 1-based sequence
    /// number. In shell mode the result is `["sh", "-c", line]`.
    ///
    /// # Errors
    ///
    /// [`TemplateError::NulInInput`] when the input contains a NUL byte and
    /// the template uses the input; the caller should report that task as
    /// failed rather than stop.
    pub fn render(&self, input: &str, seq: u64) -> Result<Vec<String>, TemplateError> {
        Ok(self
            .render_bytes(input.as_bytes(), seq)?
            .into_iter()
            // UTF-8 in, UTF-8 out: the input is only cut at ASCII bytes.
            .map(|arg| {
                String::from_utf8(arg)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            })
            .collect())
    }

    /// [`render`](Self::render) for an input that is bytes, as a file name
    /// or a line of a file is on Unix (a Latin-1 name is not UTF-8): the
    /// arguments are bytes too, the input's copied exactly, so that the
    /// command gets the very name it must open.
    ///
    /// # Errors
    ///
    /// As [`render`](Self::render).
    pub fn render_bytes(&self, input: &[u8], seq: u64) -> Result<Vec<Vec<u8>>, TemplateError> {
        self.render_columns(&[input], seq)
    }

    /// Renders an input of several values: the columns of a line
    /// (`--colsep`, `--csv`) or one value of each input source (`:::`).
    /// `{N}` is the Nth value; `{}` is all of them joined by a space (in
    /// shell mode each quoted on its own, so each stays one word, as in GNU
    /// parallel); without any replacement string each value is appended as
    /// an argument of its own.
    ///
    /// # Errors
    ///
    /// As [`render`](Self::render), and [`TemplateError::NoSuchColumn`]
    /// when the template names a column the input does not have.
    pub fn render_columns<C: AsRef<[u8]>>(
        &self,
        columns: &[C],
        seq: u64,
    ) -> Result<Vec<Vec<u8>>, TemplateError> {
        let (mut argv, slot_at) = self.render_placed(columns, seq)?;
        for &(arg, offset) in slot_at.iter().rev() {
            argv[arg as usize].splice(offset as usize..offset as usize, *b"1");
        }
        Ok(argv)
    }

    /// [`render_columns`](Self::render_columns) leaving `{%}` out, with
    /// where it goes: (argument, byte offset) pairs in increasing order.
    /// The slot is known only to the engine that runs the task, which
    /// writes it in there; `render_columns` writes 1 (a dry run's slot).
    ///
    /// # Errors
    ///
    /// As [`render_columns`](Self::render_columns).
    pub fn render_placed<C: AsRef<[u8]>>(
        &self,
        columns: &[C],
        seq: u64,
    ) -> Result<(Vec<Vec<u8>>, SlotPlaces), TemplateError> {
        let shown = || {
            let joined: Vec<&[u8]> = columns.iter().map(AsRef::as_ref).collect();
            truncate_chars(
                &String::from_utf8_lossy(&joined.join(&b' ')),
                MAX_INPUT_IN_ERROR,
            )
        };
        if self.uses_input && columns.iter().any(|c| c.as_ref().contains(&0)) {
            return Err(TemplateError::NulInInput { input: shown() });
        }
        if let Some(column) = self.max_column.filter(|&max| max > columns.len()) {
            return Err(TemplateError::NoSuchColumn {
                column,
                columns: columns.len(),
                input: shown(),
            });
        }
        let columns: Vec<&[u8]> = columns.iter().map(AsRef::as_ref).collect();
        let mut slot_at = Vec::new();
        // An argument longer than 4 GiB cannot be run anyway.
        let mut place = |arg: usize, out: &Vec<u8>| {
            slot_at.push((
                u32::try_from(arg).unwrap_or(u32::MAX),
                u32::try_from(out.len()).unwrap_or(u32::MAX),
            ));
        };
        if self.shell {
            let mut line = Vec::with_capacity(self.args_len_hint() + 8);
            for piece in self.parts.iter().flatten() {
                if *piece == Piece::Slot {
                    place(2, &line);
                }
                render_piece(&mut line, piece, &columns, seq, true)?;
            }
            if !self.has_replacement {
                for column in &columns {
                    line.push(b' ');
                    line.extend_from_slice(&quote(column)?);
                }
            }
            return Ok((vec![b"sh".to_vec(), b"-c".to_vec(), line], slot_at));
        }
        let mut argv = Vec::with_capacity(self.parts.len() + columns.len());
        for (index, pieces) in self.parts.iter().enumerate() {
            let mut arg = Vec::new();
            for piece in pieces {
                if *piece == Piece::Slot {
                    place(index, &arg);
                }
                render_piece(&mut arg, piece, &columns, seq, false)?;
            }
            argv.push(arg);
        }
        if !self.has_replacement {
            argv.extend(columns.iter().map(|column| column.to_vec()));
        }
        Ok((argv, slot_at))
    }

    /// Whether the template contains any replacement string; when it does
    /// not, each input is appended as the last argument. Callers use this to
    /// explain what will run (e.g. in a dry run).
    pub fn has_replacement(&self) -> bool {
        self.has_replacement
    }

    /// The highest 1-based column the template names (`{3}` gives 3), so a
    /// caller whose inputs have a known number of columns can refuse a
    /// template that asks for more before the first task.
    pub fn max_column(&self) -> Option<usize> {
        self.max_column
    }

    /// Whether the command runs through `sh -c`, so callers can describe or
    /// forward the template faithfully.
    pub fn is_shell(&self) -> bool {
        self.shell
    }

    /// The template arguments exactly as given to [`parse`](Self::parse), so
    /// the template can be sent elsewhere (e.g. to workers) and parsed again.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// A rendered command as one line a shell runs as it is (GNU parallel's
    /// `--dry-run` and joblog `Command`): in shell mode the command line
    /// itself, otherwise every argument shell-quoted where needed. Bytes
    /// that are not UTF-8 are shown lossily.
    pub fn shell_line<A: AsRef<[u8]>>(&self, argv: &[A]) -> String {
        if self.shell {
            if let [sh, c, line] = argv {
                if sh.as_ref() == b"sh" && c.as_ref() == b"-c" {
                    return String::from_utf8_lossy(line.as_ref()).into_owned();
                }
            }
        }
        let words: Vec<String> = argv
            .iter()
            .map(|arg| {
                let arg = arg.as_ref();
                match shlex::bytes::try_quote(arg) {
                    Ok(quoted) => String::from_utf8_lossy(&quoted).into_owned(),
                    Err(_) => format!("{:?}", String::from_utf8_lossy(arg)),
                }
            })
            .collect();
        words.join(" ")
    }

    /// A rough size of the rendered command, to allocate once per render.
    fn args_len_hint(&self) -> usize {
        self.args.iter().map(|arg| arg.len() + 1).sum()
    }
}

impl fmt::Display for CommandTemplate {
    /// Shows the template as the user would type it: the shell line in shell
    /// mode, otherwise the arguments shell-quoted where needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shell {
            return f.write_str(&self.args.join(" "));
        }
        for (index, arg) in self.args.iter().enumerate() {
            if index > 0 {
                f.write_char(' ')?;
            }
            // Parse rejects NUL, so quoting cannot fail; fall back to Debug anyway.
            match shlex::try_quote(arg) {
                Ok(quoted) => f.write_str(&quoted)?,
                Err(_) => write!(f, "{arg:?}")?,
            }
        }
        Ok(())
    }
}

/// Appends literal text to a piece list, merging with a preceding literal so
/// rendering copies as few pieces as possible.
fn push_literal(pieces: &mut Vec<Piece>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Piece::Literal(last)) = pieces.last_mut() {
        last.push_str(text);
    } else {
        pieces.push(Piece::Literal(text.to_owned()));
    }
}

/// Splits one template argument into literal text and replacement strings,
/// following the rule in the module documentation.
fn parse_arg(arg: &str, names: &[String]) -> Result<Vec<Piece>, TemplateError> {
    let bytes = arg.as_bytes();
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                if bytes.get(i + 1) == Some(&b'{') {
                    push_literal(&mut pieces, "{");
                    i += 2;
                    continue;
                }
                let start = i + 1;
                // The group's closing brace, if near and with no brace between.
                let close = bytes[start..]
                    .iter()
                    .take(MAX_GROUP_LEN + 1)
                    .position(|&b| b == b'{' || b == b'}')
                    .map(|offset| start + offset)
                    .filter(|&end| bytes[end] == b'}');
                if let Some(end) = close {
                    // Braces are ASCII, so `start` and `end` are char boundaries.
                    let content = &arg[start..end];
                    if let Some(piece) = Piece::replacement(content, names) {
                        pieces.push(piece);
                        i = end + 1;
                        continue;
                    }
                    let looks_like_one = content.len() <= MAX_REPLACEMENT_LEN
                        && content.bytes().all(is_replacement_char)
                        || (content.len() <= MAX_GROUP_LEN
                            && content.starts_with(|c: char| c.is_ascii_digit())
                            && content.bytes().all(is_replacement_char));
                    let after_dollar = i > 0 && bytes[i - 1] == b'$';
                    if looks_like_one && !after_dollar {
                        return Err(TemplateError::UnknownReplacement {
                            found: arg[i..=end].to_owned(),
                            arg: arg.to_owned(),
                        });
                    }
                }
                push_literal(&mut pieces, "{");
                i += 1;
            }
            b'}' => {
                push_literal(&mut pieces, "}");
                i += if bytes.get(i + 1) == Some(&b'}') {
                    2
                } else {
                    1
                };
            }
            _ => {
                let next = bytes[i..]
                    .iter()
                    .position(|&b| b == b'{' || b == b'}')
                    .map_or(bytes.len(), |offset| i + offset);
                // Braces are ASCII, so `i` and `next` are char boundaries.
                push_literal(&mut pieces, &arg[i..next]);
                i = next;
            }
        }
    }
    Ok(pieces)
}

/// Appends one piece's value to `out`, shell-quoting substituted values when
/// `quoted` (shell mode). The whole input is its columns joined by a space,
/// each quoted on its own.
fn render_piece(
    out: &mut Vec<u8>,
    piece: &Piece,
    columns: &[&[u8]],
    seq: u64,
    quoted: bool,
) -> Result<(), TemplateError> {
    let (values, op) = match piece {
        Piece::Literal(text) => {
            out.extend_from_slice(text.as_bytes());
            return Ok(());
        }
        Piece::Sequence => {
            // Digits never need quoting.
            let _ = write!(out, "{seq}");
            return Ok(());
        }
        // Written in where the task runs (see `render_placed`).
        Piece::Slot => return Ok(()),
        // The column exists: render_columns checked the largest one.
        Piece::Value {
            column: Some(column),
            op,
        } => (columns.get(*column..=*column).unwrap_or_default(), *op),
        Piece::Value { column: None, op } => (columns, *op),
    };
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            out.push(b' ');
        }
        let value = op.apply(value);
        if quoted {
            out.extend_from_slice(&quote(value)?);
        } else {
            out.extend_from_slice(value);
        }
    }
    Ok(())
}

/// Shell-quotes one value for `sh -c`.
fn quote(value: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, TemplateError> {
    shlex::bytes::try_quote(value).map_err(|_| TemplateError::NulInInput {
        input: truncate_chars(&String::from_utf8_lossy(value), MAX_INPUT_IN_ERROR),
    })
}

/// Keeps at most `max` characters of `text`, marking the cut, for messages.
fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}
