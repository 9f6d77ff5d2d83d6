//! The async MLLP listener shared by the gateway (`medrelay serve --mllp-listen`) and the agent
//! (`medrelay ambulance --mllp-listen`): it accepts TCP connections (optionally TLS), frames
//! what they send with [`MllpDecoder`], answers every message with the ACK its
//! [`MessageHandler`] returns (a framing error with its `AR`) and keeps each connection open
//! for the next message. Everything HL7 is decided by the sans-IO modules; this only moves
//! bytes.

use crate::gateway::now_us;
use crate::hl7::mllp::{MllpDecoder, MllpError, encode};
use crate::hl7::reject_frame;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// Largest MLLP frame (one HL7 message) taken; a larger one is answered `AR` and dropped.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Most MLLP connections at once; more are closed as they are accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection that sends nothing (or takes no ACK) for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listener does with each connection's messages.
pub trait MessageHandler: Send + 'static {
    /// The ACK (not framed) for one complete message (the bytes inside an MLLP frame).
    fn message(&mut self, message: &[u8]) -> impl Future<Output = Vec<u8>> + Send;
    /// Called for a framing error before its `AR` is sent (for counting).
    fn framing_error(&mut self, _error: &MllpError) {}
}

/// Accepts connections on `listener` until it fails, each served on its own task with a
/// handler from `handler_for`; with `tls`, each connection is a TLS session first.
pub async fn serve<F, H>(listener: TcpListener, tls: Option<TlsAcceptor>, handler_for: F)
where
    F: Fn(SocketAddr) -> H,
    H: MessageHandler,
{
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("MLLP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(%peer, "too many MLLP connections ({MAX_CONNECTIONS}); closing a new one");
            continue;
        };
        let _ = socket.set_nodelay(true);
        let handler = handler_for(peer);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection(socket, peer, handler).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => connection(stream, peer, handler).await,
                        Ok(Err(e)) => info!(%peer, "MLLP TLS handshake failed: {e}"),
                        Err(_) => info!(%peer, "MLLP TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Serves one connection until the peer closes it, goes idle or stops taking ACKs.
pub async fn connection<S, H>(mut socket: S, peer: SocketAddr, mut handler: H)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: MessageHandler,
{
    info!(%peer, "MLLP connection opened");
    let mut decoder = MllpDecoder::new(MAX_FRAME_BYTES);
    let mut buf = vec![0u8; 16 * 1024];
    'read: loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, socket.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                info!(%peer, "MLLP read failed: {e}");
                break;
            }
            Err(_) => {
                info!(%peer, "MLLP connection idle for {IDLE_TIMEOUT:?}; closing");
                break;
            }
        };
        decoder.push(&buf[..n]);
        while let Some(item) = decoder.poll() {
            let reply = match item {
                Ok(message) => handler.message(&message).await,
                Err(error) => {
                    warn!(%peer, "MLLP framing error: {error}");
                    handler.framing_error(&error);
                    reject_frame(&error, now_us())
                }
            };
            let framed = encode(&reply);
            let write = async {
                socket.write_all(&framed).await?;
                socket.flush().await
            };
            if !matches!(tokio::time::timeout(IDLE_TIMEOUT, write).await, Ok(Ok(()))) {
                info!(%peer, "MLLP peer does not take its ACK; closing");
                break 'read;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.shutdown()).await;
    info!(%peer, "MLLP connection closed");
}
