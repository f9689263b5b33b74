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
//! * A brace group `{...}` whose content is at most 4 characters, all from
//!   `A-Z a-z 0-9 . / # % _ -`, is a replacement string. If it is not one of
//!   the known ones above, parsing fails with
//!   [`TemplateError::UnknownReplacement`] naming it and the argument it is in
//!   (`{x}`, `{..}`, `{##}`, `{/./}`, `{1}`, `{%}` are all errors; write
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

use std::fmt;
use std::fmt::Write as _;
use std::io::Write as _;

/// The replacement strings this module understands, as listed in error
/// messages so a user who typed an unknown one sees the alternatives.
pub const KNOWN_REPLACEMENTS: &str = "{} {.} {/} {//} {/.} {#}";

/// Characters allowed inside a brace group that is taken for a replacement
/// string; see the module documentation for the full rule.
fn is_replacement_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'#' | b'%' | b'_' | b'-')
}

/// Longest content of a brace group that is taken for a replacement string.
const MAX_REPLACEMENT_LEN: usize = 4;

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
}

/// One parsed piece of a template argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text copied as it is (escapes already resolved).
    Literal(String),
    /// `{}`
    Input,
    /// `{.}`
    NoExtension,
    /// `{/}`
    Basename,
    /// `{//}`
    Dirname,
    /// `{/.}`
    BasenameNoExtension,
    /// `{#}`
    Sequence,
}

impl Piece {
    /// Maps the content of a brace group to its replacement, if known.
    fn replacement(content: &str) -> Option<Piece> {
        Some(match content {
            "" => Piece::Input,
            "." => Piece::NoExtension,
            "/" => Piece::Basename,
            "//" => Piece::Dirname,
            "/." => Piece::BasenameNoExtension,
            "#" => Piece::Sequence,
            _ => return None,
        })
    }

