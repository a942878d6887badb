//! The floor under any gateway, for `scripts/bench.sh`: a proxy that does nothing but move
//! bytes. Each client connection gets its own connection to one upstream and the bytes are
//! copied both ways (`copy_bidirectional`), so a request costs exactly the socket calls a
//! real proxy cannot avoid (read from the client, write to the server, read the answer, write
//! it back) and the wake-ups between them, with no HTTP parsing, routing or pooling at all.
//! What the gateway reaches beyond this is its own cost; what this reaches is the ceiling for
//! one-request-per-exchange proxying on the machine.
//!
//! Usage: `cargo run --release -p kv-gateway --example byte_pipe -- LISTEN UPSTREAM`
//! (both `host:port`).

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: byte_pipe LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(&listen).await?;
    loop {
        let (mut client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            // As the gateway does: small latency-bound messages never wait for Nagle.
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = copy_bidirectional(&mut client, &mut server).await;
        });
    }
}
