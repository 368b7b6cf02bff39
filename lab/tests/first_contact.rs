//! A new user's first minutes with `trellis-lab`: run without root, with a bad name, with no lab up. Each mistake
//! gets a message that says what to do, and nothing is made on the way. Run as root: the non-root cases drop to
//! `nobody` with setpriv; "no lab is up" runs in a private mount namespace with an empty /run, so other labs on
//! this machine do not count.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::{leftovers, text, unique_name, LAB};

const NOBODY: &str = "65534";

fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", LAB])
        .args(args)
        .output()
        .expect("run setpriv")
}

/// Runs trellis-lab in a new mount namespace over an empty tmpfs /run: no lab state and no netns are visible.
fn with_no_lab_up(args: &[&str]) -> Output {
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /run && exec \"$0\" \"$@\"",
            LAB,
        ])
        .args(args)
        .output()
        .expect("run unshare")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn up_as_non_root_says_it_needs_root_and_touches_nothing() {
    trellis_test_support::require_root!();
    trellis_test_support::require_tool!("setpriv");
    let name = unique_name("nr");
    let o = as_nobody(&["up", "--name", &name]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(err.contains("trellis-lab up needs root"), "{}", text(&o));
    assert!(err.contains("sudo trellis-lab up"), "{}", text(&o));
    assert!(!err.contains("Permission denied"), "root must be named before anything is tried: {}", text(&o));
    assert!(!err.contains("partial lab"), "{}", text(&o));
    assert_eq!(leftovers(&name), Vec::<String>::new());

    // Every verb that makes, changes or enters namespaces says the same, before looking for a lab.
    for args in [
        vec!["down", "--name", &name],
        vec!["check"],
        vec!["probe", "web-1", "web-2", "8080"],
        vec!["exec", "node1", "--", "true"],
        vec!["apply", "--name", &name, "/dev/null"],
        vec!["delete", "service/web"],
        vec!["bench", "--name", &name],
    ] {
        let o = as_nobody(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let want = format!("trellis-lab {} needs root", args[0]);
        assert!(stderr(&o).contains(&want), "{args:?}: {}", text(&o));
    }
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn an_invalid_lab_name_is_reported_alone() {
    trellis_test_support::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("topo.yaml");
    std::fs::write(&topo, "name: BAD-name\nnodes: [{name: node1}]\npods: [{name: p1, node: node1}]\n").unwrap();
    for args in [vec!["up", "--name", "BAD-name"], vec!["up", "--topology", topo.to_str().unwrap()]] {
        let o = common::lab_cmd(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(err.contains("lab name \"BAD-name\" must be 1-16 characters of a-z and 0-9"), "{}", text(&o));
        assert!(!err.contains("partial lab") && !err.contains("down --name"), "nothing was made: {}", text(&o));
    }
    assert_eq!(leftovers("BAD-name"), Vec::<String>::new());
}

#[test]
fn a_failed_up_that_made_something_says_how_to_remove_it() {
    trellis_test_support::require_root!();
    // Binaries that exist but do nothing: `up` builds the underlay, starts the "agent", and fails when it exits
    // without writing a conflist.
    let bins = tempfile::tempdir().unwrap();
    for b in ["trellis", "trellis-ipam", "trellis-agent"] {
        let p = bins.path().join(b);
        std::fs::write(&p, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let lab = common::Lab { name: unique_name("pa") };
    let o = common::lab_cmd(&[
        "up",
        "--name",
        &lab.name,
        "--bin-dir",
        bins.path().to_str().unwrap(),
        "--agent-timeout-secs",
        "10",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(err.contains("exited before writing"), "{}", text(&o));
    let hint = format!("the partial lab is left for inspection; remove it with `trellis-lab down --name {}`", lab.name);
    assert!(err.contains(&hint), "{}", text(&o));
    assert!(!leftovers(&lab.name).is_empty(), "the note speaks of a partial lab: something must be there");
    let o = lab.run("down", &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(leftovers(&lab.name), Vec::<String>::new());
}

#[test]
fn with_no_lab_up_commands_say_so_and_how_to_start_one() {
    trellis_test_support::require_root!();
    trellis_test_support::require_tool!("unshare");
    for args in [
        vec!["status"],
        vec!["check"],
        vec!["probe", "web-1", "web-2", "8080"],
        vec!["exec", "node1", "--", "true"],
        vec!["delete", "service/web"],
        vec!["down"],
    ] {
        let o = with_no_lab_up(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(err.contains("no lab is up"), "{args:?}: {}", text(&o));
        assert!(err.contains("start one with `sudo trellis-lab up`"), "{args:?}: {}", text(&o));
        assert!(!err.contains("pass --name"), "{args:?}: {}", text(&o));
    }
}
