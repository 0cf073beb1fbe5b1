//! Running a command for the state types (`cmd.run`, the package and
//! service states): [`tend_host::cmd::exec`], which reads output through a
//! fixed buffer (64 KiB kept per stream, the rest counted and dropped).

pub(crate) use tend_host::cmd::{CommandError, Output, exec};
