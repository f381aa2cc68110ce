//! `ceiling`: the least a server can do for the same fan-out, to state every
//! result as a fraction of what this machine allows. One thread reads the
//! Redis channels (`PSUBSCRIBE workspace:*`) and writes each message as a
//! pre-built WebSocket frame to every socket of its workspace with blocking
//! `write(2)`, `TCP_NODELAY` on. With `--coalesce`, every frame already
//! waiting in the Redis read buffer goes out in one `write` per socket.
//! No authentication, no filters, no history: a bound, not a product.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};

#[derive(Debug, Clone, clap::Args)]
pub struct CeilingArgs {
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub listen: String,
    /// `host:port` of Redis.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub redis: String,
    /// Write every frame already waiting in one `write` per socket.
    #[arg(long)]
    pub coalesce: bool,
}

type Sockets = Arc<Mutex<HashMap<String, Vec<TcpStream>>>>;

pub fn run(args: CeilingArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen).with_context(|| format!("binding {}", args.listen))?;
    let sockets: Sockets = Arc::default();
    let accepted = sockets.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let (Ok((workspace, stream)), Ok(mut map)) = (handshake(stream), accepted.lock()) {
                map.entry(workspace).or_default().push(stream);
            }
        }
    });
    eprintln!("ceiling listening on {} (coalesce: {})", args.listen, args.coalesce);
    let mut redis = TcpStream::connect(&args.redis).with_context(|| format!("connecting to Redis at {}", args.redis))?;
    redis.write_all(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$11\r\nworkspace:*\r\n")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0;
    let mut frames: HashMap<String, Vec<u8>> = HashMap::new();
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = redis.read(&mut buf[len..])?;
        if n == 0 {
            bail!("Redis closed the connection");
        }
        len += n;
        let mut at = 0;
        while let Some((parts, used)) = parse_array(&buf[at..len]) {
            at += used;
            if parts.len() == 4 && parts[0] == b"pmessage" {
                let workspace = String::from_utf8_lossy(parts[2].strip_prefix(b"workspace:").unwrap_or(parts[2])).into_owned();
                let frame = frames.entry(workspace.clone()).or_default();
                crate::wire::server_frame(0x1, parts[3], frame);
                if !args.coalesce {
                    write_all(&sockets, &workspace, frame);
                    frame.clear();
                }
            }
        }
        buf.copy_within(at..len, 0);
        len -= at;
        if args.coalesce {
            for (workspace, frame) in frames.iter_mut().filter(|(_, f)| !f.is_empty()) {
                write_all(&sockets, workspace, frame);
                frame.clear();
            }
        }
    }
}

fn write_all(sockets: &Sockets, workspace: &str, frame: &[u8]) {
    let Ok(mut map) = sockets.lock() else { return };
    if let Some(list) = map.get_mut(workspace) {
        list.retain_mut(|s| s.write_all(frame).is_ok());
    }
}

/// Answers the upgrade; the workspace comes from `workspace_id=` in the path.
fn handshake(mut stream: TcpStream) -> anyhow::Result<(String, TcpStream)> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() > 16 * 1024 {
            bail!("bad handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let key = request
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key:").or_else(|| l.strip_prefix("sec-websocket-key:")))
        .map(str::trim)
        .context("no key")?;
    let workspace = request
        .split_whitespace()
        .nth(1)
        .and_then(|path| path.split(['?', '&']).find_map(|kv| kv.strip_prefix("workspace_id=")))
        .unwrap_or("default")
        .to_string();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut answer =
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
            .into_bytes();
    crate::wire::server_frame(0x1, format!(r#"{{"type":"connected","workspace_id":"{workspace}"}}"#).as_bytes(), &mut answer);
    stream.write_all(&answer)?;
    Ok((workspace, stream))
}

/// One RESP array of bulk strings at the start of `b`, and the bytes it used.
fn parse_array(b: &[u8]) -> Option<(Vec<&[u8]>, usize)> {
    let (count, mut at) = parse_line_number(b, b'*')?;
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        if b.get(at) == Some(&b':') {
            // An integer (the subscription count of a `psubscribe` reply).
            let end = b[at..].windows(2).position(|w| w == b"\r\n")?;
            parts.push(&b[at + 1..at + end]);
            at += end + 2;
            continue;
        }
        let (len, header) = parse_line_number(&b[at..], b'$')?;
        at += header;
        if b.len() < at + len + 2 {
            return None;
        }
        parts.push(&b[at..at + len]);
        at += len + 2;
    }
    Some((parts, at))
}

fn parse_line_number(b: &[u8], prefix: u8) -> Option<(usize, usize)> {
    if b.first() != Some(&prefix) {
        return None;
    }
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    let n = std::str::from_utf8(&b[1..end]).ok()?.parse().ok()?;
    Some((n, end + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_arrays_with_integers_and_partial_input() {
        let reply = b"*3\r\n$10\r\npsubscribe\r\n$11\r\nworkspace:*\r\n:1\r\n";
        let (parts, used) = parse_array(reply).expect("complete");
        assert_eq!((parts[0], parts[2], used), (&b"psubscribe"[..], &b"1"[..], reply.len()));
        let message = b"*4\r\n$8\r\npmessage\r\n$11\r\nworkspace:*\r\n$11\r\nworkspace:w\r\n$2\r\n{}\r\n";
        let (parts, _) = parse_array(message).expect("complete");
        assert_eq!(parts[3], b"{}");
        assert!(parse_array(&message[..message.len() - 3]).is_none());
    }
}
