//! End-to-end tests: real kv-server instances (or scripted fake members) and the gateway,
//! in-process, on 127.0.0.1 ephemeral ports, driven over HTTP with reqwest.

mod admin;
mod body_budget;
mod connection_limit;
mod edges;
mod failover;
mod fake_member;
mod fallback;
mod harness;
mod link;
mod monitoring;
mod netsplit;
mod partition;
mod procs;
mod proxying;
mod rebalance;
mod replication;
mod ring;
mod slow_clients;
mod sockets;
mod stall;
mod stats;
