//! Reopening the log files on SIGHUP, so that an external logrotate can rename them away.

use std::thread::{self, JoinHandle};

use signal_hook::consts::SIGHUP;
use signal_hook::iterator::{Handle, Signals};

use crate::error::LoggerError;
use crate::handle::LoggerControl;

/// The SIGHUP listener; dropping it uninstalls the handler and stops its thread.
pub struct SighupReopen {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

/// Reopens both log files each time the process receives SIGHUP.
pub fn reopen_on_sighup(control: LoggerControl) -> Result<SighupReopen, LoggerError> {
    let mut signals = Signals::new([SIGHUP]).map_err(LoggerError::Signal)?;
    let handle = signals.handle();
    let thread = thread::Builder::new()
        .name("ferry-log-sighup".to_owned())
        .spawn(move || {
            for _ in signals.forever() {
                match control.reopen() {
                    Ok(()) => {}
                    Err(LoggerError::WriterStopped) => break,
                    Err(e) => eprintln!("ferry-logger: reopen on SIGHUP: {e}"),
                }
            }
        })
        .map_err(|source| LoggerError::Spawn { name: "ferry-log-sighup", source })?;
    Ok(SighupReopen { handle, thread: Some(thread) })
}

impl Drop for SighupReopen {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
