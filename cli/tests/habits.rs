//! GNU parallel's habits in `zcluster map` (issue 16): input sources after
//! the command, columns and headers, dry runs, joblogs that resume,
//! completions and man pages; locally and over a hub on loopback.

use predicates::prelude::*;
use tempfile::TempDir;

use crate::common::*;

/// `zcluster map --no-progress ARGS`, for a local map.
fn map(args: &[&str]) -> assert_cmd::Command {
    let mut command = zcluster();
    command.args(["map", "--no-progress"]).args(args);
    command
}

#[test]
fn input_sources_combine_link_and_split_into_columns() {
    map(&[
        "--", "echo", "{1}-{2}", ":::", "a", "b", "c", ":::", "1", "2",
    ])
    .assert()
    .success()
    .stdout("a-1\na-2\nb-1\nb-2\nc-1\nc-2\n");
    // --link pairs them, the shorter source wrapping; no replacement
    // string appends each value as an argument of its own.
    map(&[
        "--link", "--", "printf", "[%s]", ":::", "a b", "c", "d", ":::", "1", "2",
    ])
    .assert()
    .success()
    .stdout("[a b][1][c][2][d][1]");
    let dir = TempDir::new().unwrap();
    let files = input_file(dir.path(), "files.txt", &["x/y.tar.gz", "z"]);
    // A file source (read again for every outer value), stdin as a source,
    // and the positional forms of GNU parallel.
    map(&["--", "echo", "{1}", "{2/}", "{2.}", "{2//}", "{2/.}", "{3}"])
        .arg(":::")
        .args(["p", "q"])
        .arg("::::")
        .arg(&files)
        .arg("-")
        .write_stdin("s\n")
        .assert()
        .success()
        .stdout(
            "p y.tar.gz x/y.tar x y.tar s\np z z . z s\nq y.tar.gz x/y.tar x y.tar s\nq z z . z s\n",
        );
    // The file argument of before stays, with --colsep and --header.
    let table = input_file(
        dir.path(),
        "t.tsv",
        &["name\trate", "a.wav\t0.5", "b.wav\t2"],
    );
    map(&["--colsep", "\t", "--header", ":"])
        .arg(&table)
        .args(["--", "echo", "{name/.}", "{rate}", "{2}", "{#}"])
        .assert()
        .success()
        .stdout("a 0.5 0.5 1\nb 2 2 2\n");
    // --csv: quotes and embedded separators.
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, "f,says\n\"a, b\",\"he said \"\"hi\"\"\"\n").unwrap();
    map(&["--csv", "--header", ":"])
        .arg(&csv)
        .args(["--", "printf", "<%s|%s>", "{f}", "{says}"])
        .assert()
        .success()
        .stdout("<a, b|he said \"hi\">");
}

#[test]
fn bad_input_is_one_line_naming_it() {
    // Usage errors, known before the first task: exit 2, nothing runs.
    let dir = TempDir::new().unwrap();
    let ran = dir.path().join("ran");
    let touch = format!("touch {}", ran.display());
    let cases: [(&[&str], &str); 6] = [
        (
            &["--", "sh", "-c", &touch, "{3}", ":::", "a", ":::", "b"],
            "{3}",
        ),
        (&["--", "sh", "-c", &touch, ":::"], "has no values"),
        (
            &[
                "--header", ":", "--", "sh", "-c", &touch, ":::", "n", "1", ":::", "n", "2",
            ],
            "\"n\" appears more than once",
        ),
        (
            &["--csv", "--colsep", ",", "--", "true", ":::", "a"],
            "choose one",
        ),
        (&["--", "echo", "::::"], "needs at least one file"),
        (
            &["--resume", "--", "sh", "-c", &touch, ":::", "a"],
            "need --joblog FILE",
        ),
    ];
    for (args, says) in cases {
        let output = map(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    assert!(!ran.exists(), "a task ran after a usage error");
    // A per-line problem fails that task with its reason; the rest run.
    map(&["--colsep", ",", "--", "echo", "{3}"])
        .write_stdin("a,b,c\nd,e\nf,g,h\n")
        .assert()
        .code(1)
        .stdout("c\nh\n")
        .stderr(predicate::str::contains(
            "task #2 \"d e\" failed: no column 3 (`{3}`): the input \"d e\" has 2",
        ));
    map(&["--csv", "--", "echo", "{2}"])
        .write_stdin("a,b\nonly\nc,d\n")
        .assert()
        .code(1)
        .stdout("b\nd\n")
        .stderr(predicate::str::contains(
            "CSV record 2 of input source 1 does not parse: it has 1 field where the first record has 2",
        ));
}

#[test]
fn input_sources_and_columns_over_a_hub() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let output = hub
        .cmd("map")
        .args(["--no-progress", "--colsep", ":", "--"])
        .args([
            "echo", "{2}{1}", "{3}", ":::", "a:b", "c:d", ":::", "1", "2",
        ])
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "ba 1\nba 2\ndc 1\ndc 2\n"
    );
}

