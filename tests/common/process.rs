//! Starting a `ferry` process that announces itself on its first line of stdout.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts `command` with stdout piped and returns it with its first stdout line; the rest of
/// stdout is drained on a thread, so that the process never blocks on a full pipe.
pub fn spawn_announcing(command: &mut Command, what: &str) -> (Child, String) {
    let mut child =
        command.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap_or_else(|| panic!("{what} printed nothing")).unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    (child, first)
}

/// The first word of `line` that starts with `scheme` (`ws://`, `http://`).
pub fn url_in(line: &str, scheme: &str) -> Option<String> {
    line.split_whitespace().find(|w| w.starts_with(scheme)).map(str::to_owned)
}
