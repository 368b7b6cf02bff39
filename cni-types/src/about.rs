//! What a plugin says when a person runs it by hand: the reference plugins' skel prints an about line (name,
//! version, supported CNI versions) and exits 0 when `CNI_COMMAND` is unset, instead of an error JSON.
use crate::version::Version;

/// Where the about text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `--version` / `--help`: the text was asked for, so it is the output (pipe-able).
    Stdout,
    /// No `CNI_COMMAND`: skel's behaviour (stderr, exit 0), so a runtime that forgot the variable reads no result.
    Stderr,
}

/// `CNI trellis plugin v0.1.0` and the supported versions, as skel prints them.
pub fn text(plugin: &str, version: &str) -> String {
    let versions: Vec<&str> = Version::ALL.iter().map(|v| v.as_str()).collect();
    format!("CNI {plugin} plugin v{version}\nCNI protocol versions supported: {}", versions.join(", "))
}

/// Whether this invocation asks for the about text rather than a CNI command. Checked before stdin is read: a
/// person at a terminal sends no config, and reading stdin would hang.
pub fn requested<I: IntoIterator<Item = String>>(args: I, cni_command: Option<&str>) -> Option<Stream> {
    if args.into_iter().any(|a| matches!(a.as_str(), "--version" | "-V" | "--help" | "-h")) {
        return Some(Stream::Stdout);
    }
    cni_command.is_none_or(str::is_empty).then_some(Stream::Stderr)
}

/// Prints the about text if asked for; returns whether it did (the caller then exits 0).
pub fn print_if_requested(plugin: &str, version: &str) -> bool {
    let (args, cmd) = (std::env::args().skip(1), std::env::var("CNI_COMMAND").ok());
    write_if_requested(plugin, version, args, cmd.as_deref(), &mut std::io::stdout(), &mut std::io::stderr())
}

/// [`print_if_requested`] with the process's arguments, `CNI_COMMAND` and streams passed in.
pub fn write_if_requested<I: IntoIterator<Item = String>>(
    plugin: &str,
    version: &str,
    args: I,
    cni_command: Option<&str>,
    stdout: &mut dyn std::io::Write,
    stderr: &mut dyn std::io::Write,
) -> bool {
    let Some(stream) = requested(args, cni_command) else {
        return false;
    };
    let t = text(plugin, version);
    let _ = match stream {
        Stream::Stdout => writeln!(stdout, "{t}"),
        Stream::Stderr => writeln!(stderr, "{t}"),
    };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn text_names_plugin_version_and_every_cni_version() {
        assert_eq!(
            text("trellis", "0.1.0"),
            "CNI trellis plugin v0.1.0\nCNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
        );
    }

    #[test]
    fn flags_win_and_a_missing_command_asks_for_it() {
        assert_eq!(requested(args(&["--version"]), Some("ADD")), Some(Stream::Stdout));
        assert_eq!(requested(args(&["--help"]), None), Some(Stream::Stdout));
        assert_eq!(requested(args(&["-h"]), None), Some(Stream::Stdout));
        assert_eq!(requested(args(&[]), None), Some(Stream::Stderr));
        assert_eq!(requested(args(&[]), Some("")), Some(Stream::Stderr));
        assert_eq!(requested(args(&[]), Some("ADD")), None);
        assert_eq!(requested(args(&["other"]), Some("VERSION")), None);
    }

    #[test]
    fn writes_to_the_stream_asked_for_and_nothing_for_a_command() {
        let run = |a: &[&str], cmd: Option<&str>| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let done = write_if_requested("p", "1.2.3", args(a), cmd, &mut out, &mut err);
            (done, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
        };
        let about = format!("{}\n", text("p", "1.2.3"));
        assert_eq!(run(&["--version"], Some("ADD")), (true, about.clone(), String::new()));
        assert_eq!(run(&[], None), (true, String::new(), about));
        assert_eq!(run(&[], Some("DEL")), (false, String::new(), String::new()));
    }
}