#[test]
fn dry_run_prints_commands_a_shell_runs_and_runs_nothing() {
    let dir = TempDir::new().unwrap();
    let ran = dir.path().join("ran");
    let output = map(&["--dry-run", "--", "printf", "[%s]", "{}", "{1/}"])
        .args([":::", "it's a/b", "$HOME `x`"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed.lines().count(), 2, "{printed}");
    // Pasted into a shell, each line runs the very command.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&printed)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[it's a/b][b][$HOME `x`][$HOME `x`]"
    );
    // Shell mode prints the command line itself; nothing runs.
    map(&["--dry-run", "--shell", "--"])
        .arg(format!("touch {} && echo {{}}", ran.display()))
        .args([":::", "a b"])
        .assert()
        .success()
        .stdout(format!("touch {} && echo 'a b'\n", ran.display()));
    assert!(!ran.exists());
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_itself() {
    let bash = zcluster().args(["completions", "bash"]).output().unwrap();
    assert!(bash.status.success());
    let script = String::from_utf8(bash.stdout).unwrap();
    assert!(
        script.contains("--colsep") && script.contains("completions"),
        "{script}"
    );
    // The script is valid bash.
    let checked = std::process::Command::new("bash")
        .args(["-n", "-c", &script])
        .status()
        .unwrap();
    assert!(checked.success());
    for (shell, marker) in [
        ("zsh", "#compdef zcluster"),
        ("fish", "complete -c zcluster"),
        ("elvish", "zcluster"),
        ("powershell", "zcluster"),
    ] {
        zcluster()
            .args(["completions", shell])
            .assert()
            .success()
            .stdout(predicate::str::contains(marker));
    }
    zcluster().args(["man", "map"]).assert().success().stdout(
        predicate::str::contains(".TH zcluster-map 1").and(predicate::str::contains("colsep")),
    );
    zcluster()
        .arg("man")
        .assert()
        .success()
        .stdout(predicate::str::contains(".TH zcluster 1"));
    let dir = TempDir::new().unwrap();
    zcluster()
        .args(["man", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    for page in [
        "zcluster.1",
        "zcluster-map.1",
        "zcluster-hub.1",
        "zcluster-launch-ssh.1",
    ] {
        assert!(dir.path().join(page).exists(), "{page}");
    }
    zcluster()
        .args(["man", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no subcommand \"nope\""));
}

/// A joblog GNU parallel 20221122 wrote for `parallel -j1 --joblog FILE
/// 'printf {}; exit {#}' ::: a bb ccc`: what the format is compared with
/// where `parallel` is not installed.
const GNU_PARALLEL_JOBLOG: &str =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand
1\t:\t1796653959.087\t     0.008\t0\t1\t1\t0\tprintf a; exit 1
2\t:\t1796653959.101\t     0.003\t0\t2\t2\t0\tprintf bb; exit 2
3\t:\t1796653959.109\t     0.002\t0\t3\t3\t0\tprintf ccc; exit 3
";

/// A joblog's lines, split at tabs, with the two time columns replaced by
/// their shape (`%.3f` and `%10.3f`), which must match, sorted by Seq.
fn joblog_shape(text: &str) -> Vec<Vec<String>> {
    let mut lines: Vec<Vec<String>> = text
        .lines()
        .enumerate()
        .map(|(index, line)| {
            let mut fields: Vec<String> = line.split('\t').map(str::to_owned).collect();
            assert_eq!(fields.len(), 9, "{line:?}");
            if index > 0 {
                let (whole, decimals) = fields[2].split_once('.').unwrap();
                assert!(
                    whole.parse::<u64>().is_ok() && decimals.len() == 3,
                    "{line:?}"
                );
                assert_eq!(fields[3].len(), 10, "JobRuntime is %10.3f: {line:?}");
                let runtime = fields[3].trim_start();
                assert!(
                    runtime.parse::<f64>().is_ok() && runtime.split_once('.').unwrap().1.len() == 3
                );
                fields[2] = "START".into();
                fields[3] = "RUNTIME".into();
            }
            fields
        })
        .collect();
    lines[1..].sort_by_key(|fields| fields[0].parse::<u64>().unwrap());
    lines
}

#[test]
fn joblog_is_gnu_parallels_format() {
    let dir = TempDir::new().unwrap();
    let ours = dir.path().join("zcluster.joblog");
    map(&["-j1", "--shell", "--joblog"])
        .arg(&ours)
        .args(["--", "printf {}; exit {#}", ":::", "a", "bb", "ccc"])
        .assert()
        .code(1)
        .stdout("abbccc");
    let ours = std::fs::read_to_string(&ours).unwrap();
    let theirs = dir.path().join("parallel.joblog");
    let ran_parallel = std::process::Command::new("parallel")
        .args(["--will-cite", "-j1", "--joblog"])
        .arg(&theirs)
        .args(["printf {}; exit {#}", ":::", "a", "bb", "ccc"])
        .output()
        .is_ok_and(|output| output.stdout == b"abbccc");
    let theirs = if ran_parallel {
        std::fs::read_to_string(&theirs).unwrap()
    } else {
        GNU_PARALLEL_JOBLOG.to_owned()
    };
    assert_eq!(
        joblog_shape(&ours),
        joblog_shape(&theirs),
        "ours:\n{ours}\ntheirs:\n{theirs}"
    );
}

#[test]
fn a_map_killed_half_way_resumes_and_runs_each_input_once() {
    let dir = TempDir::new().unwrap();
    let joblog = dir.path().join("joblog");
    let side = dir.path().join("side");
    std::fs::write(dir.path().join("epoch"), "1").unwrap();
    // Inputs 1-4 run at once; the others wait for `go`, and a task of a
    // killed map (its epoch past) then leaves without a trace.
    let script =
        "E=$(cat epoch); if [ {} -gt 4 ]; then while [ ! -e go ]; do sleep 0.02; done; fi; \
                  [ \"$(cat epoch)\" = \"$E\" ] || exit 1; echo {} >> side";
    let run = |resume: bool| {
        let mut command = std::process::Command::new(zcluster_path());
        command
            .current_dir(dir.path())
            .args(["map", "--no-progress", "-j2", "--shell", "--joblog"])
            .arg(&joblog);
        if resume {
            command.arg("--resume");
        }
        command
            .args(["--", script, ":::"])
            .args((1..=8).map(|i| i.to_string()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    };
    let mut first = ChildGuard::spawn(&mut run(false));
    let logged = || {
        std::fs::read_to_string(&joblog).map_or(0, |text| text.lines().count().saturating_sub(1))
    };
    wait_until("four tasks in the joblog", || logged() == 4);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    first.wait();
    std::fs::write(dir.path().join("epoch"), "2").unwrap();
    std::fs::write(dir.path().join("go"), "").unwrap();
    let mut second = ChildGuard::spawn(&mut run(true));
    assert!(second.wait().success());
    let mut ran: Vec<u32> = std::fs::read_to_string(&side)
        .unwrap()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    ran.sort_unstable();
    assert_eq!(ran, (1..=8).collect::<Vec<u32>>());
    let mut seqs: Vec<u32> = std::fs::read_to_string(&joblog)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| line.split('\t').next().unwrap().parse().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=8).collect::<Vec<u32>>());
}

#[test]
fn joblog_and_resume_over_a_hub() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let joblog = hub.dir().join("joblog");
    let map_with = |extra: &[&str]| {
        hub.cmd("map")
            .args(["--no-progress", "--joblog"])
            .arg(&joblog)
            .args(extra)
            .args([
                "--",
                "sh",
                "-c",
                "echo $0; [ $0 != b ]",
                ":::",
                "a",
                "b",
                "c",
            ])
            .timeout(FAIL_AFTER)
            .output()
            .unwrap()
    };
    let output = map_with(&[]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = std::fs::read_to_string(&joblog).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    for line in text.lines().skip(1) {
        assert_eq!(line.split('\t').nth(1), Some(host), "{text}");
    }
    // --resume-failed runs only b again.
    let output = map_with(&["--resume-failed"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "b\n", "{output:?}");
    let output = map_with(&["--resume"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "");
}

#[test]
fn slots_are_distinct_among_running_tasks_and_tasks_know_their_place() {
    let dir = TempDir::new().unwrap();
    // A task holds its slot's directory while it runs: a second task in
    // the same slot at the same time cannot make it, and fails.
    let script = "mkdir held-{%} || exit 9; sleep 0.2; \
                  echo $ZCLUSTER_SEQ/$ZCLUSTER_SLOT/{%}/$ZCLUSTER_JOB/$ZCLUSTER_ENGINE/$ZCLUSTER_HOST/$CARRIED; \
                  rmdir held-{%}";
    let output = map(&[
        "-j3",
        "--shell",
        "--env",
        "CARRIED=yes",
        "--",
        script,
        ":::",
    ])
    .args((1..=6).map(|i| i.to_string()))
    .current_dir(dir.path())
    .output()
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut slots = std::collections::BTreeSet::new();
    for (line, seq) in String::from_utf8(output.stdout).unwrap().lines().zip(1..) {
        let fields: Vec<&str> = line.split('/').collect();
        assert_eq!(fields[0], seq.to_string(), "{line}");
        assert_eq!(fields[1], fields[2], "{line}");
        assert!(["1", "2", "3"].contains(&fields[1]), "{line}");
        assert_eq!(&fields[4..], ["1", host.trim(), "yes"], "{line}");
        slots.insert(fields[1].to_owned());
    }
    assert_eq!(slots.len(), 3, "three tasks ran at once");
}

#[test]
fn over_a_hub_tasks_get_env_wd_and_place_but_nothing_else_of_the_client() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let here = TempDir::new().unwrap();
    let script = "echo $(pwd)/$CARRIED/${NOT_CARRIED-unset}/$ZCLUSTER_SLOT={%}/$ZCLUSTER_ENGINE/$ZCLUSTER_JOB";
    let output = hub
        .cmd("map")
        .args([
            "--no-progress",
            "--shell",
            "--env",
            "CARRIED",
            "--",
            script,
            ":::",
            "a",
        ])
        .current_dir(here.path())
        .env("CARRIED", "from the client")
        .env("NOT_CARRIED", "secret")
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let job = job_of(&output);
    let engine = hub.engines()[0]["id"].as_u64().unwrap();
    let here = here.path().canonicalize().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "{}/from the client/unset/1=1/{engine}/{job}\n",
            here.display()
        )
    );
    // A directory the worker does not have fails the task, saying so.
    let output = hub
        .cmd("map")
        .args([
            "--no-progress",
            "--wd",
            "/nonexistent/zcluster-wd",
            "--",
            "pwd",
            ":::",
            "a",
        ])
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("working directory /nonexistent/zcluster-wd does not exist on"),
        "{output:?}"
    );
    // A variable to carry that is not set is a usage error.
    hub.cmd("map")
        .args(["--env", "ZCLUSTER_SURELY_UNSET", "--", "true", ":::", "a"])
        .env_remove("ZCLUSTER_SURELY_UNSET")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "ZCLUSTER_SURELY_UNSET is not set here",
        ));
}

#[test]
fn resume_refuses_the_joblog_of_another_command() {
    let dir = TempDir::new().unwrap();
    let joblog = dir.path().join("joblog");
    map(&["--joblog"])
        .arg(&joblog)
        .args(["--", "echo", "{}", ":::", "a", "b"])
        .assert()
        .success();
    let ran = dir.path().join("ran");
    let touch = format!("touch {}", ran.display());
    let output = map(&["--resume", "--joblog"])
        .arg(&joblog)
        .args(["--", "sh", "-c", &touch, ":::", "a", "b", "c"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is of another command") && stderr.contains("`echo a`"),
        "{stderr}"
    );
    assert!(!ran.exists(), "a task ran from another command's joblog");
    // Accepted when asked: the inputs it has are skipped, the rest run.
    map(&["--resume", "--resume-any-command", "--joblog"])
        .arg(&joblog)
        .args(["--", "echo", "new", "{}", ":::", "a", "b", "c"])
        .assert()
        .success()
        .stdout("new c\n");
}
