//! The wire: replies only from the session asked, and nothing an
//! unauthenticated peer sends (parts, connections, hellos) grows the
//! master without bound or shuts accepted peers out.

#[allow(unused_imports)]
use super::*;