    /// Whether this piece's value comes from the input (so a NUL in the input
    /// matters).
    fn uses_input(&self) -> bool {
        !matches!(self, Piece::Literal(_) | Piece::Sequence)
    }
}

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
        if args.iter().all(|arg| arg.trim().is_empty()) {
            return Err(TemplateError::EmptyCommand);
        }
        let mut parsed = Vec::with_capacity(args.len());
        for arg in args {
            if arg.contains('\0') {
                return Err(TemplateError::NulInTemplate { arg: arg.clone() });
            }
            parsed.push(parse_arg(arg)?);
        }
        let has_replacement = parsed
            .iter()
            .flatten()
            .any(|piece| !matches!(piece, Piece::Literal(_)));
        let uses_input = !has_replacement || parsed.iter().flatten().any(Piece::uses_input);
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
        if self.uses_input && input.contains(&0) {
            return Err(TemplateError::NulInInput {
                input: truncate_chars(&String::from_utf8_lossy(input), MAX_INPUT_IN_ERROR),
            });
        }
        let paths = PathParts::new(input);
        if self.shell {
            let mut line = Vec::with_capacity(self.args_len_hint() + 2 * input.len() + 8);
            for piece in self.parts.iter().flatten() {
                render_piece(&mut line, piece, &paths, seq, true)?;
            }
            if !self.has_replacement {
                line.push(b' ');
                line.extend_from_slice(&quote(input)?);
            }
            return Ok(vec![b"sh".to_vec(), b"-c".to_vec(), line]);
        }
        let mut argv = Vec::with_capacity(self.parts.len() + usize::from(!self.has_replacement));
        for pieces in &self.parts {
            let mut arg = Vec::new();
            for piece in pieces {
                render_piece(&mut arg, piece, &paths, seq, false)?;
            }
            argv.push(arg);
        }
        if !self.has_replacement {
            argv.push(input.to_owned());
        }
        Ok(argv)
    }

    /// Whether the template contains any replacement string; when it does
    /// not, each input is appended as the last argument. Callers use this to
    /// explain what will run (e.g. in a dry run).
    pub fn has_replacement(&self) -> bool {
        self.has_replacement
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
fn parse_arg(arg: &str) -> Result<Vec<Piece>, TemplateError> {
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
                let mut end = start;
                while end < bytes.len()
                    && end - start <= MAX_REPLACEMENT_LEN
                    && is_replacement_char(bytes[end])
                {
                    end += 1;
                }
                if end < bytes.len() && bytes[end] == b'}' && end - start <= MAX_REPLACEMENT_LEN {
                    // All bytes in start..end are ASCII, so these are char boundaries.
                    let content = &arg[start..end];
                    if let Some(piece) = Piece::replacement(content) {
                        pieces.push(piece);
                        i = end + 1;
                        continue;
                    }
                    let after_dollar = i > 0 && bytes[i - 1] == b'$';
                    if !after_dollar {
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

/// The path-derived values of one input, computed once per render. All are
/// slices of the input (or the constants `.` and `/`), so nothing is copied.
/// Bytes, not text: a path on Unix is bytes, and the separators looked
/// for (`/`, `.`) are ASCII, never part of a multi-byte UTF-8 character.
struct PathParts<'a> {
    input: &'a [u8],
    basename: &'a [u8],
}

impl<'a> PathParts<'a> {
    fn new(input: &'a [u8]) -> Self {
        PathParts {
            input,
            basename: basename(input),
        }
    }
}

/// Appends one piece's value to `out`, shell-quoting substituted values when
/// `quoted` (shell mode).
fn render_piece(
    out: &mut Vec<u8>,
    piece: &Piece,
    paths: &PathParts<'_>,
    seq: u64,
    quoted: bool,
) -> Result<(), TemplateError> {
    let value = match piece {
        Piece::Literal(text) => {
            out.extend_from_slice(text.as_bytes());
            return Ok(());
        }
        Piece::Sequence => {
            // Digits never need quoting.
            let _ = write!(out, "{seq}");
            return Ok(());
        }
        Piece::Input => paths.input,
        Piece::NoExtension => remove_extension(paths.input),
        Piece::Basename => paths.basename,
        Piece::Dirname => dirname(paths.input),
        Piece::BasenameNoExtension => remove_extension(paths.basename),
    };
    if quoted {
        out.extend_from_slice(&quote(value)?);
    } else {
        out.extend_from_slice(value);
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

/// The position of the last `byte` in `bytes`.
fn rfind(bytes: &[u8], byte: u8) -> Option<usize> {
    bytes.iter().rposition(|&b| b == byte)
}

/// `bytes` without the `byte`s at its end.
fn trim_end(bytes: &[u8], byte: u8) -> &[u8] {
    let keep = bytes.iter().rposition(|&b| b != byte).map_or(0, |i| i + 1);
    &bytes[..keep]
}

/// `{/}`: everything after the last `/` (GNU parallel's `s:.*/::`).
fn basename(path: &[u8]) -> &[u8] {
    match rfind(path, b'/') {
        Some(slash) => &path[slash + 1..],
        None => path,
    }
}

/// `{//}`: POSIX `dirname(1)`.
fn dirname(path: &[u8]) -> &[u8] {
    if path.is_empty() {
        return b".";
    }
    let trimmed = trim_end(path, b'/');
    if trimmed.is_empty() {
        return b"/";
    }
    match rfind(trimmed, b'/') {
        None => b".",
        Some(slash) => {
            let parent = trim_end(&trimmed[..slash], b'/');
            if parent.is_empty() {
                b"/"
            } else {
                parent
            }
        }
    }
}

/// `{.}`: removes a final `.ext` where `ext` is non-empty and has no `/` or
/// `.`, unless only dots precede that dot in its path component (a hidden
/// file such as `.bashrc` has no extension).
fn remove_extension(path: &[u8]) -> &[u8] {
    let Some(dot) = rfind(path, b'.') else {
        return path;
    };
    let extension = &path[dot + 1..];
    if extension.is_empty() || extension.contains(&b'/') {
        return path;
    }
    let component_start = rfind(&path[..dot], b'/').map_or(0, |slash| slash + 1);
    if path[component_start..dot].iter().all(|&b| b == b'.') {
        return path;
    }
    &path[..dot]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::ffi::OsStrExt;
    use std::process::Command;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn parse(args: &[&str]) -> CommandTemplate {
        CommandTemplate::parse(&strings(args), false).unwrap()
    }

    fn parse_shell(args: &[&str]) -> CommandTemplate {
        CommandTemplate::parse(&strings(args), true).unwrap()
    }

    /// Renders a one-argument template `echo X` and returns X's rendering.
    fn one(replacement: &str, input: &str) -> String {
        let argv = parse(&["echo", replacement]).render(input, 7).unwrap();
        assert_eq!(argv.len(), 2);
        argv[1].clone()
    }

    fn run_sh(argv: &[String]) -> Vec<u8> {
        assert_eq!(&argv[..2], ["sh", "-c"]);
        let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {out:?}");
        out.stdout
    }

    #[test]
    fn bytes_that_are_not_utf8_are_copied_exactly() {
        let input: &[u8] = b"d\xe9j\xe0/caf\xe9.tar.gz";
        let argv = parse(&["conv", "{}", "{/.}", "{//}", "{.}.{#}"])
            .render_bytes(input, 3)
            .unwrap();
        let expected: [&[u8]; 5] = [
            b"conv",
            input,
            b"caf\xe9.tar",
            b"d\xe9j\xe0",
            b"d\xe9j\xe0/caf\xe9.tar.3",
        ];
        assert_eq!(argv, expected);
        // Shell mode quotes the bytes so `sh` passes them on unchanged.
        let line = parse_shell(&["printf", "%s", "{}"])
            .render_bytes(b"it's \xff", 1)
            .unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(&line[2]))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"it's \xff");
        assert!(matches!(
            parse(&["cat"]).render_bytes(b"a\0\xff", 1),
            Err(TemplateError::NulInInput { .. })
        ));
    }

    #[test]
    fn every_replacement_string() {
        let input = "dir/sub/file.tar.gz";
        assert_eq!(one("{}", input), "dir/sub/file.tar.gz");
        assert_eq!(one("{.}", input), "dir/sub/file.tar");
        assert_eq!(one("{/}", input), "file.tar.gz");
        assert_eq!(one("{//}", input), "dir/sub");
        assert_eq!(one("{/.}", input), "file.tar");
        assert_eq!(one("{#}", input), "7");
    }

    #[test]
    fn path_edge_cases_follow_gnu_parallel() {
        // (input, {.}, {/}, {//}, {/.})
        let cases = [
            ("a/b.tar.gz", "a/b.tar", "b.tar.gz", "a", "b.tar"),
            ("dir.d/file", "dir.d/file", "file", "dir.d", "file"),
            ("b.c", "b", "b.c", ".", "b"),
            ("b", "b", "b", ".", "b"),
            ("/x", "/x", "x", "/", "x"),
            ("/x.y", "/x", "x.y", "/", "x"),
            ("/", "/", "", "/", ""),
            ("//", "//", "", "/", ""),
            ("", "", "", ".", ""),
            ("a/b/", "a/b/", "", "a", ""),
            ("a.b/", "a.b/", "", ".", ""),
            ("a//b", "a//b", "b", "a", "b"),
            ("/a/b/c.d", "/a/b/c", "c.d", "/a/b", "c"),
            ("./a", "./a", "a", ".", "a"),
            ("../a.b", "../a", "a.b", "..", "a"),
            ("foo.", "foo.", "foo.", ".", "foo."),
            ("foo..bar", "foo.", "foo..bar", ".", "foo."),
            (".bashrc", ".bashrc", ".bashrc", ".", ".bashrc"),
            ("..x", "..x", "..x", ".", "..x"),
            ("d/.bashrc", "d/.bashrc", ".bashrc", "d", ".bashrc"),
            (".bashrc.bak", ".bashrc", ".bashrc.bak", ".", ".bashrc"),
            ("d/.x.tar.gz", "d/.x.tar", ".x.tar.gz", "d", ".x.tar"),
            ("my file.txt", "my file", "my file.txt", ".", "my file"),
            ("dé/fï.lé", "dé/fï", "fï.lé", "dé", "fï"),
        ];
        for (input, no_ext, base, dir, base_no_ext) in cases {
            assert_eq!(one("{.}", input), no_ext, "{{.}} of {input:?}");
            assert_eq!(one("{/}", input), base, "{{/}} of {input:?}");
            assert_eq!(one("{//}", input), dir, "{{//}} of {input:?}");
            assert_eq!(one("{/.}", input), base_no_ext, "{{/.}} of {input:?}");
            assert_eq!(one("{}", input), input);
        }
    }

    #[test]
    fn replacements_inside_and_several_per_argument() {
        let t = parse(&["cp", "{}", "out/{/.}.npy", "{//}/{/.}-{#}.{#}"]);
        assert_eq!(
            t.render("data/x.wav", 12).unwrap(),
            strings(&["cp", "data/x.wav", "out/x.npy", "data/x-12.12"])
        );
        assert!(t.has_replacement());
    }

    #[test]
    fn appends_input_when_no_replacement() {
        let t = parse(&["gzip", "-9"]);
        assert!(!t.has_replacement());
        assert_eq!(
            t.render("my file", 1).unwrap(),
            strings(&["gzip", "-9", "my file"])
        );
        let t = parse_shell(&["wc -c <"]);
        assert_eq!(
            t.render("a b", 1).unwrap(),
            strings(&["sh", "-c", "wc -c < 'a b'"])
        );
    }

    #[test]
    fn sequence_only_template_does_not_append() {
        let t = parse(&["echo", "{#}"]);
        assert!(t.has_replacement());
        assert_eq!(t.render("x", 3).unwrap(), strings(&["echo", "3"]));
        // The input is not used, so even a NUL in it is harmless.
        assert_eq!(t.render("a\0b", 4).unwrap(), strings(&["echo", "4"]));
    }

    #[test]
    fn direct_mode_keeps_awkward_inputs_as_one_argument() {
        let t = parse(&["printf", "%s", "{}"]);
        for input in ["a b", "it's", "$HOME", "`id`", "a\nb", "*", "-n", ""] {
            assert_eq!(
                t.render(input, 1).unwrap(),
                strings(&["printf", "%s", input])
            );
        }
    }

    #[test]
    fn shell_mode_quotes_substituted_values_only() {
        let t = parse_shell(&["cat", "{}", "|", "gzip", ">", "out/{/.}.gz"]);
        assert_eq!(
            t.render("in/my file.txt", 1).unwrap(),
            strings(&["sh", "-c", "cat 'in/my file.txt' | gzip > out/'my file'.gz"])
        );
        // Safe values are left unquoted.
        assert_eq!(
            t.render("a.txt", 1).unwrap()[2],
            "cat a.txt | gzip > out/a.gz"
        );
        // An empty value still counts as an argument.
        assert_eq!(
            parse_shell(&["echo {}"]).render("", 1).unwrap()[2],
            "echo ''"
        );
    }

    #[test]
    fn shell_mode_round_trips_awkward_inputs_through_sh() {
        let t = parse_shell(&["printf %s {}"]);
        let inputs = [
            "a b",
            "  leading and trailing  ",
            "it's",
            "\"double\"",
            "$HOME ${PATH} $(id) `id`",
            "back\\slash\\",
            "new\nline\n",
            "tab\there",
            "glob * ? [a]",
            "; rm -rf /tmp/nothing; &| <>",
            "^caret!bang#hash~tilde",
            "-n",
            "ünïcödé ☃",
            "",
        ];
        for input in inputs {
            let argv = t.render(input, 1).unwrap();
            assert_eq!(
                run_sh(&argv),
                input.as_bytes(),
                "input {input:?} via {argv:?}"
            );
        }
        // Inside a word and several times.
        let t = parse_shell(&["printf", "'%s|'", "x{}y", "{/}", "{#}"]);
        let argv = t.render("d i r/it's $x", 5).unwrap();
        assert_eq!(run_sh(&argv), b"xd i r/it's $xy|it's $x|5|");
    }

    #[test]
    fn nul_in_input_is_an_error_not_a_panic() {
        for shell in [false, true] {
            let t = CommandTemplate::parse(&strings(&["echo", "{}"]), shell).unwrap();
            let err = t.render("a\0b", 1).unwrap_err();
            assert!(matches!(err, TemplateError::NulInInput { .. }), "{err:?}");
            let t = CommandTemplate::parse(&strings(&["echo"]), shell).unwrap();
            assert!(t.render("a\0b", 1).is_err());
        }
        let long = format!("{}\0", "x".repeat(500));
        let message = parse(&["echo"]).render(&long, 1).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("NUL"), "{message}");
    }

    #[test]
    fn nul_in_template_is_rejected() {
        let err = CommandTemplate::parse(&strings(&["echo", "a\0b"]), false).unwrap_err();
        assert!(matches!(err, TemplateError::NulInTemplate { .. }));
    }

    #[test]
    fn empty_command_is_an_error() {
        for args in [&[][..], &[""], &["  ", ""]] {
            for shell in [false, true] {
                assert_eq!(
                    CommandTemplate::parse(&strings(args), shell),
                    Err(TemplateError::EmptyCommand)
                );
            }
        }
    }

    #[test]
    fn unknown_replacement_strings_are_errors() {
        for (arg, found) in [
            ("{x}", "{x}"),
            ("{..}", "{..}"),
            ("{##}", "{##}"),
            ("{/./}", "{/./}"),
            ("out/{1}.txt", "{1}"),
            ("{%}", "{%}"),
            ("{-_}", "{-_}"),
            ("a{}b{ab}", "{ab}"),
            ("{{{x}", "{x}"),
        ] {
            let err = CommandTemplate::parse(&strings(&["echo", arg]), false).unwrap_err();
            assert_eq!(
                err,
                TemplateError::UnknownReplacement {
                    found: found.to_owned(),
                    arg: arg.to_owned()
                }
            );
            let message = err.to_string();
            assert!(
                message.contains(found) && message.contains(arg),
                "{message}"
            );
            assert!(message.contains(KNOWN_REPLACEMENTS), "{message}");
            assert!(message.contains("`{{`"), "{message}");
            // Shell mode applies the same rule.
            assert!(CommandTemplate::parse(&strings(&["echo", arg]), true).is_err());
        }
    }

    #[test]
    fn escapes_give_literal_braces() {
        let t = parse(&["echo", "{{x}}", "{{}}", "{{{}}}", "a}}b{{c", "{{{.}}}"]);
        assert_eq!(
            t.render("f.txt", 1).unwrap(),
            strings(&["echo", "{x}", "{}", "{f.txt}", "a}b{c", "{f}"])
        );
        assert!(t.has_replacement());
        // Escapes alone are no replacement: the input is appended.
        let t = parse(&["echo", "{{}}"]);
        assert!(!t.has_replacement());
        assert_eq!(t.render("i", 1).unwrap(), strings(&["echo", "{}", "i"]));
    }

    #[test]
    fn other_braces_are_literal() {
        let literal = [
            "{print $1}",
            "{print}",
            "{a,b}",
            "{ }",
            "{x y}",
            "{'x'}",
            "{\"x\"}",
            "{$x}",
            "{abcde}",
            "{/././}",
            "{",
            "}",
            "a{b",
            "a}b",
            "}{",
            "${HOME}",
            "${x}",
            "${#x}",
            "${PATH:-/bin}",
        ];
        for arg in literal {
            let t = parse(&["awk", arg]);
            assert!(!t.has_replacement(), "{arg:?}");
            assert_eq!(t.render("in", 1).unwrap(), strings(&["awk", arg, "in"]));
        }
        // A known replacement right after `$` is still substituted.
        assert_eq!(one("${}", "v"), "$v");
        // Mixed literal braces and replacements.
        let t = parse(&["awk", "{print $1 > \"{/.}.out\"}", "{}"]);
        assert_eq!(
            t.render("d/f.csv", 1).unwrap(),
            strings(&["awk", "{print $1 > \"f.out\"}", "d/f.csv"])
        );
    }

    #[test]
    fn awk_program_runs_in_shell_mode() {
        let t = parse_shell(&["printf 'a b\\n' | awk '{print $2}'; printf %s {}"]);
        let argv = t.render("in put", 1).unwrap();
        assert_eq!(run_sh(&argv), b"b\nin put");
    }

    #[test]
    fn display_shows_the_template() {
        assert_eq!(parse(&["echo", "a b", "{}"]).to_string(), "echo 'a b' '{}'");
        assert_eq!(
            parse_shell(&["echo", "{}", "|", "wc"]).to_string(),
            "echo {} | wc"
        );
        let t = parse_shell(&["x"]);
        assert!(t.is_shell());
        assert_eq!(t.args(), strings(&["x"]));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn shell_mode_prints_any_input_exactly(input in "[^\0]{0,40}") {
            let t = parse_shell(&["printf", "%s", "{}"]);
            let argv = t.render(&input, 1).unwrap();
            prop_assert_eq!(run_sh(&argv), input.as_bytes());
        }

        #[test]
        fn shell_mode_prints_ascii_punctuation_exactly(input in "[ -~\t\n]{0,40}") {
            let t = parse_shell(&["printf", "%s", "{}"]);
            let argv = t.render(&input, 1).unwrap();
            prop_assert_eq!(run_sh(&argv), input.as_bytes());
        }

        #[test]
        fn direct_mode_passes_input_unchanged(input in "[^\0]{0,40}") {
            let t = parse(&["cmd", "{}"]);
            prop_assert_eq!(t.render(&input, 1).unwrap(), strings(&["cmd", &input]));
        }
    }
}
