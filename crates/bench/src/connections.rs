//! Opening many authenticated connections, a bounded number at a time.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Semaphore;

use crate::target::{TargetArgs, source_for};
use crate::wire::{self, Socket};

/// An open connection and the workspace it reads.
pub struct Conn {
    pub socket: Socket,
    pub workspace: usize,
}

/// Opens `n` connections (connection `i` reads workspace `i % workspaces`),
/// each once its first message arrived. Returns them and how long it took.
pub async fn open(target: &TargetArgs, n: usize, workspaces: usize, first_index: usize) -> anyhow::Result<(Vec<Conn>, Duration)> {
    let endpoints = Rc::new(target.endpoints()?);
    let gate = Rc::new(Semaphore::new(target.connect_concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in first_index..first_index + n {
        let workspace = i % workspaces;
        let token = target.token(&workspace_name(workspace), i)?;
        let endpoints = endpoints.clone();
        let gate = gate.clone();
        let extra = target.extra_query.clone();
        let socketio = target.dialect == "socketio";
        tasks.push(tokio::task::spawn_local(async move {
            let _permit = gate.acquire().await?;
            let endpoint = &endpoints[i % endpoints.len()];
            let query = format!("token={token}&workspace_id={}{extra}", workspace_name(workspace));
            let path = if socketio { format!("/socket.io/?EIO=4&transport=websocket&{query}") } else { format!("/ws?{query}") };
            let mut socket = wire::connect(endpoint.addr, &endpoint.host, &path, source_for(i, &endpoint.addr)).await?;
            let mut first = socket.first_text().await?;
            if socketio {
                // Engine.IO open packet, then the namespace connect and its ack, then our `connected` event.
                anyhow::ensure!(first.starts_with(b"0"), "not an Engine.IO open packet: {}", String::from_utf8_lossy(&first));
                socket.send_text(b"40").await?;
                loop {
                    first = socket.first_text().await?;
                    if first == b"2" {
                        // An Engine.IO ping (socketioxide sends its first at once): pong.
                        socket.send_text(b"3").await?;
                        continue;
                    }
                    if !first.starts_with(b"40") {
                        break;
                    }
                }
            }
            anyhow::ensure!(
                first.windows(11).any(|w| w == b"\"connected\""),
                "first message is not connected: {}",
                String::from_utf8_lossy(&first)
            );
            Ok::<_, anyhow::Error>(Conn { socket, workspace })
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for (k, task) in tasks.into_iter().enumerate() {
        conns.push(task.await?.with_context(|| format!("connection {}", first_index + k))?);
    }
    Ok((conns, started.elapsed()))
}

pub fn workspace_name(n: usize) -> String {
    format!("bench-{n}")
}
