//! The lean WebSocket client every scenario uses: a hand-made upgrade and a
//! frame parser over one read buffer, so the load generator spends its core
//! on receiving, not on a general-purpose WebSocket stack. Server frames are
//! never masked; the client masks what it sends (pongs, closes) with a zero
//! key, which RFC 6455 allows.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// One open WebSocket: the stream and one read buffer; `buf[start..end]` is
/// read but not yet parsed. The buffer is zeroed once when it grows, never per
/// read, and grows only while reads keep filling it.
pub struct Socket {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Read buffer of a new connection; doubled while reads fill it, up to [`MAX_READ`].
const INITIAL_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;

/// A frame as the reader sees it.
pub enum Frame<'a> {
    Text(&'a [u8]),
    Close(Option<u16>),
    /// Ping, pong or binary: already handled or ignored.
    Other,
}

/// Opens `ws://addr{path}` from `source` (a 127.0.0.0/8 address, so that more
/// than 64k connections fit), sending `Sec-WebSocket-Key` and expecting 101.
pub async fn connect(addr: SocketAddr, host: &str, path: &str, source: Option<IpAddr>) -> anyhow::Result<Socket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("binding {ip}"))?;
    }
    socket.set_nodelay(true)?;
    let mut stream = socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let end = loop {
        if len == buf.len() {
            bail!("handshake answer too long");
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            bail!("closed during the handshake");
        }
        len += n;
        if let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let status = std::str::from_utf8(&buf[..end]).unwrap_or("").lines().next().unwrap_or("").to_string();
    if !status.contains(" 101 ") {
        bail!("upgrade refused: {status}");
    }
    Ok(Socket { stream, buf, start: end, end: len })
}

impl Socket {
    /// Calls `on_frame` for every frame until the server closes or `on_frame`
    /// returns false. Answers pings.
    pub async fn read_frames(&mut self, mut on_frame: impl FnMut(Frame<'_>) -> bool) -> anyhow::Result<()> {
        loop {
            while let Some((header, len, opcode)) = parse_header(&self.buf[self.start..self.end]) {
                let payload = self.start + header..self.start + header + len;
                let go_on = match opcode {
                    0x1 => on_frame(Frame::Text(&self.buf[payload.clone()])),
                    0x8 => {
                        let p = &self.buf[payload.clone()];
                        let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                        on_frame(Frame::Close(code));
                        return Ok(());
                    }
                    0x9 => {
                        let pong = client_frame(0xA, &self.buf[payload.clone()]);
                        self.stream.write_all(&pong).await?;
                        on_frame(Frame::Other)
                    }
                    _ => on_frame(Frame::Other),
                };
                self.start = payload.end;
                if !go_on {
                    return Ok(());
                }
            }
            // Keep the unparsed tail at the front, and room behind it.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).max(INITIAL_READ);
                self.buf.resize(grown, 0);
            }
            let free = self.buf.len() - self.end;
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(());
            }
            self.end += n;
            if n == free && self.buf.len() < MAX_READ {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
    }

    /// Reads up to the first text frame (the `connected` message).
    pub async fn first_text(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut first = None;
        self.read_frames(|frame| match frame {
            Frame::Text(t) => {
                first = Some(t.to_vec());
                false
            }
            Frame::Close(_) => false,
            Frame::Other => true,
        })
        .await?;
        first.context("closed before the first message")
    }

    pub async fn send_text(&mut self, text: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(&client_frame(0x1, text)).await?;
        Ok(())
    }

    /// Shrinks the read buffer to what is unread, for idle connections.
    pub fn shrink(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        self.buf.truncate(self.end.max(256));
        self.buf.shrink_to_fit();
    }
}

/// (header length, payload length, opcode) of a complete frame at the start of `b`.
fn parse_header(b: &[u8]) -> Option<(usize, usize, u8)> {
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0F;
    let masked = b[1] & 0x80 != 0;
    let (mut header, len) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
        127 if b.len() >= 10 => (10, u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]) as usize),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    if masked {
        header += 4;
    }
    (b.len() >= header + len).then_some((header, len, opcode))
}

/// A masked client frame (zero key: the payload is sent as is).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// An unmasked server frame, for the ceiling writer.
pub fn server_frame(opcode: u8, payload: &[u8], into: &mut Vec<u8>) {
    into.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => into.push(n as u8),
        n if n <= u16::MAX as usize => {
            into.push(126);
            into.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            into.push(127);
            into.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    into.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_at_every_length_class() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![b'x'; len];
            let mut f = Vec::new();
            server_frame(0x1, &payload, &mut f);
            let (header, n, op) = parse_header(&f).expect("complete");
            assert_eq!((n, op, header + n), (len, 1, f.len()));
            assert!(parse_header(&f[..f.len() - 1]).is_none() || len == 0);
        }
        let c = client_frame(0x9, b"hi");
        assert_eq!(parse_header(&c), Some((6, 2, 0x9)));
    }
}
