//! The pure core: the transition table, given/when/then scenarios at the boundaries, a
//! reference model, the replay law, and golden bytes of every event type.

mod fixtures;
mod model;
mod scenarios;
mod table;
