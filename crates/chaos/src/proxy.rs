//! A TCP proxy for putting network faults between a process and Redis: it
//! forwards, stalls (holds every byte, both ways, sockets open), cuts every
//! open connection with a FIN or a RST, or strands the open connections
//! (silent for good, as when a NAT or firewall forgets them), on command.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does with traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// Nothing moves; connections stay open; new ones are accepted and held.
    Stall,
}

/// How a cut ends the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// FIN: an orderly close.
    Close,
    /// RST: a reset, as a middlebox or a crashed peer would send.
    Reset,
}

/// The connections open now share one token; a cut cancels it. Stranding
/// cancels the other: those connections then carry nothing until cut.
struct Generation {
    token: CancellationToken,
    strand: CancellationToken,
    how: Cut,
}

pub struct TcpProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    generation: Arc<Mutex<Generation>>,
    accepted: Arc<AtomicUsize>,
}

impl TcpProxy {
    /// Listens on a free port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, watching) = watch::channel(Mode::Forward);
        let generation =
            Arc::new(Mutex::new(Generation { token: CancellationToken::new(), strand: CancellationToken::new(), how: Cut::Close }));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (current, counter) = (generation.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                let (token, strand) = {
                    let generation = current.lock().unwrap();
                    (generation.token.clone(), generation.strand.clone())
                };
                let (watching, current) = (watching.clone(), current.clone());
                tokio::spawn(async move {
                    let mut client = client;
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    forward(&mut client, &mut server, watching, &token, &strand).await;
                    if token.is_cancelled() && current.lock().unwrap().how == Cut::Reset {
                        // Dropped with a zero linger: the kernel sends RST, not FIN.
                        let _ = client.set_zero_linger();
                        let _ = server.set_zero_linger();
                    }
                });
            }
        });
        Self { port, mode, generation, accepted }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }

    /// Ends every open connection (`how`); later ones are forwarded as usual.
    pub fn cut(&self, how: Cut) {
        let mut generation = self.generation.lock().unwrap();
        generation.how = how;
        let old = std::mem::replace(&mut generation.token, CancellationToken::new());
        old.cancel();
    }

    /// Every open connection goes silent for good, sockets open, no FIN or
    /// RST; later ones are forwarded as usual.
    pub fn strand(&self) {
        let mut generation = self.generation.lock().unwrap();
        let old = std::mem::replace(&mut generation.strand, CancellationToken::new());
        old.cancel();
    }

    /// Connections accepted so far (each reconnect of a process is one more).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    fn how(&self) -> Cut {
        self.generation.lock().unwrap().how
    }
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy").field("port", &self.port).field("how", &self.how()).finish()
    }
}

/// Copies both ways until either side closes or the connection is cut; holds
/// everything while the mode is [`Mode::Stall`], and for good once stranded.
async fn forward(
    client: &mut TcpStream,
    server: &mut TcpStream,
    mut mode: watch::Receiver<Mode>,
    cut: &CancellationToken,
    strand: &CancellationToken,
) {
    let (mut up, mut down) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    loop {
        if strand.is_cancelled() {
            cut.cancelled().await;
            break;
        }
        if *mode.borrow_and_update() == Mode::Stall {
            tokio::select! {
                _ = cut.cancelled() => break,
                changed = mode.changed() => if changed.is_err() { break } else { continue },
            }
        }
        tokio::select! {
            _ = cut.cancelled() => break,
            _ = strand.cancelled() => continue,
            changed = mode.changed() => if changed.is_err() { break },
            read = client.read(&mut up) => match read {
                Ok(n) if n > 0 => if server.write_all(&up[..n]).await.is_err() { break },
                _ => break,
            },
            read = server.read(&mut down) => match read {
                Ok(n) if n > 0 => if client.write_all(&down[..n]).await.is_err() { break },
                _ => break,
            },
        }
    }
}
