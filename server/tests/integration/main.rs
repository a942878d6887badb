//! kv-server's integration suite: the router end to end, the store against a model, the
//! real binary killed mid-load, seed databases, the clean-up command, replication and online
//! rebalancing between in-process servers.

mod binary;
mod check;
mod checkpoint;
mod clean;
mod concurrency;
mod crash;
mod disk_full;
mod http;
mod link;
mod model;
mod ports;
mod rebalance;
mod replication;
mod seed;
mod slow_commit;
mod snapshot;
mod support;
