//! How results are shown: tables and summaries for people (the default),
//! or the stable JSON shapes of `--output json` for scripts. One module per
//! kind of thing shown; colour, table layout and the progress line are
//! shared by all.

pub mod colour;
pub mod events;
pub mod jobs;
pub mod json;
pub mod keys;
pub mod minions;
pub mod progress;
pub mod status;
pub mod table;
