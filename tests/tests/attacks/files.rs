//! What a daemon leaves on disk and hands to a shell: secrets never
//! readable through a looser mode, private dirs and files whatever the
//! umask, no window on the control socket, event data never a command.

#[allow(unused_imports)]
use super::*;
