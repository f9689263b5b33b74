//! Unit tests of the input sources: order, link, columns, headers, errors.

use super::*;
use std::io::Write as _;

fn args(values: &[&str]) -> Source {
    Source::Args(values.iter().map(|v| v.as_bytes().to_vec()).collect())
}

fn spec(sources: Vec<Source>) -> SourceSpec {
    SourceSpec {
        sources,
        terminator: b'\n',
        ..SourceSpec::default()
    }
}

fn texts(spec: SourceSpec) -> Vec<String> {
    Sources::open(spec)
        .unwrap()
        .map(|input| String::from_utf8(input.unwrap().text).unwrap())
        .collect()
}

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> Source {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    Source::File(path)
}

#[test]
fn sources_combine_in_gnu_parallel_order() {
    assert_eq!(
        texts(spec(vec![args(&["a", "b", "c"]), args(&["1", "2"])])),
        ["a 1", "a 2", "b 1", "b 2", "c 1", "c 2"]
    );
    let dir = tempfile::TempDir::new().unwrap();
    // A file as an inner source is read again for every outer value.
    let inner = file(&dir, "in", "x\ny\n");
    assert_eq!(
        texts(spec(vec![args(&["a", "b"]), inner, args(&["1", "2"])])),
        ["a x 1", "a x 2", "a y 1", "a y 2", "b x 1", "b x 2", "b y 1", "b y 2"]
    );
    let columns: Vec<Vec<Vec<u8>>> = Sources::open(spec(vec![args(&["a b"]), args(&["c"])]))
        .unwrap()
        .map(|input| input.unwrap().columns.unwrap())
        .collect();
    assert_eq!(columns, [vec![b"a b".to_vec(), b"c".to_vec()]]);
}

#[test]
fn an_empty_file_makes_no_inputs() {
    let dir = tempfile::TempDir::new().unwrap();
    let empty = file(&dir, "empty", "");
    assert!(texts(spec(vec![args(&["a"]), empty])).is_empty());
}

#[test]
fn link_pairs_and_wraps_the_shorter_sources() {
    let mut linked = spec(vec![args(&["a", "b", "c"]), args(&["1", "2"])]);
    linked.link = true;
    assert_eq!(texts(linked), ["a 1", "b 2", "c 1"]);
    let dir = tempfile::TempDir::new().unwrap();
    let mut linked = spec(vec![
        args(&["a"]),
        file(&dir, "f", "x\ny\nz\n"),
        args(&["1", "2"]),
    ]);
    linked.link = true;
    assert_eq!(texts(linked), ["a x 1", "a y 2", "a z 1"]);
}

#[test]
fn colsep_splits_every_source_and_numbers_columns_on() {
    let mut split = spec(vec![args(&["a,b", "c,,d"]), args(&["x"])]);
    split.split = Split::Regex(regex::bytes::Regex::new(",+").unwrap());
    let columns: Vec<Vec<Vec<u8>>> = Sources::open(split)
        .unwrap()
        .map(|input| input.unwrap().columns.unwrap())
        .collect();
    let want: Vec<Vec<Vec<u8>>> = vec![
        vec![b"a".to_vec(), b"b".to_vec(), b"x".to_vec()],
        vec![b"c".to_vec(), b"d".to_vec(), b"x".to_vec()],
    ];
    assert_eq!(columns, want);
}

#[test]
fn csv_understands_quotes_and_a_bad_record_fails_alone() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut csv = spec(vec![file(
        &dir,
        "in.csv",
        "a,\"b, with comma\"\n\"multi\nline\",\"say \"\"hi\"\"\"\nonly one field\nc,d\n",
    )]);
    csv.split = Split::Csv;
    let inputs: Vec<Input> = Sources::open(csv).unwrap().map(Result::unwrap).collect();
    assert_eq!(inputs.len(), 4);
    assert_eq!(
        inputs[0].columns,
        Ok(vec![b"a".to_vec(), b"b, with comma".to_vec()])
    );
    assert_eq!(
        inputs[1].columns,
        Ok(vec![b"multi\nline".to_vec(), b"say \"hi\"".to_vec()])
    );
    let error = inputs[2].columns.clone().unwrap_err();
    assert!(
        error.to_string().contains("CSV record 3")
            && error.to_string().contains("has 1 field where"),
        "{error}"
    );
    assert_eq!(inputs[3].columns, Ok(vec![b"c".to_vec(), b"d".to_vec()]));
}

#[test]
fn headers_name_columns_and_are_skipped_on_every_pass() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut named = spec(vec![args(&["x", "1", "2"]), file(&dir, "f", "y\na\nb\n")]);
    named.header = true;
    let sources = Sources::open(named.clone()).unwrap();
    assert_eq!(sources.names(), ["x", "y"]);
    assert_eq!(sources.fixed_columns(), Some(2));
    assert_eq!(texts(named), ["1 a", "1 b", "2 a", "2 b"]);
    let mut named = spec(vec![file(&dir, "c", "n,rate\nf,1\n")]);
    named.header = true;
    named.split = Split::Csv;
    let sources = Sources::open(named).unwrap();
    assert_eq!(sources.names(), ["n", "rate"]);
    assert_eq!(sources.fixed_columns(), None);
}

#[test]
fn usage_errors_before_any_input() {
    let error = |spec: SourceSpec| Sources::open(spec).err().unwrap().to_string();
    assert!(error(spec(vec![args(&["a"]), args(&[])])).contains("input source 2"));
    let mut duplicate = spec(vec![args(&["x", "1"]), args(&["x", "2"])]);
    duplicate.header = true;
    let message = error(duplicate);
    assert!(
        message.contains("\"x\" appears more than once"),
        "{message}"
    );
    let dir = tempfile::TempDir::new().unwrap();
    let mut headless = spec(vec![file(&dir, "e", "")]);
    headless.header = true;
    assert!(error(headless).contains("empty"));
    assert!(error(spec(vec![Source::File(dir.path().join("none"))])).contains("cannot open"));
    assert!(error(spec(vec![Source::File(dir.path().to_owned())])).contains("directory"));
    assert!(error(spec(vec![Source::Stdin, Source::Stdin])).contains("more than one"));
}
