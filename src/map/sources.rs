//! Where a map's inputs come from: GNU parallel's input sources, read
//! lazily.
//!
//! A map reads one source (a file, or standard input) or several, written
//! after the command as GNU parallel writes them: `::: a b c` (the values
//! themselves), `:::: FILE` (the lines of a file; `-` is standard input).
//! Several sources combine into every combination of their values, the
//! first source's values varying slowest (`::: a b ::: 1 2` gives `a 1`,
//! `a 2`, `b 1`, `b 2`, as GNU parallel orders them); with `link` they are
//! paired instead, value by value, a shorter source starting again from
//! its first value until the longest has ended (GNU parallel's `--link`).
//! Each value may itself be split into columns: by a regular expression
//! (`--colsep`) or as CSV (`--csv`, quotes and embedded separators
//! understood); the columns of all sources are numbered one after another.
//! With `header`, the first value of each source is not an input but the
//! names of its columns (`{name}` in a template).
//!
//! # Lazy, never materialised
//!
//! The combination is generated as tasks start, never held: [`Sources`] is
//! an iterator keeping one current value per source (an odometer), and a
//! source that must be gone through again (any but the first, for every
//! value of the ones before it; any shorter one with `link`) is *read
//! again*: `:::` values are in memory already (they were on the command
//! line), and a file is opened and read again from its start. So `:::` of
//! 1,000 values times a file of 1,000,000 lines reads the file 1,000 times
//! (the page cache serves it) in the memory of one line, where holding the
//! product, or even the file, would cost gigabytes. The one exception is
//! standard input, which cannot be read twice: when it must be gone
//! through again it is read whole first and held (put it first, or in a
//! file, for a huge one); as the only source, or the first of a product,
//! it streams as before.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

/// One input source, as written after the command.
#[derive(Debug, Clone)]
pub enum Source {
    /// `::: a b c`: the values themselves.
    Args(Vec<Vec<u8>>),
    /// `:::: FILE` (or the file argument): one value per line.
    File(PathBuf),
    /// Standard input (`:::: -`, or no source at all).
    Stdin,
}

/// How a value is split into columns.
#[derive(Debug, Clone, Default)]
pub enum Split {
    /// Not split: one column, the value.
    #[default]
    None,
    /// `--colsep REGEX`: the separators match the expression.
    Regex(regex::bytes::Regex),
    /// `--csv`: a CSV record (RFC 4180 quotes; a quoted field may hold the
    /// separator or a newline).
    Csv,
}

/// Everything that says how to read a map's inputs; plain data, so the
/// library can be driven without the command line.
#[derive(Debug, Clone, Default)]
pub struct SourceSpec {
    /// The sources in the order given (at least one).
    pub sources: Vec<Source>,
    /// Pair the sources value by value instead of combining them.
    pub link: bool,
    /// The byte that ends a value of a file: `\n` (a `\r` before it is
    /// dropped too), or NUL for `-0`.
    pub terminator: u8,
    /// How values are split into columns.
    pub split: Split,
    /// The first value of each source names its columns.
    pub header: bool,
}

/// Why the sources cannot be read at all: usage errors, known before the
/// first task.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No source at all (a caller bug: standard input is the default).
    #[error("no input source")]
    NoSource,
    /// `:::` followed by nothing.
    #[error("input source {index} (`:::`) has no values: give at least one after `:::`")]
    EmptyArgs {
        /// 1-based position among the sources.
        index: usize,
    },
    /// Standard input given twice (`:::: - -`): it can only be read once.
    #[error("standard input is given as more than one input source")]
    StdinTwice,
    /// A file source cannot be opened.
    #[error("cannot open input file {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file source is a directory.
    #[error("{} is a directory: give a file with one input per line", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
    },
    /// A source could not be read (its header, or standard input held).
    #[error("cannot read input source {index}: {source}")]
    Read {
        /// 1-based position among the sources.
        index: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `header` with a source that has no first value.
    #[error("input source {index} is empty: --header needs a first line naming its columns")]
    NoHeader {
        /// 1-based position among the sources.
        index: usize,
    },
    /// The header of a source cannot be parsed.
    #[error("the header of input source {index} cannot be read: {reason}")]
    BadHeader {
        /// 1-based position among the sources.
        index: usize,
        /// Why.
        reason: InputError,
    },
    /// Two columns of the headers have the same name: `{name}` would be
    /// ambiguous.
    #[error(
        "--header: column name {name:?} appears more than once (columns {first} and {second})"
    )]
    DuplicateName {
        /// The name.
        name: String,
        /// 1-based column of its first appearance.
        first: usize,
        /// 1-based column of the second.
        second: usize,
    },
}

