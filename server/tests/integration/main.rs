//! kv-server's integration suite: the router end to end, the store against a model, the
//! real binary killed mid-load, seed databases, and the clean-up command.

mod clean;
mod concurrency;
mod crash;
mod http;
mod model;
mod replication;
mod seed;
mod snapshot;
mod support;
