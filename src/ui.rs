//! Output helpers: data goes to stdout, and a closed pipe (`roleplay plan ... | head`) ends the
//! program quietly instead of panicking.

use std::io::Write;

/// Write one line to stdout; exit 0 at once if the reader has gone away.
pub fn outln(s: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{s}")
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// `println!` that survives a closed pipe.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::ui::outln(format_args!($($arg)*)) };
}
