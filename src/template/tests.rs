//! Unit tests of the template: parsing, rendering, quoting, columns.

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
        ("out/{0}.txt", "{0}"),
        ("{1x}", "{1x}"),
        ("{12/./}", "{12/./}"),
        ("{%%}", "{%%}"),
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

#[test]
fn columns_by_number_with_path_suffixes() {
    let t = parse(&["cp", "{1}", "{2/.}-{2//}", "{3.}", "{10}"]);
    assert_eq!(t.max_column(), Some(10));
    let mut columns: Vec<&[u8]> = vec![b"a.txt", b"d/e/f.tar.gz", b"x.y"];
    columns.extend(std::iter::repeat_n(&b"z"[..], 7));
    let argv = t.render_columns(&columns, 1).unwrap();
    assert_eq!(argv, [&b"cp"[..], b"a.txt", b"f.tar-d/e", b"x", b"z"]);
    // `{1}` of a single input is the input.
    assert_eq!(
        parse(&["echo", "{1}", "{1/}"]).render("d/x", 1).unwrap(),
        strings(&["echo", "d/x", "x"])
    );
}

#[test]
fn a_missing_column_fails_that_input_only() {
    let t = parse(&["echo", "{2}", "{4}"]);
    let err = t.render_columns(&[b"a", b"b", b"c"], 1).unwrap_err();
    assert!(
        matches!(
            err,
            TemplateError::NoSuchColumn {
                column: 4,
                columns: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("no column 4"), "{err}");
    assert!(t.render_columns(&[b"a", b"b", b"c", b"d"], 2).is_ok());
}

#[test]
fn whole_input_of_several_values_and_appended_values() {
    let t = parse(&["echo", "[{}]", "{.}"]);
    assert_eq!(
        t.render_columns(&[&b"a b.c"[..], b"d.e"], 1).unwrap(),
        [&b"echo"[..], b"[a b.c d.e]", b"a b d"]
    );
    // Shell mode: each value is one word.
    let t = parse_shell(&["printf '%s|'", "{}"]);
    let argv = t.render_columns(&[&b"a b"[..], b"it's"], 1).unwrap();
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| String::from_utf8(a).unwrap())
        .collect();
    assert_eq!(run_sh(&argv), b"a b|it's|");
    // Without a replacement string each value is an argument of its own.
    assert_eq!(
        parse(&["printf", "%s|"])
            .render_columns(&[&b"a b"[..], b"c"], 1)
            .unwrap(),
        [&b"printf"[..], b"%s|", b"a b", b"c"]
    );
    let t = parse_shell(&["printf '%s|'"]);
    let argv = t.render_columns(&[&b"a b"[..], b"c"], 1).unwrap();
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| String::from_utf8(a).unwrap())
        .collect();
    assert_eq!(run_sh(&argv), b"a b|c|");
}

#[test]
fn header_names_are_columns() {
    let names = strings(&["file", "rate", "a long name"]);
    let t = CommandTemplate::parse_with_names(
        &strings(&[
            "run",
            "{rate}",
            "{file/.}",
            "{a long name}",
            "{2}",
            "{nope1}",
        ]),
        false,
        &names,
    );
    // `{nope1}` is no column and too long to be a mistyped one: literal.
    let t = t.unwrap();
    assert_eq!(
        t.render_columns(&[&b"d/x.wav"[..], b"0.5", b"z"], 1)
            .unwrap(),
        [&b"run"[..], b"0.5", b"x", b"z", b"0.5", b"{nope1}"]
    );
    assert_eq!(t.max_column(), Some(3));
    // Without the names they are literal text (or unknown when short).
    assert!(parse(&["run", "{file/.}"]).render("i", 1).is_ok());
    assert!(CommandTemplate::parse(&strings(&["run", "{fil}"]), false).is_err());
}

#[test]
fn shell_line_is_what_a_shell_runs() {
    let t = parse(&["echo", "{}"]);
    let argv = t.render("it's a b", 1).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(t.shell_line(&argv))
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"it's a b\n");
    let t = parse_shell(&["echo {} | tr a b"]);
    let argv = t.render("a a", 1).unwrap();
    assert_eq!(t.shell_line(&argv), "echo 'a a' | tr a b");
}

#[test]
fn slot_positions_travel_beside_the_command() {
    let t = parse(&["run", "--gpu={%}", "{}", "{%}{%}"]);
    let (argv, slot_at) = t.render_placed(&[b"in {%}"], 1).unwrap();
    // The input's own `{%}` is text: only the template's are places.
    assert_eq!(argv, [&b"run"[..], b"--gpu=", b"in {%}", b""]);
    assert_eq!(slot_at, [(1, 6), (3, 0), (3, 0)]);
    assert_eq!(
        t.render("x", 1).unwrap(),
        strings(&["run", "--gpu=1", "x", "11"])
    );
    let t = parse_shell(&["echo {%} {}"]);
    let (argv, slot_at) = t.render_placed(&[b"a b"], 1).unwrap();
    assert_eq!(argv[2], b"echo  'a b'");
    assert_eq!(slot_at, [(2, 5)]);
}