/// Why one value cannot become an input: that task fails with this reason,
/// the others run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A CSV record that does not parse.
    #[error("CSV record {record} of input source {source_index} does not parse: {reason}")]
    Csv {
        /// 1-based record number within its source.
        record: u64,
        /// 1-based position of the source.
        source_index: usize,
        /// The parser's words.
        reason: String,
    },
}

/// One input of a map: what `{}` shows and what its columns are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The input as `{}` renders it and a record shows it: the value of a
    /// single unsplit source exactly, else the columns joined by a space.
    pub text: Vec<u8>,
    /// Its columns (`{1}`, `{2}`, ...), or why it has none.
    pub columns: Result<Vec<Vec<u8>>, InputError>,
}

impl From<Vec<u8>> for Input {
    /// A single value, one column: what a line of one unsplit source is.
    fn from(line: Vec<u8>) -> Self {
        Input {
            text: line.clone(),
            columns: Ok(vec![line]),
        }
    }
}

/// One value of one source, split into its columns.
type Record = Result<Vec<Vec<u8>>, InputError>;

/// The inputs of a map, generated lazily from its sources (see the module
/// docs): an iterator of [`Input`]s, or of the error that stopped reading.
pub struct Sources {
    names: Vec<String>,
    fixed_columns: Option<usize>,
    cursors: Vec<Cursor>,
    link: bool,
    /// The current record of each source (product), once started.
    current: Option<Vec<Record>>,
    /// Which sources have ended at least once (link).
    ended: Vec<bool>,
    done: bool,
}

impl Sources {
    /// Opens every source: checks files, reads the headers, and holds
    /// standard input where it must be read again. Reads no input value.
    ///
    /// # Errors
    ///
    /// A [`SourceError`]: all are usage errors, known before the first task.
    pub fn open(spec: SourceSpec) -> Result<Sources, SourceError> {
        if spec.sources.is_empty() {
            return Err(SourceError::NoSource);
        }
        let stdins = spec
            .sources
            .iter()
            .filter(|s| matches!(s, Source::Stdin))
            .count();
        if stdins > 1 {
            return Err(SourceError::StdinTwice);
        }
        let many = spec.sources.len() > 1;
        let split = Arc::new(spec.split);
        let mut cursors = Vec::with_capacity(spec.sources.len());
        let mut names = Vec::new();
        for (position, source) in spec.sources.into_iter().enumerate() {
            let index = position + 1;
            // Gone through again: every source of a link, all but the first
            // of a product.
            let again = many && (spec.link || position > 0);
            let mut cursor = Cursor::open(
                source,
                index,
                split.clone(),
                spec.terminator,
                again,
                spec.header,
            )?;
            if spec.header {
                match cursor.next_record() {
                    None => return Err(SourceError::NoHeader { index }),
                    Some(Err(source)) => return Err(SourceError::Read { index, source }),
                    Some(Ok(Err(reason))) => return Err(SourceError::BadHeader { index, reason }),
                    Some(Ok(Ok(header))) => names.extend(
                        header
                            .iter()
                            .map(|n| String::from_utf8_lossy(n).into_owned()),
                    ),
                }
            }
            cursors.push(cursor);
        }
        for (second, name) in names.iter().enumerate() {
            if let Some(first) = names[..second].iter().position(|n| n == name) {
                return Err(SourceError::DuplicateName {
                    name: name.clone(),
                    first: first + 1,
                    second: second + 1,
                });
            }
        }
        let fixed_columns = matches!(*split, Split::None).then_some(cursors.len());
        Ok(Sources {
            names,
            fixed_columns,
            cursors,
            link: spec.link,
            current: None,
            ended: Vec::new(),
            done: false,
        })
    }

