//! One module per subcommand: each turns CLI arguments into calls on the core and prints.

pub mod init;
pub mod plan;
pub mod validate;