    /// The column names of the headers, in column order (empty without
    /// `header`).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// How many columns every input has, when that is known before reading
    /// (unsplit values: one per source), so a template asking for more can
    /// be refused before the first task.
    pub fn fixed_columns(&self) -> Option<usize> {
        self.fixed_columns
    }

    /// The next combination of a product (the odometer), or `None` at the
    /// end.
    fn next_product(&mut self) -> Option<io::Result<Vec<Record>>> {
        let Some(current) = self.current.as_mut() else {
            let mut first = Vec::with_capacity(self.cursors.len());
            for cursor in &mut self.cursors {
                match cursor.next_record()? {
                    Ok(record) => first.push(record),
                    Err(e) => return Some(Err(e)),
                }
            }
            self.current = Some(first.clone());
            return Some(Ok(first));
        };
        // Advance the last source; when it ends, start it again and
        // advance the one before, and so on; the first source ending is
        // the end.
        for position in (0..self.cursors.len()).rev() {
            let cursor = &mut self.cursors[position];
            match cursor.next_record() {
                Some(Ok(record)) => {
                    current[position] = record;
                    return Some(Ok(current.clone()));
                }
                Some(Err(e)) => return Some(Err(e)),
                None if position == 0 => return None,
                None => {
                    if let Err(e) = cursor.restart() {
                        return Some(Err(e));
                    }
                    match cursor.next_record()? {
                        Ok(record) => current[position] = record,
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
        None
    }

    /// The next pairing of a link, or `None` once every source has ended
    /// at least once (a shorter source starts again from its first value).
    fn next_link(&mut self) -> Option<io::Result<Vec<Record>>> {
        if self.ended.is_empty() {
            self.ended = vec![false; self.cursors.len()];
        }
        let mut values = Vec::with_capacity(self.cursors.len());
        let mut wrapped = Vec::new();
        for (position, cursor) in self.cursors.iter_mut().enumerate() {
            match cursor.next_record() {
                Some(Ok(record)) => values.push(Some(record)),
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    self.ended[position] = true;
                    wrapped.push(position);
                    values.push(None);
                }
            }
        }
        if self.ended.iter().all(|&ended| ended) {
            return None;
        }
        for position in wrapped {
            let cursor = &mut self.cursors[position];
            if let Err(e) = cursor.restart() {
                return Some(Err(e));
            }
            match cursor.next_record()? {
                Ok(record) => values[position] = Some(record),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(values.into_iter().flatten().collect()))
    }
}

impl Iterator for Sources {
    type Item = io::Result<Input>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let records = if self.link && self.cursors.len() > 1 {
            self.next_link()
        } else {
            self.next_product()
        };
        let records = match records {
            Some(Ok(records)) => records,
            Some(Err(e)) => {
                self.done = true;
                return Some(Err(e));
            }
            None => {
                self.done = true;
                return None;
            }
        };
        Some(Ok(combine(records)))
    }
}

/// One input from one record of each source: the columns one after
/// another; a single column keeps its bytes as the text.
fn combine(records: Vec<Record>) -> Input {
    let mut columns = Vec::new();
    for record in records {
        match record {
            Ok(record) => columns.extend(record),
            Err(reason) => {
                return Input {
                    text: Vec::new(),
                    columns: Err(reason),
                }
            }
        }
    }
    let text = if columns.len() == 1 {
        columns[0].clone()
    } else {
        columns.join(&b' ')
    };
    Input {
        text,
        columns: Ok(columns),
    }
}

/// Where one source is in its values.
struct Cursor {
    index: usize,
    origin: Origin,
    reader: Reader,
    split: Arc<Split>,
    terminator: u8,
    header: bool,
    /// Records read since the start, for CSV error messages.
    records: u64,
}

/// What a source can be read again from.
enum Origin {
    Values(Arc<Vec<Vec<u8>>>),
    File(PathBuf),
    /// Standard input, streamed once.
    Stream,
}

enum Reader {
    Values {
        values: Arc<Vec<Vec<u8>>>,
        next: usize,
    },
    Lines(Box<dyn BufRead + Send>),
    Csv(Box<csv::Reader<Box<dyn Read + Send>>>),
}

impl Cursor {
    fn open(
        source: Source,
        index: usize,
        split: Arc<Split>,
        terminator: u8,
        again: bool,
        header: bool,
    ) -> Result<Cursor, SourceError> {
        let origin = match source {
            Source::Args(values) if values.is_empty() => {
                return Err(SourceError::EmptyArgs { index })
            }
            Source::Args(values) => Origin::Values(Arc::new(values)),
            Source::File(path) => {
                // Opening a directory succeeds; reading it is what fails.
                if path.is_dir() {
                    return Err(SourceError::Directory { path });
                }
                Origin::File(path)
            }
            Source::Stdin if again => {
                // Read again later: held whole, split later like any value.
                let mut held = Vec::new();
                let mut stdin = BufReader::new(io::stdin());
                if matches!(*split, Split::Csv) {
                    // CSV records may span lines: split here, re-joined
                    // never; keep each record's fields as one CSV line.
                    let mut reader = csv_reader(Box::new(stdin));
                    let mut record = csv::ByteRecord::new();
                    loop {
                        match reader.read_byte_record(&mut record) {
                            Ok(false) => break,
                            Ok(true) => held.push(csv_line(&record)),
                            Err(e) => {
                                return Err(SourceError::Read {
                                    index,
                                    source: io::Error::other(e),
                                })
                            }
                        }
                    }
                } else {
                    loop {
                        match read_value(&mut stdin, terminator) {
                            Ok(Some(value)) => held.push(value),
                            Ok(None) => break,
                            Err(source) => return Err(SourceError::Read { index, source }),
                        }
                    }
                }
                Origin::Values(Arc::new(held))
            }
            Source::Stdin => Origin::Stream,
        };
        let reader = match &origin {
            Origin::Values(values) => Reader::Values {
                values: values.clone(),
                next: 0,
            },
            Origin::File(path) => Self::open_file(path, &split)?,
            Origin::Stream => {
                // Not `stdin().lock()`: the lines are read on a thread of
                // their own.
                let stdin: Box<dyn BufRead + Send> = Box::new(BufReader::new(io::stdin()));
                match *split {
                    Split::Csv => Reader::Csv(Box::new(csv_reader(stdin))),
                    _ => Reader::Lines(stdin),
                }
            }
        };
        Ok(Cursor {
            index,
            origin,
            reader,
            split,
            terminator,
            header,
            records: 0,
        })
    }

    fn open_file(path: &PathBuf, split: &Split) -> Result<Reader, SourceError> {
        let file = File::open(path).map_err(|source| SourceError::Open {
            path: path.clone(),
            source,
        })?;
        let file: Box<dyn BufRead + Send> = Box::new(BufReader::new(file));
        Ok(match split {
            Split::Csv => Reader::Csv(Box::new(csv_reader(file))),
            _ => Reader::Lines(file),
        })
    }

    /// Goes back to the first value (after the header).
    fn restart(&mut self) -> io::Result<()> {
        self.reader = match &self.origin {
            Origin::Values(values) => Reader::Values {
                values: values.clone(),
                next: 0,
            },
            Origin::File(path) => {
                Self::open_file(path, &self.split).map_err(|e| io::Error::other(e.to_string()))?
            }
            Origin::Stream => {
                return Err(io::Error::other(
                    "standard input cannot be read a second time",
                ))
            }
        };
        self.records = 0;
        if self.header {
            // The header was read at the start; skip it each time again.
            let _ = self.next_record().transpose()?;
        }
        Ok(())
    }

    /// The next value, split into columns; `None` at the end of the source.
    fn next_record(&mut self) -> Option<io::Result<Record>> {
        let value = match &mut self.reader {
            Reader::Values { values, next } => {
                let value = values.get(*next)?.clone();
                *next += 1;
                value
            }
            Reader::Lines(reader) => match read_value(reader, self.terminator) {
                Ok(Some(value)) => value,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            },
            Reader::Csv(reader) => {
                self.records += 1;
                let mut record = csv::ByteRecord::new();
                return match reader.read_byte_record(&mut record) {
                    Ok(false) => None,
                    Ok(true) => Some(Ok(Ok(record.iter().map(<[u8]>::to_vec).collect()))),
                    Err(e) if e.is_io_error() => match e.into_kind() {
                        csv::ErrorKind::Io(e) => Some(Err(e)),
                        _ => Some(Err(io::Error::other("CSV input failed"))),
                    },
                    Err(e) => Some(Ok(Err(self.csv_error(&e)))),
                };
            }
        };
        self.records += 1;
        Some(Ok(self.split_value(value)))
    }

    fn csv_error(&self, error: &csv::Error) -> InputError {
        InputError::Csv {
            record: self.records,
            source_index: self.index,
            reason: csv_reason(error),
        }
    }

    /// Splits one value (a line, or a `:::` value) into its columns.
    fn split_value(&self, value: Vec<u8>) -> Record {
        match &*self.split {
            Split::None => Ok(vec![value]),
            Split::Regex(separator) => Ok(separator.split(&value).map(<[u8]>::to_vec).collect()),
            Split::Csv => {
                let mut reader = csv_reader(Box::new(io::Cursor::new(value)));
                let mut record = csv::ByteRecord::new();
                let parsed = reader.read_byte_record(&mut record);
                let mut rest = csv::ByteRecord::new();
                match parsed {
                    Ok(true) if !matches!(reader.read_byte_record(&mut rest), Ok(true)) => {
                        Ok(record.iter().map(<[u8]>::to_vec).collect())
                    }
                    Ok(true) => Err(InputError::Csv {
                        record: self.records,
                        source_index: self.index,
                        reason: "it holds more than one record".into(),
                    }),
                    // An empty value is one empty column.
                    Ok(false) => Ok(vec![Vec::new()]),
                    Err(e) => Err(self.csv_error(&e)),
                }
            }
        }
    }
}

/// A CSV reader as `--csv` reads: no header handling of its own (the map
/// does it, for every source alike), every record the same number of
/// fields as the first (a record that has not is one that does not parse).
fn csv_reader(input: Box<dyn Read + Send>) -> csv::Reader<Box<dyn Read + Send>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(false)
        .from_reader(input)
}

/// The parser's reason, in words for the person at the terminal.
fn csv_reason(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "it has {} where the first record has {expected_len}",
            if *len == 1 {
                "1 field".to_owned()
            } else {
                format!("{len} fields")
            }
        ),
        _ => error.to_string(),
    }
}

/// A CSV record written back as one CSV line, to be parsed again later.
fn csv_line(record: &csv::ByteRecord) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    if writer.write_byte_record(record).is_err() {
        return Vec::new();
    }
    let mut line = writer.into_inner().unwrap_or_default();
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    line
}

/// One value of a file: up to the terminator, without it (and without a
/// `\r` before a `\n`); `None` at the end.
fn read_value(reader: &mut dyn BufRead, terminator: u8) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    if reader.read_until(terminator, &mut buf)? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&terminator) {
        buf.pop();
        if terminator == b'\n' && buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Some(buf))
}

#[cfg(test)]
mod tests;
